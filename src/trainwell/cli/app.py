"""The ``trainwell`` command line: a thin layer over the Python API.

Every user mistake prints one line (what, where, how to fix) and exits with code 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainwell.cli.usermodel import add_model_arguments, check_model_arguments, user_model
from trainwell.errors import TrainwellError
from trainwell.formatting import percent

if TYPE_CHECKING:  # annotations only: commands import the config layer when they run
    from trainwell.config import Config

EXAMPLES = """examples:
  trainwell train                                   # digits, the default data
  trainwell train preset=mnist1d train.epochs=40
  trainwell train -c my.yaml optim.lr=0.1 --out runs/lr0.1
  trainwell train --resume runs/lr0.1               # continue a killed run exactly where it was
  trainwell evaluate runs/lr0.1
  trainwell evaluate runs/lr0.1 --tta hflip,translation   # test-time augmentation
  trainwell report runs/lr0.1                       # (re)write runs/lr0.1/report.html
  trainwell predict runs/lr0.1 image.png batch.npz
  trainwell lr-find preset=mnist1d
  trainwell summary preset=mnist1d                  # layers, output shapes, parameters, FLOPs
  trainwell doctor model.name=mlp model.depth=6 init.scheme=normal   # diagnose a config at init
  trainwell doctor runs/lr0.1 --strict                                # diagnose a finished run
  trainwell train doctor=true                                         # diagnose while training
  trainwell finetune runs/pre data.classes=5,6,7,8,9 data.per_class=10 --compare-scratch  # transfer learning
  trainwell ensemble runs/a runs/b runs/c --out runs/ens    # combine runs; evaluate/predict take runs/ens
  trainwell train train.ensemble=5                  # 5 seeds in parallel, written as one ensemble
  trainwell compare model.name=mlp --vary model.activation=relu,sigmoid,tanh --seeds 5
  trainwell lab activations                         # does ReLU beat sigmoid here? (trainwell lab list)
  trainwell list model
