"""Optimisers, parameter groups, penalties and learning-rate schedules.

Weight decay and the L1/L2 penalties touch weights only (tensors with ``dim() >= 2`` outside norm
layers), never biases or norm scales/shifts: decaying those only hurts (a BN scale pulled to zero
silences its channel) — the nanoGPT/timm convention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from trainwell.config import Config, OptimConfig, SchedConfig
from trainwell.errors import ConfigError
from trainwell.registry import new_registry

OPTIMIZERS = new_registry("optim", "Optimisers: optim.name")
SCHEDULES = new_registry("sched", "Learning-rate schedules after warmup: sched.name")

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


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
        if isinstance(module, _NORM_TYPES):
            in_norm.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_weight = p.dim() >= 2 and id(p) not in in_norm
        (decay if is_weight or not exempt_bias_and_norm else no_decay).append((name, p))
    return ParamGroups(decay, no_decay)


def _groups(groups: ParamGroups, weight_decay: float) -> list[dict]:
    out = [{"params": [p for _, p in groups.decay], "weight_decay": weight_decay}]
    if groups.no_decay:
        out.append({"params": [p for _, p in groups.no_decay], "weight_decay": 0.0})
    return out


@OPTIMIZERS.register("sgd", decoupled=False)
def sgd(groups: ParamGroups, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD with momentum (Polyak 1964) or Nesterov momentum (Sutskever et al. 2013); L2-coupled decay."""
    return torch.optim.SGD(
        _groups(groups, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
    )


@OPTIMIZERS.register("adam", decoupled=False)
def adam(groups: ParamGroups, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam (Kingma & Ba 2015): per-parameter steps from first and second moment estimates."""
    return torch.optim.Adam(_groups(groups, cfg.weight_decay), lr=cfg.lr, betas=_betas(cfg), eps=cfg.eps)


@OPTIMIZERS.register("adamw", decoupled=True)
def adamw(groups: ParamGroups, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter 2019): Adam with weight decay decoupled from the gradient."""
    return torch.optim.AdamW(_groups(groups, cfg.weight_decay), lr=cfg.lr, betas=_betas(cfg), eps=cfg.eps)


def _betas(cfg: OptimConfig) -> tuple[float, float]:
    if len(cfg.betas) != 2 or not all(0 <= b < 1 for b in cfg.betas):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {cfg.betas}; e.g. optim.betas=0.9,0.999.")
    return float(cfg.betas[0]), float(cfg.betas[1])


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, exempt_bias_and_norm: bool = True
) -> tuple[torch.optim.Optimizer, ParamGroups]:
    if not cfg.lr > 0 or not math.isfinite(cfg.lr):
        raise ConfigError(f"optim.lr must be a positive number, got {cfg.lr}.")
    if cfg.weight_decay < 0:
        raise ConfigError(f"optim.weight_decay must be >= 0, got {cfg.weight_decay}.")
    if not 0 <= cfg.momentum < 1:
        raise ConfigError(f"optim.momentum must be in [0, 1), got {cfg.momentum}.")
    groups = split_param_groups(model, exempt_bias_and_norm)
    if not groups.decay and not groups.no_decay:
        raise ConfigError("the model has no trainable parameters.")
    return OPTIMIZERS.get(cfg.name)(groups, cfg), groups


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
    """One cycle (Smith & Topin 2019): warmup (30% of training unless set), then linear decay to ~0."""
    floor = cfg.min_lr / lr
    return floor + (1 - floor) * (1 - t)


def warmup_steps_for(cfg: SchedConfig, steps_per_epoch: int, total_steps: int) -> int:
    """Warmup length in steps: sched.warmup_epochs, or the schedule's default fraction when 0."""
    default_fraction = SCHEDULES.entry(cfg.name).meta.get("default_warmup_fraction")
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


class ScheduleTable:
    """Per-step learning rates computed once; ``step()`` writes the next one into the optimiser.

    Replaces ``torch.optim.lr_scheduler.LambdaLR``, which cost ~0.27 ms per step on 2 CPU cores
    (11% of a small MLP's step; bench/bench_trainer.py): here a step is one list lookup.
    ``state_dict``/``load_state_dict`` hold the step index, all that resuming needs.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, multipliers: list[float]) -> None:
        self.optimizer = optimizer
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.multipliers = multipliers
        self.index = 0
        self._apply()

    def _apply(self) -> None:
        m = self.multipliers[min(self.index, len(self.multipliers) - 1)]
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * m

    def step(self) -> None:
        self.index += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.index = int(state["index"])
        self._apply()


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int) -> ScheduleTable:
    sched = cfg.sched
    SCHEDULES.entry(sched.name)  # unknown names fail here, before training starts
    if sched.warmup_epochs < 0:
        raise ConfigError(f"sched.warmup_epochs must be >= 0, got {sched.warmup_epochs}.")
    if sched.warmup_epochs > cfg.train.epochs:
        raise ConfigError(
            f"sched.warmup_epochs={sched.warmup_epochs} exceeds train.epochs={cfg.train.epochs}; lower it."
        )
    total = steps_per_epoch * cfg.train.epochs
    lr = cfg.optim.lr
    warmup = warmup_steps_for(sched, steps_per_epoch, total)
    return ScheduleTable(optimizer, [lr_multiplier(i, steps_per_epoch, total, sched, lr, warmup) for i in range(total)])
