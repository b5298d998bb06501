"""Normalisation layers, one factory per kind for features, 1-D and 2-D feature maps alike.

Every entry of :data:`NORMS` is a factory ``(num_features: int, dims: int) -> nn.Module`` where
``dims`` is the number of spatial axes of the input it will see:

* 0: features after a Linear layer, Shape (N, F);
* 1: 1-D feature maps, Shape (N, C, L);
* 2: 2-D feature maps, Shape (N, C, H, W).

Metadata (:class:`NormMeta`): ``absorbs_bias`` says the layer removes any per-channel constant, so the layer before it
needs no bias (batch norm subtracts each channel's mean); ``batch_dependent`` says the output of one
example depends on the rest of the batch in training mode.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from trainwell.errors import ConfigError
from trainwell.registry import new_registry


@dataclass(frozen=True)
class NormMeta:
    """What every norm layer promises (see the module docstring)."""

    absorbs_bias: bool
    batch_dependent: bool


NORMS = new_registry("norm", NormMeta, "Normalisation after each hidden linear/conv layer.")

#: Upper bound on the number of groups of the "group" norm (see :func:`num_groups`).
MAX_GROUPS = 8
#: Fewest channels per group: a group of one value normalises to 0, and of two to +-1.
MIN_GROUP_SIZE = 4


def _check(num_features: int, dims: int) -> None:
    if not isinstance(num_features, int) or num_features < 1:
        raise ConfigError(f"a norm layer needs num_features >= 1, got {num_features!r}.")
    if dims not in (0, 1, 2):
        raise ConfigError(f"norm dims must be 0 (N, F), 1 (N, C, L) or 2 (N, C, H, W), got {dims!r}.")


def num_groups(channels: int, max_groups: int = MAX_GROUPS, min_size: int = MIN_GROUP_SIZE) -> int:
    """The largest divisor g of ``channels`` with g <= ``max_groups`` and channels / g >= ``min_size`` (else 1).

    GroupNorm needs a divisor. 64 channels -> 8 groups of 8, 16 -> 4 groups of 4, 12 -> 3, 7 -> 1.
    """
    fits = [g for g in range(1, max_groups + 1) if channels % g == 0 and channels // g >= min_size]
    return max(fits, default=1)


@NORMS.register("none", absorbs_bias=False, batch_dependent=False)
def none(num_features: int, dims: int) -> nn.Module:
    """No normalisation (identity)."""
    _check(num_features, dims)
    return nn.Identity()


@NORMS.register("batch", absorbs_bias=True, batch_dependent=True)
def batch(num_features: int, dims: int) -> nn.Module:
    """y = gamma * (x - mean_batch) / sqrt(var_batch + eps) + beta per channel (Ioffe & Szegedy 2015)."""
    _check(num_features, dims)
    # BatchNorm1d takes both (N, F) and (N, C, L): statistics over N, or over N and L.
    return nn.BatchNorm2d(num_features) if dims == 2 else nn.BatchNorm1d(num_features)


@NORMS.register("layer", absorbs_bias=False, batch_dependent=False)
def layer(num_features: int, dims: int) -> nn.Module:
    """Per example over all features/channels and positions (Ba et al. 2016, Layer Normalization).

    For feature maps this is ``GroupNorm(1, C)``: one group holding every channel normalises over
    (C, *spatial) per example exactly like ``LayerNorm((C, *spatial))`` does, without having to know
    the spatial size. Its learned scale and shift are per channel, not per position.
    """
    _check(num_features, dims)
    return nn.LayerNorm(num_features) if dims == 0 else nn.GroupNorm(1, num_features)


@NORMS.register("group", absorbs_bias=False, batch_dependent=False)
def group(num_features: int, dims: int) -> nn.Module:
    """Per example over groups of channels (Wu & He 2018): at most 8 groups, each of at least 4 channels.

    The paper's default is 32 groups on ResNet-50 (64+ channels); our nets are narrow (8-128 channels),
    hence the cap of 8. The floor of 4 channels per group: the paper finds 1-2 channels per group (close
    to instance norm) clearly worse, and on (N, F) features a 1-feature group outputs 0 whatever the input.
    For features after a Linear layer, the F features are split into groups the same way.
    """
    _check(num_features, dims)
    return nn.GroupNorm(num_groups(num_features), num_features)


def build_norm(name: str, num_features: int, dims: int) -> nn.Module:
    """The norm layer ``name`` for ``num_features`` channels of an input with ``dims`` spatial axes."""
    return NORMS.build(name, num_features, dims)
