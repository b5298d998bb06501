"""Optimisers, parameter groups, penalties, learning-rate schedules and cyclical momentum.

Weight decay and the L1/L2 penalties touch weights only (tensors with ``dim() >= 2`` outside norm
layers), never biases or norm scales/shifts: decaying those only hurts (a BN scale pulled to zero
silences its channel) — the nanoGPT/timm convention.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from trainwell.config import Config, OptimConfig, SchedConfig
from trainwell.errors import ConfigError
from trainwell.nn.layers import NORM_LAYERS
from trainwell.registry import new_registry


@dataclass(frozen=True)
class OptimizerMeta:
    """What every optimiser promises."""

    decoupled: bool  # weight decay decoupled from the gradient (AdamW), not L2 added to it
    momentum_key: Literal["momentum", "betas"]  # the param-group key sched.momentum writes: SGD's "momentum",
    # or Adam's "betas" (its first entry, beta1, the decay of the first-moment average; beta2 is kept)


@dataclass(frozen=True)
class ScheduleMeta:
    """What every schedule promises."""

    default_warmup_fraction: float | None = None  # warmup when sched.warmup_epochs=0 (None: no warmup)


OPTIMIZERS = new_registry("optim", OptimizerMeta, "Optimisers: optim.name")
SCHEDULES = new_registry("sched", ScheduleMeta, "Learning-rate schedules after warmup: sched.name")

# Two optional attributes of a parameter that the optimiser honours (trainwell.runs.finetune sets them):
#   p.lr_scale = 0.5         its learning rate is optim.lr * 0.5 (own param group; schedules keep the ratio);
#   p.unfreezes_later = True a frozen parameter (requires_grad=False) that a callback unfreezes during
#                            training joins the optimiser now; with no gradient the optimiser skips it.


@dataclass
class ParamGroups:
    """Named parameters split into those that are decayed/penalised and those that are not."""

    decay: list[tuple[str, nn.Parameter]]
    no_decay: list[tuple[str, nn.Parameter]]

    def describe(self) -> dict[str, list[str]]:
        return {"decay": [n for n, _ in self.decay], "no_decay": [n for n, _ in self.no_decay]}


def split_param_groups(model: nn.Module, exempt_bias_and_norm: bool = True) -> ParamGroups:
    """Weights of linear/conv layers (dim >= 2) decay; biases and norm parameters do not (unless not exempt)."""
    in_norm: set[int] = set()
    for module in model.modules():
        if isinstance(module, NORM_LAYERS):
            in_norm.update(id(p) for p in module.parameters(recurse=False))
    decay: list[tuple[str, nn.Parameter]] = []
    no_decay: list[tuple[str, nn.Parameter]] = []
    for name, p in model.named_parameters():
        if not p.requires_grad and not getattr(p, "unfreezes_later", False):
            continue
        is_weight = p.dim() >= 2 and id(p) not in in_norm
        (decay if is_weight or not exempt_bias_and_norm else no_decay).append((name, p))
    return ParamGroups(decay, no_decay)


def _groups(groups: ParamGroups, weight_decay: float) -> list[dict]:
    """Torch param groups: decay / no-decay, split further by ``p.lr_scale`` (largest scale first)."""
    def scale_of(p: nn.Parameter) -> float:
        return float(getattr(p, "lr_scale", 1.0))

    scales = sorted({scale_of(p) for _, p in groups.decay + groups.no_decay}, reverse=True) or [1.0]
    out = []
    for scale in scales:
        extra = {} if scale == 1.0 else {"lr_scale": scale}
        decay = [p for _, p in groups.decay if scale_of(p) == scale]
        no_decay = [p for _, p in groups.no_decay if scale_of(p) == scale]
        if decay or len(scales) == 1:  # one scale: the decay group comes first, empty or not
            out.append({"params": decay, "weight_decay": weight_decay, **extra})
        if no_decay:
            out.append({"params": no_decay, "weight_decay": 0.0, **extra})
    return out


@OPTIMIZERS.register("sgd", decoupled=False, momentum_key="momentum")
def sgd(groups: ParamGroups, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD with momentum (Polyak 1964) or Nesterov momentum (Sutskever et al. 2013); L2-coupled decay."""
    return torch.optim.SGD(
        _groups(groups, cfg.weight_decay), lr=_peak_lr(cfg), momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
    )


