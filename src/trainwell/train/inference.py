"""Using a trained run: evaluate it on a split of its data (or other data), predict with it.

Python API::

    trainwell.evaluate("runs/cnn")["test_acc"]
    trainwell.predict("runs/cnn", ["digit.png", "batch.npz"])[0]["label"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trainwell.config import Config, resolve
from trainwell.data import load_splits, read_inputs
from trainwell.errors import ConfigError, DataError
from trainwell.train.load import Run, load_run
from trainwell.fileio import write_json
from trainwell.train.rundir import staged_out_dir
from trainwell.train.precision import forward_format
from trainwell.train.trainer import evaluate_split, predict_logits, resolve_device


def _run_device(run: Run, cfg: Config) -> torch.device:
    device = resolve_device(cfg.train.device)
    run.model.to(device)
    return device


def evaluate(
    run_dir: str | Path,
    overrides: list[str] | dict[str, Any] | None = None,
    *,
    split: str = "test",
    out: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Evaluate a run on a split of its data (or other data via ``data.*`` overrides).

    Writes ``summary.json`` (accuracy, loss, per-class accuracy, confusion matrix) to ``out`` when given
    (refused before the evaluation when it exists, unless ``overwrite``; written staged, whole or not at all).
    """
    staged = staged_out_dir(out, "evaluate", Path(run_dir).name, overwrite) if out is not None else None
    run = load_run(run_dir)
    cfg = resolve(overrides, base=run.config)
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split '{split}' is not one of train, val, test.")
    splits = load_splits(cfg.data)
    if tuple(splits.input_shape) != run.input_shape:
        raise DataError(
            f"data '{splits.description}' has examples of shape {tuple(splits.input_shape)} but the run expects "
            f"{run.input_shape}; evaluate on data like the training data."
        )
    part = getattr(splits, split)
    if len(part) and int(part.y.max()) >= len(run.classes):
        raise DataError(
            f"labels out of range: the data has label {int(part.y.max())} but the model knows "
            f"{len(run.classes)} classes (0..{len(run.classes) - 1})."
        )
    if cfg.data != run.config.data:  # other data than the run's own: against the run's input contract
        from trainwell.train.contract import read_contract, warn_inputs

        where = f"data.path '{cfg.data.path}'" if cfg.data.path else f"data.name={cfg.data.name}"
        warn_inputs(read_contract(run_dir), part.x, where, run=run_dir)
    device = _run_device(run, cfg)
    fmt = forward_format(cfg.train.precision, False, device)  # the run's train.precision, resolved for this device
    metrics = evaluate_split(run.model, part, device, cfg.train.eval_batch_size, fmt)
    k = len(run.classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    if len(part):
        pred = predict_logits(run.model, part.x, device, cfg.train.eval_batch_size, fmt).argmax(1).cpu().numpy()
        np.add.at(confusion, (part.y.numpy(), pred), 1)
    with np.errstate(invalid="ignore"):
        per_class = confusion.diagonal() / confusion.sum(1)
    summary = {
        "run": str(run_dir),
        "split": split,
        "data": splits.description,
        f"{split}_acc": metrics["acc"],
        f"{split}_loss": metrics["loss"],
        "n": metrics["n"],
        "per_class_acc": {run.classes[i]: (None if np.isnan(a) else float(a)) for i, a in enumerate(per_class)},
        "confusion": confusion.tolist(),
    }
    if staged is not None:
        with staged as out_dir:
            write_json(out_dir / "summary.json", summary)
        summary["out"] = str(staged.path)
    return summary


def predict(run_dir: str | Path, inputs: list[str | Path], *, device: str = "auto", batch_size: int = 1024) -> list[dict[str, Any]]:
    """Class and probabilities for each example of each input file (npz/npy or image files)."""
    dev = resolve_device(device, what="--device")  # before anything is read
    run = load_run(run_dir)
    if not inputs:
        raise DataError("predict needs at least one input file (.npz, .npy or an image).")
    image = len(run.input_shape) == 3
    arrays = [read_inputs([str(p)], run.input_shape, image) for p in inputs]
    sources = [f"{p}[{i}]" if len(a) > 1 else str(p) for p, a in zip(inputs, arrays) for i in range(len(a))]
    x = np.concatenate(arrays)
    from trainwell.train.contract import read_contract, warn_inputs

    contract = read_contract(run_dir)  # each file against the run's input contract: one line per file that is off
    for path, array in zip(inputs, arrays):
        warn_inputs(contract, array, f"input file '{path}'", run=run_dir)
    run.model.to(dev)
    fmt = forward_format(run.config.train.precision, False, dev)
    probs = F.softmax(predict_logits(run.model, torch.from_numpy(np.ascontiguousarray(x)), dev, batch_size, fmt),
                      dim=1).cpu()
    rows = []
    for i, (p, src) in enumerate(zip(probs, sources)):
        k = int(p.argmax())
        rows.append({
            "input": src,
            "class": k,
            "label": run.classes[k],
            "probability": float(p[k]),
            "probabilities": {run.classes[j]: float(v) for j, v in enumerate(p)},
        })
    return rows
