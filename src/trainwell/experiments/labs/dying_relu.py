"""Lab ``dying_relu``: at a high learning rate ReLU units die; Leaky ReLU keeps them alive, and it shows in accuracy.

The lecture (CS231n, on ReLU's cons): "a large gradient flowing through a ReLU neuron could cause
the weights to update in such a way that the neuron will never activate on any datapoint again",
after which its gradient is zero forever: "as much as 40% of your network can be dead if the
learning rate is set too high". Leaky ReLU (f(x) = x for x > 0, 0.01·x otherwise; Maas et al.
2013) keeps a small slope on the negative side, so a unit pushed there still gets a gradient and
can come back.

What is measured per run, on the whole training split in eval mode, after training and at
initialisation (the same weights the run started from, rebuilt from its config and seed):

* ``dead``: the doctor's dead-unit fraction. The doctor's recorder
  (:class:`~trainwell.diagnose.recorder.Recorder`, via
  :func:`~trainwell.experiments.labs.common.recorded_activations`) counts a unit as dead when its
  output is never > 0 on any example it saw (:func:`~trainwell.diagnose.stats.ever_positive`),
  and it counts only units that can die (``can_die``: ReLU). For Leaky ReLU it reports no dead
  unit at all, by definition: its derivative is never 0.
* ``never_positive``: the same rule applied to every activation, Leaky ReLU included: the
  fraction of units whose output is never > 0, i.e. whose every example sits on the negative side
  (for ReLU: zero output and zero gradient; for Leaky ReLU: the leak, 1% of the gradient). This
  is the fair comparison: a Leaky ReLU unit pushed to the negative side for every example is as
  far gone as a dead ReLU would be, except that it still learns. For ReLU it equals ``dead``.

Both are fractions of all hidden units (every hidden layer has the same width: the mean over layers).

The grid: ReLU and Leaky ReLU (slope 0.01, the lecture's) at learning rates from trainwell's
default (0.05) to 1.0, SGD with Nesterov momentum 0.9 and a cosine schedule, on a 4-layer MLP of
width 64 without normalisation (batch norm re-centres pre-activations every step and would revive
units). Global gradient-norm clipping at 1 (``train.grad_clip=1``) keeps every run finite: without
it the Leaky ReLU net diverged (NaN) at the learning rates where ReLU units die (trial runs: lr
0.25 and 0.5 without clipping), because dead units also cut the paths along which the activations
explode. What is compared is then dead units and accuracy, not NaNs.

Verdict (paired over seeds, alpha = 0.05; "high" = the highest learning rate, "normal" = the lowest):

1. ReLU units die at the high learning rate: ReLU's dead fraction there is at least
   :data:`~trainwell.diagnose.thresholds.DEAD_WARN` (the doctor's warning level, 20%: half the
   lecture's "as much as 40%") and significantly above its dead fraction at the normal learning rate
   (it rises with the learning rate);
2. Leaky ReLU keeps them alive: at the high learning rate ReLU's dead fraction is significantly
   above Leaky ReLU's never-positive fraction;
3. it shows in accuracy: at the high learning rate Leaky ReLU's test accuracy is significantly above
   ReLU's, with no diverged Leaky ReLU seed.

In trial runs (6 seeds) lr 0.7 left about 22% of the units on the negative side for both
activations with equal accuracy (~96-97%); at lr 1.0 ReLU lost 60-86% of its units and
Leaky ReLU had 40-66% never positive, and Leaky ReLU's accuracy was higher in every seed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from trainwell.diagnose.thresholds import DEAD_WARN
from trainwell.experiments.compare import Cell
from trainwell.experiments.lab import Lab, LabOutcome, register
from trainwell.experiments.labs.common import (
    by_label,
    eval_pass,
    finite,
    held_word,
    model_at_init,
    num,
    paired_measure,
    pct,
    points,
    recorded_activations,
)
from trainwell.experiments.plots import line_style
from trainwell.formatting import percent
from trainwell.experiments.results import CellResult, CompareResult
from trainwell.experiments.stats import paired_test

ACTIVATIONS = ("relu", "leaky_relu")
LRS = (0.05, 0.3, 0.7, 1.0)


def cell_label(activation: str, lr: float) -> str:
    return f"{activation} / lr {lr:g}"


# ----------------------------------------------------------------------------- measuring


def never_positive_fractions(model: nn.Module, x: Tensor, batch_size: int) -> list[float]:
    """Per activation site (depth order), the fraction of units whose output is never > 0 on any
    example of ``x``: the recorder's dead-unit rule (:func:`~trainwell.diagnose.stats.ever_positive`,
    :func:`~trainwell.diagnose.stats.dead_fraction`) applied to every activation, Leaky ReLU included.
    One eval-mode pass in batches; the model's mode is restored and the hooks removed."""
    from trainwell.diagnose.recorder import activation_info
    from trainwell.diagnose.stats import dead_fraction, ever_positive

    sites = [m for m in model.modules() if activation_info(m) is not None]
    alive: dict[int, Tensor] = {}

    def hook(index: int) -> Any:
        def record(module: nn.Module, args: tuple, output: Tensor) -> None:
            fired = ever_positive(output, -1 if output.ndim == 2 else 1)  # units: features, or conv channels
            alive[index] = fired if index not in alive else alive[index] | fired
        return record

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(sites)]
    try:
        eval_pass(model, x, batch_size)
    finally:
        for h in handles:
            h.remove()
    return [float(dead_fraction(alive[i])) for i in sorted(alive)]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def unit_fractions(model: nn.Module, x: Tensor, batch_size: int) -> dict[str, Any]:
    """``dead`` (the recorder's, per layer; None where the activation cannot die) and
    ``never_positive`` (per layer), and their means over the hidden layers."""
    dead = [r.values.get("dead_fraction") for r in recorded_activations(model, x, batch_size)]
    never = never_positive_fractions(model, x, batch_size)
    return {"dead_by_layer": dead, "dead": _mean(dead) if dead and None not in dead else None,
            "never_positive_by_layer": never, "never_positive": _mean(never)}