@OPTIMIZERS.register("adam", decoupled=False, momentum_key="betas")
def adam(groups: ParamGroups, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam (Kingma & Ba 2015): per-parameter steps from first and second moment estimates."""
    return torch.optim.Adam(_groups(groups, cfg.weight_decay), lr=_peak_lr(cfg), betas=_betas(cfg), eps=cfg.eps)


@OPTIMIZERS.register("adamw", decoupled=True, momentum_key="betas")
def adamw(groups: ParamGroups, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter 2019): Adam with weight decay decoupled from the gradient."""
    return torch.optim.AdamW(_groups(groups, cfg.weight_decay), lr=_peak_lr(cfg), betas=_betas(cfg), eps=cfg.eps)


def _peak_lr(cfg: OptimConfig) -> float:
    """``optim.lr`` as a number; a ConfigError while it is still ``auto``."""
    if cfg.lr == "auto":  # the recipe resolves it (LR range test) before any optimiser is built
        raise ConfigError("optim.lr=auto must be resolved by the LR range test before building the optimiser.")
    return cfg.lr


def _betas(cfg: OptimConfig) -> tuple[float, float]:
    return float(cfg.betas[0]), float(cfg.betas[1])


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, exempt_bias_and_norm: bool = True
) -> tuple[torch.optim.Optimizer, ParamGroups]:
    _peak_lr(cfg)
    groups = split_param_groups(model, exempt_bias_and_norm)
    if not groups.decay and not groups.no_decay:
        raise ConfigError("the model has no trainable parameters.")
    optimizer = OPTIMIZERS.get(cfg.name)(groups, cfg)
    for group in optimizer.param_groups:  # per-parameter lr_scale (discriminative fine-tuning)
        group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
    return optimizer, groups


def penalty(groups: ParamGroups, l1: float, l2: float) -> torch.Tensor | None:
    """Explicit penalty on the decayed weights: l1 * sum|w| + l2/2 * sum w^2 (None when both are 0)."""
    if l1 == 0 and l2 == 0:
        return None
    weights = [p for _, p in groups.decay]
    total = weights[0].new_zeros(())
    if l1:
        total = total + l1 * sum(w.abs().sum() for w in weights)
    if l2:
        total = total + 0.5 * l2 * sum(w.pow(2).sum() for w in weights)
    return total


# ----------------------------------------------------------------------------- schedules
# A schedule maps progress t in [0, 1] (after warmup) to a multiplier of optim.lr.


@SCHEDULES.register("constant")
def constant(t: float, cfg: SchedConfig, lr: float, epoch: float) -> float:
    """lr stays at optim.lr."""
    return 1.0


@SCHEDULES.register("step")
def step(t: float, cfg: SchedConfig, lr: float, epoch: float) -> float:
    """lr * gamma^floor(epoch / step_epochs) (the classic ResNet schedule)."""
    return cfg.gamma ** math.floor(epoch / max(cfg.step_epochs, 1))


@SCHEDULES.register("cosine")
def cosine(t: float, cfg: SchedConfig, lr: float, epoch: float) -> float:
    """min_lr + (lr - min_lr) * (1 + cos(pi t)) / 2 (Loshchilov & Hutter 2017, SGDR without restarts)."""
    floor = cfg.min_lr / lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


@SCHEDULES.register("onecycle", default_warmup_fraction=0.3)
def onecycle(t: float, cfg: SchedConfig, lr: float, epoch: float) -> float:
    """One cycle (Smith & Topin 2019): warmup (30% of training unless set), then linear decay to ~0; sched.momentum=0.85,0.95 cycles the momentum too."""
    floor = cfg.min_lr / lr
    return floor + (1 - floor) * (1 - t)


@SCHEDULES.register("cosine_restarts")
def cosine_restarts(t: float, cfg: SchedConfig, lr: float, epoch: float) -> float:
    """Cosine with warm restarts: sched.cycles equal cycles from optim.lr to min_lr (SGDR; snapshot ensembles)."""
    _, phase = cycle_position(t, max(cfg.cycles, 1))
    floor = cfg.min_lr / lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * phase))


def cycle_position(t: float, cycles: int) -> tuple[int, float]:
    """(cycle index, phase in [0, 1]) of progress t in [0, 1] cut into ``cycles`` equal cycles.

    The tolerance keeps t = c / cycles, computed as (step - warmup) / span, from landing a rounding
    error before the restart; t = 1 is the end of the last cycle (phase 1).
    """
    x = t * cycles
    k = min(math.floor(x + 1e-9), cycles - 1)
    return k, max(x - k, 0.0)


def restart_cycles(cfg: Config) -> int:
    """Cycles of cosine_restarts: sched.cycles, or train.snapshots when sched.cycles is 0."""
    return cfg.sched.cycles or cfg.train.snapshots


