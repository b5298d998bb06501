"""Lab ``batchnorm``: batch normalisation lets a deep net train at higher learning rates.

The lecture (review Q2): without normalisation, a large step moves every layer's weights at once
and the scale of the activations deep in the net can run away (the loss becomes NaN) or the net
stalls; batch norm re-standardises each layer's pre-activations on every batch, so the forward
signal keeps its scale whatever the step did to the weights, and a much larger learning rate
still trains.

The grid: ``model.norm`` in {none, batch} × ``optim.lr`` from 0.01 to 3 (SGD with Nesterov
momentum 0.9 and a cosine schedule, the defaults) on a deep MLP. Nothing extra is measured per
run: summary.json has the test accuracy and ``diverged``, metrics.jsonl the validation curve.

"Trains" is decided from the numbers: a cell trains when none of its seeds diverged (non-finite
loss) and its mean test accuracy is at least :data:`TRAINS_FRACTION` of the best cell's mean.
Speed: epochs until the validation accuracy first reaches :data:`TRAINS_FRACTION` of the best
cell's mean final validation accuracy, per seed (never reached = not counted, and said so).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from trainwell.experiments.compare import Cell
from trainwell.experiments.lab import Lab, LabOutcome, register
from trainwell.experiments.labs.common import epochs_to_target, num, pct, reach_summary
from trainwell.experiments.results import CellResult, CompareResult

NORMS = ("none", "batch")
LRS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
#: A cell trains when its mean test accuracy is at least this fraction of the best cell's (and no
#: seed diverged); the epochs-to-target target is the same fraction of the best mean final val accuracy.
TRAINS_FRACTION = 0.9


def lr_label(lr: float) -> str:
    return f"{lr:g}"


def trainable_lrs(acc: dict[float, float], diverged: dict[float, int], threshold: float) -> list[float]:
    """The learning rates whose mean test accuracy is >= ``threshold`` with no diverged seed, ascending."""
    return sorted(lr for lr, a in acc.items()
                  if a is not None and math.isfinite(a) and a >= threshold and diverged.get(lr, 0) == 0)


def _fastest(epochs: dict[float, tuple[float, int, int]]) -> tuple[float, float] | None:
    """(lr, mean epochs) of the LR with the fewest mean epochs to target among those all of whose seeds
    reached it (ties: the lower LR), or None."""
    full = [(e, lr) for lr, (e, reached, n) in epochs.items() if n > 0 and reached == n and math.isfinite(e)]
    if not full:
        return None
    e, lr = min(full)
    return lr, e


def decide(acc: dict[str, dict[float, float]], diverged: dict[str, dict[float, int]],
           epochs: dict[str, dict[float, tuple[float, int, int]]], target: float,
           fraction: float = TRAINS_FRACTION) -> tuple[bool, str]:
    """Held when the highest learning rate that still trains is higher with batch norm than without.

    ``acc[norm][lr]``: mean test accuracy over seeds; ``diverged[norm][lr]``: how many seeds
    diverged; ``epochs[norm][lr]``: (mean epochs to reach ``target`` val accuracy over the seeds that
    reached it, how many reached, of how many seeds). A cell trains when no seed diverged and its
    mean test accuracy is >= ``fraction`` × the best cell's mean.
    """
    means = [a for per in acc.values() for a in per.values() if a is not None and math.isfinite(a)]
    best = max(means, default=math.nan)
    threshold = fraction * best if math.isfinite(best) else math.inf
    highest = {}
    for norm in ("none", "batch"):
        lrs = trainable_lrs(acc.get(norm, {}), diverged.get(norm, {}), threshold)
        highest[norm] = lrs[-1] if lrs else None
    hi_none, hi_batch = highest["none"], highest["batch"]
    held = hi_batch is not None and (hi_none is None or hi_batch > hi_none)

    def show(lr: float | None) -> str:
        return "none of the tried LRs" if lr is None else f"lr {lr_label(lr)}"

    rule = (f"a cell 'trains' when no seed diverged and its mean test accuracy is at least "
            f"{100 * fraction:.0f}% of the best cell's ({100 * best:.2f}%), i.e. >= {100 * threshold:.2f}%"
            if math.isfinite(best) else "no cell has a test accuracy")
    first = (f"{rule}. The highest learning rate that trains is {show(hi_batch)} with batch norm and "
             f"{show(hi_none)} without")
    if held:
        first += " (higher with batch norm)"
    elif hi_batch is not None and hi_none is not None and hi_batch == hi_none:
        first += " (the same)"
    else:
        first += " (not higher with batch norm)"
    parts = [first]
    for norm in ("none", "batch"):
        bad = sorted(lr for lr, k in diverged.get(norm, {}).items() if k > 0)
        if bad:
            parts.append(f"{'without' if norm == 'none' else 'with'} batch norm the loss diverged at "
                         f"lr {', '.join(lr_label(lr) for lr in bad)}")
    speed = []
    for norm, name in (("batch", "with batch norm"), ("none", "without")):
        fastest = _fastest(epochs.get(norm, {}))
        if fastest is None:
            speed.append(f"{name} no LR had every seed reach it")
        else:
            lr, e = fastest
            speed.append(f"{name} fastest {num(e)} epoch{'' if e == 1 else 's'} at lr {lr_label(lr)}")
    if hi_none is not None and hi_batch is not None:
        shared = min(hi_none, hi_batch)
        per = []
        for norm, name in (("batch", "with batch norm"), ("none", "without")):
            e, reached, n = epochs.get(norm, {}).get(shared, (math.nan, 0, 0))
            per.append(f"{name} {num(e)} ({reached}/{n} seeds reached it)")
        speed.append(f"at lr {lr_label(shared)} (the highest that trains for both) {', '.join(per)}")
    parts.append(f"Epochs to {100 * target:.1f}% validation accuracy (mean over the seeds that reached it): "
                 + "; ".join(speed))
    return held, "; ".join(parts[:-1]) + ". " + parts[-1] + "."


def _norm_lr(cell: CellResult) -> tuple[str, float]:
    return str(cell.cell.overrides["model.norm"]), float(cell.cell.overrides["optim.lr"])


def analyse(result: CompareResult, out: Path) -> LabOutcome:
    from trainwell.htmlreport import Table
    from trainwell.train.plots import figure_legend, plt, save_figure

    best_val = max((c.mean_of("final_val_acc").mean for c in result.cells
                    if math.isfinite(c.mean_of("final_val_acc").mean)), default=math.nan)
    target = TRAINS_FRACTION * best_val
    best_test = max((c.ci.mean for c in result.cells if math.isfinite(c.ci.mean)), default=math.nan)
    threshold = TRAINS_FRACTION * best_test
    acc: dict[str, dict[float, float]] = {n: {} for n in NORMS}
    diverged: dict[str, dict[float, int]] = {n: {} for n in NORMS}
    epochs: dict[str, dict[float, tuple[float, int, int]]] = {n: {} for n in NORMS}
    cells_ev, rows = {}, []
    plotted: dict[str, list[tuple[float, CellResult, dict[str, Any]]]] = {n: [] for n in NORMS}
    for c in result.cells:
        norm, lr = _norm_lr(c)
        per_seed: dict[int, int | None] = (epochs_to_target(c, target) if math.isfinite(target)
                                           else {s: None for s in c.histories})
        reach = reach_summary(per_seed)
        n_div = len(c.diverged)  # finished runs that diverged (left out of the mean)
        acc.setdefault(norm, {})[lr] = c.ci.mean
        diverged.setdefault(norm, {})[lr] = n_div
        epochs.setdefault(norm, {})[lr] = (reach["mean"], reach["reached"], reach["n"])
        trains = n_div == 0 and math.isfinite(c.ci.mean) and c.ci.mean >= threshold
        cells_ev[c.label] = {"norm": norm, "lr": lr, "test_acc": c.ci.mean, "test_acc_ci": [c.ci.low, c.ci.high],
                             "n": c.ci.n, "diverged_seeds": n_div, "trains": trains,
                             "epochs_to_target": reach["mean"], "epochs_to_target_by_seed":
                                 {str(s): e for s, e in sorted(per_seed.items())},
                             "reached_target": reach["reached"]}
        rows.append([norm, lr_label(lr), pct(c.ci), f"{n_div}/{len(c.summaries)}", "yes" if trains else "no",
                     num(reach["mean"]), f"{reach['reached']}/{reach['n']}"])
        plotted.setdefault(norm, []).append((lr, c, reach))

    held, verdict = decide(acc, diverged, epochs, target)
    highest = {n: (lrs[-1] if (lrs := trainable_lrs(acc.get(n, {}), diverged.get(n, {}), threshold)) else None)
               for n in NORMS}
    evidence = {
        "trains_rule": f"no seed diverged and mean test accuracy >= {TRAINS_FRACTION} × the best cell's mean",
        "trains_fraction": TRAINS_FRACTION, "best_test_acc": best_test, "accuracy_threshold": threshold,
        "target_val_acc": target, "highest_trainable_lr": highest, "lrs": list(LRS), "cells": cells_ev,
    }

    fig, (ax_acc, ax_ep) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for norm, points in plotted.items():
        points.sort(key=lambda p: p[0])
        xs = [p[0] for p in points]
        means = [100 * p[1].ci.mean for p in points]
        err = [[100 * (p[1].ci.mean - p[1].ci.low) if math.isfinite(p[1].ci.low) else 0 for p in points],
               [100 * (p[1].ci.high - p[1].ci.mean) if math.isfinite(p[1].ci.high) else 0 for p in points]]
        name = "batch norm" if norm == "batch" else f"norm={norm}"
        line = ax_acc.errorbar(xs, means, yerr=err, marker="o", capsize=3, label=name)
        colour = line[0].get_color()
        for lr, c, _ in points:
            if n_div := cells_ev[c.label]["diverged_seeds"]:
                # Diverged seeds are not in the mean; when every seed diverged there is no mean to draw, so
                # the cell is marked at the bottom of the axis: a failure is shown, never dropped.
                y = 100 * c.ci.mean if math.isfinite(c.ci.mean) else 0.0
                if not math.isfinite(c.ci.mean):
                    ax_acc.plot(lr, y, "x", color=colour, ms=8, mew=2)
                ax_acc.annotate(f"{n_div}/{len(c.summaries)} diverged", (lr, y), textcoords="offset points",
                                xytext=(0, 8 if y == 0.0 else -14), ha="center", fontsize=7, color=colour)
        ax_ep.plot(xs, [p[2]["mean"] for p in points], marker="o", color=colour, label=name)
        for lr, _, reach in points:
            if reach["n"] and math.isfinite(reach["mean"]):
                ax_ep.annotate(f"{reach['reached']}/{reach['n']}", (lr, reach["mean"]), textcoords="offset points",
                               xytext=(0, 6), ha="center", fontsize=7, color=colour)
    if math.isfinite(threshold):
        ax_acc.axhline(100 * threshold, color="grey", linestyle="--", linewidth=1,
                       label=f"'trains' threshold ({100 * TRAINS_FRACTION:.0f}% of best)")
    ax_acc.set(xscale="log", xlabel="learning rate", ylabel="test accuracy (%)",
               title="test accuracy vs learning rate (mean, 95% CI)")
    ax_ep.set(xscale="log", xlabel="learning rate", ylabel="epochs",
              title=f"epochs to {100 * target:.1f}% val acc (seeds reached / seeds)")
    for ax in (ax_acc, ax_ep):
        ax.grid(alpha=0.3)
    figure_legend(fig)  # under the panels, each label once
    figure = save_figure(fig, out / "accuracy_vs_lr.png")
    table = Table(["norm", "lr", "test acc (95% CI)", "diverged seeds", "trains", "epochs to target",
                   "seeds reached"], rows,
                  caption=(f"'trains': no diverged seed and mean test accuracy >= {100 * threshold:.2f}% "
                           f"({100 * TRAINS_FRACTION:.0f}% of the best cell); epochs to target: first epoch with "
                           f"val acc >= {100 * target:.1f}%, mean over the seeds that reached it "
                           "(not drawn where none did)"))
    return LabOutcome(held, verdict, evidence, [table],
                      [(figure, "test accuracy and epochs to the target validation accuracy vs learning rate")])


LAB = register(Lab(
    name="batchnorm",
    claim="Batch normalisation lets a deep network train at higher learning rates than it can without.",
    question="Q2: why does batch normalisation allow higher learning rates?",
    base=["data.name=digits", "model.name=mlp", "model.depth=8", "model.width=128", "model.activation=relu",
          "train.epochs=10"],
    cells=[Cell(f"{norm} lr={lr_label(lr)}", {"model.norm": norm, "optim.lr": lr}) for norm in NORMS for lr in LRS],
    analyse=analyse,
    seeds=3,
    quick=["train.epochs=2", "data.limit=200", "model.depth=3", "model.width=32"],
))