def measure(run: Any, splits: Any) -> dict[str, Any]:
    """Dead and never-positive unit fractions on the training split, after training and at init."""
    from trainwell.data import to_float

    x = to_float(splits.train.x)
    batch = run.config.train.eval_batch_size
    out: dict[str, Any] = {}
    for when, model in (("", run.model), ("_init", model_at_init(run, splits))):
        out.update({f"{key}{when}": value for key, value in unit_fractions(model, x, batch).items()})
    return out


# ----------------------------------------------------------------------------- verdict


def decide(relu_dead_high: float | None, rise_diff: float | None, rise_p: float | None,
           leaky_never_high: float | None, alive_diff: float | None, alive_p: float | None,
           acc_diff: float | None, acc_p: float | None, leaky_diverged_high: int,
           alpha: float = 0.05, high: float = LRS[-1], normal: float = LRS[0]) -> tuple[bool, str]:
    """Held when the three sub-claims of the module docstring hold.

    ``relu_dead_high``: ReLU's mean dead fraction at the high LR; ``rise_diff``/``rise_p``: paired
    difference (high − normal LR) of ReLU's dead fraction and its p; ``leaky_never_high``: Leaky
    ReLU's never-positive fraction at the high LR; ``alive_diff``/``alive_p``: paired ReLU dead −
    Leaky never-positive at the high LR; ``acc_diff``/``acc_p``: paired test accuracy Leaky − ReLU
    at the high LR; ``leaky_diverged_high``: Leaky ReLU's diverged seeds there (any: not better).
    """
    def sig(diff: float | None, p: float | None) -> bool:
        return finite(diff) and finite(p) and diff > 0 and p < alpha

    dies = finite(relu_dead_high) and relu_dead_high >= DEAD_WARN and sig(rise_diff, rise_p)
    alive = sig(alive_diff, alive_p)
    better = sig(acc_diff, acc_p) and leaky_diverged_high == 0

    parts = [
        (f"(1) ReLU units die at lr {high:g}: {percent(relu_dead_high, 0)} of its hidden units are dead after training "
         f"(the doctor's recorder: never > 0 on any training example, threshold: the doctor's warning level "
         f"{100 * DEAD_WARN:.0f}%), {points(rise_diff)} against lr {normal:g} (paired p = {num(rise_p, 2)}) — "
         f"{held_word(dies)}"),
        (f"(2) Leaky ReLU keeps them alive: the recorder counts no Leaky ReLU unit as dead (its slope is never 0), but "
         f"on the same rule applied to Leaky ReLU, {percent(leaky_never_high, 0)} of its units are never > 0 at lr "
         f"{high:g}, ReLU's dead fraction is {points(alive_diff)} higher (paired p = {num(alive_p, 2)}) — "
         f"{held_word(alive)}"),
        (f"(3) it shows in accuracy: at lr {high:g} Leaky ReLU's test accuracy is {points(acc_diff)} against ReLU's "
         f"(paired p = {num(acc_p, 2)}"
         + (f", {leaky_diverged_high} Leaky ReLU seed(s) diverged" if leaky_diverged_high else "")
         + f") — {held_word(better)}"),
    ]
    return dies and alive and better, "; ".join(parts) + "."


