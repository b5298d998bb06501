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

A lab whose cells fine-tune a pretrained model (transfer learning) names the pretraining in
``Lab.pretrain``: one run per seed, the lab's base with those overrides, run first as a compare of
its own into ``--out/pretrain/``; a cell with ``finetune.source=PRETRAINED`` then fine-tunes, at
each seed, the pretrained run of that same seed (:data:`PRETRAINED`). Both stages resume.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from trainwell.errors import ConfigError
from trainwell.experiments.compare import Cell, Plan, cell_dir_name, nan_to_none, validate
from trainwell.experiments.results import CompareResult, intervals_caption, run_plan, runs_sentence, table_rows
from trainwell.experiments.trials import Backend, as_backend, backend_session
from trainwell.registry import new_registry
from trainwell.fileio import write_json

#: A cell's value for the lab's pretrained run of the job's seed: ``Cell("fine-tuned", {"finetune.source":
#: PRETRAINED})`` (the lab sets ``pretrain``). :func:`run_lab` replaces it by ``--out/pretrain``'s runs,
#: ``.../seed-{seed}``, whose ``{seed}`` each run fills in with its train.seed (finetune.source).
PRETRAINED = "PRETRAINED"  # a bare word: a value starting with { would parse as a YAML mapping
PRETRAIN_DIR = "pretrain"
PRETRAIN_CELL = Cell("pretrain", {})


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
    # Overrides of the pretraining stage (on top of base; quick and the user's overrides still come last):
    # one run per seed, which cells with finetune.source=PRETRAINED fine-tune. None: no such stage.
    pretrain: list[str] | None = None


def register(lab: Lab) -> Lab:
    uses = [c.label for c in lab.cells if PRETRAINED in c.overrides.values()]
    assert not uses or lab.pretrain is not None, f"lab {lab.name}: cells {uses} use PRETRAINED but it has no pretrain"
    LABS.add(lab.name, lambda: lab, doc=lab.claim, question=lab.question)
    return lab


def get_lab(name: str) -> Lab:
    import trainwell.experiments.labs  # noqa: F401  (registers every lab)

    return LABS.build(name)


def lab_plan(lab: Lab, overrides: list[str] | None = None, seeds: list[int] | None = None,
             quick: bool = False, pretrained: str | None = None) -> Plan:
    """The lab's compare; ``pretrained`` (the pretraining runs, ``.../seed-{seed}``) replaces :data:`PRETRAINED`."""
    base = [*lab.base, *(lab.quick if quick else []), *(overrides or [])]
    cells = list(lab.cells) if pretrained is None else [
        Cell(c.label, {k: pretrained if v == PRETRAINED else v for k, v in c.overrides.items()}) for c in lab.cells]
    return Plan(base=base, cells=cells, seeds=seeds or list(range(lab.seeds)), metric=lab.metric,
                measure=lab.measure, title=f"lab {lab.name}")


def pretrain_plan(lab: Lab, overrides: list[str] | None = None, seeds: list[int] | None = None,
                  quick: bool = False) -> Plan | None:
    """The pretraining stage's compare (one cell, the lab's seeds), or None when the lab has none."""
    if lab.pretrain is None:
        return None
    base = [*lab.base, *lab.pretrain, *(lab.quick if quick else []), *(overrides or [])]
    return Plan(base=base, cells=[PRETRAIN_CELL], seeds=seeds or list(range(lab.seeds)), metric=lab.metric,
                title=f"lab {lab.name}: pretraining")


def pretrained_runs(out: Path) -> str:
    """The pretraining runs of a lab in ``out``, as a finetune.source (absolute: the runs read it from anywhere)."""
    return str(out.resolve() / PRETRAIN_DIR / "runs" / cell_dir_name(0, PRETRAIN_CELL) / "seed-{seed}")


