"""Class imbalance: per-class loss weights and a class-balanced data order.

Two remedies for a training split whose classes are not equally frequent, each a config key:

* ``loss.class_weights`` — the cross-entropy of an example of class ``y`` is multiplied by ``w_y``
  (King & Zeng 2001; scikit-learn's ``class_weight``). ``balanced`` is scikit-learn's heuristic
  ``w_c = n / (K · n_c)`` over the K classes present, so the weights average 1 over the training
  examples and the learning rate keeps its meaning. :func:`weighted_cross_entropy` averages
  ``w_y · CE`` over the batch (Keras's ``class_weight``; PyTorch's own ``weight=`` divides by the
  batch's weight sum instead, a per-batch rescaling that would also make two ranks of a data-parallel
  run disagree with one process).
* ``data.sampler=balanced`` — each epoch draws ``n`` examples with replacement, every class equally
  likely and every example uniformly within its class: probability ``1 / (K · n_{y_i})`` per example,
  what ``torch.utils.data.WeightedRandomSampler`` with weights ``1 / n_{y_i}`` does, as tensor ops
  from the shuffle stream.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from trainwell.errors import ConfigError


def class_counts(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Training examples per class, (K,) int64."""
    return torch.bincount(y.long().cpu(), minlength=num_classes)[:num_classes]


def class_weights(spec: str | Sequence[float], y: torch.Tensor, num_classes: int,
                  class_names: Sequence[str] = ()) -> torch.Tensor | None:
    """The (K,) float32 weights of ``loss.class_weights`` for training labels ``y``; None for ``none``.

    ``balanced``: ``w_c = n / (K · n_c)`` (scikit-learn's ``compute_class_weight("balanced")``), a
    one-line error when a class has no training example (its weight would be infinite). A list: one
    finite weight >= 0 per class, not all 0.
    """
    if isinstance(spec, str):
        if spec == "none":
            return None
        counts = class_counts(y, num_classes)
        if bool((counts == 0).any()):
            missing = int(torch.nonzero(counts == 0)[0])
            name = class_names[missing] if missing < len(class_names) else str(missing)
            raise ConfigError(f"loss.class_weights=balanced: class {name!r} has no training example, so its "
                              "weight n/(K·n_c) is infinite; give the weights as a list (loss.class_weights=[...]) "
                              "or train on data where every class appears.")
        return (len(y) / (num_classes * counts.double())).float()
    weights = [float(w) for w in spec]
    if len(weights) != num_classes:
        raise ConfigError(f"loss.class_weights has {len(weights)} weight(s) but the data has {num_classes} classes; "
                          f"give one per class, e.g. loss.class_weights=[{','.join(['1'] * num_classes)}].")
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not any(w > 0 for w in weights):
        raise ConfigError(f"loss.class_weights must be finite numbers >= 0, not all 0; got {weights}.")
    return torch.tensor(weights, dtype=torch.float32)


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                           label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean over the batch of ``w · CE`` (per example, PyTorch's weighted cross-entropy of hard labels
    with smoothing, or of soft targets); ``weight=None`` is the plain mean cross-entropy.

    Shapes: logits (B, K); target (B,) class indices or (B, K) probabilities; weight (K,).
    """
    if weight is None:
        return F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    return F.cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing,
                           reduction="none").mean()


def balanced_draw(y: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """``len(y)`` positions drawn with replacement, each class (of those present) equally likely and
    each example uniformly within its class; (n,) int64 on the CPU. Exact for any n (no
    ``torch.multinomial`` category limit): a class per draw, then an offset into that class's examples."""
    y = y.long().cpu()
    counts = class_counts(y, num_classes)
    present = torch.nonzero(counts).flatten()
    by_class = torch.argsort(y, stable=True)  # positions grouped by class, in class order
    starts = torch.cumsum(counts, 0) - counts
    drawn = present[torch.randint(len(present), (len(y),), generator=generator)]
    u = torch.rand(len(y), generator=generator, dtype=torch.float64)
    offset = torch.minimum((u * counts[drawn]).long(), counts[drawn] - 1)  # floor(u · n_c) in [0, n_c)
    return by_class[starts[drawn] + offset]


__all__ = ["balanced_draw", "class_counts", "class_weights", "weighted_cross_entropy"]