"""


def add_output_args(p: argparse.ArgumentParser) -> None:
    """--out and --overwrite, the same for every command that writes a folder."""
    p.add_argument("--out", metavar="DIR", help="output folder (default: a new folder under runs/)")
    p.add_argument("--overwrite", action="store_true", help="replace the contents of an existing --out folder")


def build_parser() -> argparse.ArgumentParser:
    from trainwell import __version__

    parser = argparse.ArgumentParser(
        prog="trainwell",
        description="Train neural networks on sound foundations, with evidence of why they train well.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"trainwell {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model and write a run directory",
                       description="Train a model. Config: defaults < preset=NAME < -c FILE < key=value overrides.")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.1")
    p.add_argument("-c", "--config", metavar="FILE", help="YAML config file")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--print-keys", action="store_true", help="list every config key with its default and exit")
    p.add_argument("--show-param-groups", action="store_true",
                   help="show which tensors get weight decay and L1/L2 penalties, and exit")
    p.add_argument("--quiet", action="store_true", help="print only errors")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a killed or interrupted run from its newest good checkpoint, with its own config "
                        "(only train.epochs=N may be given, to train a finished run further)")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="data-parallel training on N processes of this machine (DDP; gloo on the CPU, NCCL with "
                        "one GPU each); train.batch_size is the global batch. Several machines: run the command "
                        "under torchrun (README, 'Scaling out')")
    p.add_argument("--master-port", type=int, default=None, metavar="PORT",
                   help="with --nproc: the rendezvous port on 127.0.0.1 (default: a free one)")
    add_model_arguments(p)
    add_output_args(p)
    from trainwell.cli.experiments import add_backend_args

    add_backend_args(p, "members of train.ensemble=K")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a run directory on its test split (or other data)")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. data.path=other.npz data.name=npz")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--tta", metavar="OPS",
                   help="test-time augmentation: average the softmax over the deterministic variants of these "
                        "augment ops, e.g. hflip,translation (identity + the mirror image + shifts by ±k px per "
                        "axis); ops with variants: hflip, vflip, translation, crop")
    add_output_args(p)
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser("report", help="(re)write a run folder's report.html from its files",
                       description="Write RUN_DIR/report.html: config, curves, per-class table, confusion matrix, "
                                   "reliability diagram, doctor findings, parameter groups and timings, one "
                                   "self-contained page. Every train writes it; this regenerates it.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("predict", help="classify npz/npy arrays, image files or CSV rows with a trained run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help=".npz/.npy arrays, image files, or CSV rows (a tabular run)")
    p.add_argument("--device", default="auto")
    add_output_args(p)
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser("lr-find", help="LR range test (Smith 2017): plot loss against LR and suggest an LR",
                       description="Train briefly with an exponentially growing LR, restore the model, "
                                   "and suggest an LR (the smoothed-minimum LR / 10).")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("-c", "--config", metavar="FILE", help="YAML config file")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--start-lr", type=float, default=1e-6)
    p.add_argument("--end-lr", type=float, default=10.0)
    add_output_args(p)
    p.set_defaults(handler=cmd_lr_find)

    from trainwell.cli.doctor import add_doctor_parser
    from trainwell.cli.finetune import add_finetune_parser
    from trainwell.cli.ensemble import add_ensemble_parser

    add_doctor_parser(sub)
    add_finetune_parser(sub)
    add_ensemble_parser(sub)
    from trainwell.cli.export import add_export_parser
    add_export_parser(sub)

    from trainwell.cli.experiments import add_compare_parser, add_lab_parser
    from trainwell.cli.summary import add_summary_parser

    add_compare_parser(sub)
    add_lab_parser(sub)
    add_summary_parser(sub)

    p = sub.add_parser("list", help="list registered names (data, model, activation, ...) with one-line docs")
    p.add_argument("kind", nargs="?", help="one registry, e.g. model; omit for all")
    p.set_defaults(handler=cmd_list)
    return parser


# ----------------------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace) -> int:
    from trainwell.config import resolve

    if args.print_keys:
        _print_keys()
        return 0
    cfg = resolve(args.overrides, args.config) if args.resume is None else None
    if args.print_config and cfg is not None:
        sys.stdout.write(cfg.to_yaml())
        return 0
    if args.show_param_groups:
        if cfg is None:
            from trainwell.errors import ConfigError

            raise ConfigError("--show-param-groups lists the groups of a config, not of a run: drop --resume.")
        _print_param_groups(cfg)
        return 0
    from trainwell.cli.experiments import backend_from_args
    from trainwell.errors import ConfigError
    from trainwell.train.distributed import launched_size

    backend = backend_from_args(args)
    if args.resume is not None and (args.out is not None or args.overwrite or args.config is not None):
        raise ConfigError("--resume RUN_DIR continues that folder with its own config; drop --out, --overwrite "
                          "and -c.")
    check_model_arguments(args)
    if args.model is not None and (args.nproc != 1 or launched_size() > 1):
        raise ConfigError("--model trains in one process for now; drop --nproc (or torchrun).")
    if backend.name == "ray" and (args.nproc != 1 or launched_size() > 1):
        raise ConfigError("--backend ray places the members of train.ensemble=K; --nproc (or torchrun) trains one "
                          "run on several processes: drop one of them.")
    if launched_size() > 1:  # a rank of a data-parallel run (started by --nproc or torchrun)
        return _train_as_rank(args, cfg)
    if args.nproc != 1:
        return _launch_train(args, cfg)
    custom = user_model(args.model, args.model_args, cfg)  # --model: trained as a custom model
    return _train(args, cfg, backend=backend, **custom)


def _train(args: argparse.Namespace, cfg: Config | None, **extra: Any) -> int:
    """Train (or resume) the run the command line describes; exit status 1 when its loss diverged."""
    from trainwell.api import train

    if args.resume is not None:
        run = train(resume=args.resume, overrides=args.overrides, quiet=args.quiet, **extra)
    else:
        run = train(cfg, out=args.out, overwrite=args.overwrite, quiet=args.quiet, **extra)
    return 0 if not run.summary.get("diverged") else 1


def _launch_train(args: argparse.Namespace, cfg: Config | None) -> int:
    """``--nproc N``: check what can be checked here, then start N ranks (:mod:`trainwell.cli.launch`)."""
    from trainwell.cli.launch import launch
    from trainwell.errors import ConfigError
    from trainwell.runs.train import check_distributed, check_new_out, resume_config
    from trainwell.train.build import check_names, model_tag
    from trainwell.train.rundir import default_run_dir
    from trainwell.train.trainer import resolve_device

    if args.nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {args.nproc}.")
    argv = list(args.argv)
    if args.resume is not None:
        cfg = resume_config(Path(args.resume), None, args.overrides, None)
        out = Path(args.resume)
    else:
        assert cfg is not None
        out = Path(args.out) if args.out is not None else default_run_dir("train", f"{cfg.data.name}-{model_tag(cfg)}")
        check_new_out(out, args.overwrite, cfg)
        if args.out is None:
            argv += ["--out", str(out)]  # the ranks' folder, named here so the parent can say where it is
    check_names(cfg)
    check_distributed(cfg, args.nproc)
    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        import torch

        if args.nproc > torch.cuda.device_count():
            raise ConfigError(f"--nproc {args.nproc} needs a GPU per process on CUDA, but {torch.cuda.device_count()} "
                              "are visible; use --nproc <= that, or train.device=cpu.")
    return launch(argv, args.nproc, out, args.master_port)


def _lost_peer(exc: BaseException) -> bool:
    """Whether a RuntimeError is a collective's failure: a peer that closed its connection or a timeout
    (gloo raises these as plain RuntimeErrors, NCCL and the store as torch.distributed.DistError)."""
    text = str(exc)
    return any(mark in text for mark in ("gloo", "Gloo", "NCCL", "c10d", "Connection closed by peer", "Timed out"))


def _train_as_rank(args: argparse.Namespace, cfg: Config | None) -> int:
    """One rank of a data-parallel run: join the process group, train, leave it. Errors: one line each
    (the launching parent prints them: :func:`trainwell.cli.launch.report_rank_error`)."""
    import torch.distributed as dist

    from trainwell.cli.launch import report_rank_error
    from trainwell.train.distributed import init_from_env, shutdown
    from trainwell.train.load import read_config
    from trainwell.train.trainer import resolve_device

    rank = int(os.environ.get("RANK", "0"))
    try:
        plan = cfg if cfg is not None else read_config(Path(args.resume))
        init_from_env(resolve_device(plan.train.device), plan.train.dist_timeout)
        return _train(args, cfg)
    except TrainwellError as exc:
        if not report_rank_error(rank, exc):  # under torchrun: every rank says it, naming itself
            from trainwell.errors import Interrupted

            print(f"trainwell: {'' if isinstance(exc, Interrupted) else 'error: '}[rank {rank}] {exc}", file=sys.stderr)
        return exc.exit_code
    except (dist.DistError, RuntimeError) as exc:
        if not isinstance(exc, dist.DistError) and not _lost_peer(exc):
            raise  # not the process group's: a bug, with its traceback
        from trainwell.cli.launch import launched_here
        from trainwell.errors import exception_line

        if not launched_here():  # (--nproc's parent says which process failed first, and how)
            print(f"trainwell: error: [rank {rank}] lost the other processes ({exception_line(exc, 160)}); "
                  "the run stopped.", file=sys.stderr)
        return 1
    finally:
        shutdown()


def cmd_evaluate(args: argparse.Namespace) -> int:
    from trainwell.train.inference import evaluate

    out = args.out if args.out is not None else _default_out("evaluate", args.run_dir)
    summary = evaluate(args.run_dir, args.overrides, split=args.split, out=out, overwrite=args.overwrite,
                       tta=args.tta)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_evaluation(summary, args.split)
    return 0


def _print_evaluation(summary: dict, split: str) -> None:
    """The figures of ``trainwell evaluate``: headline line, TTA's gain, the per-class table, where the files went."""
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True, highlight=False)
    acc, loss = summary[f"{split}_acc"], summary[f"{split}_loss"]
    tops = "  ".join(f"top-{k} {percent(summary[f'{split}_top{k}_acc'])}" for k in (3, 5)
                     if f"{split}_top{k}_acc" in summary)
    line = f"{split} acc {percent(acc)}  {tops + '  ' if tops else ''}"
    if f"{split}_ece" in summary:  # NLL: the mean cross-entropy, the run's test loss
        line += f"NLL {summary[f'{split}_nll']:.4f}  ECE {percent(summary[f'{split}_ece'])}" \
                f"  macro F1 {percent(summary[f'{split}_macro_f1'])}"
    else:
        line += f"loss {loss:.4f}"
    console.print(f"{line}  n={summary['n']}")
    tta = summary.get("tta")
    if tta:
        without = tta[f"{split}_acc_without"]
        console.print(f"test-time augmentation ({len(tta['variants'])} views: {', '.join(tta['variants'])}): "
                      f"acc {percent(without)} -> {percent(acc)} ({100 * (acc - without):+.2f} points), "
                      f"NLL {tta[f'{split}_nll_without']:.4f} -> {summary[f'{split}_nll']:.4f}")
    if summary.get("per_class"):
        table = Table(title=f"per class ({split} split)", title_justify="left")
        for col in ("class", "precision", "recall", "F1", "support"):
            table.add_column(col, justify="left" if col == "class" else "right")
        for name, row in summary["per_class"].items():
            table.add_row(str(name), f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                          f"{row['support']:,}")
        table.add_row("macro mean", f"{summary[f'{split}_macro_precision']:.3f}",
                      f"{summary[f'{split}_macro_recall']:.3f}", f"{summary[f'{split}_macro_f1']:.3f}",
                      f"{summary['n']:,}", style="bold")
        console.print(table)
    out = Path(summary["out"])
    files = summary.get("files", {})
    for name, label in (("confusion", "confusion matrix"), ("reliability", "reliability diagram")):
        if name in files:
            console.print(f"{label}: {files[name]}")
    console.print(f"summary: {out / 'summary.json'}")