def check_cycles(cfg: Config, steps_per_epoch: int) -> None:
    """sched.cycles and train.snapshots: one snapshot per cosine_restarts cycle, each at least an epoch long."""
    sched, snapshots = cfg.sched, cfg.train.snapshots
    if snapshots and sched.name != "cosine_restarts":
        raise ConfigError(
            f"train.snapshots={snapshots} needs sched.name=cosine_restarts (snapshots are taken at the end of "
            f"each lr cycle), got sched.name={sched.name}; add sched.name=cosine_restarts."
        )
    if snapshots and sched.cycles not in (0, snapshots):
        raise ConfigError(
            f"train.snapshots={snapshots} takes one snapshot per cycle but sched.cycles={sched.cycles}; "
            "set sched.cycles=0 (it then follows train.snapshots) or equal to train.snapshots."
        )
    if sched.name == "cosine_restarts" and restart_cycles(cfg) < 1:
        raise ConfigError("sched.name=cosine_restarts needs sched.cycles >= 1 (or train.snapshots >= 1); "
                          "e.g. sched.cycles=4.")
    if snapshots:
        # Snapshots are taken at epoch ends, so every cycle must end at one: the epochs after warmup
        # must be a whole number of epochs, split into `snapshots` cycles of whole epochs each.
        epochs, total = cfg.train.epochs, steps_per_epoch * cfg.train.epochs
        warmup = warmup_steps_for(sched, steps_per_epoch, total)
        span = total - warmup
        if warmup % steps_per_epoch or span % (snapshots * steps_per_epoch) or span < snapshots * steps_per_epoch:
            w = math.ceil(warmup / steps_per_epoch)
            fit = w + snapshots * max(1, math.ceil((epochs - w) / snapshots))
            raise ConfigError(
                f"train.snapshots={snapshots} needs each cycle to end at an epoch end: train.epochs={epochs} minus "
                f"sched.warmup_epochs={sched.warmup_epochs:g} must be a positive multiple of {snapshots} whole epochs; "
                f"e.g. train.epochs={fit}" + (f" with sched.warmup_epochs={w}." if w != sched.warmup_epochs else ".")
            )


def snapshot_epochs(cfg: Config, steps_per_epoch: int) -> list[int]:
    """The epochs (1-based) after which a snapshot is taken: the epoch end at which each cosine_restarts
    cycle ends (:func:`check_cycles` makes every cycle end at one); the last cycle ends with the run.

    Computed from the schedule's own cycle index, so the snapshots and the restarts cannot disagree.
    """
    epochs = cfg.train.epochs
    total = steps_per_epoch * epochs
    warmup = warmup_steps_for(cfg.sched, steps_per_epoch, total)
    span, cycles = max(total - warmup, 1), max(restart_cycles(cfg), 1)

    def cycle(step: int) -> int:  # the same t as lr_multiplier's
        return 0 if step < warmup else cycle_position(min((step - warmup) / span, 1.0), cycles)[0]

    return [e for e in range(1, epochs + 1)
            if e == epochs or cycle((e + 1) * steps_per_epoch - 1) > cycle(e * steps_per_epoch - 1)]


def warmup_steps_for(cfg: SchedConfig, steps_per_epoch: int, total_steps: int) -> int:
    """Warmup length in steps: sched.warmup_epochs, or the schedule's default fraction when 0."""
    default_fraction = SCHEDULES.entry(cfg.name).meta.default_warmup_fraction
    if cfg.warmup_epochs == 0 and default_fraction is not None:
        steps = int(default_fraction * total_steps)
    else:
        steps = int(round(cfg.warmup_epochs * steps_per_epoch))
    return min(steps, total_steps)


def lr_multiplier(step_index: int, steps_per_epoch: int, total_steps: int, cfg: SchedConfig, lr: float,
                  warmup_steps: int | None = None) -> float:
    """The multiplier of optim.lr at a step: linear warmup from ~0, then the schedule.

    Warmup goes from 1/warmup_steps to 1 over ``warmup_epochs`` (Goyal et al. 2017).
    """
    if warmup_steps is None:
        warmup_steps = warmup_steps_for(cfg, steps_per_epoch, total_steps)
    if step_index < warmup_steps:
        return (step_index + 1) / warmup_steps
    t = (step_index - warmup_steps) / max(total_steps - warmup_steps, 1)
    return SCHEDULES.get(cfg.name)(min(t, 1.0), cfg, lr, step_index / steps_per_epoch)


