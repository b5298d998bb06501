"""Statistics over seeds: means with confidence intervals and paired tests.

A claim about training is a claim about a distribution over seeds (initialisation, shuffling,
augmentation draws), so each cell of an ablation is summarised by its mean and a Student-t
confidence interval, and compared with the baseline by a *paired* test: seed ``s`` of every cell
shares the data split and differs only in the setting varied, so the per-seed differences remove
the seed-to-seed variance that both cells share.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from scipy import stats as _st


@dataclass(frozen=True)
class MeanCI:
    """Mean of ``n`` values with a two-sided ``level`` Student-t interval ``[low, high]``."""

    mean: float
    low: float
    high: float
    std: float
    n: int
    level: float = 0.95

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mean_ci(values: Sequence[float], level: float = 0.95) -> MeanCI:
    """Mean ± t_{(1+level)/2, n-1} · s/√n over the finite values (s: sample std, ddof=1).

    One value has no spread to estimate: its interval is [mean, mean] with ``std`` NaN, and no
    value gives NaN throughout.
    """
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = len(x)
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, math.nan, 0, level)
    mean = float(x.mean())
    if n == 1:
        return MeanCI(mean, mean, mean, math.nan, 1, level)
    std = float(x.std(ddof=1))
    half = float(_st.t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)
    return MeanCI(mean, mean - half, mean + half, std, n, level)


@dataclass(frozen=True)
class PairedTest:
    """Paired comparison of a cell with the baseline over the seeds both finished.

    ``diff`` is the mean of (cell − baseline) per seed with its interval; ``p`` is the two-sided
    p-value of the paired t-test (NaN when fewer than two pairs or no variation at all).
    """

    diff: MeanCI
    p: float
    n: int
    significant: bool

    def to_dict(self) -> dict[str, Any]:
        return {"diff": self.diff.to_dict(), "p": self.p, "n": self.n, "significant": self.significant}


def paired_test(cell: dict[int, float], baseline: dict[int, float], alpha: float = 0.05,
                level: float = 0.95) -> PairedTest:
    """Paired t-test (Student 1908) of ``cell`` against ``baseline``, both keyed by seed.

    Only seeds present and finite in both are paired. All-identical differences have zero
    variance: a non-zero constant difference is significant (p = 0), a zero one is not (p = 1).
    """
    seeds = sorted(s for s in cell if s in baseline
                   and _finite(cell[s]) and _finite(baseline[s]))
    d = np.asarray([cell[s] - baseline[s] for s in seeds], dtype=np.float64)
    diff = mean_ci(d.tolist(), level)
    if len(d) < 2:
        return PairedTest(diff, math.nan, len(d), False)
    if np.allclose(d, d[0], rtol=0, atol=1e-12):
        p = 0.0 if abs(d[0]) > 1e-12 else 1.0
    else:
        p = float(_st.ttest_1samp(d, 0.0).pvalue)
    return PairedTest(diff, p, len(d), p < alpha)


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def curve_band(curves: Sequence[Sequence[float]], level: float = 0.95, log: bool = False) -> dict[str, list[float]]:
    """Per-epoch mean and CI of several curves (ragged: an early-stopped run just stops counting).

    ``log=True`` (for curves drawn on a log axis, such as losses): the mean and CI of ln(value),
    mapped back with exp — the geometric mean with a band that is always > 0 and symmetric on the
    log axis (a CI of raw values can reach <= 0, which a log axis draws as a floor-to-top block).
    Values <= 0 have no logarithm and are left out, like non-finite ones.
    """
    length = max((len(c) for c in curves), default=0)
    mean, low, high = [], [], []
    for i in range(length):
        column = [c[i] for c in curves if i < len(c)]
        if log:
            column = [math.log(v) for v in column if v is not None and math.isfinite(v) and v > 0]
        ci = mean_ci(column, level)
        back = math.exp if log else float
        mean.append(back(ci.mean))
        low.append(back(ci.low))
        high.append(back(ci.high))
    return {"mean": mean, "low": low, "high": high}


def first_reaching(curve: Sequence[float], target: float) -> int | None:
    """1-based index of the first value >= ``target`` (epochs to reach a target accuracy), or None."""
    for i, v in enumerate(curve, start=1):
        if v is not None and math.isfinite(v) and v >= target:
            return i
    return None