def run_pretraining(lab: Lab, stage: Plan, out: Path, workers: int | None, overwrite: bool,
                    console: Console, command: str | None, backend: Backend | None = None) -> CompareResult:
    """Run (or resume) the pretraining stage into ``out/pretrain``; a failed or diverged run stops the lab
    (its cells could not start from it) with one line: a ConfigError, which ``trainwell lab all`` reports
    as that lab's "not run" and goes on with the next."""
    result = run_plan(stage, out / PRETRAIN_DIR, workers=workers, overwrite=overwrite, quiet=True, console=console,
                      command=command, backend=backend)
    failed = result.execution.failed if result.execution else []
    cell = result.cells[0]
    broken = [f"seed {f['seed']} failed ({f['error']})" for f in failed] + \
             [f"seed {s} diverged" for s in cell.diverged]
    if broken:
        raise ConfigError(f"lab {lab.name}: pretraining in '{out / PRETRAIN_DIR}': {'; '.join(broken)}; its cells "
                          "fine-tune those runs, so nothing else ran (fix it, then run the same command to resume).")
    return result


def run_lab(name: str, overrides: list[str] | None = None, *, out: str | Path, seeds: list[int] | None = None,
            workers: int | None = None, overwrite: bool = False, quiet: bool = False, quick: bool = False,
            command: str | None = None, console: Console | None = None,
            backend: str | Backend | None = None) -> LabOutcome:
    """Run (or resume) a lab into ``out`` and write its summary.json and report.html.

    ``backend``: where the runs run (see :func:`~trainwell.experiments.results.run_plan`); a Ray cluster
    is started once for both stages of a lab with pretraining."""
    from trainwell.htmlreport import Code, Image, KeyValues, Section, Table, Text, Verdict, write_report

    lab = get_lab(name)
    out = Path(out)
    stage = pretrain_plan(lab, overrides, seeds, quick)
    plan = lab_plan(lab, overrides, seeds, quick, pretrained_runs(out) if stage is not None else None)
    console = console or Console(stderr=True, quiet=quiet, soft_wrap=True)
    backend = as_backend(backend)
    t0 = time.perf_counter()
    pre = None
    with backend_session(backend):
        if stage is not None:
            validate(plan, deep=False)  # a mistyped cell key fails now, not after the pretraining
            pre = run_pretraining(lab, stage, out, workers, overwrite, console, command, backend)
        result = run_plan(plan, out / "compare", workers=workers, overwrite=overwrite, quiet=True, console=console,
                          command=command, backend=backend)
    if not quiet:
        console.print(f"lab {name}: {sum(len(c.summaries) for c in result.cells)} runs in "
                      f"{time.perf_counter() - t0:.0f} s; analysing", highlight=False)
    outcome = lab.analyse(result, out)
    # Every verdict says what it rests on: how many runs, and which diverged or failed ones it leaves out.
    pre_runs = sum(len(c.summaries) for c in pre.cells) if pre is not None else 0
    after = f" (after {pre_runs} pretraining runs, one per seed)" if pre is not None else ""
    outcome.verdict = f"{outcome.verdict.rstrip()} The verdict {runs_sentence(result)}{after}."
    seconds = time.perf_counter() - t0
    failed = result.execution.failed if result.execution else []
    executions = [r.execution for r in (pre, result) if r is not None and r.execution is not None]
    summary = nan_to_none({
        "lab": lab.name, "claim": lab.claim, "question": lab.question, "held": outcome.held,
        "verdict": outcome.verdict, "evidence": outcome.evidence,
        "seeds": plan.seeds, "overrides": plan.base, "metric": plan.metric,
        "cells": [{"label": c.label, "n": c.ci.n, "mean": c.ci.mean, "ci_low": c.ci.low, "ci_high": c.ci.high,
                   "diverged": c.diverged, "failed": c.failed} for c in result.cells],
        "runs": sum(len(c.summaries) for c in result.cells), "failed": failed,
        "runs_counted": sum(len(c.values) for c in result.cells),  # finished and not diverged
        "runs_ran": sum(e.ran for e in executions),  # the pretraining's included
        "runs_skipped": sum(e.skipped for e in executions),
        "pretrain": None if stage is None else {"overrides": stage.base, "runs": pre_runs,
                                                "folder": str(out / PRETRAIN_DIR)},
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
                                     "runs folder": str(compare_dir / "runs"),
                                     **({} if stage is None else {
                                         "pretraining overrides": " ".join(stage.base),
                                         "pretraining runs": f"{pre_runs} in {out / PRETRAIN_DIR / 'runs'}"})}),
                          *([Code(command)] if command else [])]),
    ]
    write_report(out / "report.html", f"lab {lab.name}", sections, subtitle=lab.claim)
    return outcome
