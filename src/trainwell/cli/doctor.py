"""``trainwell doctor``: the command line of the doctor, kept here so cli.py only registers it.

    trainwell doctor [key=value ...]            # the model a config would train, at initialisation
    trainwell doctor preset=mnist1d --epochs 3  # ... and during 3 epochs of training (no run dir)
    trainwell doctor RUN_DIR                    # a finished run: its model on its data, its history
    trainwell doctor --model mynet.py:Net       # your own nn.Module class, on the configured data
    trainwell doctor --fix [key=value ...] --apply fixed.yaml   # fix -> diagnose in rounds until clean
    options: --json (print the report as JSON), --strict (exit 1 on a warning or an error),
             --out DIR (where report.json and the plots go), -c FILE, --batch-size N, --every N

Exit codes: 0 (whatever the findings) unless --strict, then 1 on a warning or an error (with --fix: one
left by the last round); 2 a user error (one line, as every trainwell command).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from trainwell.cli.usermodel import add_model_arguments, check_model_arguments, user_model
from trainwell.diagnose.thresholds import FIX_MAX_ROUNDS, SAMPLE_EVERY
from trainwell.errors import ConfigError

#: The exit code in each situation: docs/doctor.md states these (trainwell.docs.doctor renders them) and
#: tests/test_doctor_exit_codes.py runs the real command in each situation against them.
EXIT_CODES: dict[str, int] = {
    "a diagnosis without `--strict`, whatever its findings (the report is the result)": 0,
    "with `--strict`, no warning or error": 0,
    "with `--strict`, a warning or an error": 1,
    "a user error (one line on stderr, as every trainwell command)": 2,
}

HELP = "diagnose a model's health (init, training or a run dir): findings with evidence and a fix"
DESCRIPTION = (
    "Record per-layer statistics (activations, dead and saturated units, gradients, update ratios) and "
    "give verdicts with evidence and a fix. TARGET is a run directory, or key=value overrides of the config "
    "(the model trainwell train would build, diagnosed at initialisation; --epochs N also trains it N epochs), "
    "or with --model FILE.py:CLASS your own nn.Module class on the configured data."
)
DOCTOR_MODEL_HELP = ("config mode: diagnose your own nn.Module, a class in your Python file, as FILE.py:CLASS "
                     "(e.g. mynet.py:Net), built with no arguments or with --model-args, on the configured data. "
                     "Only that file is imported, by its path (not a module from sys.path, and its folder is not "
                     "added to sys.path)")


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
    add_model_arguments(p, DOCTOR_MODEL_HELP)
    p.add_argument("--fix", action="store_true",
                   help="config mode: change the config for the findings, diagnose it again, and repeat until no "
                        "warning or error is left (at most --rounds rounds)")
    p.add_argument("--apply", metavar="FILE",
                   help="with --fix: write the corrected config as YAML to FILE (trainwell train -c FILE)")
    p.add_argument("--rounds", type=int, metavar="N",
                   help=f"with --fix: at most N rounds of fix -> diagnose (default {FIX_MAX_ROUNDS})")
    p.set_defaults(handler=cmd_doctor)
    return p


def _is_run_dir(text: str) -> bool:
    return "=" not in text and Path(text).is_dir()


def run_doctor(args: argparse.Namespace) -> tuple[Any, Path]:
    """Diagnose what ``args`` names and write report.json (+ plots); returns (report, out_dir)."""
    from trainwell.diagnose.doctor import diagnose_config, diagnose_run
    from trainwell.diagnose.plots import plot_report
    from trainwell.fileio import write_json
    from trainwell.train.rundir import staged_out_dir

    if args.batch_size < 2:
        raise ConfigError(f"--batch-size must be >= 2, got {args.batch_size}.")
    if args.epochs < 0:
        raise ConfigError(f"--epochs must be >= 0, got {args.epochs}.")
    check_model_arguments(args)
    target = list(args.target)
    if target and "=" not in target[0]:
        if not _is_run_dir(target[0]):
            raise ConfigError(f"'{target[0]}' is neither a run directory nor a key=value override; "
                              "pass a folder written by 'trainwell train' or overrides such as model.name=mlp.")
        if args.model is not None:
            raise ConfigError("--model diagnoses your class on the configured data; a run directory has its own "
                              "model: drop --model or the run directory.")
        if args.epochs:
            raise ConfigError("--epochs applies to a config, not to a run directory; drop it or pass overrides.")
        run_dir, overrides = target[0], target[1:]
        # None: a new folder under runs/; an existing --out is refused before the diagnosis.
        staged = staged_out_dir(args.out, "doctor", Path(run_dir).resolve().name or "run", args.overwrite)
        report = diagnose_run(run_dir, overrides, batch_size=args.batch_size)
    else:
        from trainwell.config import resolve
        from rich.console import Console

        cfg = resolve(target, args.config)
        custom = user_model(args.model, args.model_args, cfg)
        from trainwell.train.build import model_tag

        model_name = type(custom["model"]).__name__ if custom else model_tag(cfg)
        staged = staged_out_dir(args.out, "doctor", f"{cfg.data.name}-{model_name}", args.overwrite)
        console = None if args.json else Console(stderr=True, soft_wrap=True)
        report = diagnose_config(cfg, batch_size=args.batch_size, epochs=args.epochs, every=args.every,
                                 console=console, **custom)
    with staged as out_dir:
        write_json(out_dir / "report.json", report.to_dict())
        write_json(out_dir / "summary.json", {"findings": report.to_dict()["findings"], "context": report.context})
        if not args.no_plots and report.layers:
            plot_report(report, out_dir)
    return report, staged.path


def cmd_doctor(args: argparse.Namespace) -> int:
    """Handler of ``trainwell doctor``: print the report (tables or --json) and exit by severity."""
    if args.apply and not args.fix:
        raise ConfigError("--apply needs --fix: trainwell doctor --fix --apply FILE [key=value ...].")
    if args.rounds is not None and not args.fix:
        raise ConfigError("--rounds needs --fix: trainwell doctor --fix --rounds N [key=value ...].")
    if args.fix:
        return cmd_fix(args)
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


def _check_fix_arguments(args: argparse.Namespace) -> None:
    if args.model is not None:
        raise ConfigError("--fix proposes config changes (model.*, init.*, optim.*) for trainwell's own models; "
                          "with --model, run the doctor without --fix and apply its fixes in your class.")
    target = list(args.target)
    if target and "=" not in target[0]:
        raise ConfigError("--fix works on a config (key=value overrides or -c FILE), not on a run directory; "
                          "pass the overrides the run was trained with.")
    if args.rounds is not None and args.rounds < 1:
        raise ConfigError(f"--rounds must be >= 1, got {args.rounds}; e.g. --rounds {FIX_MAX_ROUNDS}.")
    if args.apply and Path(args.apply).exists() and not args.overwrite:
        raise ConfigError(f"'{args.apply}' exists; choose another --apply FILE or pass --overwrite.")


def fix_result(outcome: Any) -> dict[str, Any]:
    """fix.json: the merged changes, the first and last findings, and every round with its reasons."""
    changes = outcome.changes()
    return {
        "changes": changes, "overrides": [f"{k}={v}" for k, v in changes.items()],
        "before": outcome.initial.to_dict()["findings"], "after": outcome.report.to_dict()["findings"],
        "rounds": [{"changes": [{"key": c.key, "from": r.old_value(c.key), "to": c.value, "code": c.code,
                                 "reason": c.reason} for c in r.changes],
                    "findings_after": r.after.to_dict()["findings"]} for r in outcome.rounds],
        "clean": outcome.clean, "stopped": outcome.stopped, "verdict": outcome.line(),
    }


def _codes(report: Any) -> str:
    from trainwell.diagnose.fix import flagged

    return ", ".join(f"{f.code} ({f.severity})" for f in flagged(report).values()) or "none"


def print_rounds(outcome: Any, console: Any) -> None:
    """Each round: every change (old -> new value) with the finding it answers and why, then the check's findings."""
    console.print(f"doctor --fix: the config's findings: {_codes(outcome.initial)}", highlight=False, markup=False)
    for number, r in enumerate(outcome.rounds, 1):
        console.print(f"round {number}:", highlight=False)
        for c in r.changes:
            console.print(f"  {c.key}: {r.old_value(c.key)} -> {c.value}\n    why ({c.code}): {c.reason}",
                          highlight=False, markup=False)
        console.print(f"  check after round {number}: {_codes(r.after)}", highlight=False, markup=False)
    console.print(outcome.line(), highlight=False, markup=False)


