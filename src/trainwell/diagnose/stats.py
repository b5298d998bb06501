"""The statistics the doctor collects: small pure functions, and accumulators that keep them on the device.

Every function returns tensors on the input's device and never calls ``.item()``: the recorder
calls them on sampled steps inside forward/backward hooks, and the host reads all accumulated
values at once (:func:`read_all`), so recording never stalls a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from trainwell.diagnose.thresholds import HIST_BINS, HIST_SAMPLE, SATURATION_EPS

_TINY = 1e-12


# ----------------------------------------------------------------------------- pure functions


def histogram(x: Tensor, bins: int, lo: float, hi: float) -> Tensor:
    """Counts of ``x`` in ``bins`` equal bins over [lo, hi]; values outside are clamped into the end bins.

    Shape: x (*) -> (bins,) float32. NaNs are not counted. Clamping keeps the total equal to the
    number of finite values, so an exploding layer shows as spikes in the end bins.
    """
    x = x.detach().float().reshape(-1).clamp(lo, hi)
    return torch.histc(x, bins=bins, min=lo, max=hi)


def strided_sample(x: Tensor, limit: int = HIST_SAMPLE) -> Tensor:
    """At most ~``limit`` elements of ``x``, every s-th of the flattened tensor (a view, no copy).

    The stride s is coprime with 2, 3, 5 and 7, so it does not alias with the sizes of typical axes
    (a stride of 8 over (N, C, 8, 8) maps would only ever pick column 0). Shape: x (*) -> (<= limit + 1,).
    """
    flat = x.reshape(-1)
    stride = max(1, -(-flat.numel() // limit))
    while stride > 1 and math.gcd(stride, 210) != 1:
        stride += 1
    return flat[::stride]


def ever_positive(x: Tensor, unit_dim: int) -> Tensor:
    """Per unit, whether any element along every other axis is > 0.

    Shape: x (N, ..., U, ...) -> (U,) bool, U = x.shape[unit_dim]. A unit is a feature of a Linear
    output or a channel of a Conv output (all positions of a channel share the filter).
    """
    x = x.detach()
    units = x.shape[unit_dim]
    return (x.movedim(unit_dim, -1).reshape(-1, units) > 0).any(dim=0)


def dead_fraction(alive: Tensor) -> Tensor:
    """Fraction of units never positive: ``1 - mean(alive)``. Shape: (U,) bool -> () float32."""
    return 1.0 - alive.float().mean()


def saturated_count(x: Tensor, lo: float, hi: float, eps: float = SATURATION_EPS) -> Tensor:
    """Number of elements within ``eps * (hi - lo)`` of either bound. Shape: x (*) -> () float32."""
    margin = eps * (hi - lo)
    x = x.detach().float()
    return ((x <= lo + margin) | (x >= hi - margin)).sum().float()


def saturated_fraction(x: Tensor, lo: float, hi: float, eps: float = SATURATION_EPS) -> Tensor:
    """Fraction of elements within ``eps * (hi - lo)`` of a bound (sigmoid: (0, 1), tanh: (-1, 1)).

    Shape: x (*) -> () float32.
    """
    return saturated_count(x, lo, hi, eps) / max(x.numel(), 1)


def update_ratio(before: Tensor, after: Tensor) -> Tensor:
    """||after - before|| / ||before||: the relative size of one optimiser step (Karpathy's ~1e-3 rule).

    Shape: two tensors of the same shape -> () float32.
    """
    before, after = before.detach().float(), after.detach().float()
    return (after - before).norm() / before.norm().clamp_min(_TINY)


def estimate_update_ratio(weight: Tensor, grad: Tensor, lr: float, optimizer: str = "sgd") -> Tensor:
    """The ratio the first step would have, from the gradient alone (at initialisation, before any step).

    * sgd (any momentum: the first step of momentum SGD is ``lr * g``): ||lr * g|| / ||W||;
    * adam/adamw: Adam's first step is ``lr * g / |g|`` per element (Kingma & Ba 2015, sec. 2.1:
      |step| <~ lr), so ||dW|| = lr * sqrt(number of non-zero gradients).

    On digits this matches the ratios measured over the first epoch within ~2x (median over layers).
    Shape: weight, grad of the same shape -> () float32.
    """
    w = weight.detach().float().norm().clamp_min(_TINY)
    g = grad.detach().float()
    if optimizer in ("adam", "adamw"):
        return lr * (g != 0).sum().float().sqrt() / w
    return lr * g.norm() / w


def input_stats_dims(x: Tensor) -> list[int]:
    """The axes to reduce for per-feature statistics: all but axis 1 (feature or channel)."""
    return [d for d in range(x.ndim) if d != 1]


# ----------------------------------------------------------------------------- running moments


@dataclass
class Moments:
    """Running mean and variance over sampled batches, merged with Chan et al.'s pairwise formula.

    ``update(x, dims)`` reduces ``x`` over ``dims`` (all axes when None); the state stays on
    ``x.device``: ``n`` is a Python count (known from shapes, no sync), ``mean`` and ``m2`` (sum of
    squared deviations) are tensors of the reduced shape. Chan, Golub & LeVeque 1979: merging
    (n_a, mean_a, m2_a) and (n_b, mean_b, m2_b) is exact and avoids sum-of-squares cancellation.
    """

    n: float = 0.0
    mean: Tensor | None = None
    m2: Tensor | None = None

    def update(self, x: Tensor, dims: list[int] | None = None) -> Tensor | None:
        """Merge the batch ``x`` in; returns the batch mean (None for an empty batch)."""
        x = x.detach().float()
        dims = list(range(x.ndim)) if dims is None else dims
        n_b = float(math.prod(x.shape[d] for d in dims)) if dims else 1.0
        if n_b == 0:
            return None
        if dims:
            var_b, mean_b = torch.var_mean(x, dim=dims, correction=0)
            m2_b = var_b * n_b
        else:
            mean_b, m2_b = x, torch.zeros_like(x)
        if self.mean is None or self.m2 is None:  # both None until the first update
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return mean_b
        total = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / total)
        self.m2 = self.m2 + m2_b + delta**2 * (self.n * n_b / total)
        self.n = total
        return mean_b

    def var(self) -> Tensor | None:
        """Population variance (ddof 0), or None before any update."""
        return None if self.m2 is None else self.m2 / max(self.n, 1.0)


# ----------------------------------------------------------------------------- accumulators


@dataclass
class LayerAccumulator:
    """Device-side statistics of one layer (one call site of a module), merged over sampled batches.

    Forward: moments and histogram of the output, the non-finite flag, per-unit "ever positive"
    (ReLU-like units that can die), saturated count (bounded units). Backward: moments of dL/d(output).
    The histogram is of a strided sample of at most HIST_SAMPLE values per batch (histc dominates the
    cost of a sampled step on CPU otherwise); everything else sees every value. A NaN/inf anywhere
    makes the batch mean non-finite, so the non-finite flag costs no extra pass.
    Weight layers also get their weight-gradient norm and the update ratio of their weight.
    Memory is bounded: a few scalars, ``bins`` counts and one bool per unit.
    """

    lo: float
    hi: float
    bins: int = HIST_BINS
    can_die: bool = False
    bounds: tuple[float, float] | None = None
    out: Moments = field(default_factory=Moments)
    grad: Moments = field(default_factory=Moments)
    hist: Tensor | None = None
    nonfinite: Tensor | None = None
    grad_nonfinite: Tensor | None = None
    alive: Tensor | None = None
    saturated: Tensor | None = None
    elements: float = 0.0
    examples: int = 0
    samples: int = 0
    weight_norm: Tensor | None = None
    grad_sq: Tensor | None = None
    grad_steps: int = 0
    ratio_sum: Tensor | None = None
    ratio_max: Tensor | None = None
    ratio_steps: int = 0

    def update_output(self, y: Tensor, unit_dim: int) -> None:
        """Record one sampled forward output. Shape: y (N, ...)."""
        y = y.detach().float()
        self.samples += 1
        self.examples += int(y.shape[0]) if y.ndim else 1
        mean = self.out.update(y)
        h = histogram(strided_sample(y), self.bins, self.lo, self.hi)
        self.hist = h if self.hist is None else self.hist + h
        if mean is not None:  # None for an empty batch, which holds no non-finite value
            bad = ~torch.isfinite(mean)
            self.nonfinite = bad if self.nonfinite is None else self.nonfinite | bad
        if self.can_die and y.ndim >= 2:
            alive = ever_positive(y, unit_dim)
            if self.alive is None or self.alive.shape != alive.shape:
                self.alive = alive
            else:
                self.alive = self.alive | alive  # a unit is alive if it fired on ANY sampled example
        if self.bounds is not None:
            s = saturated_count(y, *self.bounds)
            self.saturated = s if self.saturated is None else self.saturated + s
            self.elements += float(y.numel())

    def update_grad(self, g: Tensor) -> None:
        """Record dL/d(output) of a sampled step. Shape: g like the output."""
        mean = self.grad.update(g.detach().float())
        if mean is not None:  # None for an empty batch, which holds no non-finite value
            bad = ~torch.isfinite(mean)
            self.grad_nonfinite = bad if self.grad_nonfinite is None else self.grad_nonfinite | bad

    def update_weight(self, weight: Tensor, grad: Tensor) -> None:
        """Record ||W|| and ||dL/dW|| of a sampled step (grad norms are averaged as RMS over steps)."""
        self.weight_norm = weight.detach().float().norm()
        sq = grad.detach().float().norm() ** 2
        self.grad_sq = sq if self.grad_sq is None else self.grad_sq + sq
        self.grad_steps += 1

    def update_ratio(self, ratio: Tensor) -> None:
        """Record one step's ||dW|| / ||W||."""
        self.ratio_sum = ratio if self.ratio_sum is None else self.ratio_sum + ratio
        self.ratio_max = ratio if self.ratio_max is None else torch.maximum(self.ratio_max, ratio)
        self.ratio_steps += 1

    def tensors(self) -> dict[str, Tensor]:
        """Everything to read back, as float tensors (read together by :func:`read_all`)."""
        out: dict[str, Tensor] = {}
        out_var, grad_var = self.out.var(), self.grad.var()
        if self.out.mean is not None and out_var is not None:
            out["mean"] = self.out.mean
            out["var"] = out_var
        if self.hist is not None:
            out["hist"] = self.hist
        if self.nonfinite is not None:
            out["nonfinite"] = self.nonfinite.float()
        if self.grad.mean is not None and grad_var is not None:
            out["grad_mean"] = self.grad.mean
            out["grad_var"] = grad_var
        if self.grad_nonfinite is not None:
            out["grad_nonfinite"] = self.grad_nonfinite.float()
        if self.alive is not None:
            out["dead_fraction"] = dead_fraction(self.alive)
        if self.saturated is not None and self.elements:
            out["saturated_fraction"] = self.saturated / self.elements
        if self.weight_norm is not None:
            out["weight_norm"] = self.weight_norm
        if self.grad_sq is not None:
            out["grad_norm"] = (self.grad_sq / self.grad_steps).sqrt()
        if self.ratio_sum is not None and self.ratio_max is not None:  # set together
            out["update_ratio"] = self.ratio_sum / self.ratio_steps
            out["update_ratio_max"] = self.ratio_max
        return out


def read_all(groups: dict[str, dict[str, Tensor]]) -> dict[str, dict[str, float | list[float]]]:
    """Bring every accumulated tensor to the host in one transfer per device.

    ``groups`` maps a layer key to named tensors (scalars or vectors); the result has the same
    structure with floats (scalars) and lists (vectors).
    """
    flat: list[tuple[str, str, Tensor]] = [(k, name, t) for k, d in groups.items() for name, t in d.items()]
    if not flat:
        return {k: {} for k in groups}
    by_device: dict[torch.device, list[int]] = {}
    for i, (_, _, t) in enumerate(flat):
        by_device.setdefault(t.device, []).append(i)
    values: list[list[float]] = [[] for _ in flat]
    for device, idx in by_device.items():
        parts = [flat[i][2].detach().float().reshape(-1) for i in idx]
        host = torch.cat(parts).cpu().tolist()  # the one device -> host copy
        pos = 0
        for i, part in zip(idx, parts):
            values[i] = host[pos : pos + part.numel()]
            pos += part.numel()
    result: dict[str, dict[str, float | list[float]]] = {k: {} for k in groups}
    for (key, name, t), vals in zip(flat, values):
        result[key][name] = vals[0] if t.ndim == 0 else vals
    return result
