"""Frozen batch norm: batch-norm layers that always normalise with their running statistics.

``requires_grad=False`` on a batch-norm layer's weights does NOT freeze it: in train mode it still
normalises with batch statistics and overwrites running_mean/var with the new data's. The Frozen*
classes stay in eval mode whatever ``train()`` asks, so the statistics stay those of the
pretraining data while the scale and shift can still train (``finetune.bn=frozen``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from typing_extensions import Self


class KeepsBatchStatistics:
    """Mixin of a batch-norm class whose ``train()`` always means eval: normalises with its running
    mean/var and never updates them, while its scale/shift can still train. Same state_dict keys as
    the layer it replaces, so a saved model reloads into a plain batch norm."""

    def train(self, mode: bool = True) -> Self:
        return super().train(False)  # type: ignore[misc]  # a mixin: super() is the batch norm it precedes


class FrozenBatchNorm1d(KeepsBatchStatistics, nn.BatchNorm1d):
    """nn.BatchNorm1d kept in eval mode (see :class:`KeepsBatchStatistics`)."""


class FrozenBatchNorm2d(KeepsBatchStatistics, nn.BatchNorm2d):
    """nn.BatchNorm2d kept in eval mode (see :class:`KeepsBatchStatistics`)."""


class FrozenBatchNorm3d(KeepsBatchStatistics, nn.BatchNorm3d):
    """nn.BatchNorm3d kept in eval mode (see :class:`KeepsBatchStatistics`)."""


_FROZEN: dict[type, type] = {nn.BatchNorm1d: FrozenBatchNorm1d, nn.BatchNorm2d: FrozenBatchNorm2d,
                             nn.BatchNorm3d: FrozenBatchNorm3d}


def freeze_batchnorm_statistics(module: nn.Module) -> int:
    """Turn every batch-norm layer in ``module`` into its Frozen* class (in place); returns how many.

    Needed because freezing a BN layer's parameters is not enough: in train mode it still normalises
    with batch statistics and overwrites running_mean/var with the new data's.
    """
    count = 0
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, KeepsBatchStatistics):
            cls = type(m)
            if cls not in _FROZEN:
                _FROZEN[cls] = type(f"Frozen{cls.__name__}", (KeepsBatchStatistics, cls), {})
            m.__class__ = _FROZEN[cls]
            m.train(False)
            count += 1
    return count


__all__ = ["FrozenBatchNorm1d", "FrozenBatchNorm2d", "FrozenBatchNorm3d", "KeepsBatchStatistics",
           "freeze_batchnorm_statistics"]
