"""Preprocessing fitted on the training split and saved with the model (``data.preprocess``).

Each entry of :data:`PREPROCESSORS` is an ``nn.Module`` subclass with:

* ``fit(x) -> module`` (classmethod): statistics of the training inputs ``x`` of shape
  ``(N, *input_shape)``, float32 (uint8 pixels are accepted and scaled by :func:`to_float` first);
* ``from_state(state) -> module`` (classmethod): rebuild from the module's own ``state_dict()``
  alone, which is how a saved run reloads it without pickle;
* ``forward(x) -> x'``: the same shape, float32; uint8 batches are scaled by :func:`to_float`
  first, so the module maps a raw batch straight to model inputs;
* ``inverse(x'') -> x``: undoes ``forward`` (for showing inputs, and for tests).

Buffers are float32 (every device supports them) and shaped to broadcast over a batch
``(B, *input_shape)`` as well as a single example.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from trainwell.data.splits import to_float
from trainwell.errors import DataError, RunDirError
from trainwell.registry import new_registry

PREPROCESSORS = new_registry("preprocess", "Input preprocessing fitted on the training split (data.preprocess).")


def _check_fit_input(name: str, x: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or len(x) == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataError(f"preprocess '{name}' is fitted on a non-empty tensor (N, *input_shape); got {shape}.")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise DataError(f"preprocess '{name}': the training inputs hold NaN/inf values; clean the data first.")
    return x


def _state_tensors(name: str, state: dict[str, torch.Tensor], keys: tuple[str, ...]) -> list[torch.Tensor]:
    """The saved tensors ``keys`` of ``state``, or a RunDirError saying the saved state is unusable."""
    if not isinstance(state, dict) or set(state) != set(keys):
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise RunDirError(
            f"saved preprocess '{name}' state has entries {got}, expected {sorted(keys)}; the run directory "
            "is damaged or was written by another trainwell version: retrain."
        )
    tensors = [state[k] for k in keys]
    if not all(isinstance(t, torch.Tensor) and t.is_floating_point() and bool(torch.isfinite(t).all()) for t in tensors):
        raise RunDirError(f"saved preprocess '{name}' state holds non-finite or non-float values; the run directory is damaged: retrain.")
    return tensors


class Preprocess(nn.Module):
    """Base class of the entries of :data:`PREPROCESSORS` (see the module docstring)."""

    name = ""

    @classmethod
    def fit(cls, x: torch.Tensor) -> Preprocess:
        raise NotImplementedError

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> Preprocess:
        raise NotImplementedError

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"preprocess '{self.name}' has no inverse")


@PREPROCESSORS.register("none", invertible=True)
class Identity(Preprocess):
    """No preprocessing: inputs pass through (uint8 pixels scaled to [0, 1])."""

    name = "none"

    @classmethod
    def fit(cls, x: torch.Tensor) -> Identity:
        _check_fit_input(cls.name, x)
        return cls()

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> Identity:
        _state_tensors(cls.name, state, ())
        return cls()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_float(x)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x


@PREPROCESSORS.register("standardize", invertible=True)
class Standardize(Preprocess):
    """Subtract the training mean and divide by the training std: per feature (tabular) or per channel.

    Statistics are those of scikit-learn's StandardScaler (population std, ``ddof=0``), computed
    in float64. Tabular inputs ``(N, F)`` get buffers of shape ``(F,)``; signals ``(N, C, L)`` and
    images ``(N, C, H, W)`` get one mean and std per channel, over examples and positions, shaped
    ``(C, 1)`` or ``(C, 1, 1)``. A std below :attr:`EPS` (a constant feature or channel) is set to 1,
    as StandardScaler does: such a feature is only centred, because dividing by a near-zero std
    would turn tiny differences at test time into huge inputs.
    """

    name = "standardize"
    EPS = 1e-6
    #: Rows per chunk are chosen so a float64 chunk stays near this many bytes.
    _CHUNK_BYTES = 32 << 20

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        if mean.shape != std.shape:
            raise ValueError(f"mean {tuple(mean.shape)} and std {tuple(std.shape)} shapes differ")
        self.register_buffer("mean", mean.detach().to(torch.float32).clone())
        self.register_buffer("std", std.detach().to(torch.float32).clone())

    @classmethod
    def fit(cls, x: torch.Tensor) -> Standardize:
        x = _check_fit_input(cls.name, x)
        dims = [0] if x.ndim == 2 else [0] + list(range(2, x.ndim))
        per_example = max(1, math.prod(x.shape[1:]))
        step = max(1, cls._CHUNK_BYTES // (8 * per_example))
        # Chan et al.'s pairwise update merges chunk means and squared deviations exactly, so a
        # large uint8 dataset is never converted to float64 all at once.
        count = 0
        mean = m2 = None
        for start in range(0, len(x), step):
            chunk = to_float(x[start : start + step]).to(torch.float64)
            n_c = chunk.numel() // chunk.shape[1]  # values per feature/channel in this chunk
            m_c = chunk.mean(dim=dims, keepdim=True)
            m2_c = ((chunk - m_c) ** 2).sum(dim=dims, keepdim=True)
            if mean is None:
                mean, m2 = m_c, m2_c
            else:
                delta = m_c - mean
                total = count + n_c
                mean = mean + delta * (n_c / total)
                m2 = m2 + m2_c + delta**2 * (count * n_c / total)
            count += n_c
        std = torch.sqrt(m2 / count)  # type: ignore[operator]
        std = torch.where(std < cls.EPS, torch.ones_like(std), std)
        return cls(mean.squeeze(0), std.squeeze(0))  # type: ignore[union-attr]

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> Standardize:
        mean, std = _state_tensors(cls.name, state, ("mean", "std"))
        if mean.shape != std.shape or not bool((std > 0).all()):
            raise RunDirError(f"saved preprocess '{cls.name}' state is inconsistent (shapes or std <= 0); the run directory is damaged: retrain.")
        return cls(mean, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(to_float(x) - mean) / std``, shape (B, *input_shape) or (*input_shape)."""
        return (to_float(x) - self.mean) / self.std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """``x * std + mean``: standardized inputs back to the scale of ``to_float`` of the data."""
        return x * self.std + self.mean

    def extra_repr(self) -> str:
        return f"shape={tuple(self.mean.shape)}"


def fit_preprocess(name: str, x: torch.Tensor) -> Preprocess:
    """Fit preprocessor ``name`` on training inputs ``x`` (N, *input_shape); ConfigError if unknown."""
    return PREPROCESSORS.get(name).fit(x)


def load_preprocess(name: str, state: dict[str, torch.Tensor]) -> Preprocess:
    """Rebuild preprocessor ``name`` from its saved ``state_dict()``; ConfigError if unknown."""
    return PREPROCESSORS.get(name).from_state(state)
