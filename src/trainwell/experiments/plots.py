"""Figures of a compare: curves with confidence bands, and each cell's metric as a dot with its interval.

Drawn so that they do not mislead: intervals as dots and whiskers (no bars whose length starts at an
arbitrary axis limit), an interval cut by the axis marked with an arrow, loss bands computed in log
space for a log axis, legends outside the data, and every diverged run shown (a red × and a count)
rather than silently dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from trainwell.experiments.results import cell_status
from trainwell.train.plots import LINESTYLES, MARKERS, figure_legend, line_style, plt, save_figure

#: Baseline grey; significantly better green, worse red; a cell with diverged seeds orange; the rest blue.
COLOURS = {"baseline": "#7f7f7f", "better": "#2ca02c", "worse": "#d62728", "diverged": "#ff7f0e", "same": "#1f77b4"}
STATUS_LABELS = {"baseline": "baseline", "same": "no significant difference", "better": "significantly better",
                 "worse": "significantly worse", "diverged": "has diverged seeds (never called better)"}
__all__ = ["COLOURS", "LINESTYLES", "MARKERS", "STATUS_LABELS", "line_style", "plot_cell_curves",
           "plot_cell_intervals"]


def _finite(values: Sequence[float]) -> list[float]:
    return [v if v is not None and math.isfinite(v) else math.nan for v in values]


def _curve_label(cell: Any) -> str:
    return f"{cell.label} ({cell.left_out}: not in the band)" if cell.left_out else cell.label


def plot_cell_curves(cells: Sequence[Any], curves: Sequence[tuple[str, str, float, bool]], path: Path,
                     title: str = "") -> Path:
    """One panel per curve key: each cell's mean per epoch with its 95% CI as a shaded band.

    ``curves``: (key, axis label, scale, log axis). On a log axis the band is the geometric mean and
    its CI in log space (``curve_band(log=True)``, done by the aggregation), so it never reaches <= 0.
    """
    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4.2), constrained_layout=True,
                             squeeze=False)
    cmap = plt.get_cmap("tab10" if len(cells) <= 10 else "tab20")
    for ax, (key, label, scale, log) in zip(axes[0], curves):
        for i, cell in enumerate(cells):
            band = cell.curves.get(key)
            if not band or not band["mean"]:
                continue
            epochs = list(range(1, len(band["mean"]) + 1))
            colour = cmap(i % cmap.N)
            ax.plot(epochs, [v * scale for v in _finite(band["mean"])], color=colour, label=_curve_label(cell),
                    lw=1.6, ms=4, **line_style(i))
            low, high = _finite(band["low"]), _finite(band["high"])
            if key.endswith("acc"):  # an interval of few seeds can pass 0 or 1; accuracy cannot
                low, high = [max(v, 0.0) for v in low], [min(v, 1.0) for v in high]
            ax.fill_between(epochs, [v * scale for v in low], [v * scale for v in high], color=colour, alpha=0.18,
                            lw=0)
        ax.set(xlabel="epoch", ylabel=label + (" (geometric mean)" if log else ""))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    figure_legend(fig)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_cell_intervals(cells: Sequence[Any], metric: str, path: Path, title: str = "",
                        higher_is_better: bool = True) -> Path:
    """Per cell: the mean as a dot with its 95% CI as a whisker, each counted seed as a small dot, each
    diverged seed as a red × at the left edge with a count; colour = the paired-test verdict.

    The axis spans every seed and interval (clipped to [0, 1] for accuracies, where an interval of few
    seeds can pass the bounds; a clipped end is drawn as an arrow).
    """
    n = len(cells)
    fig, ax = plt.subplots(figsize=(8, 0.5 * n + 2.0), constrained_layout=True)
    ys = list(range(n))[::-1]
    bounded = metric.endswith("acc")
    points = [v for c in cells for v in (*c.values.values(), c.ci.low, c.ci.high) if math.isfinite(v)]
    lo, hi = (min(points), max(points)) if points else (0.0, 1.0)
    if bounded:
        lo, hi = max(lo, 0.0), min(hi, 1.0)
    pad = (hi - lo) * 0.08 or abs(hi) * 0.05 or 0.05
    left, right = lo - pad, hi + pad
    for y, cell in zip(ys, cells):
        colour = COLOURS[cell_status(cell, higher_is_better)]
        seeds = list(cell.values.values())
        jitter = [y + 0.12 * ((k % 3) - 1) for k in range(len(seeds))]
        ax.scatter(seeds, jitter, color="black", s=10, zorder=3, alpha=0.7)
        if math.isfinite(cell.ci.mean):
            ci_low, ci_high = cell.ci.low, cell.ci.high
            if math.isfinite(ci_low):
                shown_low, shown_high = max(ci_low, lo), min(ci_high, hi)
                ax.hlines(y, shown_low, shown_high, color=colour, lw=2.5, zorder=2)
                for end, shown, marker in ((ci_low, shown_low, "<"), (ci_high, shown_high, ">")):
                    if end != shown:  # the interval goes past what the metric can be: say so
                        ax.plot(shown, y, marker=marker, color=colour, ms=7, zorder=2)
            ax.plot(cell.ci.mean, y, "o", color=colour, ms=8, zorder=4)
        if cell.diverged:
            ax.plot([left] * len(cell.diverged), [y] * len(cell.diverged), "x", color=COLOURS["worse"], ms=9, mew=2,
                    zorder=5, clip_on=False)
            ax.annotate(f"{len(cell.diverged)} diverged", (left, y), xytext=(8, 6), textcoords="offset points",
                        color=COLOURS["worse"], fontsize=8)
    ax.set_xlim(left, right)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_yticks(ys, [c.label for c in cells], fontsize=8)
    ax.set_xlabel(f"{metric} (dot: mean; line: 95% CI; small dots: seeds)")
    ax.grid(axis="x", alpha=0.3)
    # a legend entry only for a colour drawn: a cell whose every seed diverged has no mean dot, only its ×
    used = sorted({cell_status(c, higher_is_better) for c in cells if math.isfinite(c.ci.mean)},
                  key=list(COLOURS).index)
    handles = [Line2D([], [], marker="o", ls="-", color=COLOURS[k], label=STATUS_LABELS[k]) for k in used]
    if any(c.diverged for c in cells):
        handles.append(Line2D([], [], marker="x", ls="", color=COLOURS["worse"], mew=2,
                              label="diverged seed (left out of the mean)"))
    fig.legend(handles=handles, fontsize=7, loc="outside lower center", ncols=min(len(handles), 3))
    if title:
        ax.set_title(title)
    return save_figure(fig, path)
