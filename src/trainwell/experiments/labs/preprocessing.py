"""Lab ``preprocessing``: zero-centred, normalised inputs make a network converge faster.

The lecture: when every input is positive (raw pixels), the gradient of a first-layer neuron's
weights has the sign of its upstream gradient for every weight at once, so updates zig-zag; and
inputs on an arbitrary scale make some directions of the loss far steeper than others. Centring
and scaling the inputs (standardize), or also decorrelating them (PCA whitening, ZCA), removes
both and gradient descent gets to a low loss in fewer steps.

The cells: ``data.preprocess`` in none, standardize, pca_whiten, zca, fitted on the training
split. On ``digits`` 'none' feeds the stored pixels as they are: uint8 images scaled to [0, 1] by
``to_float`` (all positive, mean ≈ 0.3), not centred; ``standardize`` on images uses one mean and
std per channel. The MLP has no normalisation layers (``model.norm=none``), which would otherwise
re-centre the first layer's outputs and hide the effect.

Convergence is measured from each run's training curve (metrics.jsonl): the area under the
training-loss curve (sum over epochs of the epoch's mean training loss; lower = the loss came
down sooner), the training loss of the first epoch, and the epochs until the validation accuracy
first reaches :data:`TARGET_FRACTION` of the best cell's mean final validation accuracy. Each is
compared with 'none' by a paired t-test over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

from trainwell.experiments.compare import Cell
from trainwell.experiments.lab import Lab, LabOutcome, register
from trainwell.experiments.labs.common import by_label, epochs_to_target, num, pct, reach_summary
from trainwell.experiments.results import CompareResult
from trainwell.experiments.stats import MeanCI, mean_ci, paired_test

PREPROCESSINGS = ("none", "standardize", "pca_whiten", "zca")
BASELINE = "none"
#: Epochs-to-target target: this fraction of the best cell's mean final validation accuracy.
TARGET_FRACTION = 0.95
ALPHA = 0.05


def loss_area(curve: Sequence[float]) -> float:
    """Area under a per-epoch training-loss curve (unit-width epochs: the sum of the epoch losses).

    NaN when any epoch's loss is non-finite (a diverged run has no meaningful area) or the curve is empty.
    """
    if not curve or any(v is None or not math.isfinite(v) for v in curve):
        return math.nan
    return float(sum(curve))


def first_epoch_loss(curve: Sequence[float]) -> float:
    """The first epoch's mean training loss (NaN when there is none)."""
    return float(curve[0]) if curve and curve[0] is not None and math.isfinite(curve[0]) else math.nan


class _SeedMeasures(TypedDict):
    """One cell's measures, each keyed by seed."""

    area: dict[int, float]
    loss1: dict[int, float]
    epochs: dict[int, int | None]


def _mean_pm(ci: MeanCI) -> str:
    return f"{num(ci.mean)} ± {num(ci.half_width, 2)}" if math.isfinite(ci.half_width) else num(ci.mean)


