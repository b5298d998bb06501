"""Aggregate a compare's finished runs: per-cell mean and 95% CI, paired tests, table, plots, report.

Outputs written into the compare folder:

================= ============================================================
``summary.json``  every cell: per-seed values, mean, CI, paired test vs baseline, diverged/failed seeds
``results.csv``   one row per cell (the same numbers, for a spreadsheet)
``curves.png``    validation accuracy and training loss per epoch, mean ± 95% CI (loss: in log space)
``intervals.png`` the compared metric per cell: mean and CI, the seeds as dots, diverged seeds marked
``report.html``   all of the above in one self-contained page
================= ============================================================

A run that diverged is counted and shown (the ``left out`` column, a × on intervals.png, the
report's first sentence) and left out of every mean, interval, paired test and band; a cell with a
diverged seed is never called better.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from trainwell.experiments.compare import Cell, Execution, Plan, Tracking, execute, finished_runs, nan_to_none, \
    prepare_compare_dir
from trainwell.experiments.stats import MeanCI, PairedTest, curve_band, mean_ci, paired_test
from trainwell.experiments.trials import Backend, as_backend, backend_session
from trainwell.fileio import atomic_write_text, write_json
from trainwell.train.progress import print_warning

#: Curves drawn with bands: (metrics.jsonl key, axis label, scale, log axis: band computed in log space).
CURVES = (("val_acc", "validation accuracy (%)", 100.0, False), ("train_loss", "training loss", 1.0, True))


def seed_values(summaries: dict[int, dict[str, Any]], key: str) -> dict[int, float]:
    """seed -> the number under ``key`` in that seed's summary; seeds without one (or a bool) are left out."""
    return {s: float(v) for s, summ in summaries.items()
            if isinstance(v := summ.get(key), (int, float)) and not isinstance(v, bool)}


def diverged_seeds(summaries: dict[int, dict[str, Any]], metric: str) -> list[int]:
    """Seeds whose run diverged (the trainer stopped on a non-finite loss) or whose metric is not a finite number.

    A diverged run's test accuracy is that of broken weights (often chance): averaging it in hides the
    divergence inside a huge interval, so these seeds are counted and shown, never averaged.
    """
    values = seed_values(summaries, metric)
    return sorted(s for s, summ in summaries.items()
                  if summ.get("diverged") is True or not math.isfinite(values.get(s, math.nan)))


def seed_curves(histories: dict[int, list[dict[str, Any]]], key: str) -> dict[int, list[float]]:
    """seed -> ``key`` of each epoch's metrics row; NaN where a row lacks it."""
    return {s: [float(r[key]) if isinstance(r.get(key), (int, float)) else math.nan for r in h]
            for s, h in histories.items()}


@dataclass
class CellResult:
    """One cell's runs. ``values``, ``ci``, ``test``, ``curves`` and the ``*_of`` readers cover the
    finished runs that did not diverge; ``diverged`` and ``failed`` list the seeds left out."""

    index: int
    cell: Cell
    values: dict[int, float]
    ci: MeanCI
    test: PairedTest | None  # None for the baseline
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    summaries: dict[int, dict[str, Any]] = field(default_factory=dict)  # every finished run, diverged included
    histories: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    diverged: list[int] = field(default_factory=list)  # seeds that finished with a diverged loss
    failed: list[int] = field(default_factory=list)  # seeds whose run raised (no summary)

    @property
    def label(self) -> str:
        return self.cell.label

    @property
    def left_out(self) -> str:
        """``"1 diverged (seed 3)"``, ``"2 failed (seeds 0, 1)"``; empty when every run counts."""
        return left_out_text(self.diverged, self.failed)

    def values_of(self, key: str) -> dict[int, float]:
        """seed -> any numeric summary (or measure) key of that seed's run (diverged runs left out)."""
        return {s: v for s, v in seed_values(self.summaries, key).items() if s not in self.diverged}

    def curve_of(self, key: str) -> dict[int, list[float]]:
        """seed -> that run's per-epoch curve of a metrics key (``val_acc``, ``train_loss``, ...), diverged left out."""
        return {s: c for s, c in seed_curves(self.histories, key).items() if s not in self.diverged}

    def mean_of(self, key: str) -> MeanCI:
        """Mean and CI over seeds of any numeric summary (or measure) key."""
        return mean_ci(list(self.values_of(key).values()))


