"""The training loop: plain PyTorch you can read top to bottom, over one explicit state.

The caller builds everything from the config (model, optimiser, schedule, data order, augmenter,
callbacks: :func:`build_state`, :class:`LoopSettings`) and hands it to :func:`fit`. Everything that
changes while training lives in one :class:`TrainState`, whose ``state_dict()`` is what a
checkpoint saves and ``load_state_dict()`` restores exactly:

* the model, the optimiser (moments), the schedule (step index, rollback factor), the EMA weights;
* every generator (:class:`RandomState`: shuffle, augment, mix, and the global/CUDA ones dropout uses);
* where the loop is: epochs done, optimiser steps done, micro-batches done in the current epoch and
  that epoch's permutation, the epoch's running loss/accuracy sums (device tensors);
* the history of metrics rows, best validation accuracy, rollbacks, the callbacks' own state.

A CPU run therefore repeats bit for bit, and a run killed at any point and resumed from its newest
checkpoint ends with the same weights and metrics as one never interrupted
(tests/test_resume_kill.py kills real processes to prove it).

Why it is fast: the data lives in device tensors (uint8 images converted once when they fit); a
batch is one index operation (with ``train.data_on_device=false``, or a split too large for the
device, one gather on the host and one asynchronous copy: :mod:`trainwell.train.placement`);
loss, accuracy and the divergence flag accumulate on the device and the host reads them only a
few times a second (progress, divergence), at checkpoints and at epoch ends — never once per step.
How the forward computes (train.precision's autocast and fp16 loss scaling,
train.channels_last, train.compile) is :mod:`trainwell.train.precision`; the loop calls it.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainwell.config import Config, MixConfig
from trainwell.data.splits import TensorSplit, to_float
from trainwell.errors import ConfigError, DataError, Interrupted
from trainwell.seeds import numpy_generator, seed_global, torch_generator
from trainwell.train.checkpoint import Checkpoints
from trainwell.train.distributed import SINGLE, SyncClock, World, grad_sync, local_state, pack_rank_states
from trainwell.train.events import (
    Callback,
    EpochEnd,
    FitEnd,
    FitStart,
    Restore,
    StepEnd,
    check_callbacks,
    overrides,
)
from trainwell.train.imbalance import balanced_draw, class_weights, weighted_cross_entropy
from trainwell.train.mix import apply_mix, mixing_enabled, sample_mix, smooth_targets
from trainwell.train.optim import ParamGroups, ScheduleTable, build_optimizer, build_scheduler, penalty
from trainwell.train.placement import DataOnDevice, place_training_data, to_device
from trainwell.train.precision import (
    FP32,
    ForwardFormat,
    backward,
    check_forward_options,
    compiled,
    forward_format,
    grad_scaler,
    optimizer_step,
    to_channels_last,
    unscale,
)

__all__ = ["Callback", "EpochEnd", "FitResult", "LoopSettings", "RandomState", "TrainState", "build_state", "fit"]

#: How often (seconds) the loop reads its device-side counters: progress and the divergence flag.
SYNC_SECONDS = 0.25


def resolve_device(spec: str, what: str = "train.device") -> torch.device:
    """``auto`` -> cuda when available, else cpu; a device this machine lacks is a clear error.

    Checked before any folder or tensor exists, so a wrong device never leaves a half-written run.
    ``what`` is the option the user set (``train.device``, ``--device``), named in the error.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{what} '{spec}' is not a device; use auto, cpu, cuda[:N] or mps.") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{what} '{spec}' is not supported; use auto, cpu, cuda[:N] or mps.")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{what}={spec} but no CUDA GPU is visible; use {what}=auto or cpu.")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{what}={spec} but only {count} CUDA GPU(s) are visible (cuda:0..cuda:{count - 1}); "
                              f"use {what}=cuda or a smaller index.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{what}={spec} but MPS (Apple's GPU backend) is not available on this machine; "
                          f"use {what}=auto or cpu.")
    return device


# ----------------------------------------------------------------------------- state


