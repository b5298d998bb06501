"""Ensemble maths: members' logits combined into one prediction, and members and combinations scored.

Averaging independently trained networks is the most reliable way to buy accuracy and calibration
with compute (Lakshminarayanan et al. 2017, "Simple and Scalable Predictive Uncertainty Estimation
using Deep Ensembles"). Members' outputs are stacked (M, N, K); every combination and score is
vectorised over examples. Ensemble folders (build, write, load) are in
:mod:`trainwell.train.ensemble_dir`, snapshot ensembles in :mod:`trainwell.train.snapshots`.

Python API::

    from trainwell.train.ensemble import Ensemble, combine, evaluate_ensemble
    logp = combine(torch.stack([m(x) for m in models]), "mean_prob")   # (N, K) log-probabilities
    evaluate_ensemble(models, splits.test)["ensemble_acc"]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from trainwell.errors import ConfigError, DataError, unknown_name_message
from trainwell.train.trainer import predict_logits

if TYPE_CHECKING:
    from trainwell.data import TensorSplit

METHODS = ("mean_prob", "mean_logit", "vote")
"""How members' outputs are combined: mean of softmax probabilities (default), mean of logits, majority vote."""


def check_method(method: str) -> str:
    """``method`` itself when it is one of :data:`METHODS`, else a one-line ConfigError naming them."""
    if method not in METHODS:
        raise ConfigError(unknown_name_message("ensemble method", method, METHODS))
    return method


# ----------------------------------------------------------------------------- combining


def combine(logits: torch.Tensor, method: str = "mean_prob") -> torch.Tensor:
    """Members' logits (M, N, K) -> log-probabilities (N, K) of the combined prediction.

    * mean_prob: log of the mean of the members' softmax probabilities;
    * mean_logit: log_softmax of the mean logit;
    * vote: log of the vote shares smoothed by one pseudo-vote spread as the mean probability,
      (votes_k + mean_prob_k) / (M + 1): the majority class wins, a tie goes to the class with the
      highest mean probability (a pseudo-vote is worth less than a real one), and no class gets 0.

    Log-probabilities are valid logits (log_softmax leaves them unchanged), so cross-entropy,
    softmax and argmax treat an ensemble exactly like a single classifier.
    """
    check_method(method)
    if logits.ndim != 3:
        raise DataError(f"combine expects members' logits of shape (M, N, K), got {tuple(logits.shape)}.")
    if method == "mean_logit":
        return F.log_softmax(logits.mean(0), dim=-1)
    mean = logits.softmax(-1).mean(0)  # (N, K)
    if method == "vote":
        m, k = logits.shape[0], logits.shape[-1]
        votes = F.one_hot(logits.argmax(-1), k).sum(0).to(mean.dtype)  # (N, K) members voting for each class
        mean = (votes + mean) / (m + 1)
    return mean.clamp_min(torch.finfo(mean.dtype).tiny).log()


class Ensemble(nn.Module):
    """Members combined by ``method``; ``forward(x)`` returns log-probabilities (N, K).

    Shape: x (N, *input_shape) float, as a Classifier takes it -> (N, num_classes).
    """

    def __init__(self, members: Sequence[nn.Module], method: str = "mean_prob") -> None:
        super().__init__()
        if not members:
            raise ConfigError("an ensemble needs at least one member.")
        self.members = nn.ModuleList(members)
        self.method = check_method(method)

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's logits, stacked: (M, N, K)."""
        return torch.stack([m(x) for m in self.members]).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return combine(self.member_logits(x), self.method)

    def extra_repr(self) -> str:
        return f"method={self.method!r}"


# ----------------------------------------------------------------------------- evaluation


def _members_of(members: Sequence[nn.Module] | Ensemble) -> list[nn.Module]:
    return list(members.members) if isinstance(members, Ensemble) else list(members)


def stacked_logits(members: Sequence[nn.Module] | Ensemble, x: torch.Tensor, device: torch.device | str,
                   batch: int = 1024) -> torch.Tensor:
    """Members' logits for stored-dtype inputs x (N, ...) -> (M, N, K) float32 on the device."""
    device = torch.device(device) if isinstance(device, str) else device
    mods = _members_of(members)
    for m in mods:
        m.to(device)
    return torch.stack([predict_logits(m, x, device, batch) for m in mods])


def score_logits(logits: torch.Tensor, y: torch.Tensor, method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary, reliability bins by curve name) from members' logits (M, N, K) and labels (N,)."""
    from trainwell.train.calibration import calibration_summary

    y = y.to(logits.device)
    m = logits.shape[0]
    member_accs, member_nlls, member_cal = [], [], []
    for i in range(m):  # a loop over members, not examples; the same arithmetic as evaluate_split
        member_accs.append((logits[i].argmax(1) == y).float().mean().item())
        member_nlls.append(F.cross_entropy(logits[i], y).item())
        member_cal.append(calibration_summary(logits[i].softmax(1), y))
    best = max(range(m), key=lambda i: (member_accs[i], -member_nlls[i]))
    methods: dict[str, dict[str, float]] = {}
    bins: dict[str, Any] = {}
    for name in METHODS:
        logp = combine(logits, name)
        cal = calibration_summary(logp.exp(), y)
        methods[name] = {"acc": (logp.argmax(1) == y).float().mean().item(), "nll": cal["nll"],
                         "ece": cal["ece"], "brier": cal["brier"]}
        bins[name] = {"bins": cal["bins"], "ece": cal["ece"]}
    bins["best_member"] = {"bins": member_cal[best]["bins"], "ece": member_cal[best]["ece"]}
    chosen = methods[method]
    mean_acc = sum(member_accs) / m
    summary = {
        "method": method,
        "n": int(y.shape[0]),
        "n_members": m,
        "member_accs": member_accs,
        "member_nlls": member_nlls,
        "member_eces": [c["ece"] for c in member_cal],
        "mean_member_acc": mean_acc,
        "mean_member_nll": sum(member_nlls) / m,
        "mean_member_ece": sum(c["ece"] for c in member_cal) / m,
        "best_member": best,
        "best_member_acc": member_accs[best],
        "ensemble_acc": chosen["acc"],
        "nll": chosen["nll"],
        "ece": chosen["ece"],
        "gain": chosen["acc"] - mean_acc,
        "methods": methods,
    }
    return summary, bins


def evaluate_ensemble(members: Sequence[nn.Module] | Ensemble, split: TensorSplit,
                      device: torch.device | str = "cpu", batch: int = 1024, *,
                      method: str = "mean_prob") -> dict[str, Any]:
    """Each member and each combination method on a split, from one pass of every member.

    Returns ``member_accs``/``member_nlls``/``member_eces`` (each member's accuracy equals its own
    ``evaluate``), ``mean_member_acc``, ``methods`` ({method: acc, nll, ece, brier}; vote's NLL/ECE
    are those of its smoothed vote shares) and, for ``method`` (mean_prob unless given), the
    top-level ``ensemble_acc``, ``nll``, ``ece`` and ``gain`` = ensemble_acc - mean_member_acc.
    Vectorised: the members' outputs are stacked (M, N, K); no Python loop over examples.
    """
    check_method(method)
    if len(split) == 0:
        raise DataError("evaluate_ensemble needs a non-empty split (data.val_fraction=0 leaves val empty).")
    return score_logits(stacked_logits(members, split.x, device, batch), split.y, method)[0]


__all__ = ["Ensemble", "METHODS", "check_method", "combine", "evaluate_ensemble", "score_logits", "stacked_logits"]
