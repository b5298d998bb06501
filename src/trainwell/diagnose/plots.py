"""Figures of a report (matplotlib, Agg backend, PNG): the lecture's histograms, std and gradient by depth."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from trainwell.diagnose.report import LayerStats, Report
from trainwell.train.plots import figure_legend, line_style, plt, save_figure  # pyplot on the Agg backend


def _hist_layers(report: Report) -> list[LayerStats]:
    """Activation outputs when the model has activation modules, else the weight layers' outputs."""
    acts = [layer for layer in report.layers if layer.kind == "activation" and layer.hist]
    return acts or [layer for layer in report.layers if layer.is_weight and layer.hist]


def plot_histograms(report: Report, path: Path) -> Path:
    """One panel per layer: the distribution of its outputs over the fixed range (CS231n's init figure).

    Collapsing activations show as one spike at 0; saturating ones as spikes at the bounds.
    """
    layers = _hist_layers(report)
    n = max(len(layers), 1)
    cols = min(n, 6)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, layer in zip(axes.flat, layers):
        lo, hi = layer.hist_range
        total = sum(layer.hist) or 1.0
        width = (hi - lo) / max(len(layer.hist), 1)
        centres = [lo + width * (i + 0.5) for i in range(len(layer.hist))]
        ax.bar(centres, [c / total for c in layer.hist], width=width, color="tab:blue")
        ax.set_xlim(lo, hi)
        ax.set_title(f"{layer.name} {layer.activation or ''}\nmean {layer.mean:.2g} std {layer.std:.2g}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("output value", fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("fraction of values", fontsize=7)
    fig.suptitle(f"activation histograms ({report.context})" if report.context else "activation histograms", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def _log_line(ax: Axes, layers: list[LayerStats], values: list[float | None], label: str, marker: str) -> None:
    pts = [(layer.depth, v) for layer, v in zip(layers, values) if v is not None and math.isfinite(v) and v > 0]
    if pts:
        ax.plot([d for d, _ in pts], [v for _, v in pts], marker=marker, label=label)


def plot_std_by_depth(report: Report, path: Path) -> Path:
    """Std of each layer's output against depth (log scale): flat is healthy, a slope vanishes or explodes."""
    fig, ax = plt.subplots(figsize=(8, 4))
    weights = [layer for layer in report.layers if layer.is_weight]
    acts = [layer for layer in report.layers if layer.kind == "activation"]
    _log_line(ax, weights, [layer.std for layer in weights], "pre-activation (Linear/Conv output)", "o")
    _log_line(ax, acts, [layer.std for layer in acts], "activation output", "s")
    if report.input is not None and math.isfinite(report.input.std) and report.input.std > 0:
        ax.axhline(report.input.std, color="gray", linestyle="--", linewidth=1, label="input std")
    _finish(ax, "std of outputs by depth", "std", weights + acts)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_grad_by_depth(report: Report, path: Path) -> Path:
    """Weight-gradient norm and back-propagated gradient std (dL/dz) per layer against depth (log scale)."""
    fig, ax = plt.subplots(figsize=(8, 4))
    weights = [layer for layer in report.layers if layer.is_weight]
    _log_line(ax, weights, [layer.grad_norm for layer in weights], "||dL/dW||", "o")
    _log_line(ax, weights, [layer.grad_std for layer in weights], "std dL/dz (pre-activation)", "s")
    _log_line(ax, weights, [layer.update_ratio for layer in weights], "update ratio ||dW||/||W||", "^")
    _finish(ax, "gradients by depth", "value", weights)
    fig.tight_layout()
    return save_figure(fig, path)


def fractions_figure(reports: list[Report]) -> Figure:
    """Dead (ReLU family) and saturated (sigmoid/tanh) fraction of each activation layer per epoch: one
    line per layer, named, with its own colour, dash pattern and marker (layers at the same fraction, often
    all at 0%, stay distinguishable), the legend right of the panels."""
    fig, (ax_dead, ax_sat) = plt.subplots(1, 2, figsize=(11, 3.5), constrained_layout=True)
    epochs = list(range(1, len(reports) + 1))
    names = [layer.name for layer in reports[-1].layers if layer.kind == "activation"]
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    for i, name in enumerate(names):
        for ax, attr in ((ax_dead, "dead_fraction"), (ax_sat, "saturated_fraction")):
            values = [next((getattr(layer, attr) for layer in r.layers if layer.name == name), None) for r in reports]
            pts = [(e, 100 * v) for e, v in zip(epochs, values) if v is not None]
            if pts:
                ax.plot([e for e, _ in pts], [v for _, v in pts], color=cmap(i % cmap.N), label=name, ms=5,
                        **line_style(i))
    for ax, title in ((ax_dead, "dead units over training"), (ax_sat, "saturated units over training")):
        ax.set(xlabel="epoch", ylabel="% of units", title=title, ylim=(-2, 102))
        ax.grid(alpha=0.3)
    figure_legend(fig, loc="outside right upper", ncols=1, fontsize=7, title="layer")
    return fig


def plot_fractions_over_training(reports: list[Report], path: Path) -> Path:
    """Write :func:`fractions_figure` to ``path``."""
    return save_figure(fractions_figure(reports), path)


#: At most this many layer names on an axis (every k-th beyond it), so that a 30-layer net stays readable.
MAX_NAMED_TICKS = 24


def _name_axis(ax: Axes, layers: list[LayerStats]) -> None:
    """Label the depth axis with the layers' module names, as the doctor's findings name them."""
    by_depth = sorted({layer.depth: layer.name for layer in layers}.items())
    step = max(1, math.ceil(len(by_depth) / MAX_NAMED_TICKS))
    shown = by_depth[::step]
    ax.set_xticks([d for d, _ in shown], [name for _, name in shown], rotation=60, ha="right", fontsize=6)


def _finish(ax: Axes, title: str, ylabel: str, layers: list[LayerStats]) -> None:
    ax.set_yscale("log")
    _name_axis(ax, layers)
    ax.set_xlabel("layer, in the order of the forward pass")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside the data
    ax.grid(True, which="both", alpha=0.3)


def plot_report(report: Report, out_dir: str | Path, prefix: str = "") -> list[Path]:
    """Write the three figures of ``report`` into ``out_dir`` (created if needed); returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        plot_histograms(report, out_dir / f"{prefix}histograms.png"),
        plot_std_by_depth(report, out_dir / f"{prefix}std_by_depth.png"),
        plot_grad_by_depth(report, out_dir / f"{prefix}grad_by_depth.png"),
    ]