def cycled_momentum(multipliers: list[float], low: float, high: float) -> list[float]:
    """The momentum at each step, moving against the learning rate (sched.momentum = [low, high]).

    m = high - (high - low) * (mult - mult_lo) / (mult_hi - mult_lo), with mult_lo and mult_hi the
    smallest and largest multiplier of the run: ``low`` where the lr peaks, ``high`` where it is lowest,
    linear in the lr in between (Smith 2018, "A disciplined approach to neural network hyper-parameters:
    Part 1", sec. 4.3; with one-cycle's linear lr this is Smith & Topin 2019's momentum cycle, torch's
    ``OneCycleLR(cycle_momentum=True)``). A flat lr (mult_hi == mult_lo) keeps ``high``: Smith's
    advice for a constant lr is a large constant momentum.
    """
    lo, hi = min(multipliers), max(multipliers)
    if hi == lo:
        return [high] * len(multipliers)
    return [high - (high - low) * (m - lo) / (hi - lo) for m in multipliers]


def set_momentum(group: dict, key: str, value: float) -> None:
    """Write a momentum into a param group: ``group[key]``, or the first entry of ``betas`` (beta2 kept)."""
    if key == "betas":
        group["betas"] = (value, group["betas"][1])
    else:
        group[key] = value


def get_momentum(group: dict, key: str) -> float:
    """A param group's momentum: ``group[key]``, or the first entry of ``betas``."""
    return float(group["betas"][0] if key == "betas" else group[key])


class ScheduleTable:
    """Per-step learning rates (and momenta) computed once; ``step()`` writes the next ones into the optimiser.

    Replaces ``torch.optim.lr_scheduler.LambdaLR``, which cost ~0.27 ms per step on 2 CPU cores
    (11% of a small MLP's step; bench/bench_trainer.py): here a step is one list lookup.
    ``factor`` scales every rate (a divergence rollback halves it), never the momentum.
    ``momenta`` (None: the optimiser's own momentum stays) are written to each group's ``momentum_key``
    (:func:`set_momentum`). ``state_dict``/``load_state_dict`` hold the step index and the factor,
    all that resuming needs: the index determines both the rate and the momentum.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, multipliers: list[float],
                 momenta: list[float] | None = None, momentum_key: str = "momentum") -> None:
        if momenta is not None and len(momenta) != len(multipliers):
            raise ValueError(f"{len(momenta)} momenta for {len(multipliers)} steps")
        self.optimizer = optimizer
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.multipliers = multipliers
        self.momenta = momenta
        self.momentum_key = momentum_key
        self.index = 0
        self.factor = 1.0
        self._apply()

    def _apply(self) -> None:
        i = min(self.index, len(self.multipliers) - 1)
        m = self.multipliers[i] * self.factor
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * m
        if self.momenta is not None:
            momentum = self.momenta[i]
            for group in self.optimizer.param_groups:
                set_momentum(group, self.momentum_key, momentum)

    def step(self) -> None:
        self.index += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def get_last_momentum(self) -> list[float]:
        """Each group's momentum now (SGD's momentum, Adam's beta1), cycled or not."""
        return [get_momentum(group, self.momentum_key) for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"index": self.index, "factor": self.factor}

    def load_state_dict(self, state: dict) -> None:
        self.index = int(state["index"])
        self.factor = float(state.get("factor", 1.0))
        self._apply()


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int) -> ScheduleTable:
    sched = cfg.sched
    SCHEDULES.entry(sched.name)  # unknown names fail here, before training starts
    if sched.warmup_epochs > cfg.train.epochs:
        raise ConfigError(
            f"sched.warmup_epochs={sched.warmup_epochs} exceeds train.epochs={cfg.train.epochs}; lower it."
        )
    check_cycles(cfg, steps_per_epoch)
    if sched.name == "cosine_restarts":
        sched = dataclasses.replace(sched, cycles=restart_cycles(cfg))
    key = OPTIMIZERS.entry(cfg.optim.name).meta.momentum_key
    check_momentum_cycle(cfg, key)
    total = steps_per_epoch * cfg.train.epochs
    lr = _peak_lr(cfg.optim)
    warmup = warmup_steps_for(sched, steps_per_epoch, total)
    multipliers = [lr_multiplier(i, steps_per_epoch, total, sched, lr, warmup) for i in range(total)]
    momenta = cycled_momentum(multipliers, *sched.momentum) if sched.momentum else None
    return ScheduleTable(optimizer, multipliers, momenta, key)


def check_momentum_cycle(cfg: Config, momentum_key: str) -> None:
    """sched.momentum with SGD needs SGD built with momentum: at optim.momentum=0 it is plain SGD (no Nesterov)."""
    if cfg.sched.momentum and momentum_key == "momentum" and cfg.optim.momentum == 0:
        low, high = cfg.sched.momentum
        raise ConfigError(
            f"sched.momentum={low:g},{high:g} cycles the momentum of {cfg.optim.name}, but optim.momentum=0 builds "
            "it without momentum (and without Nesterov); set optim.momentum (e.g. optim.momentum=0.9) or drop "
            "sched.momentum."
        )