def decide(area_mean: dict[str, float], area_test: dict[str, tuple[float, float]],
           loss1_mean: dict[str, float], loss1_test: dict[str, tuple[float, float]],
           epochs: dict[str, tuple[float, int, int]], target: float, n_epochs: int,
           alpha: float = ALPHA) -> tuple[bool, str]:
    """Held when at least one zero-centred preprocessing has a significantly smaller area under the
    training-loss curve than 'none' (paired t-test over seeds, p < ``alpha``, lower mean).

    ``area_mean``/``loss1_mean``: per preprocessing, mean over seeds of the area under the training-loss
    curve and of the first epoch's training loss; ``area_test``/``loss1_test``: per preprocessing other
    than 'none', (mean paired difference from 'none', p); ``epochs``: (mean epochs to ``target`` val
    accuracy over the seeds that reached it, how many reached, of how many).
    """
    def faster(test: tuple[float, float]) -> bool:
        diff, p = test
        return math.isfinite(diff) and math.isfinite(p) and p < alpha and diff < 0

    def slower(test: tuple[float, float]) -> bool:
        diff, p = test
        return math.isfinite(diff) and math.isfinite(p) and p < alpha and diff > 0

    others = [k for k in area_mean if k != BASELINE]
    fast = [k for k in others if k in area_test and faster(area_test[k])]
    slow = [k for k in others if k in area_test and slower(area_test[k])]
    held = bool(fast)

    def verdict_of(k: str, tests: dict[str, tuple[float, float]]) -> str:
        if k not in tests:
            return "not tested"
        diff, p = tests[k]
        word = "faster" if faster(tests[k]) else "slower" if slower(tests[k]) else "not significantly different"
        return f"Δ {num(diff)}, p = {num(p, 2)}, {word}"

    area = "; ".join([f"{BASELINE} {num(area_mean.get(BASELINE, math.nan))}"] +
                     [f"{k} {num(area_mean[k])} ({verdict_of(k, area_test)})" for k in others])
    head = (f"{', '.join(fast)} converged significantly faster than '{BASELINE}'" if fast else
            f"no preprocessing converged significantly faster than '{BASELINE}'")
    if slow:
        head += f"; {', '.join(slow)} significantly slower"
    loss1 = "; ".join([f"{BASELINE} {num(loss1_mean.get(BASELINE, math.nan))}"] +
                      [f"{k} {num(loss1_mean[k])} ({verdict_of(k, loss1_test)})" for k in others])
    reach = "; ".join(f"{k} {num(e)} ({r}/{n} seeds)" for k, (e, r, n) in epochs.items())
    return held, (f"{head} (paired t-test over seeds on the area under the training-loss curve, sum over "
                  f"{n_epochs} epochs, p < {alpha}). Area: {area}. Training loss after epoch 1: {loss1}. "
                  f"Epochs to {100 * target:.1f}% validation accuracy (mean over the seeds that reached it): "
                  f"{reach}.")


