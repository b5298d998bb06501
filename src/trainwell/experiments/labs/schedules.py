"""Lab ``schedules``: momentum beats plain SGD at the same learning rate, and a decaying LR beats a constant one.

The lecture's preview of training dynamics: SGD with momentum (Polyak 1964; v ← βv + g, w ← w − lr·v)
accumulates a velocity along directions where the gradient keeps its sign and damps the ones where
it oscillates; a learning rate that decays over training (cosine, Loshchilov & Hutter 2017; one-cycle,
Smith & Topin 2019) takes large steps early and small ones late, where a constant rate keeps
bouncing at the noise floor its step size sets.

"The same LR budget", as this lab defines it: every cell has the same peak learning rate
(optim.lr = 0.1), the same number of epochs (20) and batch size, hence the same number of steps;
only the momentum or the schedule's shape changes. This is the comparison the lecture makes. Note
that with momentum β the steady-state step is lr/(1 − β) (10× lr at β = 0.9), so part of momentum's
gain at the same lr is simply a larger effective step. The control ``sgd-lr10`` (plain SGD at
lr/(1 − β) = 1.0, constant) matches that effective step; it is reported, not decided, and says how
much of momentum's gain the larger step alone explains.

Cells (classical momentum, ``optim.nesterov=false``; ``optim.weight_decay=0``, so the optimiser is the
only difference): ``sgd`` (β = 0, constant), ``momentum`` (β = 0.9, constant), ``momentum-cosine``
and ``momentum-onecycle`` (β = 0.9; one-cycle warms up over its first 30% of steps, then decays
linearly to 0), and the control ``sgd-lr10``. Data: MNIST-1D (4000 examples, hard enough that no
cell fits its training set in 20 epochs; on digits every cell reached a training loss below 0.01
and 98% test accuracy in trial runs, leaving nothing to compare), a 2 × 256 ReLU MLP with batch norm
after each hidden layer (trainwell's default).

Measured per run after training, in eval mode on the whole training split: the training loss (and
accuracy); the test accuracy; the per-epoch running training loss (the curves).

Verdict (both): (1) ``momentum`` reaches a significantly lower final training loss than ``sgd``
(paired t-test over seeds of log10 of the loss, since losses compare by ratios); (2) at least one
decaying schedule reaches a significantly lower final training loss than ``momentum`` (constant),
with the two schedules' p-values Holm-corrected. A lower training loss counts only if the test
accuracy is not significantly lower (a paired test at the same alpha): an optimiser that fits
faster but generalises worse does not "beat" the other.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from trainwell.experiments.compare import Cell
from trainwell.experiments.lab import Lab, LabOutcome, register
from trainwell.experiments.labs.common import by_label, num, paired_measure, pct
from trainwell.experiments.plots import plot_cell_curves
from trainwell.experiments.results import CellResult, CompareResult, holm
from trainwell.experiments.stats import mean_ci, paired_test

LR = 0.1
BETA = 0.9
#: Cell label -> config overrides (on top of the base's optim.lr = LR).
CELLS: dict[str, dict[str, Any]] = {
    "sgd": {"optim.momentum": 0.0, "sched.name": "constant"},
    "momentum": {"optim.momentum": BETA, "sched.name": "constant"},
    "momentum-cosine": {"optim.momentum": BETA, "sched.name": "cosine"},
    "momentum-onecycle": {"optim.momentum": BETA, "sched.name": "onecycle"},
    "sgd-lr10": {"optim.momentum": 0.0, "sched.name": "constant", "optim.lr": LR / (1 - BETA)},
}
PLAIN, MOMENTUM = "sgd", "momentum"
DECAYING = ("momentum-cosine", "momentum-onecycle")
CONTROL = "sgd-lr10"
LOSS = "log10_train_loss"


def measure(run: Any, splits: Any) -> dict[str, Any]:
    """Training loss and accuracy on the whole training split in eval mode, after training, and log10 of the loss."""
    from trainwell.train.trainer import evaluate_split

    device = next(run.model.parameters()).device
    train = evaluate_split(run.model, splits.train, device, run.config.train.eval_batch_size)
    loss = float(train["loss"])
    return {"train_loss_eval": loss, "train_acc_eval": float(train["acc"]),
            LOSS: math.log10(loss) if loss > 0 else -math.inf}


def beats(loss_diff: float, loss_p: float, acc_diff: float, acc_p: float, alpha: float = 0.05) -> bool:
    """A lower training loss (log10 diff < 0, p < alpha) without a significantly lower test accuracy."""
    return loss_diff < 0 and loss_p < alpha and not (acc_diff < 0 and acc_p < alpha)


def _comparison(name: str, other: str, loss_diff: float, loss_p: float, acc_diff: float, acc_p: float,
                alpha: float, p_kind: str = "paired p") -> str:
    won = beats(loss_diff, loss_p, acc_diff, acc_p, alpha)
    factor = 10 ** abs(loss_diff) if math.isfinite(loss_diff) else math.nan  # the loss ratio, >= 1
    acc_text = (f"test accuracy {'+' if acc_diff >= 0 else '−'}{num(100 * abs(acc_diff), 3)} pp (p = {num(acc_p, 2)}"
                + (", significantly lower" if acc_diff < 0 and acc_p < alpha else "") + ")")
    return (f"{name}'s final training loss is {num(factor, 3)}× {'below' if loss_diff < 0 else 'above'} {other}'s "
            f"({p_kind} = {num(loss_p, 2)}), {acc_text}: {'it beats' if won else 'it does not beat'} {other}")


def decide(momentum: tuple[float, float, float, float], schedules: dict[str, tuple[float, float, float, float]],
           alpha: float = 0.05) -> tuple[bool, str]:
    """Held when momentum beats plain SGD and at least one decaying schedule beats the constant one.

    Each tuple is (mean log10 train-loss difference, its p, mean test-accuracy difference, its p), the
    differences taken as the first-named cell minus the one it is compared with (momentum − sgd;
    schedule − constant); the schedules' loss p-values are already Holm-corrected.
    """
    momentum_wins = beats(*momentum, alpha=alpha)
    schedule_wins = {k: beats(*t, alpha=alpha) for k, t in schedules.items()}
    held = momentum_wins and any(schedule_wins.values())
    parts = [_comparison("momentum", "plain sgd", *momentum, alpha)]
    parts += [_comparison(k, "the constant lr", *t, alpha, p_kind="Holm-adjusted p") for k, t in schedules.items()]
    return held, "; ".join(parts) + "."


def loss_area(cell: CellResult) -> dict[int, float]:
    """seed -> the mean over epochs of log10(running training loss): the area under the log-scale curve / epochs."""
    return {s: sum(math.log10(v) for v in curve) / len(curve) for s, curve in cell.curve_of("train_loss").items()
            if curve and all(math.isfinite(v) and v > 0 for v in curve)}


def _tests(cell: Any, other: Any, alpha: float) -> tuple[float, float, float, float]:
    loss = paired_measure(cell, other, LOSS, alpha)
    acc = paired_measure(cell, other, "test_acc", alpha)
    return loss.diff.mean, loss.p, acc.diff.mean, acc.p


def analyse(result: CompareResult, out: Path) -> LabOutcome:
    from trainwell.htmlreport import Table

    cells = by_label(result)
    alpha = result.alpha
    momentum = _tests(cells[MOMENTUM], cells[PLAIN], alpha)
    decaying = [k for k in DECAYING if k in cells]
    raw = {k: _tests(cells[k], cells[MOMENTUM], alpha) for k in decaying}
    adjusted = holm([raw[k][1] for k in decaying])
    schedules = {k: (raw[k][0], p, raw[k][2], raw[k][3]) for k, p in zip(decaying, adjusted)}
    control = _tests(cells[CONTROL], cells[MOMENTUM], alpha) if CONTROL in cells else None
    area = paired_test(loss_area(cells[CONTROL]), loss_area(cells[MOMENTUM]), alpha) if CONTROL in cells else None

    evidence: dict[str, Any] = {"lr": LR, "beta": BETA, "alpha": alpha, "cells": {}, "tests": {}}
    rows: list[list[str]] = []
    for c in result.cells:
        loss = c.mean_of("train_loss_eval")
        evidence["cells"][c.label] = {
            "overrides": dict(c.cell.overrides), "test_acc": c.ci.mean, "test_acc_ci": [c.ci.low, c.ci.high],
            "train_loss_eval": loss.mean, "log10_train_loss": c.mean_of(LOSS).mean,
            "train_acc_eval": c.mean_of("train_acc_eval").mean,
            "loss_area_log10": mean_ci(list(loss_area(c).values())).mean}
        rows.append([c.label, f"{c.cell.overrides.get('optim.momentum', '')}",
                     str(c.cell.overrides.get("sched.name", "")), f"{c.cell.overrides.get('optim.lr', LR):g}",
                     num(10 ** c.mean_of(LOSS).mean, 3), num(10 ** evidence["cells"][c.label]["loss_area_log10"], 3),
                     pct(c.ci)])

    def entry(t: tuple[float, float, float, float]) -> dict[str, float]:
        return {"loss_diff": t[0], "loss_p": t[1], "acc_diff": t[2], "acc_p": t[3]}

    evidence["tests"]["momentum_minus_sgd"] = entry(momentum)
    for k in decaying:
        evidence["tests"][f"{k}_minus_momentum"] = {**entry(schedules[k]), "loss_p_raw": raw[k][1]}
    if control is not None and area is not None:
        evidence["tests"]["sgd-lr10_minus_momentum"] = {**entry(control), "loss_area_diff": area.diff.mean,
                                                        "loss_area_p": area.p}

    figure = plot_cell_curves(result.cells, [("train_loss", "training loss", 1.0, True)],
                              out / "train_loss.png", title="training loss per epoch, geometric mean over seeds")
    held, verdict = decide(momentum, schedules, alpha)
    verdict = verdict[0].upper() + verdict[1:]
    if control is not None and area is not None:
        verdict += (f" Control (reported, not decided): plain sgd at the effective step lr/(1 − β) = {LR / (1 - BETA):g} "
                    f"reaches {num(10 ** control[0], 3)}× momentum's training loss (p = {num(control[1], 2)}) and "
                    f"{'+' if control[2] >= 0 else '−'}{num(100 * abs(control[2]), 3)} pp test accuracy "
                    f"(p = {num(control[3], 2)}); over the run, its running training loss averages "
                    f"{num(10 ** area.diff.mean, 3)}× momentum's (geometric mean over epochs, p = {num(area.p, 2)}).")
    verdict += (" Final training loss (geometric mean) and test accuracy: "
                + ", ".join(f"{c.label} {num(10 ** c.mean_of(LOSS).mean, 3)}, {pct(c.ci)}" for c in result.cells) + ".")
    table = Table(["cell", "momentum", "schedule", "peak lr", "final train loss (geometric mean)",
                   "running train loss, geometric mean over epochs", "test acc (95% CI)"],
                  rows, caption="final: the loss of the trained weights on the whole training split in eval mode; "
                                "running: the per-epoch training loss as the run saw it (train mode), its geometric "
                                "mean over epochs (the area under the log curve); the same peak lr, epochs and "
                                "batch size everywhere but the control sgd-lr10")
    return LabOutcome(held, verdict, evidence, [table],
                      [(figure, "running training loss per epoch, geometric mean over seeds with its 95% CI in "
                                "log space")])


LAB = register(Lab(
    name="schedules",
    claim="SGD with momentum beats plain SGD at the same learning-rate budget, and a decaying schedule "
          "(cosine or one-cycle) beats a constant learning rate.",
    question="Lecture: training dynamics: what do momentum and a learning-rate schedule buy?",
    base=["data.name=mnist1d", "model.name=mlp", "model.depth=2", "model.width=256", "train.epochs=20",
          "optim.name=sgd", f"optim.lr={LR}", "optim.nesterov=false", "optim.weight_decay=0"],
    cells=[Cell(label, overrides) for label, overrides in CELLS.items()],
    analyse=analyse,
    seeds=5,
    measure="trainwell.experiments.labs.schedules:measure",
    quick=["train.epochs=2", "data.limit=300"],
))