def cmd_fix(args: argparse.Namespace) -> int:
    """``--fix``: diagnose the config, change it for the findings, diagnose again, for up to --rounds rounds."""
    from rich.console import Console

    from trainwell.config import resolve
    from trainwell.diagnose.doctor import diagnose_config
    from trainwell.diagnose.fix import fix_loop
    from trainwell.fileio import atomic_write_text, write_json
    from trainwell.train.rundir import staged_out_dir

    _check_fix_arguments(args)
    cfg = resolve(list(args.target), args.config)
    from trainwell.train.build import model_tag

    staged = staged_out_dir(args.out, "doctor", f"{cfg.data.name}-{model_tag(cfg)}-fix", args.overwrite)
    outcome = fix_loop(cfg, lambda c: diagnose_config(c, batch_size=args.batch_size, epochs=args.epochs,
                                                      every=args.every),
                       args.rounds or FIX_MAX_ROUNDS)
    result = fix_result(outcome)
    with staged as tmp:
        write_json(tmp / "fix.json", result)
        write_json(tmp / "summary.json",
                   {"findings": result["after"], "changes": result["changes"], "findings_before": result["before"],
                    "verdict": result["verdict"]})
        atomic_write_text(tmp / "config.fixed.yaml", outcome.config.to_yaml())
    if args.apply:
        atomic_write_text(Path(args.apply), outcome.config.to_yaml())
    if args.json:
        print(json.dumps(result, indent=2))
        return outcome.report.exit_code(strict=args.strict)
    console = Console(soft_wrap=True)
    print_rounds(outcome, console)
    if args.apply:
        console.print(f"wrote the corrected config to {args.apply}; train it with: trainwell train -c {args.apply}",
                      highlight=False)
    console.print(f"-> {staged.path}", highlight=False)
    return outcome.report.exit_code(strict=args.strict)
