"""``trainwell export``: a run or ensemble folder as one ONNX or TorchScript file, kept here so app.py only registers it.

    trainwell export runs/cnn --format onnx                 # runs/cnn/model.onnx
    trainwell export runs/ens --format torchscript --out ens.pt --overwrite

Prints one line: the file, its input and its output. What the graph contains and takes is
:mod:`trainwell.train.export`'s docstring.
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = "export a run (or ensemble) with its fitted preprocessing to one ONNX or TorchScript file"
DESCRIPTION = (
    "Write a run folder (or an ensemble folder, as one graph) to one file that runs without trainwell. The graph "
    "includes the fitted preprocessing: its input 'x' (N, *input_shape), any batch size N, takes the examples as "
    "trainwell stores them and 'trainwell predict' reads them: uint8 pixels 0..255 for images (divided by 255 "
    "inside the graph), float32 for tabular data and signals. Its output 'logits' (N, num_classes) float32 are "
    "the run's logits (an ensemble's: its combined log-probabilities); softmax gives predict's probabilities. The "
    "file's metadata (ONNX metadata_props; TorchScript extra file trainwell.json) records the input dtype and "
    "shape, the class names and the preprocessing. ONNX (opset 20) needs: pip install 'trainwell[export]'. "
    "The exported file is checked against the model before it is written."
)


def add_export_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``export`` on the CLI's subparsers (``sub``); the handler is :func:`cmd_export`."""
    from trainwell.train.export import FORMATS

    p = sub.add_parser("export", help=HELP, description=DESCRIPTION)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder or an ensemble folder")
    p.add_argument("--format", required=True, choices=list(FORMATS),
                   help="onnx (onnxruntime and other runtimes) or torchscript (torch.jit.load)")
    p.add_argument("--out", metavar="FILE", help="the file to write (default: RUN_DIR/model.onnx or RUN_DIR/model.pt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(handler=cmd_export)
    return p


def cmd_export(args: argparse.Namespace) -> int:
    from trainwell.train.export import export_run

    print(export_run(args.run_dir, format=args.format, out=args.out, overwrite=args.overwrite).line())
    return 0
