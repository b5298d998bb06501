"""Ensembles of independently trained runs, trained as a compare over seeds (``train.ensemble=K``),
and the table of an ensemble's scores that it and ``trainwell ensemble`` print.

The members are ordinary runs of the compare engine (a process pool or Ray, resumable); the folder they
are combined into is written by :func:`trainwell.train.ensemble_dir.write_ensemble`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from trainwell.config import Config
from trainwell.data import load_splits
from trainwell.errors import RunDirError
from trainwell.formatting import percent
from trainwell.experiments.compare import Plan, Tracking, execute, jobs, prepare_compare_dir
from trainwell.experiments.trials import Backend, as_backend, backend_session
from trainwell.train.build import check_run, resolve_model_name
from trainwell.train.ensemble_dir import MEMBERS_RUNS, write_ensemble
from trainwell.train.load import Run, load_run
from trainwell.fileio import atomic_write_text
from trainwell.train.progress import print_warning
from trainwell.train.rundir import check_out_dir, prepare_out_dir
from trainwell.train.tracking import NOT_ARTIFACTS, compare_store, summary_metrics


def train_ensemble(
    cfg: Config,
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    quiet: bool = False,
    console: Console | None = None,
    workers: int | None = None,
    resume: bool = False,
    backend: str | Backend | None = None,
) -> Run:
    """Train cfg.train.ensemble members (seeds train.seed, train.seed+1, ...) and make ``out`` their ensemble.

    The members are trained by the compare engine (a process pool, one process per core on CPU) into
    ``out/members-runs/runs/c00-baseline/seed-S/``, ordinary run folders; ``out`` gets config.yaml
    (the resolved config), ensemble.json (pointing at them), summary.json and reliability.png.
    ``backend``: where the members train (``"local"``, ``"ray"`` or a
    :class:`~trainwell.experiments.trials.Backend`), as for a compare.
    """
    backend = as_backend(backend)
    if not resume and out is not None:
        check_out_dir(Path(out), overwrite)  # before the members' data is loaded and checked
    k = cfg.train.ensemble
    splits = load_splits(cfg.data)
    cfg = resolve_model_name(cfg, splits)  # model.name=auto: resolved once, for every member and config.yaml
    member_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, ensemble=1))
    check_run(member_cfg, splits)  # what train checks, before any folder exists
    console = console or Console(stderr=True, quiet=quiet, soft_wrap=True)
    store = compare_store([cfg])  # train.log=mlflow: the store, opened (or one line) before any folder exists
    tracking = None
    try:
        with backend_session(backend):  # a bad --address fails here, before any folder exists
            if resume:  # the members' compare resumes its unfinished runs from their checkpoints
                out_dir = Path(out)  # type: ignore[arg-type]  # with resume the API passes the folder as out
                (out_dir / "summary.json").unlink(missing_ok=True)  # unfinished again until this call ends
            else:
                out_dir = prepare_out_dir(out, "train", f"{cfg.data.name}-{k}x{cfg.model.name}", overwrite,
                                          say=lambda line: console.print(line, highlight=False))
            atomic_write_text(out_dir / "config.yaml", cfg.to_yaml())
            # The members: the resolved config (out/config.yaml) as one compare cell, over K seeds.
            plan = Plan(base=["train.ensemble=1"], seeds=list(range(cfg.train.seed, cfg.train.seed + k)),
                        config_file=str(out_dir.resolve() / "config.yaml"), title=f"ensemble of {k}")
            runs_dir = prepare_compare_dir(out_dir / MEMBERS_RUNS, plan, overwrite)
            if store is not None:  # the ensemble's MLflow run, its members as children
                tracking = Tracking.start(store, plan, out_dir, lambda line: print_warning(console, line),
                                          fresh=overwrite and not resume, name=out_dir.name)
            if not quiet:
                console.print(f"[bold]trainwell[/] ensemble of {k}: {cfg.data.name}, {cfg.model.name}, seeds "
                              f"{plan.seeds[0]}..{plan.seeds[-1]} -> {out_dir}", highlight=False)
            t0 = time.perf_counter()
            execution = execute(plan, runs_dir, workers=workers, console=console, quiet=quiet, configs=[member_cfg],
                                backend=backend, tracking=tracking)
        if execution.failed:
            first = execution.failed[0]
            raise RunDirError(f"{len(execution.failed)} of {k} ensemble members failed; seed {first['seed']}: "
                              f"{first['error']}")
        member_dirs = [job.run_dir for job in jobs(plan, runs_dir)]
        runs = [load_run(d) for d in member_dirs]
        seconds = time.perf_counter() - t0
        run = write_ensemble(out_dir, runs, member_dirs, copy=False,
                             extra={"seeds": plan.seeds, "wall_seconds": seconds})
        if tracking is not None:  # the ensemble's scores and folder (not its members': they are the children)
            tracking.log.finish(out_dir, summary_metrics(run.summary), failed=False,
                                skip=(*NOT_ARTIFACTS, MEMBERS_RUNS))
    except BaseException as exc:
        if tracking is not None:
            tracking.log.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    if not quiet:
        console.print(ensemble_table(run.summary))
        console.print(f"ensemble acc {percent(run.summary['ensemble_acc'])} vs mean member "
                      f"{percent(run.summary['mean_member_acc'])} ({seconds:.0f} s) -> {out_dir}", highlight=False)
    return run

def ensemble_table(summary: dict[str, Any]) -> Table:
    """Each member's accuracy, NLL and ECE, the members' mean, and each method's (the chosen one marked)."""
    names = [Path(s).name for s in summary.get("sources", [])] or [f"{i:02d}" for i in range(summary["n_members"])]
    table = Table(title=f"ensemble of {summary['n_members']} on {summary.get('split', 'test')} "
                        f"({summary.get('data', '')}, n={summary['n']})", title_justify="left")
    table.add_column("")
    for col in ("acc", "NLL", "ECE"):
        table.add_column(col, justify="right")
    for i, name in enumerate(names):
        table.add_row(f"member {i:02d} {name}", percent(summary["member_accs"][i]), f"{summary['member_nlls'][i]:.4f}",
                      percent(summary["member_eces"][i]), style="bold" if i == summary.get("best_member") else None)
    table.add_row("mean of members", percent(summary["mean_member_acc"]), f"{summary['mean_member_nll']:.4f}",
                  percent(summary["mean_member_ece"]), end_section=True)
    for name, m in summary["methods"].items():
        chosen = name == summary["method"]
        table.add_row(f"ensemble {name}{' *' if chosen else ''}", percent(m["acc"]), f"{m['nll']:.4f}",
                      percent(m["ece"]), style="green" if chosen else None)
    return table