@dataclass
class CompareResult:
    plan: Plan
    out: Path
    cells: list[CellResult]
    execution: Execution | None = None
    alpha: float = 0.05

    @property
    def baseline(self) -> CellResult:
        return self.cells[0]

    def cell(self, label: str) -> CellResult:
        for c in self.cells:
            if c.label == label:
                return c
        raise KeyError(label)

    def to_dict(self) -> dict[str, Any]:
        holm_p = holm([c.test.p if c.test else math.nan for c in self.cells])
        rows = []
        for c, p_adj in zip(self.cells, holm_p):
            row = {
                "label": c.label, "overrides": c.cell.overrides, "baseline": c.index == 0,
                "values": {str(s): v for s, v in sorted(c.values.items())},
                "mean": c.ci.mean, "ci_low": c.ci.low, "ci_high": c.ci.high, "std": c.ci.std, "n": c.ci.n,
                "diverged": c.diverged, "failed": c.failed,
            }
            if c.test is not None:
                row.update({"diff": c.test.diff.mean, "diff_low": c.test.diff.low, "diff_high": c.test.diff.high,
                            "p": c.test.p, "p_holm": p_adj, "significant": c.test.significant})
            rows.append(row)
        ex = self.execution
        return nan_to_none({
            "kind": "compare", "title": self.plan.title, "metric": self.plan.metric, "seeds": self.plan.seeds,
            "alpha": self.alpha, "test": "paired t-test over seeds against the baseline (first cell)",
            "base": self.plan.base, "cells": rows,
            "runs": {"total": len(self.plan.seeds) * len(self.plan.cells),
                     "finished": sum(len(c.summaries) for c in self.cells),
                     "counted": sum(len(c.values) for c in self.cells),
                     "diverged": sum(len(c.diverged) for c in self.cells),
                     "ran": ex.ran if ex else 0, "skipped": ex.skipped if ex else 0,
                     "failed": ex.failed if ex else [], "seconds": ex.seconds if ex else 0.0},
        })


