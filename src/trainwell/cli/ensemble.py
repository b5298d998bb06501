"""``trainwell ensemble``: combine trained runs into one ensemble folder, kept here so cli.py only registers it.

    trainwell ensemble runs/a runs/b runs/c --out runs/ens     # members copied into runs/ens/members/NN
    trainwell ensemble runs/a runs/b --method vote --no-copy   # ensemble.json points at the runs
    trainwell evaluate runs/ens ; trainwell predict runs/ens x.npz   # as for a single run

Prints each member's accuracy, NLL and ECE, the members' mean and each combination method's
(mean_prob, mean_logit, vote; the chosen one marked *), and the ensemble folder.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

HELP = "combine trained runs into an ensemble (mean probability, mean logit or vote) and evaluate it"
DESCRIPTION = (
    "Combine trained runs (same input shape, same classes in the same order) into an ensemble folder that "
    "'trainwell evaluate' and 'trainwell predict' accept like a run. Evaluates every member and every method "
    "on the first member's data (accuracy, NLL, ECE) and writes summary.json and reliability.png."
)


def add_ensemble_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``ensemble`` on the CLI's subparsers (``sub``); the handler is :func:`cmd_ensemble`."""
    from trainwell.train.ensemble import METHODS

    p = sub.add_parser("ensemble", help=HELP, description=DESCRIPTION)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories to combine (at least 2)")
    p.add_argument("--method", default="mean_prob", choices=METHODS,
                   help="how predictions are combined (default mean_prob: average softmax probabilities)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split evaluated (default test)")
    p.add_argument("--no-copy", action="store_true",
                   help="point at the runs instead of copying them into OUT/members/ (smaller, not self-contained)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    from trainwell.cli.app import add_output_args

    add_output_args(p)
    p.set_defaults(handler=cmd_ensemble)
    return p


def cmd_ensemble(args: argparse.Namespace) -> int:
    from rich.console import Console

    from trainwell.experiments.ensembles import ensemble_table
    from trainwell.formatting import percent
    from trainwell.train.ensemble_dir import build_ensemble

    run = build_ensemble(args.run_dirs, args.out, method=args.method, copy=not args.no_copy,
                         overwrite=args.overwrite, split=args.split)
    if args.json:
        print(json.dumps({**run.summary, "out": str(run.dir)}, indent=2))
        return 0
    console = Console(soft_wrap=True)
    console.print(ensemble_table(run.summary))
    s = run.summary
    console.print(f"ensemble ({s['method']}) {percent(s['ensemble_acc'])} vs mean member "
                  f"{percent(s['mean_member_acc'])} (gain {100 * s['gain']:+.2f} pp) -> {run.dir}", highlight=False)
    return 0
