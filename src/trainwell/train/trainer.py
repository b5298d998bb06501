"""The training loop: plain PyTorch you can read top to bottom.

Design notes (why it is fast and reproducible):

* The whole dataset lives in tensors on the device (uint8 for images); a batch is one index
  operation, not a DataLoader with worker processes.
* Loss and accuracy accumulate in device tensors; the host reads them only when the progress bar
  refreshes and at epoch end, so the GPU is never stalled by a per-step ``.item()``.
* Every random draw has an explicit generator whose state can be saved (:class:`RandomState`):
  shuffling, mixing and augmentation each own one; dropout uses the global generator, seeded too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainwell.config import Config
from trainwell.data.splits import Splits, TensorSplit, to_float
from trainwell.errors import ConfigError, DataError
from trainwell.train.mix import apply_mix, check_mix_config, mixing_enabled, sample_mix, smooth_targets
from trainwell.train.optim import build_optimizer, build_scheduler, penalty


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a clear error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"train.device '{spec}' is not a device; use auto, cpu or cuda[:N].") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA GPU is visible; use train.device=auto or cpu.")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"train.device '{spec}' is not supported; use auto, cpu or cuda[:N].")
    return device


@dataclass
class RandomState:
    """Every generator a run draws from, seeded from train.seed; its state is what exact resume saves."""

    shuffle: torch.Generator
    mix: np.random.Generator
    augment: torch.Generator

    @classmethod
    def from_seed(cls, seed: int, device: torch.device) -> "RandomState":
        # Distinct streams per purpose, so turning augmentation on does not change the shuffling order.
        shuffle = torch.Generator().manual_seed(seed)
        augment = torch.Generator(device=device).manual_seed(seed + 2)
        mix = np.random.default_rng([seed, 3])
        torch.manual_seed(seed + 4)  # dropout draws from the global generator
        return cls(shuffle, mix, augment)


@dataclass
class EpochEnd:
    """What a callback sees after each epoch."""

    epoch: int
    metrics: dict[str, float]
    model: nn.Module


class Callback(Protocol):
    """Typed extension point of the loop (e.g. the doctor); every method is optional."""

    def on_epoch_end(self, event: EpochEnd) -> None: ...


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_val_acc: float = float("nan")
    best_epoch: int = 0
    train_seconds: float = 0.0
    examples_seen: int = 0
    diverged: bool = False
    param_groups: dict[str, list[str]] = field(default_factory=dict)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 1024) -> torch.Tensor:
    """Logits for a stored-dtype input tensor, in eval mode, in batches.

    Shape: x (N, *input_shape) uint8 or float -> (N, num_classes) float32 on the device.
    """
    was_training = model.training
    model.eval()
    outs = [model(to_float(x[i : i + batch_size].to(device, non_blocking=True))) for i in range(0, len(x), batch_size)]
    model.train(was_training)
    if not outs:
        return torch.empty(0, 0, device=device)
    return torch.cat(outs).float()


def evaluate_split(model: nn.Module, split: TensorSplit, device: torch.device, batch_size: int) -> dict[str, float]:
    """Mean cross-entropy (no smoothing) and accuracy on a split."""
    if len(split) == 0:
        return {"loss": float("nan"), "acc": float("nan"), "n": 0}
    logits = predict_logits(model, split.x, device, batch_size)
    y = split.y.to(device)
    loss = F.cross_entropy(logits, y).item()
    acc = (logits.argmax(1) == y).float().mean().item()
    return {"loss": loss, "acc": acc, "n": len(split)}


#: Convert uint8 data to float once, up front, when the float copy stays under this size: one
#: conversion instead of one per batch (bench/bench_trainer.py), at 4x the memory of uint8.
FLOAT_CACHE_BYTES = 1 << 30


def _on_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    if x.dtype == torch.uint8 and x.numel() * 4 <= FLOAT_CACHE_BYTES:
        return to_float(x.to(device))
    return x.to(device)


def _batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device) -> list[torch.Tensor]:
    """A shuffled epoch of index batches (a trailing batch of 1 is dropped: batch norm needs 2)."""
    perm = torch.randperm(n, generator=generator).to(device)
    batches = list(perm.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches.pop()
    return batches


def steps_per_epoch(n: int, batch_size: int) -> int:
    steps, rest = divmod(n, batch_size)
    return steps + (1 if rest > 1 or (rest == 1 and steps == 0) else 0)


def check_train_config(cfg: Config, n_train: int) -> None:
    t = cfg.train
    if n_train < 2:
        raise DataError(f"the training split has {n_train} example(s); training needs at least 2 — give more data.")
    if t.epochs < 1:
        raise ConfigError(f"train.epochs must be >= 1, got {t.epochs}.")
    if t.batch_size < 1:
        raise ConfigError(f"train.batch_size must be >= 1, got {t.batch_size}.")
    if t.eval_batch_size < 1:
        raise ConfigError(f"train.eval_batch_size must be >= 1, got {t.eval_batch_size}.")
    if t.grad_clip < 0:
        raise ConfigError(f"train.grad_clip must be >= 0 (0 = off), got {t.grad_clip}.")
    if not 0 <= cfg.loss.label_smoothing < 1:
        raise ConfigError(f"loss.label_smoothing must be in [0, 1), got {cfg.loss.label_smoothing}.")
    if cfg.reg.l1 < 0 or cfg.reg.l2 < 0:
        raise ConfigError("reg.l1 and reg.l2 must be >= 0.")
    check_mix_config(cfg.mix)


def preflight(model: nn.Module, cfg: Config, n_train: int) -> None:
    """Every check of the training settings, run before any folder is created or data moved."""
    check_train_config(cfg, n_train)
    optimizer, _ = build_optimizer(model, cfg.optim, cfg.reg.exempt_bias_and_norm)
    build_scheduler(optimizer, cfg, steps_per_epoch(n_train, cfg.train.batch_size))


Augmenter = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def fit(
    model: nn.Module,
    splits: Splits,
    cfg: Config,
    device: torch.device,
    rng: RandomState,
    *,
    augment: Augmenter | None = None,
    log_epoch: Callable[[dict[str, Any]], None] | None = None,
    progress: Any = None,
    callbacks: Sequence[Callback] = (),
) -> FitResult:
    """Train ``model`` in place on ``splits.train``, validating on ``splits.val`` every epoch.

    ``log_epoch`` receives each epoch's metrics row; ``progress`` is an object with
    ``start(total_steps, batch_size)``, ``advance(n_steps, stats_fn)`` and ``stop()`` (see trainwell.train.progress).
    """
    n_train = len(splits.train)
    check_train_config(cfg, n_train)
    num_classes = splits.num_classes
    optimizer, groups = build_optimizer(model, cfg.optim, cfg.reg.exempt_bias_and_norm)
    spe = steps_per_epoch(n_train, cfg.train.batch_size)
    scheduler = build_scheduler(optimizer, cfg, spe)
    mixing = mixing_enabled(cfg.mix)
    smoothing = cfg.loss.label_smoothing

    x_train = _on_device(splits.train.x, device)
    y_train = splits.train.y.to(device)
    result = FitResult(param_groups=groups.describe())
    best_val = -math.inf
    if progress is not None:
        progress.start(spe * cfg.train.epochs, cfg.train.batch_size)
    model.to(device).train()

    for epoch in range(1, cfg.train.epochs + 1):
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        lr_now = optimizer.param_groups[0]["lr"]
        for idx in _batches(n_train, cfg.train.batch_size, rng.shuffle, device):
            xb = to_float(x_train[idx])  # (B, *input_shape) float32
            yb = y_train[idx]  # (B,)
            if augment is not None:
                xb = augment(xb, rng.augment)
            if mixing and (params := sample_mix(xb.shape, cfg.mix, rng.mix, device)) is not None:
                xb, target = apply_mix(xb, smooth_targets(yb, num_classes, smoothing), params)
                logits = model(xb)
                loss = F.cross_entropy(logits, target)
            else:
                logits = model(xb)
                loss = F.cross_entropy(logits, yb, label_smoothing=smoothing)
            extra = penalty(groups, cfg.reg.l1, cfg.reg.l2)
            total = loss if extra is None else loss + extra

            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if cfg.train.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optimizer.step()
            scheduler.step()

            loss_sum.add_(loss.detach(), alpha=len(idx))  # on the device: no host sync
            correct.add_((logits.detach().argmax(1) == yb).sum())
            seen += len(idx)
            if progress is not None:
                progress.advance(1, lambda: (loss_sum.item() / seen, correct.item() / seen))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        result.train_seconds += seconds
        result.examples_seen += seen

        train_loss = loss_sum.item() / seen
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_acc": correct.item() / seen,
            "lr": lr_now,
            "seconds": seconds,
            "examples_per_second": seen / seconds if seconds > 0 else float("nan"),
        }
        if not math.isfinite(train_loss):
            result.diverged = True
        if len(splits.val):
            val = evaluate_split(model, splits.val, device, cfg.train.eval_batch_size)
            row["val_loss"], row["val_acc"] = val["loss"], val["acc"]
            if val["acc"] > best_val:
                best_val, result.best_epoch = val["acc"], epoch
        result.history.append(row)
        if log_epoch is not None:
            log_epoch(row)
        for cb in callbacks:
            if hasattr(cb, "on_epoch_end"):
                cb.on_epoch_end(EpochEnd(epoch, row, model))
        if result.diverged:
            break  # non-finite loss: further steps only spread NaN through the weights
    if progress is not None:
        progress.stop()
    result.best_val_acc = best_val if best_val > -math.inf else float("nan")
    return result
