"""Preprocessing fitted on the training split and saved with the model (``data.preprocess``).

Each entry of :data:`PREPROCESSORS` is an ``nn.Module`` subclass with:

* ``fit(x) -> module`` (classmethod): statistics of the training inputs ``x`` of shape
  ``(N, *input_shape)``, float32 (uint8 pixels are accepted and scaled by :func:`to_float` first);
* ``from_state(state) -> module`` (classmethod): rebuild from the module's own ``state_dict()``
  alone, which is how a saved run reloads it without pickle;
* ``forward(x) -> x'``: the same shape, float32; uint8 batches are scaled by :func:`to_float`
  first, so the module maps a raw batch straight to model inputs;
* ``inverse(x'') -> x``: undoes ``forward`` (for showing inputs, and for tests);
* ``output_shape(input_shape) -> tuple``: the shape of one example after ``forward``, the shape
  the network must be built for. Every entry keeps the shape except ``pca`` and ``pca_whiten``,
  which output flat vectors ``(k,)``.

A streamed training split (:class:`~trainwell.data.splits.TensorSplit` rows of a memory-mapped
file) is given to :func:`fit_preprocess` as the split itself and read in chunks, as the loop
reads it (:func:`to_float`, float32): every entry gives the statistics a float32 tensor of the
same examples gives. Only ``pca``/``pca_whiten`` with no more examples than features (their thin
SVD needs the whole data) refuse it, with a ConfigError.

``fit`` also takes the data config (``fit(x, cfg)``): ``data.pca_components`` and ``data.whiten_eps``
set the PCA/whitening entries; ``None`` means the defaults.

Buffers are float32 (every device supports them) and shaped to broadcast over a batch
``(B, *input_shape)`` as well as a single example.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Iterator
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from trainwell.config import DataConfig
from trainwell.data.splits import TensorSplit, to_float
from trainwell.errors import ConfigError, DataError, RunDirError
from trainwell.registry import new_registry


@dataclass(frozen=True)
class PreprocessMeta:
    """What every preprocessor promises."""

    invertible: bool  # inverse(forward(x)) == x
    reduces_dims: bool = False  # output_shape is a flat (k,) with k <= prod(input_shape)


PREPROCESSORS = new_registry(
    "preprocess", PreprocessMeta, "Input preprocessing fitted on the training split (data.preprocess)."
)


def _chunks(x: torch.Tensor | TensorSplit, step: int) -> Iterator[torch.Tensor]:
    """Consecutive ``step``-example pieces of a tensor or of a (streamed) split."""
    if isinstance(x, TensorSplit):
        yield from x.chunks(step)
    else:
        for start in range(0, len(x), step):
            yield x[start : start + step]


def _check_split_input(name: str, x: TensorSplit) -> TensorSplit:
    """:func:`_check_fit_input` for a split, read in chunks of about 32 MiB."""
    if len(x) == 0 or len(x.example_shape) < 1:
        raise DataError(f"preprocess '{name}' is fitted on a non-empty split (N, *input_shape); got {len(x)} examples.")
    step = max(1, (32 << 20) // (x.nbytes // len(x) or 1))
    if x.dtype.is_floating_point and not all(bool(torch.isfinite(c).all()) for c in x.chunks(step)):
        raise DataError(f"preprocess '{name}': the training inputs hold NaN/inf values; clean the data first.")
    return x


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
    def fit(cls, x: torch.Tensor | TensorSplit, cfg: DataConfig | None = None) -> Preprocess:
        raise NotImplementedError

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> Preprocess:
        raise NotImplementedError

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"preprocess '{self.name}' has no inverse")

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of one example after :meth:`forward` (batch axis excluded): build the net for it."""
        return tuple(int(s) for s in input_shape)


