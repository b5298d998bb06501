"""Experiments: ablations over seeds (compare) and the lecture's labs.

    from trainwell.experiments import Plan, grid, run_plan, run_lab
"""

from trainwell.experiments.compare import Cell, Plan, grid, parse_vary
from trainwell.experiments.lab import LABS, run_lab
from trainwell.experiments.results import CompareResult, aggregate, run_plan

__all__ = ["Cell", "Plan", "grid", "parse_vary", "run_plan", "aggregate", "CompareResult", "run_lab", "LABS"]
