"""Experiments: ablations over seeds (compare) and the lecture's labs.

    from trainwell.experiments import Plan, grid, run_plan, run_lab

The names are loaded on first use (PEP 562): the CLI imports ``trainwell.cli.experiments`` to
build its parser for every command, and must not pay for scipy and the labs on each start.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Cell": "compare", "Plan": "compare", "grid": "compare", "parse_vary": "compare",
    "run_plan": "results", "aggregate": "results", "CompareResult": "results",
    "run_lab": "lab", "LABS": "lab",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'trainwell.experiments' has no attribute '{name}'")
    return getattr(importlib.import_module(f"trainwell.experiments.{_EXPORTS[name]}"), name)
