"""Diagnostics (the doctor): per-layer statistics that give verdicts with evidence and a fix.

Python API::

    from trainwell.diagnose import diagnose_model, DoctorCallback, diagnose_run, plot_report

    report = diagnose_model(model, x, y, lr=0.05)   # any nn.Module, at initialisation
    report.render()                                  # rich tables
    report.to_dict()                                 # {"findings": [...], "layers": [...], ...}
    plot_report(report, "out/")                      # histograms, std and gradients by depth

Finding codes (:data:`RULES`): vanishing-activations, exploding-activations, saturation, dead-units,
vanishing-gradients, exploding-gradients, unnormalized-input, update-ratio-high, update-ratio-low,
divergence, overfitting, lr-too-high, lr-too-low. Thresholds: :mod:`trainwell.diagnose.thresholds`.
"""

from trainwell.diagnose.doctor import DoctorCallback, diagnose_config, diagnose_model, diagnose_run
from trainwell.diagnose.plots import plot_report
from trainwell.diagnose.recorder import Recorder
from trainwell.diagnose.report import Finding, InputStats, LayerStats, Report
from trainwell.diagnose.rules import RULES, Context, run_rules

__all__ = [
    "RULES",
    "Context",
    "DoctorCallback",
    "Finding",
    "InputStats",
    "LayerStats",
    "Recorder",
    "Report",
    "diagnose_config",
    "diagnose_model",
    "diagnose_run",
    "plot_report",
    "run_rules",
]