@dataclass
class RandomState:
    """Every generator the loop draws from, each a named stream of train.seed (:mod:`trainwell.seeds`).

    Dropout (and any module that takes no generator) draws from torch's global generators, which
    :meth:`from_seed` seeds from the ``dropout`` stream and :meth:`state_dict` saves with the rest.
    In a data-parallel run each rank draws its augmentations, mixes and dropout masks from streams of
    its own (:meth:`World.stream`); the shuffle stream, which orders the global batches, is shared.
    """

    shuffle: torch.Generator
    augment: torch.Generator
    mix: np.random.Generator

    @classmethod
    def from_seed(cls, seed: int, device: torch.device, world: World = SINGLE) -> RandomState:
        seed_global(seed, world.stream("dropout"))
        return cls(torch_generator(seed, "shuffle"), torch_generator(seed, world.stream("augment"), device),
                   numpy_generator(seed, world.stream("mix")))

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"shuffle": self.shuffle.get_state(), "augment": self.augment.get_state(),
                                 "mix": self.mix.bit_generator.state, "global": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = list(torch.cuda.get_rng_state_all())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shuffle.set_state(state["shuffle"])
        self.augment.set_state(state["augment"])
        self.mix.bit_generator.state = state["mix"]
        torch.set_rng_state(state["global"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainState:
    """Everything a run changes while it trains; ``state_dict()`` round-trips it exactly."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: ScheduleTable
    rng: RandomState
    groups: ParamGroups
    ema: torch.optim.swa_utils.AveragedModel | None = None
    scaler: torch.amp.GradScaler | None = None
    """fp16's loss scaler (train.precision=fp16): its scale and growth counter are part of the state."""
    epoch: int = 0
    """Epochs finished."""
    step: int = 0
    """Optimiser steps taken (with train.accumulate=N, one per N micro-batches)."""
    batch: int = 0
    """Micro-batches done in the current epoch: the position in ``perm``."""
    perm: torch.Tensor | None = None
    """The current epoch's order of the training examples (CPU); None between epochs."""
    loss_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    correct: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.long))
    seen: int = 0
    epoch_seconds: float = 0.0
    epoch_lr: float = math.nan
    """The learning rate at the first step of the current epoch (the metrics row's ``lr``)."""
    epoch_momentum: float = math.nan
    """The momentum (SGD's, Adam's beta1) at the first step of the current epoch (the metrics row's ``momentum``)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val: float = -math.inf
    best_epoch: int = 0
    train_seconds: float = 0.0
    examples_seen: int = 0
    rollbacks: int = 0
    divergence: dict[str, Any] | None = None
    """The latest divergence met ({step, epoch, action, rollbacks}), kept across rollbacks and resumes."""
    stop_reason: str | None = None
    """Set by a callback (early stopping) to end training after the current epoch."""

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated, tested and saved: the EMA's when train.ema is on."""
        return self.ema.module if self.ema is not None else self.model

    def to(self, device: torch.device) -> TrainState:
        self.loss_sum = self.loss_sum.to(device)
        self.correct = self.correct.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "rng": self.rng.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch, "step": self.step, "batch": self.batch, "perm": self.perm,
            "loss_sum": self.loss_sum, "correct": self.correct, "seen": self.seen,
            "epoch_seconds": self.epoch_seconds, "epoch_lr": self.epoch_lr,
            "epoch_momentum": self.epoch_momentum, "history": self.history,
            "best_val": self.best_val, "best_epoch": self.best_epoch,
            "train_seconds": self.train_seconds, "examples_seen": self.examples_seen,
            "rollbacks": self.rollbacks, "divergence": self.divergence, "stop_reason": self.stop_reason,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.loss_sum.device
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.rng.load_state_dict(state["rng"])
        if (state["ema"] is None) != (self.ema is None):
            raise ConfigError("the checkpoint and the config disagree on train.ema; resume with the run's config.")
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if (state.get("scaler") is None) != (self.scaler is None):
            raise ConfigError("the checkpoint and the config disagree on train.precision (fp16 scales the loss); "
                              "resume with the run's config.")
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        for key in ("epoch", "step", "batch", "seen", "best_epoch", "examples_seen", "rollbacks"):
            setattr(self, key, int(state[key]))
        for key in ("epoch_seconds", "epoch_lr", "best_val", "train_seconds"):
            setattr(self, key, float(state[key]))
        self.epoch_momentum = float(state.get("epoch_momentum", math.nan))  # checkpoints from before it: unknown
        self.perm = state["perm"]
        self.loss_sum = state["loss_sum"].to(device)
        self.correct = state["correct"].to(device)
        self.history = [dict(row) for row in state["history"]]
        self.divergence = state["divergence"]
        self.stop_reason = state["stop_reason"]