def analyse(result: CompareResult, out: Path) -> LabOutcome:
    from trainwell.htmlreport import Table
    from trainwell.train.plots import figure_legend, plt, save_figure

    cells = by_label(result)
    base = cells.get(BASELINE, result.cells[0])
    best_val = max((c.mean_of("final_val_acc").mean for c in result.cells
                    if math.isfinite(c.mean_of("final_val_acc").mean)), default=math.nan)
    target = TARGET_FRACTION * best_val
    per_seed: dict[str, _SeedMeasures] = {}
    for c in result.cells:
        losses = c.curve_of("train_loss")
        per_seed[c.label] = {"area": {s: loss_area(v) for s, v in losses.items()},
                             "loss1": {s: first_epoch_loss(v) for s, v in losses.items()},
                             "epochs": epochs_to_target(c, target) if math.isfinite(target)
                             else {s: None for s in losses}}
    n_epochs = max((len(h) for c in result.cells for h in c.histories.values()), default=0)
    area_mean: dict[str, float] = {}
    loss1_mean: dict[str, float] = {}
    area_test: dict[str, tuple[float, float]] = {}
    loss1_test: dict[str, tuple[float, float]] = {}
    epochs: dict[str, tuple[float, int, int]] = {}
    evidence: dict[str, Any] = {}
    rows: list[list[str]] = []
    for c in result.cells:
        ps = per_seed[c.label]
        area_ci, loss1_ci = mean_ci(list(ps["area"].values())), mean_ci(list(ps["loss1"].values()))
        reach = reach_summary(ps["epochs"])
        area_mean[c.label], loss1_mean[c.label] = area_ci.mean, loss1_ci.mean
        epochs[c.label] = (reach["mean"], reach["reached"], reach["n"])
        ev = {"loss_area": area_ci.mean, "loss_area_ci": [area_ci.low, area_ci.high],
              "loss_epoch1": loss1_ci.mean, "loss_epoch1_ci": [loss1_ci.low, loss1_ci.high],
              "epochs_to_target": reach["mean"], "reached_target": reach["reached"], "n": reach["n"],
              "epochs_to_target_by_seed": {str(s): e for s, e in sorted(ps["epochs"].items())},
              "test_acc": c.ci.mean, "test_acc_ci": [c.ci.low, c.ci.high]}
        area_p = loss1_p = ""
        if c is not base:
            ta = paired_test(ps["area"], per_seed[base.label]["area"], ALPHA)
            t1 = paired_test(ps["loss1"], per_seed[base.label]["loss1"], ALPHA)
            ep = paired_test({s: e for s, e in ps["epochs"].items() if e is not None},
                             {s: e for s, e in per_seed[base.label]["epochs"].items() if e is not None}, ALPHA)
            area_test[c.label], loss1_test[c.label] = (ta.diff.mean, ta.p), (t1.diff.mean, t1.p)
            ev.update({"loss_area_diff": ta.diff.mean, "loss_area_diff_ci": [ta.diff.low, ta.diff.high],
                       "loss_area_p": ta.p, "loss_epoch1_diff": t1.diff.mean, "loss_epoch1_p": t1.p,
                       "epochs_to_target_diff": ep.diff.mean, "epochs_to_target_p": ep.p,
                       "test_acc_diff": c.test.diff.mean if c.test else None,
                       "test_acc_p": c.test.p if c.test else None})
            area_p, loss1_p = num(ta.p, 2), num(t1.p, 2)
        evidence[c.label] = ev
        rows.append([c.label, _mean_pm(area_ci), area_p, _mean_pm(loss1_ci), loss1_p,
                     f"{num(reach['mean'])} ({reach['reached']}/{reach['n']})", pct(c.ci)])

    held, verdict = decide(area_mean, area_test, loss1_mean, loss1_test, epochs, target, n_epochs)
    evidence.update({"baseline": base.label, "target_val_acc": target, "target_fraction": TARGET_FRACTION,
                     "epochs": n_epochs, "alpha": ALPHA,
                     "faster_than_baseline": [k for k, (d, p) in area_test.items()
                                              if math.isfinite(p) and p < ALPHA and d < 0]})

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for c in result.cells:
        for ax, key, scale in ((ax_loss, "train_loss", 1.0), (ax_val, "val_acc", 100.0)):
            band = c.curves.get(key) or {"mean": [], "low": [], "high": []}
            xs = list(range(1, len(band["mean"]) + 1))
            line, = ax.plot(xs, [scale * v for v in band["mean"]], marker="o", markersize=3, label=c.label)
            ax.fill_between(xs, [scale * v for v in band["low"]], [scale * v for v in band["high"]],
                            color=line.get_color(), alpha=0.2)
    if math.isfinite(target):
        ax_val.axhline(100 * target, color="grey", linestyle="--", linewidth=1, label=f"target {100 * target:.1f}%")
    ax_loss.set(yscale="log", xlabel="epoch", ylabel="training loss (mean over the epoch)",
                title="training loss per epoch (geometric mean, 95% CI in log space)")
    ax_val.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation accuracy per epoch")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
    figure_legend(fig)  # under the panels, each label once
    figure = save_figure(fig, out / "training_loss.png")
    table = Table(["preprocess", "area under train-loss curve", "p vs none", "train loss, epoch 1", "p vs none",
                   f"epochs to {100 * target:.1f}% val acc (seeds reached)", "test acc (95% CI)"], rows,
                  caption=(f"mean ± 95% CI half-width over seeds; area: sum over {n_epochs} epochs of the epoch's "
                           f"mean training loss (lower = faster); p: paired t-test against '{base.label}'"))
    return LabOutcome(held, verdict, evidence, [table],
                      [(figure, "training loss and validation accuracy per epoch for each preprocessing")])


LAB = register(Lab(
    name="preprocessing",
    claim="Zero-centred, normalised inputs make a network converge faster than raw inputs.",
    question="Data preprocessing: why zero-centre and normalise the inputs (standardize, PCA/ZCA whitening) "
             "before training?",
    base=["data.name=digits", "model.name=mlp", "model.depth=3", "model.width=128", "model.norm=none",
          "optim.lr=0.05", "train.epochs=10"],
    cells=[Cell(p, {"data.preprocess": p}) for p in PREPROCESSINGS],
    analyse=analyse,
    seeds=5,
    quick=["train.epochs=2", "data.limit=200", "model.width=32"],
))
