"""Using a trained run: evaluate it on a split of its data (or other data), predict with it.

Python API::

    trainwell.evaluate("runs/cnn")["test_acc"]
    trainwell.evaluate("runs/cnn", tta=["hflip", "translation"])["test_acc"]   # test-time augmentation
    trainwell.predict("runs/cnn", ["digit.png", "batch.npz"])[0]["label"]
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trainwell.config import Config, resolve, to_specs
from trainwell.data import TensorSplit, load_splits, read_inputs, to_float
from trainwell.data.augment import Augmenter
from trainwell.errors import ConfigError, DataError
from trainwell.train.load import Run, load_run
from trainwell.fileio import write_json
from trainwell.train.rundir import staged_out_dir
from trainwell.train.metrics import classification_metrics, summary_fields, write_metric_plots
from trainwell.train.precision import FP32, ForwardFormat, forward_format
from trainwell.train.placement import to_device
from trainwell.train.trainer import loss_and_accuracy, predict_logits, resolve_device


def _run_device(run: Run, cfg: Config) -> torch.device:
    device = resolve_device(cfg.train.device)
    run.model.to(device)
    return device


def split_logits(model: torch.nn.Module, split: TensorSplit, device: torch.device, batch_size: int,
                 fmt: ForwardFormat = FP32, tta: Augmenter | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits on a split, read ``batch_size`` examples at a time (a streamed split too), in
    eval mode: ``(logits, plain)``, both (N, K) float32 on the device.

    Without ``tta`` both are the plain forward's logits (:func:`~trainwell.train.trainer.predict_logits`).
    With it, ``logits`` = log of the mean softmax over the augmenter's deterministic variants
    (:meth:`~trainwell.data.augment.Augmenter.variants`: identity first, then each op's fixed views),
    valid logits like an ensemble's, and ``plain`` = the identity variant's logits (the run without TTA,
    from the same pass).
    """
    outs, plains = [], []
    with torch.no_grad():
        for xb in split.chunks(batch_size):
            if tta is None:
                plains.append(predict_logits(model, xb, device, batch_size, fmt))
                continue
            total, count, plain = None, 0, None
            for label, view in tta.variants(to_float(to_device(xb, device))):
                logits = predict_logits(model, view, device, batch_size, fmt)
                plain = logits if label == "identity" else plain
                probs = logits.softmax(1)
                total, count = (probs if total is None else total + probs), count + 1
            assert total is not None and plain is not None
            mean = total / count
            outs.append(mean.clamp_min(torch.finfo(mean.dtype).tiny).log())
            plains.append(plain)
    plain = torch.cat(plains) if plains else torch.empty(0, 0, device=device)
    return (torch.cat(outs) if tta is not None and outs else plain), plain


def tta_augmenter(spec: Sequence[Any] | str | None, input_shape: tuple[int, ...]) -> Augmenter | None:
    """The augmenter of a ``--tta`` spec (``"hflip,translation"``, ``["translation:fraction=0.2"]``), every op
    one with deterministic variants (:func:`~trainwell.data.augment.check_variants`); None for no spec."""
    if spec is None or (isinstance(spec, (list, tuple, str)) and not spec):
        return None
    from trainwell.data.augment import build_augmenter, check_variants

    return check_variants(build_augmenter(spec, input_shape))


