"""Helpers for tests that resume runs: a finished run folder made to look killed mid-run."""

from pathlib import Path


def as_if_killed_in_epoch_two(run_dir: Path, steps: int, epochs: int) -> None:
    """Delete what a run killed in its second epoch, after a mid-epoch checkpoint, would not have written:
    every later checkpoint, summary.json and model.safetensors (the run needs train.checkpoint_every
    below an epoch's steps and train.keep_checkpoints large enough to keep them all)."""
    per_epoch = steps // epochs
    checkpoints = {int(p.stem[5:]): p for p in (run_dir / "checkpoints").glob("step-*.safetensors")}
    keep = max(s for s in checkpoints if s < 2 * per_epoch and s % per_epoch)
    for step, path in checkpoints.items():
        if step > keep:
            path.unlink()
    (run_dir / "summary.json").unlink()
    (run_dir / "model.safetensors").unlink()