@dataclass(frozen=True)
class LoopSettings:
    """The loop's settings as plain typed values, resolved once from the config."""

    epochs: int
    batch_size: int
    num_classes: int
    accumulate: int = 1
    grad_clip: float = 0.0
    label_smoothing: float = 0.0
    class_weights: str | tuple[float, ...] = "none"
    """loss.class_weights: none, balanced or one weight per class (:func:`~trainwell.train.imbalance.class_weights`)."""
    sampler: str = "shuffle"
    """data.sampler: shuffle or balanced (:class:`BatchOrder`)."""
    l1: float = 0.0
    l2: float = 0.0
    mix: MixConfig = field(default_factory=MixConfig)
    eval_batch_size: int = 1024
    checkpoint_every: int = 0
    on_divergence: str = "stop"
    rollback_lr_factor: float = 0.5
    max_rollbacks: int = 3
    precision: str = "auto"
    """train.precision as configured; :func:`fit` resolves it for the state's device."""
    channels_last: bool = False
    compile: bool = False
    data_on_device: DataOnDevice = "auto"

    @classmethod
    def from_config(cls, cfg: Config, num_classes: int) -> LoopSettings:
        t = cfg.train
        return cls(epochs=t.epochs, batch_size=t.batch_size, num_classes=num_classes, accumulate=t.accumulate,
                   grad_clip=t.grad_clip, label_smoothing=cfg.loss.label_smoothing,
                   class_weights=(cfg.loss.class_weights if isinstance(cfg.loss.class_weights, str)
                                  else tuple(cfg.loss.class_weights)),
                   sampler=cfg.data.sampler, l1=cfg.reg.l1, l2=cfg.reg.l2,
                   mix=cfg.mix, eval_batch_size=t.eval_batch_size, checkpoint_every=t.checkpoint_every,
                   on_divergence=t.on_divergence, rollback_lr_factor=t.rollback_lr_factor,
                   max_rollbacks=t.max_rollbacks, precision=t.precision, channels_last=t.channels_last,
                   compile=t.compile, data_on_device=t.data_on_device)


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_val_acc: float = float("nan")
    best_epoch: int = 0
    train_seconds: float = 0.0
    examples_seen: int = 0
    steps: int = 0
    diverged: bool = False
    divergence: dict[str, Any] | None = None
    """{step, epoch, action, rollbacks}: where the loss first became non-finite and what was done."""
    stop_reason: str | None = None
    param_groups: dict[str, list[str]] = field(default_factory=dict)
    data_on_device: bool | None = None
    """Where train.data_on_device put the training split: True on the device, False on the host."""
    class_weights: list[float] | None = None
    """loss.class_weights as resolved on the training split (None: unweighted)."""


# ----------------------------------------------------------------------------- construction


class BatchOrder:
    """The data order: each epoch's positions from the shuffle stream (a fresh permutation; with
    ``labels``, data.sampler=balanced: n draws with replacement, each class equally likely,
    :func:`~trainwell.train.imbalance.balanced_draw`), cut into batches (a trailing batch smaller than
    ``min_batch`` is dropped: batch norm needs 2 examples, on every rank of a data-parallel run)."""

    def __init__(self, n: int, batch_size: int, min_batch: int = 2, labels: torch.Tensor | None = None,
                 num_classes: int = 0) -> None:
        self.n, self.batch_size, self.min_batch = n, batch_size, min_batch
        self.labels, self.num_classes = labels, num_classes

    def permutation(self, generator: torch.Generator) -> torch.Tensor:
        if self.labels is not None:
            return balanced_draw(self.labels, self.num_classes, generator)
        return torch.randperm(self.n, generator=generator)

    def batches(self, perm: torch.Tensor) -> list[torch.Tensor]:
        batches = list(perm.split(self.batch_size))
        if len(batches) > 1 and len(batches[-1]) < min(self.min_batch, self.batch_size):  # (a partial one)
            batches.pop()
        return batches


