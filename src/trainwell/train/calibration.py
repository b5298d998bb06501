"""Calibration metrics: ECE, reliability bins, NLL and Brier score, and the reliability diagram.

A classifier is calibrated when, among the examples it predicts with confidence c, a fraction c is
right (Guo et al. 2017, "On Calibration of Modern Neural Networks"). Inputs are softmax
probabilities (N, K) and integer labels (N,) as torch tensors; outputs are Python floats and plain
lists so results go straight into JSON. Sums are taken in float64 on the tensors' device, with no
Python loop over examples.
"""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Any

import torch

from trainwell.errors import DataError

ROW_SUM_TOL = 1e-3


def _checked(probs: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate and return (probs as float64 (N, K), labels as int64 (N,)); DataError otherwise."""
    probs = torch.as_tensor(probs).detach()
    labels = torch.as_tensor(labels, device=probs.device).detach()
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] == 0:
        raise DataError(f"probs must be a non-empty 2-D (N, K) tensor, got shape {tuple(probs.shape)}.")
    if probs.is_complex():
        raise DataError(f"probs must be real softmax probabilities, got dtype {probs.dtype}.")
    if labels.ndim != 1 or labels.shape[0] != probs.shape[0]:
        raise DataError(
            f"labels must be 1-D with one label per row of probs (N={probs.shape[0]}), "
            f"got shape {tuple(labels.shape)}."
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise DataError(f"labels must be integer class indices, got dtype {labels.dtype}.")
    probs = probs.to(torch.float64)
    if not torch.isfinite(probs).all():
        raise DataError("probs contains NaN or inf; pass finite softmax probabilities.")
    k = probs.shape[1]
    if probs.min() < 0:
        raise DataError(
            f"probs has negative entries (min {probs.min().item():.4g}); pass softmax probabilities, not logits."
        )
    row_err = (probs.sum(1) - 1).abs().max().item()
    if row_err > ROW_SUM_TOL:
        raise DataError(
            f"probs rows must sum to 1 (worst row off by {row_err:.4g}, tolerance {ROW_SUM_TOL}); "
            "pass softmax probabilities, not logits."
        )
    lo, hi = labels.min().item(), labels.max().item()
    if lo < 0 or hi >= k:
        raise DataError(f"labels must be in [0, {k}) for K={k} classes, got values in [{lo}, {hi}].")
    return probs, labels.long()


def _checked_bins(n_bins: Any) -> int:
    try:
        value = None if isinstance(n_bins, bool) else operator.index(n_bins)  # ints, numpy ints
    except TypeError:
        value = None
    if value is None or value < 1:
        raise DataError(f"n_bins must be an integer >= 1, got {n_bins!r}.")
    return value


def _bin_sums(probs: torch.Tensor, labels: torch.Tensor, n_bins: int) -> tuple[torch.Tensor, ...]:
    """Per-bin (edges, count, sum of confidences, number correct), all float64, bins (b/n, (b+1)/n].

    Edges are b / n_bins, each correctly rounded, so a confidence of exactly 1/K (a uniform row)
    lands in the bin whose upper edge it is; 1.0 lands in the last bin.
    """
    conf, pred = probs.max(1)  # argmax ties go to the first maximal index
    correct = (pred == labels).to(torch.float64)
    edges = torch.arange(n_bins + 1, dtype=torch.float64, device=probs.device) / n_bins
    # right=False: index i where edges[i] < conf <= edges[i + 1] (inner edges only, so the ends are open).
    idx = torch.bucketize(conf, edges[1:-1], right=False)
    zeros = torch.zeros(n_bins, dtype=torch.float64, device=probs.device)
    count = zeros.scatter_add(0, idx, torch.ones_like(conf))
    conf_sum = zeros.scatter_add(0, idx, conf)
    correct_sum = zeros.scatter_add(0, idx, correct)
    return edges, count, conf_sum, correct_sum


def _ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int) -> float:
    _, _, conf_sum, correct_sum = _bin_sums(probs, labels, n_bins)
    # |B|/n * |acc(B) - conf(B)| = |sum_B correct - sum_B conf| / n: no division by empty bins.
    return float((correct_sum - conf_sum).abs().sum() / probs.shape[0])


def _reliability(probs: torch.Tensor, labels: torch.Tensor, n_bins: int) -> dict[str, list]:
    edges, count, conf_sum, correct_sum = _bin_sums(probs, labels, n_bins)
    counts = [int(c) for c in count.tolist()]
    mean_conf = (conf_sum / count.clamp(min=1)).tolist()
    mean_acc = (correct_sum / count.clamp(min=1)).tolist()
    return {
        "edges": edges.tolist(),
        "confidence": [c if m else None for c, m in zip(mean_conf, counts)],
        "accuracy": [a if m else None for a, m in zip(mean_acc, counts)],
        "count": counts,
    }


def _nll(probs: torch.Tensor, labels: torch.Tensor, eps: float) -> float:
    p_true = probs.gather(1, labels[:, None]).squeeze(1)
    return float(-p_true.clamp(min=eps).log().mean())


def _brier(probs: torch.Tensor, labels: torch.Tensor) -> float:
    diff = probs.clone()
    diff[torch.arange(len(labels), device=probs.device), labels] -= 1  # p - onehot(label)
    return float(diff.pow(2).sum(1).mean())


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error (Guo et al. 2017), in [0, 1] (up to the 1e-3 row-sum tolerance).

    ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)| over n_bins equal-width confidence bins on (0, 1],
    where confidence = max_k p_k and the prediction is argmax_k p_k.
    Shape: probs (N, K) softmax probabilities, labels (N,) int in [0, K).
    """
    n_bins = _checked_bins(n_bins)
    return _ece(*_checked(probs, labels), n_bins)


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict[str, list]:
    """The data of a reliability diagram: per confidence bin (b/n, (b+1)/n], its mean confidence,
    accuracy and example count.

    Returns {"edges": n_bins + 1 floats, "confidence", "accuracy", "count": n_bins values each};
    empty bins have confidence and accuracy None.
    """
    n_bins = _checked_bins(n_bins)
    return _reliability(*_checked(probs, labels), n_bins)


def negative_log_likelihood(probs: torch.Tensor, labels: torch.Tensor, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood, -1/N sum_i log max(p_i[y_i], eps).

    The clamp keeps one confidently wrong example from making the mean infinite.
    """
    return _nll(*_checked(probs, labels), eps)


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Brier score (Brier 1950), multi-class: 1/N sum_i sum_k (p_ik - onehot(y_i)_k)^2, in [0, 2]."""
    return _brier(*_checked(probs, labels))


def calibration_summary(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict[str, Any]:
    """Accuracy, NLL, ECE, Brier score, N and the reliability bins, checking the inputs once."""
    n_bins = _checked_bins(n_bins)
    probs, labels = _checked(probs, labels)
    return {
        "acc": float((probs.argmax(1) == labels).to(torch.float64).mean()),
        "nll": _nll(probs, labels, 1e-12),
        "ece": _ece(probs, labels, n_bins),
        "brier": _brier(probs, labels),
        "n": int(probs.shape[0]),
        "bins": _reliability(probs, labels, n_bins),
    }


def plot_reliability(curves: dict[str, dict[str, Any]], path: Path, title: str = "") -> Path:
    """Reliability diagram: accuracy vs confidence per bin for each curve, with examples per bin below.

    curves: label -> reliability_bins(...) output, optionally with an "ece" key (shown in the legend),
    or label -> calibration_summary(...) output (its "bins" and "ece" are used). A calibrated model
    follows the dashed diagonal; steps below it are over-confident bins.
    """
    # Imported here so the metrics load without matplotlib; plots selects the Agg backend first.
    from trainwell.train.plots import plt, save_figure

    if not curves:
        raise DataError("plot_reliability needs at least one curve (label -> reliability_bins(...)).")
    for name, curve in curves.items():  # before opening a figure, so an error leaks none
        missing = {"edges", "accuracy", "count"} - set(curve.get("bins", curve))
        if missing:
            raise DataError(f"curve '{name}' lacks {sorted(missing)}; pass reliability_bins(...) output.")
    fig, (ax, ax_n) = plt.subplots(
        2, 1, figsize=(5.5, 6.5), sharex=True, height_ratios=(3, 1), constrained_layout=True
    )
    ax.plot([0, 1], [0, 1], "--", color="0.5", lw=1, label="perfect calibration")
    for name, curve in curves.items():
        bins = curve.get("bins", curve)
        label = f"{name} (ECE {100 * curve['ece']:.2f}%)" if "ece" in curve else str(name)
        nan = float("nan")  # empty bins: a gap in the line, not a zero
        acc = [nan if a is None else a for a in bins["accuracy"]]
        stairs = ax.stairs(acc, bins["edges"], baseline=None, lw=1.8, label=label)
        if bins.get("confidence") is not None:
            # Each bin's mean confidence: the point sits on the diagonal when the bin is calibrated.
            conf = [nan if c is None else c for c in bins["confidence"]]
            ax.plot(conf, acc, "o", ms=3.5, color=stairs.get_edgecolor())
        counts = [c if c else nan for c in bins["count"]]  # log scale: empty bins left blank
        ax_n.stairs(counts, bins["edges"], baseline=None, lw=1.5, color=stairs.get_edgecolor())
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=title or "reliability diagram")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    ax_n.set(xlabel="confidence (max probability)", ylabel="examples", yscale="log")
    ax_n.grid(alpha=0.3)
    return save_figure(fig, path)
