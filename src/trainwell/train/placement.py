"""Where the training inputs live while the loop runs (``train.data_on_device``) and how a batch reaches the model.

Two placements, chosen once per fit by :func:`resolve_data_on_device`:

* **on the device** (``true``): the whole training split is copied to the device once (uint8
  images converted to float32 once when the float copy stays under :data:`FLOAT_CACHE_BYTES`), and
  a batch is one index operation there. Fastest while the split fits.
* **on the host** (``false``): the split stays where it is (in RAM, or as rows of a memory-mapped
  file, :class:`~trainwell.data.splits.TensorSplit`), and each batch is gathered on the host
  (index, then on CUDA a copy into pinned memory) and moved with one ``non_blocking`` copy; uint8
  stays uint8 until it is on the device (4x less to move) and is converted there. The batch is
  pinned, not the split: gathering makes a new tensor anyway, so gathering it straight into
  pinned memory (:meth:`~trainwell.data.splits.TensorSplit.take`) costs no extra copy, while pinning the whole split would lock its size of RAM (and is
  impossible for a file mapping) without saving one.

``auto``: on CUDA, on the device when the split takes at most :data:`DEVICE_BUDGET_FRACTION` of
the GPU's free memory (``torch.cuda.mem_get_info``), else on the host. On the CPU (and MPS) the
"device" is host memory: on the device, unless the split is memory-mapped, where copying it
would read the whole file into RAM — exactly what streaming avoids.

Both placements compute the same float32 values for a batch (the same elementwise conversion of
the same stored values), so on the CPU a run trains to the same weights bit for bit either way.
No host synchronisation per step: on CUDA the copies are asynchronous.
"""

from __future__ import annotations

import math

import torch

from trainwell.data.splits import TensorSplit, to_float
from trainwell.errors import ConfigError

#: Convert uint8 data to float once, up front, when the float copy stays under this size: one
#: conversion instead of one per batch (bench/bench_trainer.py), at 4x the memory of uint8.
FLOAT_CACHE_BYTES = 1 << 30
#: ``train.data_on_device=auto`` on CUDA: the split goes to the GPU when its device copy takes at
#: most this fraction of the free GPU memory; the rest is left to the model, its activations and
#: the optimiser's state.
DEVICE_BUDGET_FRACTION = 0.5

DataOnDevice = bool | str


def resolve_data_on_device(setting: DataOnDevice, nbytes: int, budget: int | None, memory_mapped: bool) -> bool:
    """Whether the training split goes to the device: ``setting`` True/False as is; ``auto``:

    * ``budget`` None (the device is host memory: CPU, MPS): True unless ``memory_mapped``;
    * otherwise (CUDA): ``nbytes <= budget``, ``nbytes`` the bytes the split takes on the device.
    """
    if not (isinstance(setting, bool) or setting == "auto"):
        raise ConfigError(f"train.data_on_device must be auto, true or false; got {setting!r}.")
    if isinstance(setting, bool):
        return setting
    if budget is None:
        return not memory_mapped
    return nbytes <= budget


def device_budget(device: torch.device) -> int | None:
    """Bytes the training split may take on ``device`` under ``auto``; None when the device is host memory."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free * DEVICE_BUDGET_FRACTION)


def _cached_as_float(split: TensorSplit) -> bool:
    return split.dtype == torch.uint8 and split.nbytes * 4 <= FLOAT_CACHE_BYTES  # uint8: 1 byte each, float32: 4


def device_bytes(split: TensorSplit) -> int:
    """Bytes the split takes once copied to the device (the float32 copy when uint8 is converted up front)."""
    return split.nbytes * (4 if _cached_as_float(split) else 1)


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``batch`` on ``device`` by one asynchronous copy: a CPU batch bound for CUDA is first copied
    into pinned memory (torch's caching host allocator recycles those buffers, and keeps each one
    until its copy has finished), so the copy overlaps the GPU's work instead of waiting for it."""
    if device.type == "cuda" and batch.device.type == "cpu" and not batch.is_pinned():
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True)


def _on_device(split: TensorSplit, device: torch.device) -> torch.Tensor:
    """The split's examples copied to ``device`` (float32 when :func:`_cached_as_float`); a streamed
    split is copied chunk by chunk, so it is never gathered whole in host memory."""
    convert = _cached_as_float(split)
    if not split.streamed:
        x = split.storage.to(device)
        return to_float(x) if convert else x
    out = torch.empty((len(split), *split.example_shape), dtype=torch.float32 if convert else split.dtype,
                      device=device)
    example_bytes = max(1, math.prod(split.example_shape) * split.storage.element_size())
    start, step = 0, max(1, (64 << 20) // example_bytes)  # about 64 MiB of rows at a time
    for chunk in split.chunks(step):
        part = to_device(chunk, device)
        out[start : start + len(chunk)] = to_float(part) if convert else part
        start += len(chunk)
    return out


class BatchFeed:
    """The training split placed as ``on_device`` says, and :meth:`batch` to fetch one batch.

    ``index_device``: where the batch positions must be (the device, or the CPU when the split
    stays on the host).
    """

    def __init__(self, split: TensorSplit, device: torch.device, on_device: bool) -> None:
        self.split, self.device, self.on_device = split, device, on_device
        self.index_device = device if on_device else torch.device("cpu")
        if on_device:
            self.x, self.y = _on_device(split, device), split.y.to(device)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The inputs (B, *input_shape) float32 and labels (B,) of the examples at positions ``idx``, on the device."""
        if self.on_device:
            return to_float(self.x[idx]), self.y[idx]
        xb = self.split.take(idx, pin_memory=self.device.type == "cuda")  # gathered straight into pinned memory
        return to_float(to_device(xb, self.device)), to_device(self.split.y[idx], self.device)


def place_training_data(train: TensorSplit, device: torch.device, setting: DataOnDevice) -> BatchFeed:
    """The training split where ``train.data_on_device`` (resolved once, here) puts it."""
    on_device = resolve_data_on_device(setting, device_bytes(train), device_budget(device), train.mapped)
    return BatchFeed(train, device, on_device)