def cmd_report(args: argparse.Namespace) -> int:
    from trainwell.runs.report import write_run_report

    print(f"report: {write_run_report(args.run_dir)}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from trainwell.fileio import write_json
    from trainwell.train.rundir import staged_out_dir
    from trainwell.train.inference import predict

    staged = staged_out_dir(args.out if args.out is not None else _default_out("predict", args.run_dir),
                            "predict", Path(args.run_dir).name, args.overwrite)  # refused before predicting
    rows = predict(args.run_dir, args.inputs, device=args.device)
    with staged as out_dir:
        write_json(out_dir / "predictions.json", rows)
        write_json(out_dir / "summary.json", {"run": str(args.run_dir), "n": len(rows),
                                              "inputs": [str(p) for p in args.inputs]})
    print(json.dumps(rows, indent=2))
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from trainwell.config import resolve
    from trainwell.runs.train import find_lr

    cfg = resolve(args.overrides, args.config)
    summary = find_lr(cfg, out=args.out, overwrite=args.overwrite, steps=args.steps,
                      start_lr=args.start_lr, end_lr=args.end_lr)
    print(f"suggested lr {summary['suggested_lr']:.3g} (loss minimum at {summary['min_loss_lr']:.3g}); "
          f"plot: {Path(summary['out']) / 'lr_find.png'}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    tables = registry_tables()
    if args.kind is not None and args.kind not in tables:
        from trainwell.errors import ConfigError, unknown_name_message

        raise ConfigError(unknown_name_message("registry", args.kind, tables))
    console = Console()
    for kind, rows in tables.items():
        if args.kind is not None and kind != args.kind:
            continue
        table = Table(title=kind, title_justify="left", show_header=False, box=None, pad_edge=False)
        table.add_column("name", style="bold")
        table.add_column("doc")
        for name, doc in rows:
            table.add_row(Text(name), Text(doc))  # plain text: '[conv...]' in a doc is not markup
        console.print(table)
        console.print()
    return 0


#: How the registries are listed (``trainwell list``, docs/reference.md): data to experiments.
_REGISTRY_ORDER = {kind: i for i, kind in enumerate((
    "data", "preprocess", "augment", "model", "activation", "norm", "init", "optim", "sched", "lab"))}


def registry_tables() -> dict[str, list[tuple[str, str]]]:
    """Every registry as (name, one-line doc) rows, plus the presets; the source of `list` and the docs."""
    import trainwell.data  # noqa: F401  (registers data sources and preprocessing)
    import trainwell.nn  # noqa: F401  (models, activations, norms, inits)
    import trainwell.train  # noqa: F401  (optimisers, schedules)
    import trainwell.experiments.labs  # noqa: F401  (labs)
    from trainwell.config import load_preset, preset_names
    from trainwell.registry import ALL

    try:
        import trainwell.data.augment  # noqa: F401
    except ImportError:  # pragma: no cover
        pass
    # A fixed order (not the order modules happened to be imported in): the docs must not depend on it.
    tables = {kind: [(e.name, e.doc) for e in ALL[kind]] for kind in sorted(ALL, key=lambda k: (_REGISTRY_ORDER.get(k, 99), k))}
    tables["preset"] = [(name, _preset_doc(name)) for name in preset_names()]
    return tables


def _preset_doc(name: str) -> str:
    from importlib import resources

    text = (resources.files("trainwell") / "presets" / f"{name}.yaml").read_text()
    first = text.splitlines()[0] if text else ""
    return first.lstrip("# ").strip() if first.startswith("#") else ""


def _print_param_groups(cfg: Config) -> None:
    from rich.console import Console
    from rich.table import Table

    from trainwell.runs.train import param_group_rows

    rows = param_group_rows(cfg)
    table = Table(title=f"parameter groups ({cfg.optim.name}, weight_decay={cfg.optim.weight_decay}, "
                        f"l1={cfg.reg.l1}, l2={cfg.reg.l2})", title_justify="left")
    for col in ("name", "shape", "numel", "group", "weight_decay", "l1", "l2"):
        table.add_column(col, justify="right" if col in ("numel", "weight_decay", "l1", "l2") else "left")
    for r in rows:
        table.add_row(r["name"], "x".join(map(str, r["shape"])), f"{r['numel']:,}", r["group"],
                      f"{r['weight_decay']:g}", f"{r['l1']:g}", f"{r['l2']:g}")
    Console(soft_wrap=True).print(table)


def _print_keys() -> None:
    from trainwell.config import key_table

    for key, type_name, default, doc in key_table():
        print(f"{key:<24} {type_name:<12} {default!s:<16} {doc}")


def _default_out(kind: str, run_dir: str) -> Path:
    from trainwell.train.rundir import default_run_dir

    return default_run_dir(kind, Path(run_dir).name or "run")


# ----------------------------------------------------------------------------- entry point


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is (like Ctrl-C's KeyboardInterrupt) so it ends the same way."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a scheduler's stop) ends a command like Ctrl-C: the same cleanup, one line.

    Python's default for SIGTERM is to die at once, with no message and no ``finally`` run; the
    training loop installs its own handler while it runs (it checkpoints first) and restores this one.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse with options and ``key=value`` overrides in any order (``train a=1 --quiet b=2``).

    argparse's intermixed parsing refuses a parser with subcommands, so the subcommand's own parser
    parses everything after the command's name.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if argv and argv[0] in subparsers.choices:
        args = subparsers.choices[argv[0]].parse_intermixed_args(argv[1:])
        args.command = argv[0]
        return args
    return parser.parse_args(argv)


def interrupted_line(signum: int, command: str | None) -> str:
    """What an interrupted command prints: the signal and the next step."""
    name = signal.Signals(signum).name
    return (f"trainwell: {command or 'command'} interrupted by {name} before it finished; no output folder of it "
            "is marked finished. Run the same command again (a run folder with checkpoints/ continues with "
            "trainwell train --resume DIR).")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as given (--nproc starts ranks with it)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        with terminate_as_interrupt():
            return handler(args)
    except TrainwellError as exc:
        from trainwell.errors import Interrupted

        kind = "" if isinstance(exc, Interrupted) else "error: "
        print(f"trainwell: {kind}{exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        print(interrupted_line(signum, args.command), file=sys.stderr)
        return 128 + int(signum)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
