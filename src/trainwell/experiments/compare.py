"""Ablations over seeds: a grid of configs × seeds, run on a process pool or a Ray cluster, resumable.

Python API::

    from trainwell.experiments import Plan, grid, run_plan
    plan = Plan(base=["model.name=mlp"], cells=grid([("model.activation", ["relu", "sigmoid"])]), seeds=[0, 1, 2])
    result = run_plan(plan, out="runs/act")       # runs/act/runs/c00-.../seed-0/ ... + report.html
    result.cells[1].ci, result.cells[1].test      # mean with 95% CI, paired test against cell 0

Every run is an ordinary run directory (``out/runs/<cell>/seed-<s>``), so any of them can be
evaluated, diagnosed or fine-tuned on its own. ``summary.json`` is written last by a run, so its
presence marks a finished run: a compare started again with the same plan skips those. Where the
runs run is :mod:`trainwell.experiments.trials`' business (``backend="local"`` or ``"ray"``).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from trainwell.config import Config, render, resolve, split_items
from trainwell.errors import ConfigError, RunDirError, TrainwellError
from trainwell.experiments.trials import MEASURES_FILE, Backend, Trial, as_backend, backend_session, make_runner
from trainwell.fileio import write_json
from trainwell.train.rundir import read_json

PLAN_FILE = "compare.json"


# ----------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Cell:
    """One configuration of the grid: a label and the overrides that make it."""

    label: str
    overrides: dict[str, Any]

    def args(self) -> list[str]:
        return [f"{k}={_format_value(v)}" for k, v in self.overrides.items()]


def _format_value(v: Any) -> str:
    """A cell's value as override text: a string as it is (it already is one), anything else in the
    value grammar's normal form (``[16,32]``, ``true``)."""
    return v if isinstance(v, str) else render(v)


def parse_vary(spec: str) -> tuple[str, list[str]]:
    """``"model.activation=relu,tanh"`` -> ("model.activation", ["relu", "tanh"]).

    The values are a list in the config's value grammar (docs/values.md), cut into the text of each
    item, so a list value is bracketed and a spec keeps its arguments:
    ``model.channels=[16,32],[32,64]``, ``model.activation=relu,leaky_relu:0.1``.
    """
    key, sep, rest = spec.partition("=")
    key = key.strip()
    if not sep or not key or not rest.strip():
        raise ConfigError(f"--vary '{spec}' must look like KEY=a,b,c (e.g. --vary model.activation=relu,tanh).")
    values = split_items(rest, f"--vary {key}")
    if len(set(values)) != len(values):
        raise ConfigError(f"--vary '{spec}' repeats a value; list each value once.")
    return key, values


def grid(axes: Sequence[tuple[str, Sequence[Any]]]) -> list[Cell]:
    """The cartesian product of the axes; the first cell (every axis at its first value) is the baseline."""
    keys = [k for k, _ in axes]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--vary names a key twice ({', '.join(keys)}); give each key once with all its values.")
    if not axes:
        return [Cell("baseline", {})]
    cells = []
    for combo in itertools.product(*[list(v) for _, v in axes]):
        overrides = dict(zip(keys, combo))
        cells.append(Cell(", ".join(f"{k}={_format_value(v)}" for k, v in overrides.items()), overrides))
    return cells


@dataclass
class Plan:
    """What to run: base overrides, the cells, the seeds, the metric compared.

    ``measure``: optional ``"module:function"`` called as ``function(run, splits) -> dict`` after each
    run (in the worker), its numbers saved in the run's ``measures.json`` and usable as metrics.
    """

    base: list[str] = field(default_factory=list)
    cells: list[Cell] = field(default_factory=lambda: [Cell("baseline", {})])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    metric: str = "test_acc"
    config_file: str | None = None
    measure: str | None = None
    title: str = "trainwell compare"
    higher_is_better: bool = True

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cells"] = [{"label": c.label, "overrides": c.overrides} for c in self.cells]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        d = dict(d)
        d["cells"] = [Cell(c["label"], dict(c["overrides"])) for c in d["cells"]]
        return cls(**d)

    def identity(self) -> dict[str, Any]:
        """What must match for a restarted compare to reuse finished runs: what the runs are, not how
        they are summarised (title, metric), which can change between calls.

        The config file enters by its content, not its path: each cell's resolved config is hashed,
        so editing the file between two calls is a different compare (whose table would otherwise mix
        runs of both versions), while moving it is not.
        """
        d = self.to_dict()
        for key in ("title", "metric", "higher_is_better", "config_file"):
            d.pop(key)
        d["config_sha256"] = [hashlib.sha256(cfg.to_yaml().encode()).hexdigest() for cfg in self.configs()]
        return json.loads(json.dumps(d))

    def configs(self) -> list[Config]:
        """Each cell's resolved config (names unchecked: :func:`validate` checks them)."""
        return [resolve([*self.base, *cell.args()], self.config_file) for cell in self.cells]


@dataclass(frozen=True)
class Job:
    cell: int
    seed: int
    overrides: list[str]
    run_dir: Path