def evaluate(
    run_dir: str | Path,
    overrides: list[str] | dict[str, Any] | None = None,
    *,
    split: str = "test",
    out: str | Path | None = None,
    overwrite: bool = False,
    tta: Sequence[Any] | str | None = None,
) -> dict[str, Any]:
    """Evaluate a run on a split of its data (or other data via ``data.*`` overrides).

    Returns (and with ``out`` writes as summary.json) ``{split}_acc``, ``{split}_loss``, ``n``,
    ``per_class_acc``, then every metric of :mod:`trainwell.train.metrics`: ``{split}_top3_acc`` and
    ``{split}_top5_acc`` (where k < classes), ``{split}_nll``, ``{split}_ece``, ``{split}_macro_precision``,
    ``_recall``, ``_f1``, ``per_class`` (precision, recall, f1, support by class name), ``confusion``
    (rows true, columns predicted) and ``reliability`` (the diagram's bins). With ``out``, also
    confusion.png and reliability.png there; ``files`` names them and ``out`` the folder. ``out`` is
    refused before the evaluation when it exists, unless ``overwrite``; written staged, whole or not at all.

    ``tta``: test-time augmentation, e.g. ``["hflip", "translation"]`` or ``"hflip,translation"``: every
    figure is of the softmax averaged over the ops' deterministic variants (identity + each view,
    :meth:`~trainwell.data.augment.Augmenter.variants`); ``tta`` in the result lists the views and the
    figures without them (from the same pass). An op without such variants is refused.
    """
    staged = staged_out_dir(out, "evaluate", Path(run_dir).name, overwrite) if out is not None else None
    run = load_run(run_dir)
    cfg = resolve(overrides, base=run.config)
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split '{split}' is not one of train, val, test.")
    augmenter = tta_augmenter(tta, run.input_shape)  # refused before the data is read
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
    classes = list(run.classes)
    k = len(classes)
    summary: dict[str, Any] = {"run": str(run_dir), "split": split, "data": splits.description}
    if not len(part):
        confusion = np.zeros((k, k), dtype=np.int64)
        summary.update({f"{split}_acc": float("nan"), f"{split}_loss": float("nan"), "n": 0,
                        "per_class_acc": {c: None for c in classes}, "confusion": confusion.tolist()})
        metrics = None
    else:
        logits, plain = split_logits(run.model, part, device, cfg.train.eval_batch_size, fmt, augmenter)
        loss, acc = loss_and_accuracy(logits, part.y)
        metrics = classification_metrics(logits, part.y)
        with np.errstate(invalid="ignore"):
            confusion = np.asarray(metrics["confusion"])
            per_class = confusion.diagonal() / confusion.sum(1)
        summary.update({
            f"{split}_acc": acc,
            f"{split}_loss": loss,
            "n": len(part),
            "per_class_acc": {classes[i]: (None if np.isnan(a) else float(a)) for i, a in enumerate(per_class)},
            **summary_fields(metrics, split, classes),
        })
        if augmenter is not None:
            without = classification_metrics(plain, part.y)
            summary["tta"] = {
                "ops": [str(op) for op in to_specs(tta, "--tta")],
                "variants": augmenter.variant_names(),
                f"{split}_acc_without": loss_and_accuracy(plain, part.y)[1],
                f"{split}_nll_without": without["nll"],
                f"{split}_ece_without": without["ece"],
            }
    if staged is not None:
        with staged as out_dir:
            if metrics is not None:
                title = f"{Path(run_dir).name}, {split} split" + (" with TTA" if augmenter is not None else "")
                summary["files"] = {name: str(staged.path / Path(path).name) for name, path in
                                    write_metric_plots(metrics, classes, out_dir, title).items()}
            write_json(out_dir / "summary.json", summary)
        summary["out"] = str(staged.path)
    return summary


def _card_columns(run_dir: str | Path, input_shape: tuple[int, ...]) -> list[str] | None:
    """The training columns a tabular run's model.json records (None: unnamed, or not a single run's folder)."""
    from trainwell.errors import RunDirError
    from trainwell.train.load import read_card

    try:
        columns = read_card(Path(run_dir)).get("columns")
    except RunDirError:
        return None
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        return None
    fits = len(input_shape) == 1 and len(columns) == input_shape[0] and len(set(columns)) == len(columns)
    return [str(c) for c in columns] if fits else None


def predict(run_dir: str | Path, inputs: list[str | Path], *, device: str = "auto", batch_size: int = 1024) -> list[dict[str, Any]]:
    """Class and probabilities for each example of each input file: npz/npy arrays, image files, or for a
    tabular run CSV rows (the training columns by name; the label column, if there, is ignored)."""
    dev = resolve_device(device, what="--device")  # before anything is read
    run = load_run(run_dir)
    if not inputs:
        raise DataError("predict needs at least one input file (.npz, .npy, an image, or a .csv for a tabular run).")
    image = len(run.input_shape) == 3
    columns = _card_columns(run_dir, run.input_shape)
    arrays = [read_inputs([str(p)], run.input_shape, image, columns=columns,
                          label_column=run.config.data.label_column) for p in inputs]
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
