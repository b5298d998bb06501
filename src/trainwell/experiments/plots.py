"""Figures of a compare: curves with confidence bands, and a bar chart of the final metric."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.ticker import MaxNLocator

from trainwell.train.plots import plt, save_figure

#: Baseline grey; significantly better green, worse red; the rest blue.
COLOURS = {"baseline": "#7f7f7f", "better": "#2ca02c", "worse": "#d62728", "same": "#1f77b4"}


def _finite(values: Sequence[float]) -> list[float]:
    return [v if v is not None and math.isfinite(v) else math.nan for v in values]


def plot_cell_curves(cells: Sequence[Any], curves: Sequence[tuple[str, str, float]], path: Path,
                     title: str = "") -> Path:
    """One panel per curve key: each cell's mean per epoch with its 95% CI as a shaded band."""
    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4), constrained_layout=True, squeeze=False)
    cmap = plt.get_cmap("tab10" if len(cells) <= 10 else "tab20")
    for ax, (key, label, scale) in zip(axes[0], curves):
        for i, cell in enumerate(cells):
            band = cell.curves.get(key)
            if not band or not band["mean"]:
                continue
            epochs = list(range(1, len(band["mean"]) + 1))
            mean = [v * scale for v in _finite(band["mean"])]
            colour = cmap(i % cmap.N)
            ax.plot(epochs, mean, color=colour, label=cell.label, lw=1.6)
            low, high = _finite(band["low"]), _finite(band["high"])
            if key.endswith("acc"):  # an interval of few seeds can pass 0 or 1; accuracy cannot
                low, high = [max(v, 0.0) for v in low], [min(v, 1.0) for v in high]
            ax.fill_between(epochs, [v * scale for v in low], [v * scale for v in high], color=colour, alpha=0.18,
                            lw=0)
        ax.set(xlabel="epoch", ylabel=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if key.endswith("loss"):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        axes[0][-1].legend(handles, labels, fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def _status(cell: Any, higher_is_better: bool = True) -> str:
    if cell.test is None:
        return "baseline"
    if not cell.test.significant:
        return "same"
    return "better" if (cell.test.diff.mean > 0) == higher_is_better else "worse"


def plot_cell_bars(cells: Sequence[Any], metric: str, path: Path, title: str = "",
                   higher_is_better: bool = True) -> Path:
    """Horizontal bars: mean with 95% CI whiskers, each seed as a dot; colour = paired-test verdict."""
    n = len(cells)
    fig, ax = plt.subplots(figsize=(8, 0.45 * n + 1.6), constrained_layout=True)
    ys = list(range(n))[::-1]
    for y, cell in zip(ys, cells):
        mean = cell.ci.mean
        if not math.isfinite(mean):
            continue
        err = [[mean - cell.ci.low], [cell.ci.high - mean]] if math.isfinite(cell.ci.low) else None
        ax.barh(y, mean, xerr=err, color=COLOURS[_status(cell, higher_is_better)], alpha=0.75, capsize=4,
                height=0.6)
        vals = list(cell.values.values())
        ax.scatter(vals, [y] * len(vals), color="black", s=12, zorder=3)
    finite = [v for c in cells for v in c.values.values() if math.isfinite(v)]
    if finite:
        lo, hi = min(finite), max(finite)
        pad = (hi - lo) * 0.25 or abs(hi) * 0.05 or 0.05
        ax.set_xlim(lo - pad if lo - pad > 0 or lo < 0 else 0, hi + pad)
    ax.set_yticks(ys, [c.label for c in cells], fontsize=8)
    ax.set_xlabel(f"{metric} (mean, 95% CI; dots: seeds)")
    ax.grid(axis="x", alpha=0.3)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=COLOURS[k], label=k if k != "same" else "no significant difference")
                       for k in ("baseline", "same", "better", "worse")], fontsize=7, loc="lower right")
    if title:
        ax.set_title(title)
    return save_figure(fig, path)