@PREPROCESSORS.register("none", invertible=True)
class Identity(Preprocess):
    """No preprocessing: inputs pass through (uint8 pixels scaled to [0, 1])."""

    name = "none"

    @classmethod
    def fit(cls, x: torch.Tensor | TensorSplit, cfg: DataConfig | None = None) -> Identity:
        _check_split_input(cls.name, x) if isinstance(x, TensorSplit) else _check_fit_input(cls.name, x)
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
    mean: torch.Tensor
    std: torch.Tensor
    #: Rows per chunk are chosen so a float64 chunk stays near this many bytes.
    _CHUNK_BYTES = 32 << 20

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        if mean.shape != std.shape:
            raise ValueError(f"mean {tuple(mean.shape)} and std {tuple(std.shape)} shapes differ")
        self.register_buffer("mean", mean.detach().to(torch.float32).clone())
        self.register_buffer("std", std.detach().to(torch.float32).clone())

    @classmethod
    def fit(cls, x: torch.Tensor | TensorSplit, cfg: DataConfig | None = None) -> Standardize:
        x = _check_split_input(cls.name, x) if isinstance(x, TensorSplit) else _check_fit_input(cls.name, x)
        shape = x.example_shape if isinstance(x, TensorSplit) else tuple(x.shape[1:])
        step = max(1, cls._CHUNK_BYTES // (8 * max(1, math.prod(shape))))
        dims = [0] if len(shape) == 1 else [0] + list(range(2, len(shape) + 1))
        # Chan et al.'s pairwise update merges chunk means and squared deviations exactly, so a
        # large uint8 dataset is never converted to float64 all at once.
        count = 0
        mean: torch.Tensor | None = None
        m2: torch.Tensor | None = None
        for piece in _chunks(x, step):
            chunk = to_float(piece).to(torch.float64)
            n_c = chunk.numel() // chunk.shape[1]  # values per feature/channel in this chunk
            m_c = chunk.mean(dim=dims, keepdim=True)
            m2_c = ((chunk - m_c) ** 2).sum(dim=dims, keepdim=True)
            if mean is None or m2 is None:
                mean, m2 = m_c, m2_c
            else:
                delta = m_c - mean
                total = count + n_c
                mean = mean + delta * (n_c / total)
                m2 = m2 + m2_c + delta**2 * (count * n_c / total)
            count += n_c
        assert mean is not None and m2 is not None  # x is non-empty (checked above): the loop ran
        std = torch.sqrt(m2 / count)
        std = torch.where(std < cls.EPS, torch.ones_like(std), std)
        return cls(mean.squeeze(0), std.squeeze(0))

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


# ----------------------------------------------------------------------------- PCA and whitening


def _as_float64(x: torch.Tensor, copy: bool = False) -> torch.Tensor:
    """Like :func:`to_float` but float64: uint8 pixels become [0, 1]; float64 data keeps its precision.

    ``copy=True`` always returns a new tensor (safe to modify in place).
    """
    if x.dtype == torch.uint8:
        return x.to(torch.float64).div_(255.0)
    return x.to(torch.float64, copy=copy)


def _flip_signs(vectors: torch.Tensor) -> torch.Tensor:
    """Rows of ``vectors`` with signs fixed as scikit-learn's ``svd_flip(u_based_decision=False)`` does.

    Each row's entry of largest magnitude is made positive, so the result does not depend on the
    eigen-solver and can be compared with ``sklearn.decomposition.PCA`` directly.
    """
    rows = torch.arange(vectors.shape[0], device=vectors.device)
    signs = torch.sign(vectors[rows, vectors.abs().argmax(dim=1)])
    signs[signs == 0] = 1.0
    return vectors * signs[:, None]


#: Accumulate CPU moments with NumPy (False: torch everywhere, the path of GPU tensors; for tests).
_NUMPY_SYRK = True
_NUMPY_DTYPES = (torch.uint8, torch.float32, torch.float64)


def _moments(name: str, x: torch.Tensor | TensorSplit, step: int, scatter: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean (d,) and, if ``scatter``, Σ (x - mean)(x - mean)ᵀ (d, d) of the flattened inputs, float64.

    One pass over ``step``-row chunks converted to float64 one at a time, so memory stays near
    ``_CHUNK_BYTES`` + d x d whatever N. Chunks are shifted by the first chunk's mean ``s`` and the
    scatter corrected at the end, Σ (x-s)(x-s)ᵀ - N (m-s)(m-s)ᵀ: ``m - s`` is a small fraction of
    the data's spread, so the correction cancels nothing that matters (unlike Σ x xᵀ - N m mᵀ for
    data far from the origin, in float32 above all). CPU tensors go through NumPy: its ``c.T @ c``
    is BLAS's symmetric rank-k update (syrk), half the multiplications of the general product torch
    would run, and keeping the loop in one library stops torch's and NumPy's thread pools from
    competing for the cores. uint8 pixels are scaled to [0, 1] as :func:`to_float` does. A
    (streamed) split is read chunk by chunk as the loop reads it, :func:`to_float` (float32) then
    float64: the values a float32 tensor of the same split gives.
    """
    pieces: Iterator[np.ndarray]
    if isinstance(x, TensorSplit):
        n, d = len(x), math.prod(x.example_shape)
        pieces = (to_float(p).reshape(len(p), d).numpy().astype(np.float64) for p in x.chunks(step))
    else:
        n, d = len(x), math.prod(x.shape[1:])
        flat = x.detach().reshape(n, d)
        if not (flat.device.type == "cpu" and flat.dtype in _NUMPY_DTYPES and _NUMPY_SYRK):
            return _torch_moments(name, flat, step, scatter)
        array = flat.numpy()
        pieces = (_numpy_float64(array[start : start + step]) for start in range(0, n, step))
    shift: np.ndarray | None = None
    total = np.zeros(d)
    out = np.zeros((d, d)) if scatter else None
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf inputs: reported just below
        for c in pieces:
            shift = c.mean(axis=0) if shift is None else shift
            c -= shift
            total += c.sum(axis=0)
            if out is not None:
                out += c.T @ c
    assert shift is not None  # n >= 1: one chunk at least
    _check_finite_sum(name, total)
    delta = total / n  # mean - shift
    if out is not None:
        out -= n * np.outer(delta, delta)
    return torch.from_numpy(shift + delta), None if out is None else torch.from_numpy(out)


def _numpy_float64(c: np.ndarray) -> np.ndarray:
    """A chunk as a new float64 array, uint8 pixels scaled to [0, 1]."""
    out = c.astype(np.float64)
    if c.dtype == np.uint8:
        out /= 255.0
    return out


def _torch_moments(name: str, flat: torch.Tensor, step: int, scatter: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`_moments` in torch, for tensors NumPy cannot take (GPU, other dtypes); ``flat`` (N, d)."""
    n, d = flat.shape
    shift_t = _as_float64(flat[:step]).mean(dim=0)
    total_t = torch.zeros(d, dtype=torch.float64, device=flat.device)
    cov = torch.zeros(d, d, dtype=torch.float64, device=flat.device) if scatter else None
    for start in range(0, n, step):
        c_t = _as_float64(flat[start : start + step], copy=True).sub_(shift_t)
        total_t += c_t.sum(dim=0)
        if cov is not None:
            cov.addmm_(c_t.T, c_t)
    _check_finite_sum(name, total_t.cpu().numpy())
    delta_t = total_t / n
    if cov is not None:
        cov.sub_(n * torch.outer(delta_t, delta_t))
    return shift_t + delta_t, cov


def _check_finite_sum(name: str, total: np.ndarray) -> None:
    # A NaN/inf anywhere makes its feature's float64 sum non-finite: no separate pass over the data.
    if not np.isfinite(total).all():
        raise DataError(f"preprocess '{name}': the training inputs hold NaN/inf values; clean the data first.")


@torch.no_grad()
def _spectrum(name: str, x: torch.Tensor | TensorSplit, full_basis: bool,
              chunk_bytes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean (shaped like one example), eigenvalues (descending) and eigenvectors (rows) of the
    covariance of the flattened training inputs, all float64.

    The covariance is the unbiased one (``N - 1``, as scikit-learn's PCA). With more examples than
    features (or ``full_basis``) it is accumulated from centred float64 chunks (:func:`_moments`)
    and diagonalised by ``torch.linalg.eigh`` (d x d); otherwise the thin SVD of the centred data
    gives the ``N`` directions it spans, more accurately than squaring it. ``full_basis`` (ZCA)
    needs all ``d`` directions, so it always takes the eigh path. A streamed split takes the eigh
    path only (the SVD needs all the data in memory: a ConfigError when N <= d).
    """
    if isinstance(x, TensorSplit):
        if len(x) == 0:
            raise DataError(f"preprocess '{name}' is fitted on a non-empty split; got 0 examples.")
        shape, device = x.example_shape, x.storage.device
    else:
        if not isinstance(x, torch.Tensor) or x.ndim < 2 or len(x) == 0:
            _check_fit_input(name, x)  # raises its DataError
        shape, device = tuple(x.shape[1:]), x.device
    n, d = len(x), math.prod(shape)
    if n < 2:
        raise DataError(f"preprocess '{name}' needs at least 2 training examples to estimate a covariance; got {n}.")
    step = max(1, chunk_bytes // (8 * d))
    eigh = n > d or full_basis
    if not eigh and isinstance(x, TensorSplit):
        raise ConfigError(
            f"data.preprocess={name} on {n:,} streamed examples of {d:,} features needs their SVD, with all of them "
            "in memory; use data.preprocess=zca or standardize, or more examples than features."
        )
    mean, cov = _moments(name, x, step, scatter=eigh)
    mean = mean.to(device)
    if cov is not None:
        cov = cov.to(device) / (n - 1)
        eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending; eigenvectors in columns
        eigvals, eigvecs = eigvals.flip(0), eigvecs.flip(1).T.contiguous()
    else:
        assert isinstance(x, torch.Tensor)  # streamed splits were refused above
        centred = _as_float64(x.detach()).reshape(n, d) - mean
        _, singular, eigvecs = torch.linalg.svd(centred, full_matrices=False)
        eigvals = singular**2 / (n - 1)
    eigvals = eigvals.clamp_min(0.0)  # eigh may return tiny negative values for a PSD matrix
    return mean.reshape(shape), eigvals, _flip_signs(eigvecs)


def _n_components(value: float, eigvals: torch.Tensor, n: int, d: int) -> int:
    """``data.pca_components`` -> a count k: an integer >= 1 as is, a fraction in (0, 1) as scikit-learn does.

    A fraction keeps the fewest leading components whose cumulative explained-variance ratio
    exceeds it (``searchsorted(cumsum, fraction, side='right') + 1``, as ``PCA(n_components=0.95)``).
    """
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(
            f"data.pca_components must be an integer >= 1 or a fraction in (0, 1), got {value}; e.g. data.pca_components=0.99."
        )
    if value >= 1:
        if not value.is_integer():
            raise ConfigError(
                f"data.pca_components={value} is >= 1, so it counts components and must be a whole number; "
                "e.g. data.pca_components=50, or a fraction in (0, 1) such as 0.95."
            )
        k = int(value)
        if k > min(n, d):
            raise ConfigError(
                f"data.pca_components={k} exceeds min(training examples, features) = min({n}, {d}) = {min(n, d)}; "
                "lower it or use a variance fraction such as 0.99."
            )
        return k
    total = eigvals.sum()
    if not total > 0:
        raise DataError("preprocess: the training inputs are constant (zero variance); PCA has no direction to keep.")
    ratio_cumsum = torch.cumsum(eigvals / total, dim=0)
    k = int(torch.searchsorted(ratio_cumsum, torch.tensor([value], dtype=ratio_cumsum.dtype, device=ratio_cumsum.device), right=True)) + 1
    return min(k, len(eigvals))


def _whiten_eps(cfg: DataConfig, eigvals: torch.Tensor, d: int) -> float:
    """Absolute eps = ``data.whiten_eps`` x the mean eigenvalue (the average variance per input feature)."""
    eps = float(cfg.whiten_eps)
    if not math.isfinite(eps) or eps < 0:
        raise ConfigError(f"data.whiten_eps must be a number >= 0 (relative to the mean eigenvalue), got {eps}; e.g. 1e-2.")
    mean_eig = float(eigvals.sum()) / d
    if not mean_eig > 0:
        raise DataError("preprocess: the training inputs are constant (zero variance); there is nothing to whiten.")
    return eps * mean_eig


def _whitening_scale(name: str, eigvals: torch.Tensor, eps: float) -> torch.Tensor:
    """``1 / sqrt(eigval + eps)``; a DataError if eps = 0 and a kept eigenvalue is (numerically) zero."""
    floor = float(eigvals.max()) * max(len(eigvals), 1) * torch.finfo(torch.float64).eps
    if eps == 0 and bool((eigvals <= floor).any()):
        raise DataError(
            f"preprocess '{name}': the training inputs are rank-deficient (a direction has zero variance), so exact "
            "whitening divides by zero; set data.whiten_eps > 0 (e.g. 1e-2) or keep fewer PCA components."
        )
    return 1.0 / torch.sqrt(eigvals + eps)


def _check_example_shape(name: str, x: torch.Tensor, shape: torch.Size) -> bool:
    """Whether ``x`` is a single example (else a batch); DataError if it is neither of ``shape``."""
    if x.ndim >= len(shape) and tuple(x.shape[x.ndim - len(shape) :]) == tuple(shape) and x.ndim <= len(shape) + 1:
        return x.ndim == len(shape)
    raise DataError(
        f"preprocess '{name}' was fitted on examples of shape {tuple(shape)}; got a tensor of shape {tuple(x.shape)}."
    )


class _Projection(Preprocess):
    """Shared by pca, pca_whiten and zca: centre, then project onto principal directions.

    Buffers: ``mean`` shaped like one example (so the input shape survives a reload),
    ``components`` (k, d) with the principal directions in rows (largest variance first, signs as
    scikit-learn's), and for the whitening entries ``scale`` (k,) = 1 / sqrt(eigenvalue + eps).
    """

    _CHUNK_BYTES = 32 << 20
    _whiten = False
    mean: torch.Tensor
    components: torch.Tensor
    scale: torch.Tensor  # registered only when _whiten

    def __init__(self, mean: torch.Tensor, components: torch.Tensor, scale: torch.Tensor | None = None) -> None:
        super().__init__()
        d = mean.numel()
        if components.ndim != 2 or components.shape[1] != d or components.shape[0] < 1:
            raise ValueError(f"components {tuple(components.shape)} do not match mean {tuple(mean.shape)}")
        if (scale is not None) != self._whiten or (scale is not None and scale.shape != components.shape[:1]):
            raise ValueError(f"scale {None if scale is None else tuple(scale.shape)} does not fit {self.name}")
        self.register_buffer("mean", mean.detach().to(torch.float32).clone())
        self.register_buffer("components", components.detach().to(torch.float32).contiguous().clone())
        if scale is not None:
            self.register_buffer("scale", scale.detach().to(torch.float32).clone())

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> _Projection:
        keys = ("mean", "components", "scale") if cls._whiten else ("mean", "components")
        tensors = _state_tensors(cls.name, state, keys)
        mean, components = tensors[0], tensors[1]
        scale = tensors[2] if cls._whiten else None
        ok = components.ndim == 2 and components.shape[0] >= 1 and components.shape[1] == mean.numel()
        if ok and scale is not None:
            ok = scale.shape == components.shape[:1] and bool((scale > 0).all())
        if ok and cls is ZCA:
            ok = components.shape[0] == components.shape[1]
        if not ok:
            raise RunDirError(
                f"saved preprocess '{cls.name}' state is inconsistent (buffer shapes {[tuple(t.shape) for t in tensors]}); "
                "the run directory is damaged: retrain."
            )
        return cls(mean, components, scale)

    def _centred_rows(self, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        x = to_float(x)
        single = _check_example_shape(self.name, x, self.mean.shape)
        return (x - self.mean).reshape(-1, self.mean.numel()), single

    def extra_repr(self) -> str:
        return f"input_shape={tuple(self.mean.shape)}, components={self.n_components}"


@PREPROCESSORS.register("pca", invertible=False, reduces_dims=True)
class PCA(_Projection):
    """Project centred inputs onto their top-k principal components -> flat (k,) (k: data.pca_components).

    Equals ``sklearn.decomposition.PCA(n_components=k).transform`` (same component signs). The
    output is a flat vector of k features whatever the input shape, so the network is built for
    :meth:`output_shape` ``(k,)`` (an mlp). ``inverse`` maps back to the input space: the best
    rank-k reconstruction, exact when k covers every direction the data varies in.
    """

    name = "pca"

    @classmethod
    def fit(cls, x: torch.Tensor | TensorSplit, cfg: DataConfig | None = None) -> _Projection:
        cfg = cfg or DataConfig()
        mean, eigvals, vectors = _spectrum(cls.name, x, full_basis=False, chunk_bytes=cls._CHUNK_BYTES)
        k = _n_components(cfg.pca_components, eigvals, len(x), mean.numel())
        if cls._whiten:
            eps = _whiten_eps(cfg, eigvals, mean.numel())
            return cls(mean, vectors[:k], _whitening_scale(cls.name, eigvals[:k], eps))
        return cls(mean, vectors[:k])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *input_shape) -> (B, k), or one example (*input_shape) -> (k,)."""
        rows, single = self._centred_rows(x)
        z = rows @ self.components.T
        if self._whiten:
            z = z * self.scale
        return z[0] if single else z

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """(B, k) -> (B, *input_shape): the reconstruction from k components (exact only for full rank)."""
        single = z.ndim == 1
        z = z.reshape(-1, self.n_components)
        if self._whiten:
            z = z / self.scale
        x = (z @ self.components).reshape(-1, *self.mean.shape) + self.mean
        return x[0] if single else x

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(k,)``; a DataError if ``input_shape`` is not the shape the module was fitted on."""
        if math.prod(input_shape) != self.mean.numel():
            raise DataError(
                f"preprocess '{self.name}' was fitted on examples of shape {tuple(self.mean.shape)}, not {tuple(input_shape)}."
            )
        return (self.n_components,)


@PREPROCESSORS.register("pca_whiten", invertible=False, reduces_dims=True)
class PCAWhiten(PCA):
    """PCA to k components, each divided by sqrt(eigenvalue + eps): decorrelated, unit variance -> (k,).

    With ``data.whiten_eps=0`` it equals ``sklearn.decomposition.PCA(n_components=k, whiten=True)``;
    eps (relative to the mean eigenvalue) shrinks only components of variance comparable to eps.
    ``inverse`` undoes the scaling, then reconstructs as :class:`PCA` does.
    """

    name = "pca_whiten"
    _whiten = True


def _refresh_after_load(module: ZCA, incompatible_keys: Any) -> None:
    module._refresh()


@PREPROCESSORS.register("zca", invertible=True, reduces_dims=False)
class ZCA(_Projection):
    """ZCA whitening W = U diag(1/sqrt(λ+eps)) Uᵀ (Bell & Sejnowski 1997): same shape, decorrelated, unit variance.

    Of all whitening matrices (those with W C Wᵀ = I) ZCA is the one whose output is closest to its
    input in mean squared distance, so whitened images still look like the images (edges enhanced).
    eps is ``data.whiten_eps`` x the mean eigenvalue: directions whose variance is far below eps
    (pixel noise, constant borders) are not blown up; their output variance is λ/(λ+eps) < 1. The
    buffers hold all d eigenvectors (``components``, d x d) and ``scale``; W itself is rebuilt from
    them (non-persistent buffer ``matrix``) so forward is one matrix product. ``inverse`` is exact
    whenever eps > 0 or the data is full rank.
    """

    name = "zca"
    _whiten = True
    matrix: torch.Tensor

    def __init__(self, mean: torch.Tensor, components: torch.Tensor, scale: torch.Tensor | None = None) -> None:
        super().__init__(mean, components, scale)
        if components.shape[0] != components.shape[1]:
            raise ValueError(f"zca needs a full (d, d) basis, got components {tuple(components.shape)}")
        self.register_buffer("matrix", self._matrix(), persistent=False)
        # load_state_dict copies new buffers in place: rebuild W from them so it never goes stale.
        self.register_load_state_dict_post_hook(_refresh_after_load)

    def _matrix(self) -> torch.Tensor:
        u = self.components.to(torch.float64)
        w = u.T @ (self.scale.to(torch.float64)[:, None] * u)
        return ((w + w.T) / 2).to(torch.float32)  # exactly symmetric

    @torch.no_grad()
    def _refresh(self) -> None:
        self.matrix.copy_(self._matrix())

    @classmethod
    def fit(cls, x: torch.Tensor | TensorSplit, cfg: DataConfig | None = None) -> ZCA:
        cfg = cfg or DataConfig()
        mean, eigvals, vectors = _spectrum(cls.name, x, full_basis=True, chunk_bytes=cls._CHUNK_BYTES)
        eps = _whiten_eps(cfg, eigvals, mean.numel())
        return cls(mean, vectors, _whitening_scale(cls.name, eigvals, eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) @ W``, same shape as ``x`` (W is symmetric)."""
        rows, single = self._centred_rows(x)
        out = rows @ self.matrix
        return out.reshape(self.mean.shape if single else (-1, *self.mean.shape))

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """``y @ W⁻¹ + mean``, W⁻¹ = U diag(sqrt(λ+eps)) Uᵀ."""
        single = y.ndim == self.mean.ndim
        rows = y.reshape(-1, self.mean.numel())
        x = ((rows @ self.components.T) / self.scale) @ self.components
        x = x.reshape(-1, *self.mean.shape) + self.mean
        return x[0] if single else x


def fit_preprocess(name: str, x: torch.Tensor | TensorSplit, cfg: DataConfig | None = None) -> Preprocess:
    """Fit preprocessor ``name`` on training inputs ``x`` (N, *input_shape); ConfigError if unknown.

    ``x`` may be a split (a streamed one is read in chunks, never gathered whole). ``cfg`` (the
    data config) supplies ``pca_components`` and ``whiten_eps``; None = their defaults.
    """
    return _preprocessor(name).fit(x, cfg)


def load_preprocess(name: str, state: dict[str, torch.Tensor]) -> Preprocess:
    """Rebuild preprocessor ``name`` from its saved ``state_dict()``; ConfigError if unknown."""
    return _preprocessor(name).from_state(state)


def _preprocessor(name: str) -> type[Preprocess]:
    # Every entry of PREPROCESSORS is a Preprocess subclass; the registry types factories as callables.
    return cast("type[Preprocess]", PREPROCESSORS.get(name))