# ----------------------------------------------------------------------------- analysis


def _cell_evidence(activation: str, lr: float, c: CellResult) -> dict[str, Any]:
    def mean(key: str) -> float:
        return c.mean_of(key).mean

    return {"activation": activation, "lr": lr, "test_acc": c.ci.mean, "test_acc_ci": [c.ci.low, c.ci.high],
            "n": c.ci.n, "diverged_seeds": len(c.diverged),
            "dead": mean("dead"), "never_positive": mean("never_positive"),
            "dead_init": mean("dead_init"), "never_positive_init": mean("never_positive_init")}


def _figure(cells: dict[str, CellResult], lrs: list[float], path: Path) -> Path:
    from trainwell.train.plots import plt, save_figure

    fig, (ax_off, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for i, activation in enumerate(ACTIVATIONS):
        key = "dead" if activation == "relu" else "never_positive"
        what = "dead (recorder)" if activation == "relu" else "never > 0"
        rows = [(lr, cells[cell_label(activation, lr)]) for lr in lrs if cell_label(activation, lr) in cells]
        for ax, metric, label, scale in ((ax_off, key, f"{activation}: {what}", 100),
                                         (ax_acc, None, activation, 100)):
            cis = [c.ci if metric is None else c.mean_of(metric) for _, c in rows]
            xs = [lr for (lr, _), ci in zip(rows, cis) if math.isfinite(ci.mean)]
            ok = [ci for ci in cis if math.isfinite(ci.mean)]
            if not ok:
                continue
            # A fraction cannot leave [0, 1]: an interval of few seeds that does is cut there.
            err = [[scale * (ci.mean - max(ci.low, 0.0)) if math.isfinite(ci.low) else 0 for ci in ok],
                   [scale * (min(ci.high, 1.0) - ci.mean) if math.isfinite(ci.high) else 0 for ci in ok]]
            ax.errorbar(xs, [scale * ci.mean for ci in ok], yerr=err, color=f"C{i}", capsize=3, lw=1.6,
                        label=label, **line_style(i))
        init = [cells[cell_label(activation, lr)].mean_of(f"{key}_init").mean for lr, _ in rows]
        ax_off.plot([lr for lr, _ in rows], [100 * v for v in init], color=f"C{i}", lw=0.9, alpha=0.7, ms=3,
                    label=f"{activation}: at initialisation", **{**line_style(i), "ls": ":"})
        for lr, c in rows:
            if c.diverged:
                ax_acc.annotate(f"{len(c.diverged)} diverged", (lr, 100 * c.ci.mean if math.isfinite(c.ci.mean)
                                                               else 10), color="red", fontsize=7)
    ax_off.axhline(100 * DEAD_WARN, color="0.5", lw=0.8, ls="--", label=f"doctor's warning ({100 * DEAD_WARN:.0f}%)")
    ax_off.set(xscale="log", xlabel="learning rate", ylabel="% of hidden units",
               title="units never active on the training set")
    ax_acc.set(xscale="log", xlabel="learning rate", ylabel="test accuracy (%)", title="test accuracy",
               ylim=(0, 100))
    for ax in (ax_off, ax_acc):
        ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    ax_off.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncols=2)  # outside the data
    ax_acc.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncols=2)
    fig.suptitle("ReLU against Leaky ReLU by learning rate (mean and 95% CI over seeds)", fontsize=10)
    return save_figure(fig, path)


