"""Diagnostics (the doctor): per-layer statistics that give verdicts with evidence and a fix."""
