"""Learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks", §3.3).

Train for a few hundred steps while the learning rate grows exponentially from ``start_lr`` to
``end_lr``; record the loss; stop once it diverges. The model and optimiser are restored
afterwards, so the test leaves no trace.

Suggestion rule: the loss is smoothed with a bias-corrected exponential moving average, and the
suggested LR is the one at the smoothed minimum divided by 10 — the point where the loss still
falls fast, a decade before it blows up. An early spike cannot fool it: a spike raises the loss,
and the rule looks only at the minimum. (The "steepest slope" rule can be fooled: the recovery
after an early spike is the steepest stretch of the curve.)
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainwell.config import Config
from trainwell.data.splits import Splits
from trainwell.errors import ConfigError
from trainwell.seeds import torch_generator
from trainwell.train.optim import build_optimizer
from trainwell.train.placement import place_training_data


@dataclass
class LRFindResult:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    suggested_lr: float = float("nan")
    min_loss_lr: float = float("nan")
    diverged_at: float | None = None

    def to_dict(self) -> dict:
        return {
            "suggested_lr": self.suggested_lr,
            "min_loss_lr": self.min_loss_lr,
            "diverged_at": self.diverged_at,
            "lrs": self.lrs,
            "losses": self.losses,
            "smoothed": self.smoothed,
        }


def smooth_losses(losses: list[float], beta: float = 0.9) -> list[float]:
    """Bias-corrected EMA: s_t = (beta m_{t-1} + (1 - beta) l_t) / (1 - beta^t)."""
    out, m = [], 0.0
    for t, loss in enumerate(losses, 1):
        m = beta * m + (1 - beta) * loss
        out.append(m / (1 - beta**t))
    return out


def suggest_lr(lrs: list[float], smoothed: list[float], skip_start: int = 5) -> tuple[float, float]:
    """(suggested, lr at the smoothed minimum); suggested = min-loss LR / 10, never below the first LR."""
    if len(lrs) <= skip_start + 1:
        raise ConfigError("the LR range test ran too few steps to suggest an LR; raise --steps or give more data.")
    finite = [(s, lr) for s, lr in zip(smoothed[skip_start:], lrs[skip_start:]) if math.isfinite(s)]
    if not finite:
        raise ConfigError("the loss was never finite during the LR range test; check the data and the model.")
    _, best_lr = min(finite)
    return max(best_lr / 10, lrs[0]), best_lr


def lr_range_test(
    model: nn.Module,
    splits: Splits,
    cfg: Config,
    device: torch.device,
    *,
    start_lr: float = 1e-6,
    end_lr: float = 10.0,
    steps: int = 100,
    diverge_factor: float = 4.0,
    beta: float = 0.9,
) -> LRFindResult:
    """Run the range test on ``model`` (restored afterwards) with the configured optimiser and batch size."""
    if not 0 < start_lr < end_lr:
        raise ConfigError(f"LR range must satisfy 0 < start < end, got {start_lr} .. {end_lr}.")
    if steps < 10:
        raise ConfigError(f"the LR range test needs at least 10 steps, got {steps}.")
    saved_model = copy.deepcopy(model.state_dict())
    saved_rng = torch.get_rng_state()
    optimizer, _ = build_optimizer(model, dataclasses.replace(cfg.optim, lr=start_lr), cfg.reg.exempt_bias_and_norm)
    gamma = (end_lr / start_lr) ** (1 / (steps - 1))
    generator = torch_generator(cfg.train.seed, "lr_find")
    feed = place_training_data(splits.train, device, cfg.train.data_on_device)  # as fit places it
    model.to(device).train()
    result = LRFindResult()
    best = math.inf
    try:
        step = 0
        while step < steps:
            order = torch.randperm(len(splits.train), generator=generator).to(feed.index_device)
            for idx in order.split(cfg.train.batch_size):
                if step >= steps or len(idx) < 2:
                    break
                lr = start_lr * gamma**step
                for group in optimizer.param_groups:
                    group["lr"] = lr
                xb, yb = feed.batch(idx)
                loss = F.cross_entropy(model(xb), yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                value = loss.item()  # one sync per step is the point here: the curve is the result
                result.lrs.append(lr)
                result.losses.append(value)
                smoothed = smooth_losses(result.losses, beta)[-1]
                result.smoothed.append(smoothed)
                best = min(best, smoothed)
                step += 1
                if not math.isfinite(value) or smoothed > diverge_factor * best:
                    result.diverged_at = lr
                    step = steps
                    break
    finally:
        model.load_state_dict(saved_model)
        torch.set_rng_state(saved_rng)
    result.suggested_lr, result.min_loss_lr = suggest_lr(result.lrs, result.smoothed)
    return result


def plot_lr_find(result: LRFindResult, path: Path) -> Path:
    from trainwell.train.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    ax.plot(result.lrs, result.losses, alpha=0.3, label="loss")
    ax.plot(result.lrs, result.smoothed, label="smoothed")
    ax.axvline(result.suggested_lr, color="C2", ls="--", label=f"suggested {result.suggested_lr:.2g}")
    ax.axvline(result.min_loss_lr, color="C3", ls=":", label=f"minimum {result.min_loss_lr:.2g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss", title="LR range test")
    finite = [v for v in result.smoothed if math.isfinite(v)]
    if finite:
        ax.set_ylim(min(finite) * 0.9, min(max(finite), 3 * np.median(finite)) * 1.1)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
