"""Classification metrics of a trained model: pure functions of (logits, labels).

Inputs are logits (N, K) (any real scores whose softmax is the prediction: log-probabilities, as an
ensemble or test-time augmentation returns, are valid logits) and integer labels (N,) in [0, K).
Outputs are Python numbers and plain lists, ready for JSON. Everything is vectorised; checked
against scikit-learn (``top_k_accuracy_score``, ``precision_recall_fscore_support``,
``confusion_matrix``, ``log_loss``) in tests/test_metrics.py.

Conventions:

* confusion[i][j] counts examples of true class i predicted as class j (scikit-learn's layout);
* precision of a class never predicted, recall of a class absent from the labels, and an F1 whose
  precision and recall are both 0, are 0: scikit-learn's ``zero_division=0``;
* the macro means are unweighted means over all K classes (scikit-learn's ``average="macro"`` with
  ``labels=range(K)``), absent classes included (their recall counts as 0);
* top-k accuracy: the true class among the k highest logits (a tie at the k-th place is broken by
  ``torch.topk``; scikit-learn breaks it its own way: with real-valued logits ties practically never occur);
* NLL: the mean cross-entropy -log softmax(logits)[y], in nats, computed from the logits (no clipping);
* ECE and the reliability bins: :mod:`trainwell.train.calibration` (15 equal-width confidence bins).

Python API::

    m = classification_metrics(logits, y)
    m["acc"], m["top_k_acc"][5], m["macro_f1"], m["per_class"][0]["recall"], m["confusion"]
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from trainwell.errors import DataError
from trainwell.train.calibration import calibration_summary

#: The k of top-k accuracy reported (each where k < the number of classes; top-1 is ``acc``).
TOP_KS = (1, 3, 5)


def _checked(logits: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.as_tensor(logits).detach()
    labels = torch.as_tensor(labels, device=logits.device).detach()
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise DataError(f"logits must be a non-empty 2-D (N, K) tensor, got shape {tuple(logits.shape)}.")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise DataError(f"labels must be 1-D with one label per row of logits (N={logits.shape[0]}), "
                        f"got shape {tuple(labels.shape)}.")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise DataError(f"labels must be integer class indices, got dtype {labels.dtype}.")
    logits = logits.to(torch.float64)
    if torch.isnan(logits).any():
        raise DataError("logits contain NaN; the model's output is not usable (did the run diverge?).")
    k = logits.shape[1]
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= k:
        raise DataError(f"labels must be in [0, {k}) for K={k} classes, got values in [{lo}, {hi}].")
    return logits, labels.long()


def top_k_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of examples whose true class is among the k highest logits.

    Shape: logits (N, K), labels (N,) int in [0, K); 1 <= k <= K.
    """
    logits, labels = _checked(logits, labels)
    if not 1 <= k <= logits.shape[1]:
        raise DataError(f"top-k accuracy needs 1 <= k <= K={logits.shape[1]}, got k={k}.")
    top = logits.topk(k, dim=1).indices  # (N, k)
    return float((top == labels[:, None]).any(1).to(torch.float64).mean())


def confusion_matrix(logits: torch.Tensor, labels: torch.Tensor) -> list[list[int]]:
    """K x K counts, row = true class, column = predicted class (argmax of the logits).

    Shape: logits (N, K), labels (N,) -> a K-list of K-lists of ints.
    """
    logits, labels = _checked(logits, labels)
    return _confusion(logits.argmax(1), labels, logits.shape[1]).tolist()


def _confusion(pred: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    # One bincount over the flattened (true, predicted) pair index: (K, K) int64.
    return torch.bincount(labels * k + pred, minlength=k * k).view(k, k)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den with 0 where den is 0 (scikit-learn's zero_division=0)."""
    return torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(num))


def precision_recall_f1(confusion: torch.Tensor | list[list[int]]) -> dict[str, list[float] | list[int]]:
    """Per-class precision, recall, F1 and support from a confusion matrix (rows true, columns predicted).

    precision_k = C[k,k] / sum_i C[i,k], recall_k = C[k,k] / sum_j C[k,j], F1 = 2 P R / (P + R),
    support_k = sum_j C[k,j]; each 0 where its denominator is 0 (``zero_division=0``).
    """
    c = torch.as_tensor(confusion, dtype=torch.float64)
    tp = c.diagonal()
    predicted, support = c.sum(0), c.sum(1)
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
            "support": [int(s) for s in support.tolist()]}