def cell_dir_name(index: int, cell: Cell) -> str:
    slug = re.sub(r"[^A-Za-z0-9._=+-]+", "_", cell.label).strip("_")[:60]
    return f"c{index:02d}-{slug}" if slug else f"c{index:02d}"


def jobs(plan: Plan, out: Path) -> list[Job]:
    """Seed-major order, so that an interrupted compare has every cell at the first seeds."""
    result = []
    for seed in plan.seeds:
        for i, cell in enumerate(plan.cells):
            overrides = [*plan.base, *cell.args(), f"train.seed={seed}", "train.progress=false",
                         "train.plots=false"]
            result.append(Job(i, seed, overrides, out / "runs" / cell_dir_name(i, cell) / f"seed-{seed}"))
    return result


def validate(plan: Plan, deep: bool = True) -> list[Config]:
    """Check every cell before anything runs, so a typo fails in seconds, not after an hour of runs.

    Each cell's config is resolved; with ``deep``, its data is loaded (once per distinct data
    config, which also fills the cache of generated data before workers race for it) and its model,
    optimiser, schedule and augmentation are built as ``train`` would.
    """
    from trainwell.data import load_splits
    from trainwell.train.build import check_names, check_run

    if not plan.seeds:
        raise ConfigError("--seeds must be at least 1.")
    if len(set(plan.seeds)) != len(plan.seeds):
        raise ConfigError(f"seeds {plan.seeds} repeat a seed; each seed once.")
    configs, data_cache = [], {}
    for cell in plan.cells:
        try:
            cfg = resolve([*plan.base, *cell.args()], plan.config_file)
            check_names(cfg)  # before loading any data
            if deep:
                key = json.dumps(asdict(cfg.data), sort_keys=True, default=str)
                if key not in data_cache:
                    data_cache[key] = load_splits(cfg.data)
                check_run(cfg, data_cache[key])
            if deep and cfg.finetune.source:
                check_sources(cfg, plan.seeds)
        except TrainwellError as exc:
            raise type(exc)(f"cell '{cell.label}': {exc}") from None
        configs.append(cfg)
    return configs


def check_sources(cfg: Config, seeds: Sequence[int]) -> None:
    """Each seed's pretrained model (finetune.source, ``{seed}`` filled in) can be read: a run folder
    must have finished (one line otherwise, before any run starts)."""
    from trainwell.runs.finetune import source_of
    from trainwell.train.pretrained import load_pretrained

    for seed in seeds:
        load_pretrained(str(source_of(job_config(cfg, seed))))


def is_finished(job: Job, plan: Plan) -> bool:
    if not (job.run_dir / "summary.json").is_file():
        return False
    return plan.measure is None or (job.run_dir / MEASURES_FILE).is_file()


# ----------------------------------------------------------------------------- execution


def job_config(cell_config: Config, seed: int) -> Config:
    """A job's typed config: its cell's, at its seed, without per-run plots or a progress bar, and without
    train.log=mlflow: the compare logs each finished run to MLflow itself, from its folder (:class:`Tracking`)."""
    from trainwell.train.tracking import wants_mlflow, without_mlflow

    untracked = without_mlflow(cell_config) if wants_mlflow(cell_config) else []
    return resolve([f"train.seed={seed}", "train.progress=false", "train.plots=false", *untracked], base=cell_config)


@dataclass
class Execution:
    ran: int = 0
    skipped: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def prepare_compare_dir(out: str | Path, plan: Plan, overwrite: bool) -> Path:
    """Create ``out`` or reuse it when it holds the same plan (resume); refuse anything else."""
    out = Path(out)
    plan_path = out / PLAN_FILE
    if out.exists() and not out.is_dir():
        raise RunDirError(f"output path '{out}' exists and is a file; choose another --out.")
    if out.is_dir() and any(out.iterdir()):
        same = False
        if plan_path.is_file():
            try:
                same = json.loads(plan_path.read_text()).get("plan") == plan.identity()
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                same = False
        if overwrite:
            shutil.rmtree(out / "runs", ignore_errors=True)
        elif not same:
            what = "a different compare" if plan_path.is_file() else "other files"
            raise RunDirError(f"output folder '{out}' holds {what}; choose another --out, run the same command "
                              "to resume it, or pass --overwrite to start again.")
    out.mkdir(parents=True, exist_ok=True)
    write_json(plan_path, {"plan": plan.identity(), "title": plan.title})
    return out


def job_name(plan: Plan, job: Job) -> str:
    """A run's name in MLflow: its cell's folder and its seed (``c01-model.activation=tanh/seed-2``)."""
    return f"{cell_dir_name(job.cell, plan.cells[job.cell])}/seed-{job.seed}"


