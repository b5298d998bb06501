"""``trainwell compare`` and ``trainwell lab``: their command lines, kept here so cli.py only registers them.

    trainwell compare model.name=mlp --vary model.activation=relu,sigmoid,tanh --seeds 5
    trainwell compare --vary optim.lr=0.01,0.1 --vary model.norm=none,batch --seeds 3 --workers 2
    trainwell compare --vary model.activation=relu,tanh --backend ray --address 10.0.0.5:6379 --cpus-per-trial 4
    trainwell lab activations [key=value ...] [--seeds N] [--out DIR]
    trainwell lab list

Exit codes: 0 done; 1 some runs failed (the others are aggregated); 2 a user error (one line).
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from trainwell.errors import ConfigError

COMPARE_DESCRIPTION = (
    "Run a grid of configs (the cartesian product of every --vary) over several seeds on a process pool "
    "(or a Ray cluster: --backend ray), "
    "and report each cell's mean with a 95%% confidence interval and a paired t-test against the baseline "
    "(every --vary at its first value): a table (terminal, results.csv, summary.json), curves.png with bands, "
    "intervals.png and a self-contained report.html. Started again with the same arguments and --out, it skips "
    "the runs that finished."
)


def _add_pool_args(p: argparse.ArgumentParser, seeds_default: int | None) -> None:
    p.add_argument("--seeds", type=int, default=seeds_default, metavar="N",
                   help=f"number of seeds (train.seed = first .. first+N-1; default {seeds_default or 'per lab'})")
    p.add_argument("--first-seed", type=int, default=0, metavar="S", help="first seed (default 0)")
    p.add_argument("--workers", type=int, default=None, metavar="K",
                   help="parallel runs (default: one per core on CPU, one per GPU; with --backend ray: as many "
                        "as the cluster's CPUs and GPUs allow)")
    p.add_argument("-c", "--config", metavar="FILE", help="YAML config file for every run")
    p.add_argument("--quiet", action="store_true", help="print only errors and the final line")
    p.add_argument("--out", metavar="DIR", help="output folder (default: a new folder under runs/)")
    p.add_argument("--overwrite", action="store_true", help="discard an existing --out folder's runs and start again")
    add_backend_args(p, "runs")


def add_backend_args(p: argparse.ArgumentParser, runs: str) -> None:
    """--backend, --address, --cpus-per-trial, --gpus-per-trial: where ``runs`` (the compare's runs, an
    ensemble's members) run; :func:`backend_from_args` reads them."""
    g = p.add_argument_group("where the runs run")
    g.add_argument("--backend", choices=["local", "ray"], default="local",
                   help=f"local (default): the {runs} run in a process pool on this machine; ray: each is a Ray task "
                        f"on a Ray cluster (pip install 'trainwell[ray]'), its run folder sent back and written here")
    g.add_argument("--address", metavar="HOST:PORT",
                   help="with --backend ray: a running cluster's head, as 'ray start --head' prints it (default: "
                        "start Ray on this machine for this command)")
    g.add_argument("--cpus-per-trial", type=int, metavar="C",
                   help="with --backend ray: cores for each run, also its torch threads (default 1)")
    g.add_argument("--gpus-per-trial", type=float, metavar="G",
                   help="with --backend ray: GPUs for each run (default 0; 0.5 puts two runs on a GPU)")


def backend_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~trainwell.experiments.trials.Backend` of the flags, checked as far as it can be without
    a cluster (ray installed, --address answering): a mistake is one line before any data is loaded."""
    from trainwell.experiments.trials import Backend, check_backend

    return check_backend(Backend(args.backend, args.address, args.cpus_per_trial, args.gpus_per_trial))


def add_compare_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("compare", help="ablation over seeds: a grid of configs, mean ± 95%% CI, paired tests, "
                                       "report.html", description=COMPARE_DESCRIPTION)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="base config overrides for every run")
    p.add_argument("--vary", action="append", default=[], metavar="KEY=a,b,c",
                   help="a config key and its values (lists as [16,32]); repeat for a grid")
    p.add_argument("--metric", default="test_acc",
                   help="summary.json key compared (default test_acc; e.g. best_val_acc, train_seconds)")
    p.add_argument("--lower-is-better", action="store_true", help="the metric is better when lower (a loss, a time)")
    _add_pool_args(p, 3)
    p.set_defaults(handler=cmd_compare)
    return p


def _seeds(args: argparse.Namespace, default: int) -> list[int]:
    n = args.seeds if args.seeds is not None else default
    if n < 1:
        raise ConfigError(f"--seeds must be at least 1, got {n}.")
    return list(range(args.first_seed, args.first_seed + n))


def _command_line() -> str:
    return "trainwell " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _out(args: argparse.Namespace, kind: str, tag: str) -> Path:
    from trainwell.train.rundir import default_run_dir

    return Path(args.out) if args.out else default_run_dir(kind, tag)


def _interrupted(out: Path, exc: KeyboardInterrupt) -> int:
    """Finished runs are kept (summary.json marks them): the same command resumes."""
    signum = getattr(exc, "signum", signal.SIGINT)  # SIGTERM arrives as cli.app.Terminated
    print(f"trainwell: interrupted by {signal.Signals(signum).name}; finished runs are kept in {out} — run the "
          "same command again (same --out) to resume.", file=sys.stderr)
    return 128 + int(signum)


def cmd_compare(args: argparse.Namespace) -> int:
    from trainwell.experiments.compare import Plan, grid, parse_vary
    from trainwell.experiments.results import run_plan

    backend = backend_from_args(args)
    if not args.vary:
        raise ConfigError("compare needs at least one --vary KEY=a,b (e.g. --vary model.activation=relu,tanh).")
    axes = [parse_vary(v) for v in args.vary]
    plan = Plan(base=list(args.overrides), cells=grid(axes), seeds=_seeds(args, 3), metric=args.metric,
                config_file=args.config, higher_is_better=not args.lower_is_better,
                title="compare " + " × ".join(k for k, _ in axes))
    out = _out(args, "compare", "-".join(k.split(".")[-1] for k, _ in axes))
    try:
        result = run_plan(plan, out, workers=args.workers, overwrite=args.overwrite, quiet=args.quiet,
                          command=_command_line(), backend=backend)
    except KeyboardInterrupt as exc:
        return _interrupted(out, exc)
    failed = result.execution.failed if result.execution else []
    print(f"{sum(len(c.values) for c in result.cells)} runs aggregated -> {result.out / 'report.html'}"
          + (f"; {len(failed)} failed" if failed else ""))
    return 1 if failed else 0


LAB_DESCRIPTION = (
    "Reproduce one claim of the lecture on real data over several seeds, and compute whether it held "
    "from the runs: summary.json (claim, held, verdict, evidence), report.html and figures in --out. "
    "Overrides swap in any data source or model (e.g. data.name=mnist1d). 'trainwell lab list' lists the labs."
)


def add_lab_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("lab", help="reproduce a lecture claim over seeds and say whether it held (lab list: all)",
                       description=LAB_DESCRIPTION)
    p.add_argument("name", metavar="NAME", help="a lab (trainwell lab list), 'all' (every lab and one lecture "
                                                "report), or 'list'")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override the lab's defaults")
    p.add_argument("--quick", action="store_true", help="a smoke run of a few seconds (few epochs, little data)")
    _add_pool_args(p, None)
    p.set_defaults(handler=cmd_lab)
    return p


def cmd_lab(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from trainwell.experiments.lab import LABS, get_lab, run_lab

    if args.name == "list":
        import trainwell.experiments.labs  # noqa: F401

        console = Console(soft_wrap=True)
        for entry in LABS:
            lab = entry.factory()
            console.print(f"[bold]{lab.name:<15}[/] {escape(lab.claim)}  [dim]({escape(lab.question.split(':')[0])}; "
                          f"{len(lab.cells)} config{'s' * (len(lab.cells) != 1)} × {lab.seeds} seeds)[/]", highlight=False)
        return 0
    if args.name == "all":
        return _lab_all(args, backend_from_args(args))
    lab = get_lab(args.name)
    backend = backend_from_args(args)
    out = _out(args, "lab", lab.name)
    try:
        outcome = run_lab(lab.name, list(args.overrides), out=out, seeds=_seeds(args, lab.seeds),
                          workers=args.workers, overwrite=args.overwrite, quiet=args.quiet, quick=args.quick,
                          command=_command_line(), backend=backend)
    except KeyboardInterrupt as exc:
        return _interrupted(out, exc)
    mark = "[green]HELD[/]" if outcome.held else "[red]DID NOT HOLD[/]"
    console = Console(soft_wrap=True)
    console.print(f"{mark}  {escape(lab.claim)}", highlight=False)
    console.print(escape(outcome.verdict), highlight=False)
    console.print(f"-> {escape(str(out / 'report.html'))}", highlight=False)
    return 0


def _lab_all(args: argparse.Namespace, backend: Any) -> int:
    """Every lab into --out/<lab>, then the lecture report; exit 1 when a lab could not run."""
    from rich.console import Console
    from rich.markup import escape

    from trainwell.experiments.lecture import run_lecture

    out = _out(args, "lab", "all")
    seeds = _seeds(args, 1) if args.seeds is not None else None
    try:
        entries = run_lecture(None, list(args.overrides), out=out, seeds=seeds, workers=args.workers,
                              overwrite=args.overwrite, quiet=args.quiet, quick=args.quick, command=_command_line(),
                              backend=backend)
    except KeyboardInterrupt as exc:
        return _interrupted(out, exc)
    console = Console(soft_wrap=True)
    for e in entries:
        mark = {"held": "[green]HELD[/]", "did not hold": "[red]DID NOT HOLD[/]"}.get(e.status, "[yellow]NOT RUN[/]")
        console.print(f"{mark:<28} {e.name:<15} {escape(e.claim if e.outcome else e.error)}", highlight=False)
    console.print(f"-> {escape(str(out / 'report.html'))}", highlight=False)
    return 0 if all(e.outcome is not None for e in entries) else 1
