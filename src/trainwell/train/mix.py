"""Mixup and CutMix with soft targets; label smoothing folded into the targets.

Mixup (Zhang et al. 2018): x = lam * x_i + (1 - lam) * x_j, y = lam * y_i + (1 - lam) * y_j with
lam ~ Beta(alpha, alpha). CutMix (Yun et al. 2019): paste a box of area (1 - lam) of x_j into x_i
and mix the targets by the pasted area actually kept after clipping to the image. Pairs come from
one permutation per batch, so any batch size (odd included) works.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from trainwell.config import MixConfig
from trainwell.errors import ConfigError


def smooth_targets(y: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot targets with label smoothing: (1 - eps) * onehot + eps / K.

    Shape: y (N,) int64 -> (N, K) float32.
    """
    target = F.one_hot(y, num_classes).float()
    return target * (1 - smoothing) + smoothing / num_classes


@dataclass(frozen=True)
class MixParams:
    """What one mixed batch used: which op, lam (after box clipping) and the pairing."""

    op: str  # "mixup" | "cutmix"
    lam: float
    perm: torch.Tensor  # (N,) partner of each example
    box: tuple[int, int, int, int] | None = None  # cutmix: (top, left, bottom, right)


def mixing_enabled(cfg: MixConfig) -> bool:
    return cfg.prob > 0 and (cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0)


def sample_mix(x_shape: torch.Size, cfg: MixConfig, rng: np.random.Generator, device: torch.device) -> MixParams | None:
    """Draw the op, lam and pairing for one batch (None: this batch is not mixed).

    Scalars come from a numpy Generator (host side, no device sync); the permutation is drawn from
    the same generator so one state reproduces the whole mix.
    """
    if rng.random() >= cfg.prob:
        return None
    use_cutmix = cfg.cutmix_alpha > 0 and (cfg.mixup_alpha == 0 or rng.random() < cfg.switch_prob)
    if use_cutmix and len(x_shape) < 3:
        raise ConfigError("mix.cutmix_alpha needs signals or images (N, C, ...); use mix.mixup_alpha for tabular data.")
    alpha = cfg.cutmix_alpha if use_cutmix else cfg.mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(x_shape[0])).to(device)
    if not use_cutmix:
        return MixParams("mixup", lam, perm)
    spatial = list(x_shape[2:])
    # A box covering a (1 - lam) fraction of the area: side ratio sqrt(1 - lam) in every spatial dim.
    ratio = math.sqrt(1 - lam) if len(spatial) == 2 else 1 - lam
    if len(spatial) == 2:
        h, w = spatial
        ch, cw = int(h * ratio), int(w * ratio)
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        top, bottom = max(cy - ch // 2, 0), min(cy + ch - ch // 2, h)
        left, right = max(cx - cw // 2, 0), min(cx + cw - cw // 2, w)
        area = (bottom - top) * (right - left) / (h * w)
    else:  # 1-D signals: a segment
        (length,) = spatial
        cl = int(length * ratio)
        c = int(rng.integers(length))
        top, bottom = max(c - cl // 2, 0), min(c + cl - cl // 2, length)
        left, right = 0, 1
        area = (bottom - top) / length
    return MixParams("cutmix", 1.0 - area, perm, (top, left, bottom, right))


def apply_mix(x: torch.Tensor, target: torch.Tensor, p: MixParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix inputs and soft targets with the drawn parameters (pure: same params, same output).

    Shape: x (N, ...) float, target (N, K) -> same shapes.
    """
    mixed_target = p.lam * target + (1 - p.lam) * target[p.perm]
    if p.op == "mixup":
        return p.lam * x + (1 - p.lam) * x[p.perm], mixed_target
    top, left, bottom, right = p.box  # type: ignore[misc]  # box is set for cutmix (op checked above)
    out = x.clone()
    if x.dim() == 4:  # (N, C, H, W)
        out[:, :, top:bottom, left:right] = x[p.perm][:, :, top:bottom, left:right]
    else:  # (N, C, L)
        out[:, :, top:bottom] = x[p.perm][:, :, top:bottom]
    return out, mixed_target
