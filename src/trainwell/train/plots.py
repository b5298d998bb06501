"""Training curves as PNG (matplotlib, Agg backend: no display needed), and the conventions every
figure of the package shares: a line style per series, legends outside the data, atomic saving."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

#: Line styles and markers cycled with the colours, so that curves lying on top of each other stay distinguishable.
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P")


def line_style(i: int) -> dict[str, Any]:
    """Matplotlib keywords for the i-th line: a dash pattern and a hollow marker of its own (relu exactly under
    leaky_relu still shows both)."""
    return {"ls": LINESTYLES[i % len(LINESTYLES)], "marker": MARKERS[i % len(MARKERS)], "mfc": "none"}


def dodge(i: int, n: int, width: float = 0.3) -> float:
    """The x offset of the i-th of n series drawn at the same categorical x positions (layer 1, 2, ...): spread
    evenly over ``width`` around 0, so series with equal values (relu and leaky_relu at init) sit side by side
    instead of on top of each other. 0 for a single series."""
    return 0.0 if n <= 1 else width * (i / (n - 1) - 0.5)


#: Where a figure legend may go: only matplotlib's places outside every axes.
OutsidePlace = Literal["outside lower center", "outside upper center", "outside right upper", "outside right center"]


def figure_legend(fig: Figure, loc: OutsidePlace = "outside lower center", ncols: int = 3, fontsize: float = 8,
                  title: str | None = None) -> None:
    """One legend for the whole figure, outside the axes (constrained layout makes room for it), so never
    over the data; each label once, whichever axes drew it."""
    seen: dict[str, Any] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), fontsize=fontsize, loc=loc, ncols=max(1, min(len(seen), ncols)),
                   title=title, title_fontsize=fontsize)


def spans_decades(values: list[float], decades: float = 1.0) -> bool:
    """True when the finite positive values span more than ``decades`` powers of ten (a log axis shows them)."""
    positive = [v for v in values if math.isfinite(v) and v > 0]
    return len(positive) >= 2 and math.log10(max(positive) / min(positive)) > decades


def curves_figure(history: list[dict[str, Any]], title: str = "") -> Figure:
    """Loss and accuracy per epoch, train and val side by side; the loss on a log axis when it spans more
    than a decade (it usually falls from ln K to near 0), the legend under the panels."""
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    losses: list[float] = []
    for split, style in (("train", "-"), ("val", "--")):
        if history and f"{split}_loss" in history[0]:
            loss = [float(r[f"{split}_loss"]) for r in history]
            losses += loss
            ax_loss.plot(epochs, loss, style, label=split)
            ax_acc.plot(epochs, [100 * r[f"{split}_acc"] for r in history], style, label=split)
    log = spans_decades(losses)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy" + (" (log scale)" if log else ""), title="loss")
    if log:
        ax_loss.set_yscale("log")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    figure_legend(fig)
    if title:
        fig.suptitle(title)
    return fig


def plot_curves(history: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Write :func:`curves_figure` to ``path``."""
    return save_figure(curves_figure(history, title), path)


def save_figure(fig: Figure, path: Path, dpi: int = 100) -> Path:
    """Save atomically (temporary file, then rename) and close the figure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        fig.savefig(tmp, dpi=dpi)
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def confusion_figure(confusion: list[list[int]], classes: list[str], title: str = "") -> Figure:
    """The confusion matrix as a heat map: rows the true class, columns the predicted one, each cell
    coloured by the fraction of its row (the class's recall on the diagonal) and labelled with its count
    while the matrix is small enough to read (up to 20 classes); class names on the axes up to 40 classes."""
    import numpy as np

    counts = np.asarray(confusion, dtype=np.int64).reshape(len(classes), len(classes))  # (K, K)
    k = len(classes)
    rows = counts.sum(1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)  # row-normalised
    side = min(max(4.0, 0.45 * k + 2.5), 14.0)
    fig, ax = plt.subplots(figsize=(side + 1.2, side), constrained_layout=True)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class")
    if k <= 40:
        names = [str(c) if len(str(c)) <= 12 else str(c)[:11] + "…" for c in classes]
        ax.set_xticks(range(k), names, rotation=90 if k > 10 or max(map(len, names)) > 3 else 0, fontsize=8)
        ax.set_yticks(range(k), names, fontsize=8)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7 if k > 10 else 9,
                            color="white" if share[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted class", ylabel="true class", title=f"confusion matrix ({int(counts.sum()):,} examples)")
    if title:
        fig.suptitle(title)
    return fig


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path, title: str = "") -> Path:
    """Write :func:`confusion_figure` to ``path``."""
    return save_figure(confusion_figure(confusion, classes, title), path)
