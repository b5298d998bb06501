"""``trainwell finetune``: the command line of fine-tuning, kept here so cli.py only registers it.

    trainwell finetune runs/pre data.classes=5,6,7,8,9 data.per_class=10 finetune.strategy=linear_probe
    trainwell finetune runs/pre/model.safetensors model.name=mlp model.width=32 --compare-scratch
    trainwell finetune torchvision:resnet18 data.name=cifar data.path=cifar-10   # weights already cached
    options: --compare-scratch (also train from scratch into OUT/scratch), -c FILE, --out DIR,
             --overwrite, --quiet

Exit codes: 0; 1 when the loss diverged; 2 a user error (one line, as every trainwell command).
"""

from __future__ import annotations

import argparse
from typing import Any

from trainwell.formatting import percent

HELP = "fine-tune a pretrained model (run dir, .safetensors, torchvision:NAME, timm:NAME) on new data"
DESCRIPTION = (
    "Transfer learning: load every pretrained tensor except the head (the preprocessing statistics included), "
    "give the model a new head for the new data's classes and train it with finetune.strategy "
    "(full, linear_probe, gradual, discriminative) and finetune.bn (frozen, train). For a run directory, "
    "the architecture (model.*) and data.preprocess come from the pretrained run; key=value overrides "
    "set the new data, optimiser and finetune.* keys. For torchvision:NAME / timm:NAME, the inputs are "
    "normalised with the mean/std of the weights (data.preprocess=standardize with those statistics). The "
    "result is an ordinary run directory (evaluate, predict, export, load_run)."
)


def add_finetune_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``finetune`` on the CLI's subparsers (``sub``); the handler is :func:`cmd_finetune`."""
    p = sub.add_parser("finetune", help=HELP, description=DESCRIPTION)
    p.add_argument("pretrained", metavar="PRETRAINED",
                   help="a run directory, a .safetensors file of a trainwell model, torchvision:NAME or timm:NAME")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. data.classes=5,6,7,8,9 finetune.strategy=gradual")
    p.add_argument("-c", "--config", metavar="FILE", help="YAML config file")
    p.add_argument("--compare-scratch", action="store_true",
                   help="also train the same config from scratch (same seed, same data) into OUT/scratch")
    p.add_argument("--quiet", action="store_true", help="print only the result line and errors")
    from trainwell.cli.app import add_output_args

    add_output_args(p)
    p.set_defaults(handler=cmd_finetune)
    return p


def cmd_finetune(args: argparse.Namespace) -> int:
    """Handler of ``trainwell finetune``: fine-tune, then print test accuracy (and scratch, gain)."""
    from trainwell.runs.finetune import finetune

    run = finetune(args.pretrained, args.overrides, config_file=args.config, out=args.out,
                   compare_scratch=args.compare_scratch, overwrite=args.overwrite, quiet=args.quiet)
    s = run.summary
    line = f"fine-tuned ({s['strategy']}, bn {s['bn']}) test acc {percent(s['test_acc'])}"
    if "scratch_test_acc" in s:
        line += f"  scratch test acc {percent(s['scratch_test_acc'])}  gain {100 * s['gain']:+.2f} points"
    print(f"{line}  -> {run.dir}")
    return 0 if not s.get("diverged") else 1
