"""Runs: train one into a run directory, load it back, evaluate it, predict with it.

Python API::

    import trainwell
    run = trainwell.train({"model.name": "cnn", "train.epochs": 5})
    run.summary["test_acc"], run.dir, run.model
    trainwell.evaluate(run.dir)["test_acc"]
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from rich.console import Console
from torch import nn

import trainwell
from trainwell.config import Config, from_dict, resolve
from trainwell.data import PREPROCESSORS, Splits, fit_preprocess, load_preprocess, load_splits, read_inputs, to_float
from trainwell.errors import ConfigError, DataError, RunDirError
from trainwell.nn import INITS, MODELS, build_model
from trainwell.nn.init import lsuv_init
from trainwell.nn.pipeline import Classifier, count_parameters
from trainwell.train.optim import OPTIMIZERS, SCHEDULES
from trainwell.train.lr_find import lr_range_test, plot_lr_find
from trainwell.train.plots import plot_curves
from trainwell.train.progress import TrainProgress, format_epoch
from trainwell.train.rundir import (
    FORMAT,
    FORMAT_VERSION,
    MetricsLog,
    atomic_write_text,
    load_weights,
    prepare_out_dir,
    read_json,
    save_weights,
    write_json,
)
from trainwell.train.trainer import RandomState, evaluate_split, fit, predict_logits, preflight, resolve_device

ConfigLike = Config | dict[str, Any] | list[str] | None


@dataclass
class Run:
    """A trained (or loaded) run: its folder, resolved config, model and summary."""

    dir: Path | None
    config: Config
    model: Classifier
    summary: dict[str, Any]
    classes: list[str]
    input_shape: tuple[int, ...]
    splits: Splits | None = None


def as_config(config: ConfigLike = None, overrides: list[str] | dict[str, Any] | None = None,
              config_file: str | Path | None = None) -> Config:
    """Accept a Config, a dict of dotted keys, a list of ``key=value`` strings, or nothing."""
    if isinstance(config, Config):
        return resolve(overrides, config_file, base=config)
    if isinstance(config, dict):
        base = resolve(config, config_file)
        return resolve(overrides, base=base) if overrides else base
    if isinstance(config, list):
        return resolve(list(config) + list(overrides or []), config_file) if not isinstance(overrides, dict) \
            else resolve(overrides, base=resolve(config, config_file))
    return resolve(overrides, config_file)


def check_names(cfg: Config) -> None:
    """Fail on unknown names before any data is loaded or folder created."""
    MODELS.entry(cfg.model.name)
    OPTIMIZERS.entry(cfg.optim.name)
    SCHEDULES.entry(cfg.sched.name)
    PREPROCESSORS.entry(cfg.data.preprocess)


def build_classifier(cfg: Config, splits: Splits, model: nn.Module | None = None) -> Classifier:
    """Preprocessing fitted on the training split, then the network built for its output shape.

    Initialisation draws from a generator seeded by train.seed; a data-dependent scheme (LSUV)
    then rescales the layers on a random training batch pushed through the fitted preprocessing.
    """
    init_gen = torch.Generator().manual_seed(cfg.train.seed + 1)
    preprocess = fit_preprocess(cfg.data.preprocess, to_float(splits.train.x), cfg.data)
    if model is not None:
        return Classifier(model, preprocess)
    net = build_model(cfg, preprocess.output_shape(splits.input_shape), splits.num_classes, generator=init_gen)
    if INITS.entry(cfg.init.scheme).meta.get("needs_batch"):
        # A random sample, not the first rows: a split may be ordered by class.
        idx = torch.randperm(len(splits.train), generator=init_gen)[: max(cfg.train.batch_size, 256)]
        with torch.no_grad():
            batch = preprocess(to_float(splits.train.x[idx]))
        lsuv_init(net, batch, cfg.init, init_gen)
    return Classifier(net, preprocess)


def _model_card(splits: Splits, cfg: Config, custom: bool) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "trainwell_version": trainwell.__version__,
        "input_shape": list(splits.input_shape),
        "input_dtype": str(splits.train.x.dtype).replace("torch.", ""),
        "num_classes": splits.num_classes,
        "classes": list(splits.classes),
        "preprocess": cfg.data.preprocess,
        "model": cfg.model.name if not custom else "custom",
        "custom_model": custom,
        "data": splits.description,
    }


def _tensorboard_writer_class() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "train.tensorboard=true needs the tensorboard package; pip install 'trainwell[tensorboard]'."
        ) from None
    return SummaryWriter


def train(
    config: ConfigLike = None,
    *,
    overrides: list[str] | dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    model: nn.Module | None = None,
    splits: Splits | None = None,
    quiet: bool = False,
    console: Console | None = None,
    callbacks: tuple = (),
    prepare: Callable[[Classifier], Sequence[Any] | None] | None = None,
) -> Run:
    """Train a model from a config and write a complete run directory.

    ``model`` replaces the registry's model by any ``nn.Module`` taking (N, *input_shape) floats;
    ``splits`` replaces the configured data source. ``prepare(classifier)`` runs on the built model
    before anything else touches it (e.g. fine-tuning loads pretrained weights and freezes layers)
    and may return callbacks that the loop then also calls (e.g. gradual unfreezing);
    unlike ``model``, the run stays a registry model that ``load_run`` rebuilds. ``callbacks`` get
    ``on_epoch_end`` events from the loop.
    """
    cfg = as_config(config, overrides, config_file)
    check_names(cfg)
    if cfg.train.ensemble != 1 or cfg.train.snapshots:  # ensembles, snapshot ensembles: train/ensemble.py
        from trainwell.train import ensemble

        ensemble.check_ensemble_keys(cfg, custom_model=model is not None,
                                     custom_data=splits is not None or prepare is not None)
        if cfg.train.ensemble > 1:
            return ensemble.train_ensemble(cfg, out, overwrite=overwrite, quiet=quiet, console=console)
    device = resolve_device(cfg.train.device)
    console = console or Console(stderr=True, quiet=quiet, soft_wrap=True)
    if splits is None:
        splits = load_splits(cfg.data)
    custom = model is not None
    classifier = build_classifier(cfg, splits, model)
    if prepare is not None:
        callbacks = (*callbacks, *(prepare(classifier) or ()))
    net = classifier.net
    lr_found = None
    if cfg.optim.lr == "auto":
        lr_found = lr_range_test(classifier, splits, cfg, device)
        cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=lr_found.suggested_lr))
        console.print(f"optim.lr=auto: LR range test suggests {lr_found.suggested_lr:.3g}", highlight=False)
    preflight(classifier, cfg, len(splits.train))
    writer_class = _tensorboard_writer_class() if cfg.train.tensorboard else None
    doctor = None
    if cfg.doctor:
        from trainwell.diagnose import DoctorCallback

        doctor = DoctorCallback(classifier, console=console, peak_lr=float(cfg.optim.lr))
        callbacks = (*callbacks, doctor)
    augment = _build_augmenter(cfg, splits, device)
    tag = f"{cfg.data.name}-{cfg.model.name if not custom else 'custom'}"
    out_dir = prepare_out_dir(out, "train", tag, overwrite)

    atomic_write_text(out_dir / "config.yaml", cfg.to_yaml())
    if lr_found is not None:
        write_json(out_dir / "lr_find.json", lr_found.to_dict())
        plot_lr_find(lr_found, out_dir / "lr_find.png")
    write_json(out_dir / "model.json", _model_card(splits, cfg, custom))
    snapshots = None
    if cfg.train.snapshots:  # the weights at the end of each lr cycle -> out/snapshots/NN
        from trainwell.train.ensemble import snapshot_callback

        snapshots = snapshot_callback(cfg, out_dir, _model_card(splits, cfg, custom), len(splits.train))
        callbacks = (*callbacks, snapshots)
    metrics_log = MetricsLog(out_dir / "metrics.jsonl")
    writer = writer_class(str(out_dir / "tensorboard")) if writer_class is not None else None
    params = count_parameters(classifier)
    console.print(
        f"[bold]trainwell[/] {splits.description} | {len(splits.train)}/{len(splits.val)}/{len(splits.test)} "
        f"train/val/test | {cfg.model.name if not custom else type(net).__name__} {params:,} params | "
        f"{device} | run dir {out_dir}",
        highlight=False,
    )
    progress = TrainProgress(console) if cfg.train.progress and not quiet else None

    def log_epoch(row: dict[str, Any]) -> None:
        metrics_log.append(row)
        if progress is not None:
            progress.epoch(row, cfg.train.epochs)
        elif not quiet:
            console.print(format_epoch(row, cfg.train.epochs), highlight=False)
        if writer is not None:
            for key, value in row.items():
                if key != "epoch":
                    writer.add_scalar(key.replace("_", "/", 1), value, row["epoch"])

    rng = RandomState.from_seed(cfg.train.seed, device)
    try:
        result = fit(classifier, splits, cfg, device, rng, augment=augment, log_epoch=log_epoch,
                     progress=progress, callbacks=callbacks)
    finally:
        if progress is not None:
            progress.stop()
        if writer is not None:
            writer.close()
        if doctor is not None:
            doctor.close()

    test = evaluate_split(classifier, splits.test, device, cfg.train.eval_batch_size)
    final = result.history[-1] if result.history else {}
    summary = {
        "test_acc": test["acc"],
        "test_loss": test["loss"],
        "best_val_acc": result.best_val_acc,
        "best_epoch": result.best_epoch,
        "final_val_acc": final.get("val_acc", float("nan")),
        "final_train_acc": final.get("train_acc", float("nan")),
        "epochs": len(result.history),
        "params": params,
        "train_seconds": result.train_seconds,
        "examples_per_second": result.examples_seen / result.train_seconds if result.train_seconds else 0.0,
        "diverged": result.diverged,
        "n_train": len(splits.train),
        "n_val": len(splits.val),
        "n_test": len(splits.test),
        "data": splits.description,
        "device": str(device),
        "seed": cfg.train.seed,
        "param_groups": {k: len(v) for k, v in result.param_groups.items()},
        "lr": cfg.optim.lr,
        "lr_auto": lr_found is not None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if doctor is not None:
        summary["doctor"] = doctor.summary()
        doctor.write(out_dir)  # doctor.json + doctor_*.png
    save_weights(out_dir / "model.safetensors", classifier.state_dict())
    if result.history and cfg.train.plots:
        plot_curves(result.history, out_dir / "curves.png", title=f"{tag} (seed {cfg.train.seed})")
    if snapshots is not None:
        summary["snapshot_ensemble"] = snapshots.combine(out_dir, splits, console)
    write_json(out_dir / "summary.json", summary)
    console.print(
        f"test acc {100 * summary['test_acc']:.2f}%  test loss {summary['test_loss']:.4f}  "
        f"best val acc {100 * summary['best_val_acc']:.2f}%  "
        f"{summary['examples_per_second']:,.0f} ex/s  -> {out_dir}",
        highlight=False,
    )
    if result.diverged:
        console.print("[yellow]warning:[/] the loss became non-finite and training stopped; lower optim.lr.")
    return Run(out_dir, cfg, classifier, summary, list(splits.classes), tuple(splits.input_shape), splits)


def find_lr(
    config: ConfigLike = None,
    *,
    overrides: list[str] | dict[str, Any] | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    steps: int = 100,
    start_lr: float = 1e-6,
    end_lr: float = 10.0,
) -> dict[str, Any]:
    """The LR range test on the configured model and data; writes lr_find.png/json and summary.json."""
    cfg = as_config(config, overrides)
    check_names(cfg)
    device = resolve_device(cfg.train.device)
    splits = load_splits(cfg.data)
    classifier = build_classifier(cfg, splits)
    torch.manual_seed(cfg.train.seed + 4)
    result = lr_range_test(classifier, splits, cfg, device, start_lr=start_lr, end_lr=end_lr, steps=steps)
    out_dir = prepare_out_dir(out, "lr-find", f"{cfg.data.name}-{cfg.model.name}", overwrite)
    atomic_write_text(out_dir / "config.yaml", cfg.to_yaml())
    write_json(out_dir / "lr_find.json", result.to_dict())
    plot_lr_find(result, out_dir / "lr_find.png")
    summary = {"suggested_lr": result.suggested_lr, "min_loss_lr": result.min_loss_lr,
               "diverged_at": result.diverged_at, "steps": len(result.lrs), "optim": cfg.optim.name}
    write_json(out_dir / "summary.json", summary)
    return {**summary, "out": str(out_dir)}


def param_group_rows(cfg: Config) -> list[dict[str, Any]]:
    """Which tensors get weight decay and the L1/L2 penalties, for ``trainwell train --show-param-groups``."""
    from trainwell.train.optim import split_param_groups

    check_names(cfg)
    splits = load_splits(cfg.data)
    groups = split_param_groups(build_classifier(cfg, splits).net, cfg.reg.exempt_bias_and_norm)
    rows = []
    for group, params in (("decay", groups.decay), ("no_decay", groups.no_decay)):
        on = group == "decay"
        for name, p in params:
            rows.append({
                "name": name, "shape": list(p.shape), "numel": p.numel(), "group": group,
                "weight_decay": cfg.optim.weight_decay if on else 0.0,
                "l1": cfg.reg.l1 if on else 0.0, "l2": cfg.reg.l2 if on else 0.0,
            })
    return rows


def check_run(cfg: Config, splits: Splits) -> Classifier:
    """Everything ``train`` checks before it creates a folder (names, model for the data, optimiser,
    schedule, augmentation), without training: a grid of runs is checked whole before any starts."""
    check_names(cfg)
    classifier = build_classifier(cfg, splits)
    preflight(classifier, cfg, len(splits.train))
    _build_augmenter(cfg, splits, torch.device("cpu"))
    return classifier


def _build_augmenter(cfg: Config, splits: Splits, device: torch.device):
    if not cfg.augment:
        return None
    from trainwell.data.augment import build_augmenter

    return build_augmenter(cfg.augment, splits.input_shape)


# ----------------------------------------------------------------------------- loading


def read_run_files(run_dir: str | Path) -> tuple[dict[str, Any], Config, dict[str, torch.Tensor]]:
    """A run folder's model card, config and weights, each checked: one clear error per problem."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory '{run_dir}' does not exist; pass a folder written by 'trainwell train'.")
    card = read_json(run_dir / "model.json", "model card")
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise RunDirError(f"'{run_dir / 'model.json'}' is not a trainwell model card; pass a run directory.")
    if card.get("format_version", 0) > FORMAT_VERSION:
        raise RunDirError(f"run '{run_dir}' was written by a newer trainwell; upgrade trainwell to load it.")
    if card.get("custom_model"):
        raise RunDirError(
            f"run '{run_dir}' used a custom nn.Module; rebuild it in Python and load model.safetensors into it."
        )
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise RunDirError(f"'{run_dir}' is not a complete run directory (config.yaml is missing).")
    try:
        tree = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError:
        raise RunDirError(f"'{config_path}' is corrupt (not valid YAML); restore it.") from None
    cfg = from_dict(tree or {}, f"'{config_path}'")
    return card, cfg, load_weights(run_dir / "model.safetensors")


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """Rebuild a trained model from its run directory (safetensors + JSON/YAML, no pickle)."""
    run_dir = Path(run_dir)
    if (run_dir / "ensemble.json").is_file():  # an ensemble folder: trainwell ensemble, train.ensemble=K
        from trainwell.train.ensemble import load_ensemble

        return load_ensemble(run_dir, device)
    card, cfg, state = read_run_files(run_dir)
    input_shape = tuple(int(d) for d in card["input_shape"])
    pre_state = {k[len("preprocess.") :]: v for k, v in state.items() if k.startswith("preprocess.")}
    preprocess = load_preprocess(card["preprocess"], pre_state)
    net = build_model(cfg, preprocess.output_shape(input_shape), int(card["num_classes"]))
    model = Classifier(net, preprocess)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise RunDirError(
            f"weights in '{run_dir / 'model.safetensors'}' do not match its config ({first[:120]}); "
            "the folder mixes files of different runs."
        ) from None
    model.to(resolve_device(str(device)) if isinstance(device, str) else device).eval()
    summary_path = run_dir / "summary.json"
    summary = read_json(summary_path, "summary") if summary_path.is_file() else {}
    return Run(run_dir, cfg, model, summary, list(card["classes"]), input_shape)


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

    Writes ``summary.json`` (accuracy, loss, per-class accuracy, confusion matrix) to ``out`` when given.
    """
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
    device = _run_device(run, cfg)
    metrics = evaluate_split(run.model, part, device, cfg.train.eval_batch_size)
    k = len(run.classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    if len(part):
        pred = predict_logits(run.model, part.x, device, cfg.train.eval_batch_size).argmax(1).cpu().numpy()
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
    if out is not None:
        out_dir = prepare_out_dir(out, "evaluate", Path(run_dir).name, overwrite)
        write_json(out_dir / "summary.json", summary)
        summary["out"] = str(out_dir)
    return summary


def predict(run_dir: str | Path, inputs: list[str | Path], *, device: str = "auto", batch_size: int = 1024) -> list[dict[str, Any]]:
    """Class and probabilities for each example of each input file (npz/npy or image files)."""
    run = load_run(run_dir)
    if not inputs:
        raise DataError("predict needs at least one input file (.npz, .npy or an image).")
    image = len(run.input_shape) == 3
    arrays = [read_inputs([str(p)], run.input_shape, image) for p in inputs]
    sources = [f"{p}[{i}]" if len(a) > 1 else str(p) for p, a in zip(inputs, arrays) for i in range(len(a))]
    x = np.concatenate(arrays)
    dev = resolve_device(device)
    run.model.to(dev)
    probs = F.softmax(predict_logits(run.model, torch.from_numpy(np.ascontiguousarray(x)), dev, batch_size), dim=1).cpu()
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
