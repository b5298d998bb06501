"""Labs: each claim of the lecture, tested on real data over several seeds, with a computed verdict.

A lab is a compare (cells × seeds, see :mod:`trainwell.experiments.compare`) plus an analysis
that turns the runs into evidence and decides, from the numbers alone, whether the claim held.
Nothing about the outcome is written in advance: the same lab on other data (``data.name=...``)
or another model may well say the claim did not hold there.

Python API::

    from trainwell.experiments.lab import run_lab
    outcome = run_lab("activations", ["data.name=mnist1d"], out="runs/lab-act")
    outcome.held, outcome.verdict, outcome.evidence

Layout of ``--out``: ``summary.json`` (claim, held, verdict, evidence), ``report.html``, the lab's
figures, and ``compare/`` (the underlying compare: its runs, table and plots).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from trainwell.experiments.compare import Cell, Plan, nan_to_none
from trainwell.experiments.results import CompareResult, intervals_caption, run_plan, runs_sentence, table_rows
from trainwell.registry import new_registry
from trainwell.fileio import write_json


@dataclass(frozen=True)
class LabMeta:
    """What every lab entry carries besides its claim (the entry's doc)."""

    question: str


LABS = new_registry("lab", LabMeta, "Labs: a lecture claim tested over seeds on real data (trainwell lab NAME).")


@dataclass
class LabOutcome:
    """What a lab's analysis found: the verdict and everything that backs it."""

    held: bool
    verdict: str
    evidence: dict[str, Any]
    tables: list[Any] = field(default_factory=list)  # htmlreport.Table blocks
    figures: list[tuple[Path, str]] = field(default_factory=list)  # (png, caption)


@dataclass
class Lab:
    """A claim, the runs that test it, and the analysis that decides it.

    ``analyse(result, out) -> LabOutcome`` sees the aggregated compare (``result.cells``, each with
    per-seed summaries and measures) and may write figures into ``out``.
    """

    name: str
    claim: str
    question: str
    base: list[str]
    cells: list[Cell]
    analyse: Callable[[CompareResult, Path], LabOutcome]
    seeds: int = 3
    measure: str | None = None
    metric: str = "test_acc"
    quick: list[str] = field(default_factory=list)  # overrides for a seconds-long smoke run (tests)


def register(lab: Lab) -> Lab:
    LABS.add(lab.name, lambda: lab, doc=lab.claim, question=lab.question)
    return lab


def get_lab(name: str) -> Lab:
    import trainwell.experiments.labs  # noqa: F401  (registers every lab)

    return LABS.build(name)


def lab_plan(lab: Lab, overrides: list[str] | None = None, seeds: list[int] | None = None,
             quick: bool = False) -> Plan:
    base = [*lab.base, *(lab.quick if quick else []), *(overrides or [])]
    return Plan(base=base, cells=list(lab.cells), seeds=seeds or list(range(lab.seeds)), metric=lab.metric,
                measure=lab.measure, title=f"lab {lab.name}")


def run_lab(name: str, overrides: list[str] | None = None, *, out: str | Path, seeds: list[int] | None = None,
            workers: int | None = None, overwrite: bool = False, quiet: bool = False, quick: bool = False,
            command: str | None = None, console: Console | None = None) -> LabOutcome:
    """Run (or resume) a lab into ``out`` and write its summary.json and report.html."""
    from trainwell.experiments.htmlreport import Code, Image, KeyValues, Section, Table, Text, Verdict, write_report

    lab = get_lab(name)
    plan = lab_plan(lab, overrides, seeds, quick)
    out = Path(out)
    console = console or Console(stderr=True, quiet=quiet, soft_wrap=True)
    t0 = time.perf_counter()
    result = run_plan(plan, out / "compare", workers=workers, overwrite=overwrite, quiet=True, console=console,
                      command=command)
    if not quiet:
        console.print(f"lab {name}: {sum(len(c.summaries) for c in result.cells)} runs in "
                      f"{time.perf_counter() - t0:.0f} s; analysing", highlight=False)
    outcome = lab.analyse(result, out)
    # Every verdict says what it rests on: how many runs, and which diverged or failed ones it leaves out.
    outcome.verdict = f"{outcome.verdict.rstrip()} The verdict {runs_sentence(result)}."
    seconds = time.perf_counter() - t0
    failed = result.execution.failed if result.execution else []
    summary = nan_to_none({
        "lab": lab.name, "claim": lab.claim, "question": lab.question, "held": outcome.held,
        "verdict": outcome.verdict, "evidence": outcome.evidence,
        "seeds": plan.seeds, "overrides": plan.base, "metric": plan.metric,
        "cells": [{"label": c.label, "n": c.ci.n, "mean": c.ci.mean, "ci_low": c.ci.low, "ci_high": c.ci.high,
                   "diverged": c.diverged, "failed": c.failed} for c in result.cells],
        "runs": sum(len(c.summaries) for c in result.cells), "failed": failed,
        "runs_counted": sum(len(c.values) for c in result.cells),  # finished and not diverged
        "runs_ran": result.execution.ran if result.execution else 0,
        "runs_skipped": result.execution.skipped if result.execution else 0,
        "seconds": seconds, "command": command,
    })
    write_json(out / "summary.json", summary)
    headers, rows = table_rows(result)
    compare_dir = out / "compare"
    sections = [
        Section("Verdict", [Verdict(outcome.held, lab.claim, outcome.verdict),
                            Text(f"Lecture: {lab.question}")]),
        Section("Evidence", [*outcome.tables, *[Image(p, caption=c) for p, c in outcome.figures]]),
        Section("Runs", [
            Table(headers, rows, caption=f"{plan.metric} per configuration (mean, 95% CI over seeds {plan.seeds}; "
                                         "Δ and p: paired t-test against the first row)"),
            Image(compare_dir / "intervals.png", caption=intervals_caption(plan.metric)),
            Image(compare_dir / "curves.png", caption="per epoch, mean ± 95% CI over seeds (the loss: geometric mean, its CI in log space)"),
        ]),
        Section("Setup", [KeyValues({"overrides": " ".join(plan.base), "seeds": plan.seeds,
                                     "runs": summary["runs"], "seconds": round(seconds, 1),
                                     "runs folder": str(compare_dir / "runs")}),
                          *([Code(command)] if command else [])]),
    ]
    write_report(out / "report.html", f"lab {lab.name}", sections, subtitle=lab.claim)
    return outcome