def negative_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean -log softmax(logits)[y] in nats (scikit-learn's log_loss of the softmax probabilities)."""
    logits, labels = _checked(logits, labels)
    return float(F.cross_entropy(logits, labels))


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict[str, Any]:
    """Every metric of a classifier on one split, from one pass of logits.

    Returns ``n``, ``acc`` (top-1), ``top_k_acc`` ({k: acc} for k in :data:`TOP_KS` with k < K, and
    k = 1), ``nll``, ``ece``, ``brier``, ``reliability`` (the bins of the reliability diagram),
    ``precision``/``recall``/``f1``/``support`` (per class, index = class), ``macro_precision``,
    ``macro_recall``, ``macro_f1`` and ``confusion`` (K x K, rows true, columns predicted).
    Shape: logits (N, K), labels (N,) int in [0, K).
    """
    logits, labels = _checked(logits, labels)
    k = logits.shape[1]
    confusion = _confusion(logits.argmax(1), labels, k)
    per_class = precision_recall_f1(confusion)
    cal = calibration_summary(logits.softmax(1), labels, n_bins)
    top = logits.topk(min(max(TOP_KS), k), dim=1).indices == labels[:, None]  # (N, k): hit at rank r
    top_k = {t: float(top[:, :t].any(1).to(torch.float64).mean()) for t in TOP_KS if t == 1 or t < k}
    return {
        "n": int(labels.shape[0]),
        "acc": top_k[1],
        "top_k_acc": top_k,
        "nll": float(F.cross_entropy(logits, labels)),
        "ece": cal["ece"],
        "brier": cal["brier"],
        "reliability": cal["bins"],
        **per_class,
        "macro_precision": sum(per_class["precision"]) / k,
        "macro_recall": sum(per_class["recall"]) / k,
        "macro_f1": sum(per_class["f1"]) / k,
        "confusion": confusion.tolist(),
    }


def summary_fields(metrics: dict[str, Any], split: str, classes: list[str]) -> dict[str, Any]:
    """The fields a summary.json gets from :func:`classification_metrics` on ``split``.

    Scalars are prefixed with the split, as ``{split}_acc`` is: ``{split}_top3_acc``,
    ``{split}_top5_acc`` (where k < K), ``{split}_nll``, ``{split}_ece``, ``{split}_macro_precision``,
    ``{split}_macro_recall``, ``{split}_macro_f1``; then ``per_class`` ({class name: precision,
    recall, f1, support}), ``confusion`` (rows true, columns predicted, in the order of ``classes``)
    and ``reliability`` (the reliability diagram's bins).
    """
    out: dict[str, Any] = {f"{split}_top{k}_acc": v for k, v in metrics["top_k_acc"].items() if k > 1}
    out.update({f"{split}_{key}": metrics[key] for key in ("nll", "ece", "macro_precision", "macro_recall",
                                                           "macro_f1")})
    out["per_class"] = {name: {"precision": metrics["precision"][i], "recall": metrics["recall"][i],
                               "f1": metrics["f1"][i], "support": metrics["support"][i]}
                        for i, name in enumerate(classes)}
    out["confusion"] = metrics["confusion"]
    out["reliability"] = metrics["reliability"]
    return out


def write_metric_plots(metrics: dict[str, Any], classes: list[str], out_dir: Any, title: str = "") -> dict[str, str]:
    """confusion.png and reliability.png in ``out_dir``; returns {"confusion": path, "reliability": path}."""
    from pathlib import Path

    from trainwell.train.calibration import plot_reliability
    from trainwell.train.plots import plot_confusion

    out_dir = Path(out_dir)
    confusion = plot_confusion(metrics["confusion"], classes, out_dir / "confusion.png", title=title)
    reliability = plot_reliability({"model": {"bins": metrics["reliability"], "ece": metrics["ece"]}},
                                   out_dir / "reliability.png", title=f"reliability, {title}" if title else "")
    return {"confusion": str(confusion), "reliability": str(reliability)}


__all__ = ["TOP_KS", "classification_metrics", "confusion_matrix", "negative_log_likelihood", "precision_recall_f1",
           "summary_fields", "top_k_accuracy", "write_metric_plots"]
