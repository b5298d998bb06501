"""``trainwell doctor``: the command line of the doctor, kept here so cli.py only registers it.

    trainwell doctor [key=value ...]            # the model a config would train, at initialisation
    trainwell doctor preset=mnist1d --epochs 3  # ... and during 3 epochs of training (no run dir)
    trainwell doctor RUN_DIR                    # a finished run: its model on its data, its history
    options: --json (print the report as JSON), --strict (exit 1 on a warning or an error),
             --out DIR (where report.json and the plots go), -c FILE, --batch-size N, --every N

Exit codes: 0 (whatever the findings) unless --strict, then 1 on a warning or an error;
2 a user error (one line, as every trainwell command).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from trainwell.diagnose.thresholds import SAMPLE_EVERY
from trainwell.errors import ConfigError

HELP = "diagnose a model's health (init, training or a run dir): findings with evidence and a fix"
DESCRIPTION = (
    "Record per-layer statistics (activations, dead and saturated units, gradients, update ratios) and "
    "give verdicts with evidence and a fix. TARGET is a run directory, or key=value overrides of the config "
    "(the model trainwell train would build, diagnosed at initialisation; --epochs N also trains it N epochs)."
)


def add_doctor_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``doctor`` on the CLI's subparsers (``sub``); the handler is :func:`cmd_doctor`."""
    p = sub.add_parser("doctor", help=HELP, description=DESCRIPTION)
    p.add_argument("target", nargs="*", metavar="RUN_DIR|key=value",
                   help="a run directory (optionally followed by data.* overrides), or config overrides")
    p.add_argument("-c", "--config", metavar="FILE", help="YAML config file (config mode)")
    p.add_argument("--epochs", type=int, default=0, help="config mode: also train this many epochs under the doctor")
    p.add_argument("--every", type=int, default=SAMPLE_EVERY, help="with --epochs: sample one step in this many")
    p.add_argument("--batch-size", type=int, default=256, help="examples in the diagnosed batch (default 256)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    p.add_argument("--strict", action="store_true", help="exit 1 on a warning or an error (default: exit 0 whatever the findings)")
    p.add_argument("--out", metavar="DIR",
                   help="where report.json and the plots go (default: a new folder under runs/)")
    p.add_argument("--overwrite", action="store_true", help="replace the contents of an existing --out folder")
    p.add_argument("--no-plots", action="store_true", help="write report.json only")
    p.set_defaults(handler=cmd_doctor)
    return p


def _is_run_dir(text: str) -> bool:
    return "=" not in text and Path(text).is_dir()


def run_doctor(args: argparse.Namespace) -> tuple[Any, Path]:
    """Diagnose what ``args`` names and write report.json (+ plots); returns (report, out_dir)."""
    from trainwell.diagnose.doctor import diagnose_config, diagnose_run
    from trainwell.diagnose.plots import plot_report
    from trainwell.train.rundir import prepare_out_dir, write_json

    if args.batch_size < 2:
        raise ConfigError(f"--batch-size must be >= 2, got {args.batch_size}.")
    if args.epochs < 0:
        raise ConfigError(f"--epochs must be >= 0, got {args.epochs}.")
    target = list(args.target)
    if target and "=" not in target[0]:
        if not _is_run_dir(target[0]):
            raise ConfigError(f"'{target[0]}' is neither a run directory nor a key=value override; "
                              "pass a folder written by 'trainwell train' or overrides such as model.name=mlp.")
        if args.epochs:
            raise ConfigError("--epochs applies to a config, not to a run directory; drop it or pass overrides.")
        run_dir, overrides = target[0], target[1:]
        report = diagnose_run(run_dir, overrides, batch_size=args.batch_size)
        tag, kind = Path(run_dir).resolve().name or "run", "doctor"
    else:
        from trainwell.config import resolve
        from rich.console import Console

        cfg = resolve(target, args.config)
        console = None if args.json else Console(stderr=True, soft_wrap=True)
        report = diagnose_config(cfg, batch_size=args.batch_size, epochs=args.epochs, every=args.every,
                                 console=console)
        tag, kind = f"{cfg.data.name}-{cfg.model.name}", "doctor"
    out_dir = prepare_out_dir(args.out, kind, tag, args.overwrite)  # None: a new folder under runs/
    write_json(out_dir / "report.json", report.to_dict())
    if not args.no_plots and report.layers:
        plot_report(report, out_dir)
    return report, out_dir


def cmd_doctor(args: argparse.Namespace) -> int:
    """Handler of ``trainwell doctor``: print the report (tables or --json) and exit by severity."""
    report, out_dir = run_doctor(args)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        from rich.console import Console

        console = Console(soft_wrap=False)
        report.render(console)
        console.print(f"-> {out_dir}", highlight=False)
    sys.stdout.flush()
    return report.exit_code(strict=args.strict)
