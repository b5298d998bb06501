"""Batch normalisation over the global batch of a data-parallel run (``train.sync_bn=true``).

Under DistributedDataParallel each rank sees only its part of the batch, so a plain batch norm
normalises with that part's statistics. Synchronised batch norm (Peng et al. 2018, MegDet, §4;
Zhang et al. 2018, "Context Encoding") computes the mean and variance over every rank's examples, so
N ranks normalise exactly as one process would over the whole batch.

On CUDA this is ``torch.nn.SyncBatchNorm`` (fused kernels, NCCL). torch's module refuses CPU tensors,
so on the CPU (gloo) :class:`GlobalBatchNorm` does the same with differentiable all-reduces
(:class:`AllReduceSum`, whose backward all-reduces the gradient — what torch's deprecated
``torch.distributed.nn.functional.all_reduce`` did; its successor is not differentiable): two-pass
statistics — the global sum and count give the mean, then the global sum of squared deviations the
biased variance ``var = Σ(x - mean)² / n``, used to normalise — and the running statistics updated
with the unbiased ``var · n / (n - 1)``, as ``torch.nn.BatchNorm*`` does. In eval mode, or outside a
process group, it is a plain batch norm. Parameters and buffers keep ``BatchNorm``'s names, so a
state dict saved from either loads into the other.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class AllReduceSum(torch.autograd.Function):
    """y = Σ_ranks x, differentiable: the gradient of a sum that every rank's loss depends on is the sum
    of the ranks' gradients, so the backward all-reduces too."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = grad.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Σ over the ranks of ``tensor``, with the gradient flowing back to every rank."""
    out = AllReduceSum.apply(tensor)
    assert isinstance(out, torch.Tensor)
    return out


class GlobalBatchNorm(_BatchNorm):
    """Batch norm whose training statistics are taken over all ranks' examples (any device, any backend).

    Shape: (N, C, *) -> (N, C, *); statistics over every dimension but C, across ranks.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions (N, C, ...), got {input.dim()}")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        self._check_input_dim(input)
        synced = self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not synced:
            return super().forward(input)
        dims = [d for d in range(input.dim()) if d != 1]
        x = input.float()  # statistics in fp32, whatever autocast chose for the input
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        total = all_reduce_sum(torch.cat([x.sum(dims), count]))  # (C + 1,): the global sums and count
        n = total[-1]
        mean = total[:-1] / n
        shape = [1, -1] + [1] * (input.dim() - 2)
        centred = x - mean.reshape(shape)
        var = all_reduce_sum(centred.pow(2).sum(dims)) / n  # biased: what normalises
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                tracked = self.num_batches_tracked
                assert tracked is not None  # a tensor whenever running statistics are tracked
                tracked.add_(1)
                factor = (1.0 / float(tracked)) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                unbiased = var.detach() * (n / (n - 1).clamp(min=1))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        out = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        return out.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every trainable batch norm of ``module`` made synchronised (in place where possible; returns
    the module to use): ``torch.nn.SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm` elsewhere.
    Frozen batch norms (fine-tuning's, which keep their statistics) are left as they are."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    from trainwell.nn.frozen_norm import KeepsBatchStatistics

    def convert(m: nn.Module) -> nn.Module:
        if isinstance(m, _BatchNorm) and not isinstance(m, (KeepsBatchStatistics, GlobalBatchNorm)):
            new = GlobalBatchNorm(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats,
                                  device=m.weight.device if m.affine else None)
            with torch.no_grad():
                if m.affine:
                    new.weight, new.bias = m.weight, m.bias  # the same Parameters: the optimiser's
                new.running_mean, new.running_var = m.running_mean, m.running_var
                new.num_batches_tracked = m.num_batches_tracked
            new.train(m.training)
            return new
        for name, child in m.named_children():
            setattr(m, name, convert(child))
        return m

    return convert(module)


__all__ = ["GlobalBatchNorm", "convert_sync_batchnorm"]