def holm(pvalues: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (Holm 1979); NaN entries are left out and stay NaN."""
    idx = sorted((i for i, p in enumerate(pvalues) if math.isfinite(p)), key=lambda i: pvalues[i])
    m, running, out = len(idx), 0.0, [math.nan] * len(pvalues)
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def intervals_caption(metric: str) -> str:
    """The caption of intervals.png wherever it is shown (compare report, lab report, lecture, docs)."""
    return f"{metric} per configuration: mean, 95% CI and each seed; diverged seeds marked ×"


def left_out_text(diverged: list[int], failed: list[int]) -> str:
    """What a cell's numbers leave out, in words: ``"1 diverged (seed 3); 2 failed (seeds 0, 1)"``."""
    parts = [f"{len(seeds)} {what} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
             for what, seeds in (("diverged", diverged), ("failed", failed)) if seeds]
    return "; ".join(parts)


def aggregate(plan: Plan, out: str | Path, execution: Execution | None = None, alpha: float = 0.05) -> CompareResult:
    """Read every finished run of the plan and summarise each cell.

    Diverged runs (:func:`diverged_seeds`) are left out of every mean, CI, paired test and band and
    listed in ``CellResult.diverged``; runs that raised are listed in ``CellResult.failed``; runs not
    yet run are just absent.
    """
    out = Path(out)
    found = finished_runs(plan, out)
    failures = execution.failed if execution else []
    cells: list[CellResult] = []
    for i, cell in enumerate(plan.cells):
        summaries = {s: found[(i, s)][0] for s in plan.seeds if (i, s) in found}
        histories = {s: found[(i, s)][1] for s in plan.seeds if (i, s) in found}
        diverged = diverged_seeds(summaries, plan.metric)
        failed = sorted(f["seed"] for f in failures if f["cell"] == cell.label and f["seed"] not in summaries)
        result = CellResult(i, cell, {}, mean_ci([]), None, {}, summaries, histories, diverged, failed)
        result.values = result.values_of(plan.metric)
        result.ci = mean_ci(list(result.values.values()))
        result.curves = {key: curve_band(list(result.curve_of(key).values()), log=log) for key, _, _, log in CURVES}
        result.test = None if i == 0 else paired_test(result.values, cells[0].values, alpha)
        cells.append(result)
    return CompareResult(plan, out, cells, execution, alpha)


# ----------------------------------------------------------------------------- outputs


def _fmt(v: float | None, scale: float = 1.0, digits: int = 4) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    return f"{v * scale:.2f}" if scale == 100.0 else f"{v * scale:.{digits}g}"


def _pm(ci: MeanCI, scale: float, digits: int, signed: bool = False) -> str:
    """``97.36 ± 1.77``: the mean and the half-width of its (symmetric Student-t) interval."""
    if not math.isfinite(ci.mean):
        return "–"
    mean = f"{ci.mean * scale:+.2f}" if signed and scale == 100.0 else \
        (f"{ci.mean * scale:+.{digits}g}" if signed else _fmt(ci.mean, scale, digits))
    return mean + (f" ± {_fmt(ci.half_width, scale, digits)}" if math.isfinite(ci.half_width) else "")


def metric_format(metric: str) -> tuple[float, str, str]:
    """(scale, unit of values, unit of differences): accuracies in %, differences in percentage points."""
    return (100.0, "%", " pp") if metric.endswith("acc") else (1.0, "", "")


def axis_keys(cells: list[Cell]) -> list[str]:
    """The varied keys when the cells are a plain grid (labels generated from them), else []."""
    from trainwell.experiments.compare import grid

    keys = list(cells[0].overrides) if cells else []
    if not keys or any(list(c.overrides) != keys or c.label != grid([(k, [c.overrides[k]]) for k in keys])[0].label
                       for c in cells):
        return []
    return keys


def table_rows(result: CompareResult) -> tuple[list[str], list[list[str]]]:
    """The table shown in the terminal and the report: one row per cell, a column per varied key."""
    from trainwell.experiments.compare import _format_value

    metric = result.plan.metric
    scale, unit, dunit = metric_format(metric)
    digits = 4
    keys = axis_keys([c.cell for c in result.cells])
    headers = [*(keys or ["cell"]), "n", "left out", f"{metric}{' %' if unit else ''} (95% CI)",
               f"Δ{dunit} (95% CI)", "p", ""]
    rows = []
    for c in result.cells:
        name = [_format_value(c.cell.overrides[k]) for k in keys] if keys else [c.label]
        row = [*name, str(c.ci.n), c.left_out, _pm(c.ci, scale, digits)]
        mark = cell_status(c, result.plan.higher_is_better)
        if c.test is None:
            row += ["", "", mark]
        else:
            row += [_pm(c.test.diff, scale, 3, signed=True), _fmt(c.test.p, digits=2),
                    "" if mark == "same" else mark]
        rows.append(row)
    return headers, rows


def cell_status(cell: CellResult, higher_is_better: bool = True) -> str:
    """baseline | better | worse | same (no significant difference) | diverged.

    A cell with a diverged seed is never "better": its mean rests on the seeds that survived, so the
    comparison flatters it. A significantly worse one stays "worse" (diverging does not make it better).
    """
    if cell.test is None:
        return "baseline"
    worse = cell.test.significant and (cell.test.diff.mean > 0) != higher_is_better
    if worse:
        return "worse"
    if cell.diverged:
        return "diverged"
    return "better" if cell.test.significant else "same"


def runs_sentence(result: CompareResult) -> str:
    """How many runs the numbers rest on, and what was left out: for reports and lab verdicts."""
    total = len(result.plan.seeds) * len(result.plan.cells)
    counted = sum(len(c.values) for c in result.cells)
    text = f"rests on {counted} of {total} runs"
    left = [f"{c.label}: {c.left_out}" for c in result.cells if c.left_out]
    if left:
        text += "; left out of every mean, interval and test: " + "; ".join(left)
    return text


def print_table(result: CompareResult, console: Console) -> None:
    headers, rows = table_rows(result)
    table = Table(title=f"{result.plan.title}: {result.plan.metric} over seeds {result.plan.seeds} "
                        f"(mean, 95% CI; Δ and paired t-test p vs the baseline)", title_justify="left")
    for h in headers:
        numeric = h in ("n", "p") or h.startswith((result.plan.metric, "Δ"))
        table.add_column(h, justify="right" if numeric else "left", overflow="fold", no_wrap=numeric or h == "")
    for row in rows:
        style = {"better": "green", "worse": "red", "diverged": "yellow", "baseline": "dim"}.get(row[-1])
        table.add_row(*row, style=style)
    console.print(table)


def write_csv(result: CompareResult, path: Path, data: dict[str, Any] | None = None) -> None:
    """``data``: ``result.to_dict()`` when the caller already has it."""
    data = data if data is not None else result.to_dict()
    keys = sorted({k for c in result.plan.cells for k in c.overrides})
    cols = ["label", *keys, "n", "diverged", "failed", "mean", "ci_low", "ci_high", "std", "diff", "diff_low",
            "diff_high", "p", "p_holm", "significant"]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(cols)

    def cell_text(value: Any) -> Any:  # seed lists as "1 4", missing numbers as ""
        return " ".join(map(str, value)) if isinstance(value, list) else "" if value is None else value

    for row in data["cells"]:
        writer.writerow([row["label"], *[row["overrides"].get(k, "") for k in keys],
                         *[cell_text(row.get(c)) for c in cols[1 + len(keys):]]])
    atomic_write_text(path, buf.getvalue())


def write_outputs(result: CompareResult, console: Console | None = None, command: str | None = None) -> dict[str, Any]:
    """summary.json, results.csv, curves.png, intervals.png and report.html into the compare folder."""
    from trainwell.experiments import plots
    from trainwell.htmlreport import Code, Image, KeyValues, Section, Table as HTable, Text, write_report

    out = result.out
    data = result.to_dict()
    write_json(out / "summary.json", data)
    write_csv(result, out / "results.csv", data)
    curves = plots.plot_cell_curves(result.cells, CURVES, out / "curves.png", title=result.plan.title)
    intervals = plots.plot_cell_intervals(result.cells, result.plan.metric, out / "intervals.png",
                                          title=result.plan.title, higher_is_better=result.plan.higher_is_better)
    headers, rows = table_rows(result)
    significant = {i for i, c in enumerate(result.cells) if c.test is not None and c.test.significant}
    runs = data["runs"]
    sections = [
        Section("Result", [
            Text(f"{len(result.cells)} configurations × {len(result.plan.seeds)} seeds "
                 f"({runs['finished']} of {runs['total']} runs finished; the numbers {runs_sentence(result)}: "
                 f"a diverged run's metric is that of broken weights and is never averaged). "
                 f"Each cell: mean of {result.plan.metric} "
                 f"with a 95% Student-t confidence interval over seeds; Δ: the mean per-seed difference from the "
                 f"baseline (first cell) with its interval, and the p-value of a paired t-test over seeds "
                 f"(marked at p < {result.alpha}; Holm-adjusted p-values are in summary.json)."),
            HTable(headers, rows, caption=f"{result.plan.metric} per configuration", highlight=significant),
            Image(intervals, caption=intervals_caption(result.plan.metric)),
            Image(curves, caption="per epoch, mean ± 95% CI over seeds (the loss: geometric mean, its CI in log space)"),
        ]),
        Section("Setup", [
            KeyValues({"base overrides": " ".join(result.plan.base) or "(defaults)",
                       "config file": result.plan.config_file or "–", "seeds": result.plan.seeds,
                       "metric": result.plan.metric, "runs folder": str(out / "runs")}),
            *([Code(command)] if command else []),
        ]),
    ]
    if runs["failed"]:
        sections.append(Section("Failed runs", [HTable(["cell", "seed", "error"],
                                                       [[f["cell"], f["seed"], f["error"]] for f in runs["failed"]])]))
    write_report(out / "report.html", result.plan.title, sections,
                 subtitle=f"{result.plan.metric} over {len(result.plan.seeds)} seeds")
    if console is not None:
        print_table(result, console)
    return data


def run_plan(plan: Plan, out: str | Path, *, workers: int | None = None, overwrite: bool = False,
             quiet: bool = False, console: Console | None = None, alpha: float = 0.05,
             command: str | None = None, backend: str | Backend | None = None) -> CompareResult:
    """Run (or resume) a plan and write its outputs; returns the aggregated result.

    ``backend``: where the runs run, ``"local"`` (default: a process pool here) or ``"ray"`` (a Ray
    cluster; :class:`~trainwell.experiments.trials.Backend` for its address and per-run resources)."""
    from trainwell.experiments.compare import validate

    from trainwell.train.tracking import compare_store

    backend = as_backend(backend)
    configs = validate(plan)  # before the folder exists: a mistake leaves nothing behind
    store = compare_store(configs)  # train.log=mlflow: its store, opened (or one line) before the folder too
    console = console or Console(stderr=True, quiet=quiet, soft_wrap=True)
    tracking = None
    try:
        with backend_session(backend):  # a bad --address fails here, before the folder exists too
            out = prepare_compare_dir(out, plan, overwrite)
            if store is not None:
                tracking = Tracking.start(store, plan, out, lambda line: print_warning(console, line), fresh=overwrite)
            execution = execute(plan, out, workers=workers, console=console, quiet=quiet, configs=configs,
                                backend=backend, tracking=tracking)
        result = aggregate(plan, out, execution, alpha)
        write_outputs(result, None if quiet else Console(soft_wrap=True), command)
        if tracking is not None:
            tracking.log.finish(out, cell_metrics(result), failed=bool(execution.failed))
    except BaseException as exc:
        if tracking is not None:
            tracking.log.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    if not quiet:
        console.print(f"report: {out / 'report.html'}", highlight=False)
    return result


def cell_metrics(result: CompareResult) -> dict[str, float]:
    """The compare's table as MLflow metrics of its parent run: each cell's mean of the metric with its
    95% interval, and its difference from the baseline (``c01.test_acc.mean`` ...)."""
    metric = result.plan.metric
    out: dict[str, float] = {}
    for i, cell in enumerate(result.cells):
        for name, value in (("mean", cell.ci.mean), ("ci_low", cell.ci.low), ("ci_high", cell.ci.high)):
            out[f"c{i:02d}.{metric}.{name}"] = float(value)
        out[f"c{i:02d}.runs"] = float(len(cell.summaries))
        if cell.test is not None:
            out[f"c{i:02d}.{metric}.delta"] = float(cell.test.diff.mean)
            out[f"c{i:02d}.{metric}.p"] = float(cell.test.p)
    return out