@dataclass
class Tracking:
    """A compare's MLflow logging (``train.log=mlflow`` in its config): the parent run (:class:`CompareLog`),
    under which :func:`execute` logs each run as it finishes, from its folder, in this process.

    Why here and not in the runs: a run on a Ray worker (or in a pool process) may have no mlflow installed
    and no way to the store (a local ./mlflow.db is on the driver's disk), and the parent's id is the
    driver's; the folder holds everything a run logs (config.yaml, metrics.jsonl, summary.json, the model),
    and a folder is logged only once it is finished, so a run retried after a failure or an interrupted
    compare is logged once. The price: a compare's runs appear in MLflow when each one ends, not epoch by
    epoch."""

    log: Any  # trainwell.train.tracking.CompareLog

    @classmethod
    def start(cls, store: Any, plan: Plan, home: Path, warn: Any, fresh: bool = False,
              name: str | None = None) -> Tracking:
        from trainwell.train.tracking import CompareLog

        params = {"compare.base": " ".join(plan.base), "compare.cells": str(len(plan.cells)),
                  "compare.seeds": render(plan.seeds), "compare.metric": plan.metric,
                  "compare.config_file": plan.config_file or ""}
        for i, cell in enumerate(plan.cells):
            params[f"compare.c{i:02d}"] = " ".join(cell.args()) or "(base)"
        title = name or (plan.title if plan.title != Plan.title else home.name)
        return cls(CompareLog.start(store, home, title, params, warn, fresh=fresh))

    def log_job(self, plan: Plan, job: Job) -> None:
        self.log.log_run(job.run_dir, job_name(plan, job), {"trainwell.cell": plan.cells[job.cell].label,
                                                            "trainwell.seed": str(job.seed)})


def execute(plan: Plan, out: Path, workers: int | None = None, console: Console | None = None,
            quiet: bool = False, configs: list[Config] | None = None,
            backend: str | Backend | None = None, tracking: Tracking | None = None) -> Execution:
    """Run the plan's unfinished jobs; finished ones (a previous, interrupted call) are skipped.

    ``configs``: the result of :func:`validate` when the caller already checked the plan.
    ``backend``: where the runs run (:class:`~trainwell.experiments.trials.Backend`; default local).
    ``tracking``: the compare's MLflow parent run; each run is logged under it once finished (those an
    earlier call finished first, when not logged yet).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    backend = as_backend(backend)
    configs = configs if configs is not None else validate(plan)
    all_jobs = jobs(plan, out)
    pending = [j for j in all_jobs if not is_finished(j, plan)]
    state = Execution(skipped=len(all_jobs) - len(pending))
    runner = make_runner(backend, workers, len(pending), configs)
    console = console or Console(stderr=True, quiet=quiet)
    t0 = time.perf_counter()
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[last]}"),
                        console=console, disable=quiet, transient=False)
    if state.skipped and not quiet:
        console.print(f"resuming: {state.skipped} of {len(all_jobs)} runs already finished in {out}", highlight=False)

    if tracking is not None:
        for job in all_jobs:
            if job not in pending:
                tracking.log_job(plan, job)

    def done(job: Job, summary: dict[str, Any] | None, error: str | None) -> None:
        if error is None:
            state.ran += 1
            if tracking is not None:
                tracking.log_job(plan, job)
            value = summary.get(plan.metric) if summary else None
            shown = f"{value:.4g}" if isinstance(value, (int, float)) else "?"
            progress.update(task, advance=1, last=f"{plan.cells[job.cell].label} seed {job.seed}: {plan.metric} {shown}")
        else:
            state.failed.append({"cell": plan.cells[job.cell].label, "seed": job.seed, "run_dir": str(job.run_dir),
                                 "error": error})
            progress.update(task, advance=1, last=f"[red]{plan.cells[job.cell].label} seed {job.seed} failed")
            console.print(f"[red]run failed[/] {job.run_dir}: {error}", highlight=False)

    trials = [Trial(i, job_config(configs[j.cell], j.seed), j.run_dir, plan.measure) for i, j in enumerate(pending)]
    with backend_session(backend), progress:
        task = progress.add_task(plan.title, total=len(all_jobs), completed=state.skipped, last="")
        with contextlib.closing(runner.run(trials)) as results:  # closed early: the runs not finished stop
            for result in results:
                done(pending[result.trial.index], result.summary, result.error)
    state.seconds = time.perf_counter() - t0
    return state


def finished_runs(plan: Plan, out: Path) -> dict[tuple[int, int], tuple[dict[str, Any], list[dict[str, Any]]]]:
    """(cell, seed) -> (summary merged with measures, metrics rows) for every finished run."""
    from trainwell.train.rundir import read_metrics

    found = {}
    for job in jobs(plan, out):
        if not is_finished(job, plan):
            continue
        summary = read_json(job.run_dir / "summary.json", "summary")
        if plan.measure is not None:
            summary = {**summary, **read_json(job.run_dir / MEASURES_FILE, "measures")}
        metrics_path = job.run_dir / "metrics.jsonl"
        rows = read_metrics(metrics_path) if metrics_path.is_file() else []
        found[(job.cell, job.seed)] = (summary, rows)
    return found


def nan_to_none(obj: Any) -> Any:
    """JSON has no NaN: non-finite floats become null, recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    return obj
