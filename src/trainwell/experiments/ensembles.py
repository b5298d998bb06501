"""Ensembles of independently trained runs, trained as a compare over seeds (``train.ensemble=K``).

The members are ordinary runs of the compare engine (a process pool, resumable); the folder they
are combined into is written by :func:`trainwell.train.ensemble.write_ensemble`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from rich.console import Console

from trainwell.config import Config
from trainwell.data import load_splits
from trainwell.errors import RunDirError
from trainwell.experiments.compare import Plan, execute, jobs, prepare_compare_dir
from trainwell.train.build import check_run
from trainwell.train.ensemble import MEMBERS_RUNS, check_ensemble_keys, ensemble_table, write_ensemble
from trainwell.train.load import Run, load_run
from trainwell.fileio import atomic_write_text
from trainwell.train.rundir import check_out_dir, prepare_out_dir


def train_ensemble(
    cfg: Config,
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    quiet: bool = False,
    console: Console | None = None,
    workers: int | None = None,
    resume: bool = False,
) -> Run:
    """Train cfg.train.ensemble members (seeds train.seed, train.seed+1, ...) and make ``out`` their ensemble.

    The members are trained by the compare engine (a process pool, one process per core on CPU) into
    ``out/members-runs/runs/c00-baseline/seed-S/``, ordinary run folders; ``out`` gets config.yaml
    (the resolved config), ensemble.json (pointing at them), summary.json and reliability.png.
    """
    check_ensemble_keys(cfg)
    if not resume and out is not None:
        check_out_dir(Path(out), overwrite)  # before the members' data is loaded and checked
    k = cfg.train.ensemble
    member_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, ensemble=1))
    check_run(member_cfg, load_splits(cfg.data))  # what train checks, before any folder exists
    console = console or Console(stderr=True, quiet=quiet, soft_wrap=True)
    if resume:  # the members' compare resumes its unfinished runs from their checkpoints
        out_dir = Path(out)  # type: ignore[arg-type]
        (out_dir / "summary.json").unlink(missing_ok=True)  # unfinished again until this call ends
    else:
        out_dir = prepare_out_dir(out, "train", f"{cfg.data.name}-{k}x{cfg.model.name}", overwrite,
                                  say=lambda line: console.print(line, highlight=False))
    atomic_write_text(out_dir / "config.yaml", cfg.to_yaml())
    # The members: the resolved config (out/config.yaml) as one compare cell, over K seeds.
    plan = Plan(base=["train.ensemble=1"], seeds=list(range(cfg.train.seed, cfg.train.seed + k)),
                config_file=str(out_dir.resolve() / "config.yaml"), title=f"ensemble of {k}")
    runs_dir = prepare_compare_dir(out_dir / MEMBERS_RUNS, plan, overwrite)
    if not quiet:
        console.print(f"[bold]trainwell[/] ensemble of {k}: {cfg.data.name}, {cfg.model.name}, seeds "
                      f"{plan.seeds[0]}..{plan.seeds[-1]} -> {out_dir}", highlight=False)
    t0 = time.perf_counter()
    execution = execute(plan, runs_dir, workers=workers, console=console, quiet=quiet, configs=[member_cfg])
    if execution.failed:
        first = execution.failed[0]
        raise RunDirError(f"{len(execution.failed)} of {k} ensemble members failed; seed {first['seed']}: "
                          f"{first['error']}")
    member_dirs = [job.run_dir for job in jobs(plan, runs_dir)]
    runs = [load_run(d) for d in member_dirs]
    seconds = time.perf_counter() - t0
    run = write_ensemble(out_dir, runs, member_dirs, copy=False,
                         extra={"seeds": plan.seeds, "wall_seconds": seconds})
    if not quiet:
        console.print(ensemble_table(run.summary))
        console.print(f"ensemble acc {100 * run.summary['ensemble_acc']:.2f}% vs mean member "
                      f"{100 * run.summary['mean_member_acc']:.2f}% ({seconds:.0f} s) -> {out_dir}", highlight=False)
    return run
