"""``trainwell summary``: the model a config would train, layer by layer, with its parameters and FLOPs.

    trainwell summary                           # the default model on the default data
    trainwell summary preset=mnist data.name=idx data.path=MNIST_FOLDER
    trainwell summary model.name=resnet model.width=16 --json
    options: -c FILE, --json (the summary as JSON)

The model is built as ``trainwell train`` builds it (the data loaded, its preprocessing fitted) for
the data's input shape. FLOPs are those of trainwell.nn.summary (matrix products and convolutions);
one epoch's FLOPs are the training FLOPs per example x the examples one epoch of the configured
training split visits.

Exit codes: 0; 2 a user error (one line, as every trainwell command).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

HELP = "the model a config would train: layers, output shapes, parameters and FLOPs"
DESCRIPTION = ("Build the model trainwell train would build for the configured data and show each layer's output "
               "shape, parameters and forward FLOPs per example, and the totals: parameters, forward and training "
               "(forward + backward) FLOPs per example, and the FLOPs of one training epoch. Config: defaults < "
               "preset=NAME < -c FILE < key=value overrides.")


def add_summary_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``summary`` on the CLI's subparsers (``sub``); the handler is :func:`cmd_summary`."""
    p = sub.add_parser("summary", help=HELP, description=DESCRIPTION)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. preset=mnist")
    p.add_argument("-c", "--config", metavar="FILE", help="YAML config file")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=cmd_summary)
    return p


def cmd_summary(args: argparse.Namespace) -> int:
    from trainwell.config import resolve
    from trainwell.runs.train import summarize_config

    cfg = resolve(args.overrides, args.config)
    from trainwell.train.build import resolve_model_name

    summary, splits, examples = summarize_config(cfg)
    cfg = resolve_model_name(cfg, splits)  # model.name=auto: what the data made it
    epoch_flops = summary.train_flops * examples
    if args.json:
        print(json.dumps({**summary.to_dict(), "data": splits.description, "model": cfg.model.name,
                          "epoch_examples": examples, "epoch_train_flops": epoch_flops}, indent=2))
        return 0
    from rich.console import Console
    from rich.text import Text

    from trainwell.nn.summary import in_units

    console = Console(soft_wrap=True, highlight=False)
    console.print(Text.assemble((cfg.model.name, "bold"), f" on {splits.description}"))
    console.print(summary.table())
    for line in summary.totals_text():
        console.print(Text(line))
    partial = "" if summary.complete else " (at least)"
    console.print(Text(f"one epoch: {examples:,} examples x {in_units(summary.train_flops)} MFLOP = "
                       f"{in_units(epoch_flops, 1e9)} GFLOP{partial}"))
    return 0
