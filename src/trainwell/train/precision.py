"""How the forward pass computes: mixed precision, memory format, compilation (train.precision,
train.channels_last, train.compile).

* **Mixed precision** (Micikevicius et al. 2018, "Mixed Precision Training"): the forward and the
  loss run under :func:`torch.autocast`, which computes matrix products and convolutions in bf16 or
  fp16 (accumulating in fp32) and keeps reductions, softmax and the loss in fp32; the weights, the
  gradients and the optimiser stay fp32. fp16's 5 exponent bits let small gradients underflow to 0,
  so fp16 multiplies the loss by a scale ``S`` before the backward pass and divides the gradients by
  ``S`` before the step (loss scaling, :class:`torch.amp.GradScaler`): a step whose gradients
  overflowed (inf/NaN) is skipped and ``S`` halved; after ``growth_interval`` good steps ``S``
  doubles. bf16 has fp32's 8 exponent bits and needs no scaling (only 8 significand bits: unit
  roundoff 2^-8).
* **channels_last**: 4-D image batches and the 4-D weights laid out N,H,W,C in memory (the layout
  cuDNN's tensor-core convolutions and oneDNN prefer); values are unchanged, only strides differ.
* **compile**: :func:`torch.compile` of the forward; the loop keeps the original module for its state
  (the compiled wrapper shares its parameters), so state_dict keys and checkpoints do not change.

The loop (:mod:`trainwell.train.trainer`) calls these helpers; nothing here holds state of a run
except the GradScaler, which lives in the loop's TrainState.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import warnings
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from trainwell.errors import ConfigError

#: train.precision's words and the autocast dtype each means (fp32: no autocast).
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}


@dataclass(frozen=True)
class ForwardFormat:
    """The resolved numerics of the forward pass: the autocast dtype and the batch memory format."""

    dtype: torch.dtype = torch.float32
    """float32 = plain fp32 (no autocast); bfloat16 / float16 = autocast to that dtype."""
    channels_last: bool = False
    """Give 4-D batches the channels_last memory format (other ranks pass unchanged)."""

    @property
    def name(self) -> str:
        return NAMES[self.dtype]

    @property
    def scaled(self) -> bool:
        """Whether the loss is scaled (fp16): the loop then steps through a GradScaler."""
        return self.dtype == torch.float16

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """The context the forward and the loss run in: autocast to ``dtype``, or nothing for fp32."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the forward's memory format: channels_last for a 4-D batch when on, else itself."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x


FP32 = ForwardFormat()


def resolve_precision(spec: str, device: torch.device, what: str = "train.precision") -> torch.dtype:
    """The autocast dtype train.precision means on ``device``; a dtype the device cannot autocast to
    is a ConfigError.

    ``auto``: bf16 on a CUDA GPU that supports it (Ampere and newer), fp16 on an older one, fp32 on
    the CPU and MPS (a CPU without AMX/AVX-512-BF16 emulates bf16 matrix products, which makes
    autocast slower than fp32: bench/bench_levers.py measures it).
    """
    if spec == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if spec not in DTYPES:
        raise ConfigError(f"{what} '{spec}' is not one of auto, fp32, bf16, fp16.")
    dtype = DTYPES[spec]
    if dtype != torch.float32 and not autocast_available(device, dtype):
        raise ConfigError(f"{what}={spec}: torch {torch.__version__} cannot autocast to {spec} on {device}; "
                          f"use {what}=auto or fp32.")
    return dtype


def autocast_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch autocasts to ``dtype`` on ``device`` (it disables an unsupported one with a warning
    instead of failing, or raises, depending on device and version: both are caught here)."""
    if not torch.amp.is_autocast_available(device.type):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            context = torch.autocast(device.type, dtype=dtype)
    except (RuntimeError, ValueError):
        return False
    return bool(getattr(context, "_enabled", True))


def forward_format(precision: str, channels_last: bool, device: torch.device) -> ForwardFormat:
    """train.precision and train.channels_last resolved for ``device``."""
    return ForwardFormat(resolve_precision(precision, device), channels_last)


def grad_scaler(fmt: ForwardFormat, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16's loss scaler (torch's defaults: initial scale 2^16, x2 after 2000 good steps, /2 on overflow);
    None for bf16 and fp32, which need none."""
    return torch.amp.GradScaler(device.type) if fmt.scaled else None


def to_channels_last(model: nn.Module) -> nn.Module:
    """Lay the model's 4-D parameters and buffers (Conv2d weights) out channels_last, in place;
    a model without 4-D tensors (MLP, 1-D CNN, RNN) is unchanged. Returns ``model``."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    return model


def compiled(model: nn.Module, on: bool) -> nn.Module:
    """``torch.compile(model)`` when ``on`` (a wrapper sharing ``model``'s parameters), else ``model``."""
    return cast(nn.Module, torch.compile(model)) if on else model


def check_compile(device: torch.device) -> None:
    """train.compile needs dynamo for this Python, and on the CPU a C++ compiler for inductor's kernels."""
    if not torch._dynamo.is_dynamo_supported():
        raise ConfigError(f"train.compile=true: torch.compile does not support Python "
                          f"{sys.version_info.major}.{sys.version_info.minor} in torch {torch.__version__}; "
                          "set train.compile=false.")
    if device.type == "cpu":
        compilers = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "clang++", "c++"]
        if not any(shutil.which(c) for c in compilers):
            raise ConfigError(f"train.compile=true on the CPU needs a C++ compiler ({' or '.join(compilers)}) and "
                              "none is on PATH; install one (e.g. apt install g++) or set train.compile=false.")


def check_forward_options(precision: str, channels_last: bool, compile: bool, device: torch.device) -> ForwardFormat:
    """Every check of train.precision / channels_last / compile for ``device`` (before any folder exists)."""
    fmt = forward_format(precision, channels_last, device)
    if compile:
        check_compile(device)
    return fmt


def backward(objective: torch.Tensor, scaler: torch.amp.GradScaler | None) -> None:
    """``objective.backward()``, through the loss scale when there is a scaler."""
    (scaler.scale(objective) if scaler is not None else objective).backward()


def unscale(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """Divide the gradients by the loss scale now (before clipping their norm); no-op without a scaler."""
    if scaler is not None:
        scaler.unscale_(optimizer)


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """The optimiser's step; with a scaler, skipped when the gradients overflowed, and the scale updated.

    torch's GradScaler.step reads its overflow flag on the host once per step (``.item()``) unless the
    optimiser is a fused one: fp16 costs that one sync per step, bf16 and fp32 none.
    """
    if scaler is None:
        optimizer.step()
        return
    scaler.step(optimizer)
    scaler.update()