def analyse(result: CompareResult, out: Path) -> LabOutcome:
    from trainwell.htmlreport import Table

    cells = by_label(result)
    lrs = sorted({float(c.cell.overrides["optim.lr"]) for c in result.cells})
    normal, high = lrs[0], lrs[-1]
    evidence: dict[str, Any] = {"thresholds": {"dead_warn": DEAD_WARN, "alpha": result.alpha},
                                "normal_lr": normal, "high_lr": high, "cells": {}}
    rows = []
    for activation in ACTIVATIONS:
        for lr in lrs:
            c = cells.get(cell_label(activation, lr))
            if c is None:
                continue
            e = evidence["cells"][c.label] = _cell_evidence(activation, lr, c)
            rows.append([activation, f"{lr:g}", pct(c.ci), percent(e["dead"], 1), percent(e["never_positive"], 1),
                         percent(e["never_positive_init"], 1),
                         str(e["diverged_seeds"]) if e["diverged_seeds"] else ""])
    relu_high, relu_normal = cells[cell_label("relu", high)], cells[cell_label("relu", normal)]
    leaky_high = cells[cell_label("leaky_relu", high)]
    rise = paired_measure(relu_high, relu_normal, "dead", result.alpha)
    alive = paired_test(relu_high.values_of("dead"), leaky_high.values_of("never_positive"), result.alpha)
    acc = paired_test(leaky_high.values, relu_high.values, result.alpha)
    evidence["tests"] = {
        "relu_dead_high_minus_normal": {"diff": rise.diff.mean, "p": rise.p, "n": rise.n},
        "relu_dead_minus_leaky_never_positive_high": {"diff": alive.diff.mean, "p": alive.p, "n": alive.n},
        "acc_leaky_minus_relu_high": {"diff": acc.diff.mean, "p": acc.p, "n": acc.n},
    }
    held, verdict = decide(relu_high.mean_of("dead").mean, rise.diff.mean, rise.p,
                           leaky_high.mean_of("never_positive").mean, alive.diff.mean, alive.p,
                           acc.diff.mean, acc.p, len(leaky_high.diverged), result.alpha, high, normal)
    verdict += (" Per learning rate, ReLU dead / Leaky ReLU never > 0 and test accuracy: "
                + ", ".join(f"lr {lr:g}: {_share(evidence, 'relu', lr, 'dead')} / "
                            f"{_share(evidence, 'leaky_relu', lr, 'never_positive')}, "
                            f"{pct(cells[cell_label('relu', lr)].ci)} / {pct(cells[cell_label('leaky_relu', lr)].ci)}"
                            for lr in lrs if cell_label("relu", lr) in cells and cell_label("leaky_relu", lr) in cells)
                + ".")
    figure = _figure(cells, lrs, out / "dead_units_by_lr.png")
    table = Table(["activation", "lr", "test acc (95% CI)", "dead (recorder)", "never > 0", "never > 0 at init",
                   "diverged seeds"], rows,
                  caption="fractions of all hidden units on the whole training split in eval mode, after training "
                          "(mean over seeds); dead: the doctor's recorder (ReLU only: Leaky ReLU units cannot die); "
                          "never > 0: the same rule for both activations",
                  highlight={i for i, r in enumerate(rows) if r[1] == f"{high:g}"})
    return LabOutcome(held, verdict, evidence, [table],
                      [(figure, "left: fraction of hidden units never > 0 on the training set (ReLU: dead, the "
                                "doctor's recorder; Leaky ReLU: on the leak for every example), after training and "
                                "at initialisation; right: test accuracy")])


def _share(evidence: dict[str, Any], activation: str, lr: float, key: str) -> str:
    return percent(evidence["cells"].get(cell_label(activation, lr), {}).get(key), 0)


LAB = register(Lab(
    name="dying_relu",
    claim=("At a high learning rate ReLU units die (they never fire again on any training example), Leaky ReLU "
           "keeps its units alive, and it shows in accuracy."),
    question="Lecture: activation functions: ReLU's dead units at a too-high learning rate, and Leaky ReLU's fix.",
    base=["data.name=digits", "model.name=mlp", "model.depth=4", "model.width=64", "model.norm=none",
          "train.epochs=10", "train.grad_clip=1"],
    cells=[Cell(cell_label(a, lr), {"model.activation": a, "optim.lr": lr}) for a in ACTIVATIONS for lr in LRS],
    analyse=analyse,
    seeds=5,
    measure="trainwell.experiments.labs.dying_relu:measure",
    quick=["train.epochs=1", "data.limit=300"],
))