def steps_per_epoch(n: int, batch_size: int, accumulate: int = 1, min_batch: int = 2) -> int:
    """Optimiser steps in an epoch of ``n`` examples (micro-batches grouped by ``accumulate``; a
    trailing batch under ``min_batch`` dropped, as :class:`BatchOrder` does)."""
    micro, rest = divmod(n, batch_size)
    micro += 1 if rest >= min_batch or (rest > 0 and micro == 0) else 0
    return math.ceil(micro / accumulate)


def build_state(model: nn.Module, cfg: Config, n_train: int, device: torch.device,
                rng: RandomState | None = None, world: World = SINGLE) -> TrainState:
    """The optimiser, schedule, EMA, loss scaler and generators for ``model`` from the config, as the
    loop's state (of this rank, in a data-parallel run)."""
    check_train_config(cfg, n_train)
    t = cfg.train
    fmt = check_forward_options(t.precision, t.channels_last, t.compile, device)
    model.to(device)
    if t.channels_last:
        to_channels_last(model)
    optimizer, groups = build_optimizer(model, cfg.optim, cfg.reg.exempt_bias_and_norm)
    schedule = build_scheduler(optimizer, cfg, steps_per_epoch(n_train, cfg.train.batch_size, cfg.train.accumulate,
                                                               world.min_batch()))
    ema = None
    if cfg.train.ema > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema), use_buffers=False)
    rng = rng or RandomState.from_seed(cfg.train.seed, device, world)
    return TrainState(model, optimizer, schedule, rng, groups, ema, grad_scaler(fmt, device)).to(device)


def check_train_config(cfg: Config, n_train: int) -> None:
    """What depends on the data (the config's own ranges are checked when it is built)."""
    if n_train < 2:
        raise DataError(f"the training split has {n_train} example(s); training needs at least 2 — give more data.")


def preflight(model: nn.Module, cfg: Config, n_train: int) -> None:
    """Every check of the training settings, run before any folder is created or data moved."""
    import dataclasses

    check_train_config(cfg, n_train)
    t = cfg.train
    check_forward_options(t.precision, t.channels_last, t.compile, resolve_device(t.device))
    optim = cfg.optim if cfg.optim.lr != "auto" else dataclasses.replace(cfg.optim, lr=1.0)  # the range test sets it
    optimizer, _ = build_optimizer(model, optim, cfg.reg.exempt_bias_and_norm)
    build_scheduler(optimizer, dataclasses.replace(cfg, optim=optim),
                    steps_per_epoch(n_train, cfg.train.batch_size, cfg.train.accumulate))


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 1024,
                   fmt: ForwardFormat = FP32) -> torch.Tensor:
    """Logits for a stored-dtype input tensor, in eval mode, in batches, the forward in ``fmt``
    (autocast dtype, memory format: :mod:`trainwell.train.precision`).

    Shape: x (N, *input_shape) uint8 or float -> (N, num_classes) float32 on the device.
    """
    return _batch_logits(model, (x[i : i + batch_size] for i in range(0, len(x), batch_size)), device, fmt)


def _batch_logits(model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device,
                  fmt: ForwardFormat = FP32) -> torch.Tensor:
    # Each batch moves in its stored dtype (uint8: 4x less to copy) and is converted on the device.
    was_training = model.training
    model.eval()
    with fmt.autocast(device):
        outs = [model(fmt.batch(to_float(to_device(xb, device)))) for xb in batches]
    model.train(was_training)
    if not outs:
        return torch.empty(0, 0, device=device)
    return torch.cat(outs).float()


def evaluate_split(model: nn.Module, split: TensorSplit, device: torch.device, batch_size: int,
                   fmt: ForwardFormat = FP32, world: World = SINGLE) -> dict[str, float]:
    """Mean cross-entropy (no smoothing) and accuracy on a split (a streamed one read batch by batch),
    float32 logits of a forward in ``fmt``; in a data-parallel run each rank evaluates its share and
    the sums are reduced (every rank gets the figures of the whole split)."""
    if len(split) == 0:
        return {"loss": float("nan"), "acc": float("nan"), "n": 0}
    if world.distributed:
        return _evaluate_shard(model, split, device, batch_size, fmt, world)
    with torch.no_grad():
        logits = _batch_logits(model, split.chunks(batch_size), device, fmt)
    loss, acc = loss_and_accuracy(logits, split.y)
    return {"loss": loss, "acc": acc, "n": len(split)}


def loss_and_accuracy(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy (no smoothing) and accuracy of logits (N, K) against labels (N,), in the logits'
    float32 arithmetic: the figures :func:`evaluate_split` reports (a run's val and test figures)."""
    y = y.to(logits.device)
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def _evaluate_shard(model: nn.Module, split: TensorSplit, device: torch.device, batch_size: int,
                    fmt: ForwardFormat, world: World) -> dict[str, float]:
    start, stop = world.part_range(len(split))
    positions = torch.arange(start, stop)
    with torch.no_grad():
        logits = _batch_logits(model, (split.take(positions[i : i + batch_size])
                                       for i in range(0, len(positions), batch_size)), device, fmt)
    y = split.y[start:stop].to(device)
    sums = torch.zeros(2, dtype=torch.float64, device=world.collective_device())
    if len(y):
        sums[0] = F.cross_entropy(logits, y, reduction="sum").double()
        sums[1] = (logits.argmax(1) == y).sum().double()
    loss_sum, correct = world.sum(sums).tolist()
    return {"loss": loss_sum / len(split), "acc": correct / len(split), "n": len(split)}


# ----------------------------------------------------------------------------- signals


class StopRequest:
    """Set by SIGINT/SIGTERM while :func:`catch_signals` is active; the loop checkpoints and stops."""

    def __init__(self) -> None:
        self.signum: int | None = None


@contextlib.contextmanager
def catch_signals() -> Iterator[StopRequest]:
    """Turn SIGINT and SIGTERM into a request the loop honours at the next step (main thread only)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: Any) -> None:
        if request.signum is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        request.signum = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ----------------------------------------------------------------------------- the loop


class _Diverged(Exception):
    def __init__(self, step: int) -> None:
        self.step = step


def fit(
    state: TrainState,
    train: TensorSplit,
    val: TensorSplit,
    settings: LoopSettings,
    *,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    callbacks: Sequence[Callback] = (),
    checkpoints: Checkpoints | None = None,
    stop: StopRequest | None = None,
    warn: Callable[[str], None] | None = None,
    world: World = SINGLE,
) -> FitResult:
    """Train ``state.model`` on ``train`` from wherever ``state`` is, validating on ``val`` each epoch.

    Checkpoints (to ``checkpoints``, in memory when None) at the start, every epoch end and every
    ``settings.checkpoint_every`` optimiser steps; a non-finite loss is met with
    ``settings.on_divergence`` (stop: the last good checkpoint's weights are kept; rollback: restart
    from it at a lower LR); ``stop`` (SIGINT/SIGTERM) checkpoints and raises :class:`Interrupted`.
    ``world``: this process's rank in a data-parallel run (:mod:`trainwell.train.distributed`): every
    rank calls ``fit`` with the same state, rank 0 with the run folder's checkpoints.
    """
    device = state.loss_sum.device
    fmt = forward_format(settings.precision, settings.channels_last, device)
    if fmt.scaled != (state.scaler is not None):
        raise ConfigError(f"train.precision={fmt.name} {'needs' if fmt.scaled else 'has no'} a loss scaler, but the "
                          "loop's state was built with another precision; build the state and the settings from one config.")
    # The forward of training and evaluation (compiled: a wrapper over the same parameters; the state keeps the module).
    ddp = world.wrap(state.model, device)  # averages the gradients over ranks in the backward (one process: the model)
    forward = compiled(ddp, settings.compile)
    # Evaluation never runs through DDP (its forward may sync buffers, and the ranks' shards can differ in batches).
    evaluated = state.model if state.ema is None else state.ema.module
    eval_forward = forward if evaluated is ddp else compiled(evaluated, settings.compile)
    callbacks = check_callbacks(callbacks)
    checkpoints = checkpoints or Checkpoints(None)
    per_step = [cb for cb in callbacks if overrides(cb, "on_step_end")]
    order = BatchOrder(len(train), settings.batch_size, world.min_batch(),
                       train.y if settings.sampler == "balanced" else None, settings.num_classes)
    class_weight = class_weights(settings.class_weights, train.y, settings.num_classes)
    loss_weight = None if class_weight is None else class_weight.to(device)
    feed = place_training_data(train, device, settings.data_on_device)
    mixing = mixing_enabled(settings.mix)
    epoch_steps = steps_per_epoch(len(train), settings.batch_size, settings.accumulate, world.min_batch())
    total_steps = epoch_steps * settings.epochs
    # The objectives (+ 0 x the clipped gradient norm: NaN/inf there too, unless fp16's scaler skips
    # such steps) of the steps not checked yet, device scalars kept as they are (no op per step); a
    # non-finite one is a divergence, found when the host reads them: a few times a second, at
    # checkpoints and at epoch ends.
    step_losses: list[torch.Tensor] = []

    def first_bad_step() -> int | None:
        """The first unchecked step whose objective is not finite on any rank (one host read), or None."""
        bad = None
        if step_losses:
            nonfinite = torch.nonzero(~torch.isfinite(torch.stack(step_losses))).flatten()
            if len(nonfinite):
                bad = state.step - len(step_losses) + int(nonfinite[0])
        bad = world.first(bad)  # (a collective: every rank gets the same answer and acts on it)
        if bad is None:
            step_losses.clear()  # all finite: checked
        return bad

    def reduce_sums() -> None:
        """The epoch's loss and correct-prediction sums so far, summed over the ranks (no-op for one process)."""
        world.sum(state.loss_sum)
        world.sum(state.correct)

    def leave_sums_on_main() -> None:
        """After :func:`reduce_sums`: rank 0 keeps the totals, the others start from zero again, so a later
        reduction (a checkpoint, the epoch's end) counts every example once."""
        if not world.main:
            state.loss_sum.zero_()
            state.correct.zero_()

    def read_progress() -> tuple[float, float]:
        """(mean train loss, train accuracy) of the epoch so far over every rank, leaving the sums as they are."""
        sums = world.sum(torch.stack([state.loss_sum.double(), state.correct.double()]))
        loss_sum, correct = sums.tolist()
        return loss_sum / state.seen, correct / state.seen

    def save_checkpoint() -> None:
        # Never save a state that has diverged: no non-finite loss, and (the last update may have
        # overflowed with a finite loss) no non-finite weight. One host read.
        if (bad := first_bad_step()) is not None:
            raise _Diverged(bad)
        if not bool(torch.stack([torch.isfinite(p).all() for p in state.model.parameters()]).all()):
            raise _Diverged(state.step - 1)  # (the weights are the same on every rank: so is this answer)
        reduce_sums()
        leave_sums_on_main()
        loop = pack_rank_states(world, state.state_dict())  # with every rank's generators
        checkpoints.save({"loop": loop, "callbacks": callback_states(callbacks)}, state.step, state.epoch)

    def restore(reason: str) -> None:
        loaded = checkpoints.latest(warn)
        if loaded is None:  # pragma: no cover - fit always saves one before the first step
            raise ConfigError("no checkpoint to restore")
        state.load_state_dict(local_state(world, loaded.state["loop"]))
        load_callback_states(callbacks, loaded.state["callbacks"])
        checkpoints.discard_after(loaded.step)
        step_losses.clear()  # a restored state is a good one
        for cb in callbacks:
            cb.on_restore(Restore(state, reason))

    def train_step(indices: list[torch.Tensor]) -> None:
        # One optimiser step over len(indices) micro-batches (gradient accumulation: each loss / N).
        state.optimizer.zero_grad(set_to_none=True)
        total: torch.Tensor | None = None
        for i, idx in enumerate(indices):
            local = world.part(idx)  # this rank's share of the global batch (one process: all of it)
            with grad_sync(ddp, i == len(indices) - 1):  # accumulating: average over ranks once, at the last
                xb, yb = feed.batch(local)  # (B, *input_shape) float32, (B,) on the device
                if augment is not None:
                    xb = augment(xb, state.rng.augment)
                with fmt.autocast(device):  # the forward and the loss in fmt.dtype (fp32: no autocast)
                    if mixing and (params := sample_mix(xb.shape, settings.mix, state.rng.mix, device)) is not None:
                        xb, target = apply_mix(xb, smooth_targets(yb, settings.num_classes,
                                                                  settings.label_smoothing), params)
                        logits = forward(fmt.batch(xb))
                        loss = weighted_cross_entropy(logits, target, loss_weight)
                    else:
                        logits = forward(fmt.batch(xb))
                        loss = weighted_cross_entropy(logits, yb, loss_weight, settings.label_smoothing)
                extra = penalty(state.groups, settings.l1, settings.l2)
                objective = loss if extra is None else loss + extra
                # DDP averages the ranks' gradients: weighted by N * n_r / n, they average to the gradient
                # of the global batch's mean also when the parts differ in size (an epoch's last batch).
                weighted = objective if len(local) * world.size == len(idx) \
                    else objective * (len(local) * world.size / len(idx))
                backward(weighted / len(indices) if len(indices) > 1 else weighted, state.scaler)
            state.loss_sum.add_(loss.detach(), alpha=len(local))  # on the device: no host sync
            state.correct.add_((logits.detach().argmax(1) == yb).sum())
            state.seen += len(idx)  # examples of the global batch (all ranks')
            total = objective.detach() if total is None else total + objective.detach()
        assert total is not None  # indices holds at least one micro-batch
        if settings.grad_clip > 0:
            unscale(state.optimizer, state.scaler)  # clip the true gradient, not the scaled one
            norm = nn.utils.clip_grad_norm_(state.model.parameters(), settings.grad_clip)
            if state.scaler is None:  # (fp16: an overflowed norm is a step the scaler skips, not a divergence)
                total = torch.add(total, norm, alpha=0)  # NaN when the norm is NaN or inf
        step_losses.append(total)
        optimizer_step(state.optimizer, state.scaler)
        state.schedule.step()
        if state.ema is not None:
            state.ema.update_parameters(state.model)
        state.step += 1
        state.batch += len(indices)

    def stop_requested() -> bool:
        return stop is not None and stop.signum is not None

    def run_epochs() -> None:
        clock = SyncClock(world, SYNC_SECONDS, state.step)
        while state.epoch < settings.epochs and state.stop_reason is None:
            if state.perm is None:  # a new epoch (otherwise: resuming inside one)
                state.perm = order.permutation(state.rng.shuffle)
                state.batch, state.seen, state.epoch_seconds = 0, 0, 0.0
                state.epoch_lr = state.schedule.get_last_lr()[0]
                state.epoch_momentum = state.schedule.get_last_momentum()[0]
                state.loss_sum.zero_()
                state.correct.zero_()
                step_losses.clear()
            batches = order.batches(state.perm.to(feed.index_device))
            t0 = time.perf_counter()
            state.model.train()
            while state.batch < len(batches):
                train_step(batches[state.batch : state.batch + settings.accumulate])
                stats = None
                # A signal stops one process at once; the ranks of a data-parallel run stop together, at a sync.
                stopping = stop_requested() and not world.distributed
                if clock.due(state.step):  # the host reads the device a few times a second
                    if (bad := first_bad_step()) is not None:
                        raise _Diverged(bad)
                    stats = read_progress()
                    stopping = clock.synced(state.step, stop_requested())
                for cb in per_step:
                    cb.on_step_end(StepEnd(state, stats))
                # (at the epoch's last step the epoch-end checkpoint follows at once)
                checkpoint_due = (settings.checkpoint_every and state.step % settings.checkpoint_every == 0
                                  and state.batch < len(batches))
                if checkpoint_due or stopping:
                    state.epoch_seconds += _elapsed(t0, device)
                    t0 = time.perf_counter()
                    save_checkpoint()
                    if stopping:  # (a rank that got no signal itself stops as the others do)
                        signum = stop.signum if stop is not None and stop.signum is not None else signal.SIGTERM
                        raise Interrupted(signum, state.epoch, state.step)
            state.epoch_seconds += _elapsed(t0, device)
            end_epoch()
            save_checkpoint()

    def end_epoch() -> None:
        if (bad := first_bad_step()) is not None:
            raise _Diverged(bad)
        seen, seconds = state.seen, state.epoch_seconds
        reduce_sums()
        train_loss, train_acc = state.loss_sum.item() / seen, state.correct.item() / seen
        leave_sums_on_main()
        state.epoch += 1
        row: dict[str, Any] = {
            "epoch": state.epoch,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "lr": state.epoch_lr,
            "momentum": state.epoch_momentum,
            "seconds": seconds,
            "examples_per_second": seen / seconds if seconds > 0 else float("nan"),
        }
        state.train_seconds += seconds
        state.examples_seen += seen
        if len(val):
            world.share_buffers(state.model)  # every rank scores its shard with the weights rank 0 saves
            model = state.eval_model
            if state.ema is not None:  # BN statistics are the live model's: EMA averages weights only
                for ema_buffer, buffer in zip(model.buffers(), state.model.buffers()):
                    ema_buffer.copy_(buffer)
            metrics = evaluate_split(eval_forward, val, device, settings.eval_batch_size, fmt, world)
            row["val_loss"], row["val_acc"] = metrics["loss"], metrics["acc"]
            if metrics["acc"] > state.best_val:
                state.best_val, state.best_epoch = metrics["acc"], state.epoch
        state.history.append(row)
        state.perm = None
        for cb in callbacks:
            cb.on_epoch_end(EpochEnd(state.epoch, row, state.eval_model, state))

    def train_until_done() -> None:
        """Run the epochs; on a divergence stop or roll back (then run on); ``state.divergence`` records it."""
        while True:
            try:
                run_epochs()
                break
            except _Diverged as exc:
                epoch = exc.step // max(epoch_steps, 1) + 1
                can_roll_back = settings.on_divergence == "rollback" and state.rollbacks < settings.max_rollbacks
                rollbacks = state.rollbacks + int(can_roll_back)
                divergence = {"step": exc.step, "epoch": epoch, "action": "rollback" if can_roll_back else "stop",
                              "rollbacks": rollbacks}
                restore("divergence")
                state.rollbacks, state.divergence = rollbacks, divergence
                if not can_roll_back:
                    state.stop_reason = "diverged"
                    break
                # The restored checkpoint may predate earlier rollbacks: the factor counts them all.
                state.schedule.factor = settings.rollback_lr_factor ** rollbacks
                state.schedule.load_state_dict(state.schedule.state_dict())  # apply the lower rates now
                if warn is not None:
                    warn(f"the loss became non-finite at step {exc.step} (epoch {epoch}); rolled back to step "
                         f"{state.step} with the learning rate x{state.schedule.factor:g} "
                         f"(rollback {rollbacks} of {settings.max_rollbacks})")

    for cb in callbacks:
        cb.on_fit_start(FitStart(state, total_steps, settings.batch_size * settings.accumulate))
    try:
        # The last good state before the first step: what a divergence falls back to (the ranks of a
        # data-parallel run save together: rank 0 also re-saves the checkpoint it resumed from).
        if world.any((state.step == 0 and state.perm is None) or checkpoints.folder is None):
            save_checkpoint()
        train_until_done()
    finally:
        checkpoints.close()  # every checkpoint on disk before fit returns or raises

    result = FitResult(
        history=list(state.history), best_val_acc=state.best_val if state.best_val > -math.inf else float("nan"),
        best_epoch=state.best_epoch, train_seconds=state.train_seconds, examples_seen=state.examples_seen,
        steps=state.step, diverged=state.stop_reason == "diverged", divergence=state.divergence,
        stop_reason=state.stop_reason, param_groups=state.groups.describe(), data_on_device=feed.on_device,
        class_weights=None if class_weight is None else class_weight.tolist(),
    )
    for cb in callbacks:
        cb.on_fit_end(FitEnd(state, result))
    return result


def _stateful(callbacks: Sequence[Callback]) -> list[Callback]:
    # Those with a state of their own; displays and logs (progress bar, metrics file) have none and
    # may differ between the run and its resume (--quiet).
    return [cb for cb in callbacks if overrides(cb, "state_dict")]


def callback_states(callbacks: Sequence[Callback]) -> list[dict[str, Any]]:
    """Each stateful callback's state with its class name, in order (what a checkpoint saves)."""
    return [{"callback": type(cb).__name__, "state": cb.state_dict()} for cb in _stateful(callbacks)]


def load_callback_states(callbacks: Sequence[Callback], saved: list[dict[str, Any]]) -> None:
    """Give each stateful callback its saved state; they must be the ones the checkpoint was made with."""
    stateful = _stateful(callbacks)
    names, saved_names = [type(cb).__name__ for cb in stateful], [s["callback"] for s in saved]
    if names != saved_names:
        raise ConfigError(f"the checkpoint was saved with the callbacks {saved_names or 'none'}, this run has "
                          f"{names or 'none'}; resume with the same callbacks (and the run's own config).")
    for cb, entry in zip(stateful, saved):
        cb.load_state_dict(entry["state"])


def _elapsed(t0: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0
