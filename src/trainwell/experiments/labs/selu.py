"""Lab ``selu``: a deep MLP without normalisation self-normalises with SELU and LeCun normal init, and trains.

The claim (Klambauer et al. 2017, Self-Normalizing Neural Networks): with SELU,
f(x) = λ·x for x > 0 and λ·α·(eˣ − 1) otherwise (λ ≈ 1.0507, α ≈ 1.6733), and weights whose
per-unit sums are ω = Σ wᵢ ≈ 0 and τ = Σ wᵢ² ≈ 1 (LeCun normal: w ~ N(0, 1/fan_in), so
E[ω] = 0, E[τ] = 1), the map from one layer's activation mean and variance (μ, ν) to the next
layer's has an attracting fixed point at (0, 1): the activations stay normalised through any depth
without batch norm. Their Theorem 1 proves it on μ ∈ [−0.1, 0.1], ν ∈ [0.8, 1.5]. SELU with weights
of another scale has no fixed point at (0, 1); ReLU's outputs are never zero-centred.

The cells, on a 20-layer MLP of width 128 without normalisation (digits):

* ``selu / lecun_normal``: the paper's setting;
* ``selu / kaiming_normal``: SELU with Kaiming's init at trainwell's default gain, the activation's
  gain as ``torch.nn.init.calculate_gain('selu')`` gives it (3/4: Var(w) = 0.5625/fan_in, τ ≈ 0.56).
  This is what a user gets by asking PyTorch for SELU's gain; PyTorch's own documentation of
  calculate_gain warns that self-normalising nets need nonlinearity='linear' (Var(w) = 1/fan_in)
  instead. Xavier would not be a test: on square hidden layers 2/(fan_in + fan_out) = 1/fan_in is
  LeCun's;
* ``relu / kaiming_normal``: ReLU with He et al.'s init (gain √2) and no normalisation: it keeps the
  second moment E[y²] through depth but its outputs have mean ≈ 0.56 and variance ≈ 0.68 for unit
  input, and the variance of a finite-width net drifts with depth.

Measured per run, by the doctor's recorder
(:func:`~trainwell.experiments.labs.common.recorded_activations`) on the whole training split in eval
mode: the mean and variance of every hidden layer's activations (post-activation, over examples and
units), at initialisation (the run's own starting weights, rebuilt from its config and seed) and after
training; and the test accuracy.

Verdict, on each cell's per-layer moments at initialisation averaged over seeds:

1. SELU + LeCun normal keeps the moments at every hidden layer: |mean| <= :data:`MEAN_MAX` and
   variance within :data:`VAR_BAND`;
2. SELU + Kaiming (gain 3/4) does not: at least one hidden layer lies outside;
3. ReLU + Kaiming without normalisation does not: at least one hidden layer lies outside;
4. SELU + LeCun normal trains: no seed diverged and its mean test accuracy is at least
   :data:`~trainwell.experiments.labs.batchnorm.TRAINS_FRACTION` of the best cell's mean.

Thresholds: Theorem 1's domain is the infinite-width map's; a layer of 128 units measured on one
data set fluctuates around it (at init, SELU + LeCun layers' means reach ±0.14 in single seeds), so
the mean may be twice the theorem's bound (0.2; ReLU's 0.56 stays far outside), and the variance a
factor of 2 either way around the fixed point's 1 (the same factor-2 band the ``init`` lab uses for a
kept scale). How many layers lie inside the theorem's strict domain is reported beside the verdict.
The moments after training are reported, not judged: training moves the weights away from ω = 0,
τ = 1, which the fixed point assumes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainwell.experiments.compare import Cell
from trainwell.experiments.lab import Lab, LabOutcome, register
from trainwell.experiments.labs.batchnorm import TRAINS_FRACTION
from trainwell.experiments.labs.common import (
    held_word,
    mean_lists,
    model_at_init,
    num,
    pct,
    recorded_activations,
)
from trainwell.experiments.plots import line_style
from trainwell.formatting import percent
from trainwell.experiments.results import CellResult, CompareResult

#: Cell label -> overrides. The first is the paper's setting; the others must not keep the moments.
CELLS: dict[str, dict[str, Any]] = {
    "selu / lecun_normal": {"model.activation": "selu", "init.scheme": "lecun_normal"},
    "selu / kaiming_normal": {"model.activation": "selu", "init.scheme": "kaiming_normal"},
    "relu / kaiming_normal": {"model.activation": "relu", "init.scheme": "kaiming_normal"},
}
SNN, SELU_OTHER, RELU = CELLS
#: A layer keeps the moments when |mean| <= MEAN_MAX and the variance lies in VAR_BAND (module doc: why).
MEAN_MAX = 0.2
VAR_BAND = (0.5, 2.0)
#: Klambauer et al. 2017, Theorem 1: the domain on which the (mu, nu) map contracts to (0, 1) (reported only).
THEOREM_MEAN = 0.1
THEOREM_VAR = (0.8, 1.5)


# ----------------------------------------------------------------------------- measuring


def moments(model: Any, x: Any, batch_size: int) -> tuple[list[float], list[float]]:
    """Mean and variance of each hidden activation layer's outputs (depth order), from the recorder."""
    records = recorded_activations(model, x, batch_size)
    return [float(r.values["mean"]) for r in records], [float(r.values["var"]) for r in records]


def measure(run: Any, splits: Any) -> dict[str, Any]:
    """Per-layer activation mean and variance on the training split, at initialisation and after training."""
    from trainwell.data import to_float

    x = to_float(splits.train.x)
    batch = run.config.train.eval_batch_size
    out: dict[str, Any] = {}
    for when, model in (("_init", model_at_init(run, splits)), ("", run.model)):
        means, variances = moments(model, x, batch)
        out[f"act_mean_by_layer{when}"] = means
        out[f"act_var_by_layer{when}"] = variances
    return out


# ----------------------------------------------------------------------------- verdict


def outside_layers(means: Sequence[float], variances: Sequence[float], mean_max: float = MEAN_MAX,
                   band: tuple[float, float] = VAR_BAND) -> list[int]:
    """The hidden layers (1-based) whose |mean| exceeds ``mean_max`` or whose variance lies outside
    ``band`` (a non-finite moment is outside)."""
    lo, hi = band
    return [i + 1 for i, (m, v) in enumerate(zip(means, variances))
            if not (math.isfinite(m) and math.isfinite(v) and abs(m) <= mean_max and lo <= v <= hi)]


def keeps(means: Sequence[float], variances: Sequence[float]) -> bool:
    """Every hidden layer within the thresholds (and there is at least one layer)."""
    return bool(means) and len(means) == len(variances) and not outside_layers(means, variances)


def decide(profiles: dict[str, tuple[list[float], list[float]]], acc: dict[str, float],
           diverged: dict[str, int], fraction: float = TRAINS_FRACTION) -> tuple[bool, str]:
    """Held when the four sub-claims of the module docstring hold.

    ``profiles``: cell label -> (mean per hidden layer, variance per hidden layer) at initialisation,
    averaged over seeds; ``acc``: cell label -> mean test accuracy; ``diverged``: cell -> diverged seeds.
    """
    lo, hi = VAR_BAND

    def state(label: str) -> tuple[bool, str]:
        means, variances = profiles.get(label, ([], []))
        if not means:
            return False, f"{label}: not measured"
        out = outside_layers(means, variances)
        worst_mean = max(abs(m) for m in means)
        text = (f"{label}: max |mean| {num(worst_mean, 2)}, variance {num(min(variances), 2)} to "
                f"{num(max(variances), 2)} over {len(means)} layers")
        text += f", outside at layer(s) {_layers(out)}" if out else ", every layer inside"
        return keeps(means, variances), text

    snn_keeps, snn_text = state(SNN)
    other_keeps, other_text = state(SELU_OTHER)
    relu_keeps, relu_text = state(RELU)
    # "Does not keep" needs a measured profile: a missing cell is not evidence of drift.
    other_drifts = bool(profiles.get(SELU_OTHER, ([], []))[0]) and not other_keeps
    relu_drifts = bool(profiles.get(RELU, ([], []))[0]) and not relu_keeps
    means = [a for a in acc.values() if a is not None and math.isfinite(a)]
    best = max(means, default=math.nan)
    snn_acc = acc.get(SNN, math.nan)
    trains = (snn_acc is not None and math.isfinite(snn_acc) and math.isfinite(best)
              and snn_acc >= fraction * best and diverged.get(SNN, 0) == 0)
    rule = f"|mean| <= {MEAN_MAX:g} and variance in [{lo:g}, {hi:g}] at every hidden layer, at initialisation"
    parts = [
        f"(1) SELU + LeCun normal keeps the moments ({rule}): {snn_text} — {held_word(snn_keeps)}",
        f"(2) SELU + Kaiming (gain 3/4) does not: {other_text} — {held_word(other_drifts)}",
        f"(3) ReLU + Kaiming without normalisation does not: {relu_text} — {held_word(relu_drifts)}",
        (f"(4) SELU + LeCun normal trains (no diverged seed, mean test accuracy >= {fraction:g} × the best cell's "
         f"{percent(best)}): {percent(snn_acc)}"
         + (f", {diverged[SNN]} seed(s) diverged" if diverged.get(SNN, 0) else "") + f" — {held_word(trains)}"),
    ]
    held = snn_keeps and other_drifts and relu_drifts and trains
    return held, "; ".join(parts) + "."


def _layers(layers: list[int]) -> str:
    return ", ".join(map(str, layers[:6])) + (f" … ({len(layers)} of them)" if len(layers) > 6 else "")


# ----------------------------------------------------------------------------- analysis


def _profile(c: CellResult, when: str) -> tuple[list[float], list[float]]:
    """(mean, variance) per layer, each averaged over the seeds that did not diverge."""
    seeds = [s for s in c.summaries if s not in c.diverged]
    means = mean_lists([c.summaries[s][f"act_mean_by_layer{when}"] for s in seeds
                        if isinstance(c.summaries[s].get(f"act_mean_by_layer{when}"), list)])
    variances = mean_lists([c.summaries[s][f"act_var_by_layer{when}"] for s in seeds
                            if isinstance(c.summaries[s].get(f"act_var_by_layer{when}"), list)])
    return means, variances


def _inside_theorem(means: list[float], variances: list[float]) -> int:
    return len(means) - len(outside_layers(means, variances, THEOREM_MEAN, THEOREM_VAR))


def _figure(result: CompareResult, path: Path) -> Path:
    from matplotlib.ticker import MaxNLocator

    from trainwell.train.plots import plt, save_figure

    fig, (ax_mean, ax_var) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    lo, hi = VAR_BAND
    ax_mean.axhspan(-MEAN_MAX, MEAN_MAX, color="0.9", zorder=0, label=f"threshold |mean| <= {MEAN_MAX:g}")
    ax_var.axhspan(lo, hi, color="0.9", zorder=0, label=f"threshold variance in [{lo:g}, {hi:g}]")
    for i, c in enumerate(result.cells):
        for when, suffix, lw, alpha in (("_init", "at init", 1.8, 1.0), ("", "after training", 1.0, 0.55)):
            means, variances = _profile(c, when)
            if not means:
                continue
            layers = range(1, len(means) + 1)
            style = {**line_style(i), "ms": 4} if when == "_init" else {"ls": ":", "marker": "."}
            for ax, ys in ((ax_mean, means), (ax_var, variances)):
                ax.plot(layers, ys, color=f"C{i}", lw=lw, alpha=alpha, label=f"{c.label}, {suffix}", **style)
    ax_mean.set(xlabel="hidden layer (1 = first)", ylabel="mean of the activations", title="mean by depth")
    ax_var.set(xlabel="hidden layer (1 = first)", ylabel="variance of the activations (log scale)",
               title="variance by depth", yscale="log")
    for ax in (ax_mean, ax_var):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both")
    handles, labels = ax_var.get_legend_handles_labels()
    mean_handles, mean_labels = ax_mean.get_legend_handles_labels()
    fig.legend([mean_handles[0], *handles], [mean_labels[0], *labels], fontsize=8, loc="outside right center")
    fig.suptitle("activation moments of each hidden layer on the training split (mean over seeds)", fontsize=10)
    return save_figure(fig, path)


def analyse(result: CompareResult, out: Path) -> LabOutcome:
    from trainwell.htmlreport import Table

    evidence: dict[str, Any] = {"thresholds": {"mean_max": MEAN_MAX, "var_band": list(VAR_BAND),
                                               "theorem_mean": THEOREM_MEAN, "theorem_var": list(THEOREM_VAR),
                                               "trains_fraction": TRAINS_FRACTION},
                                "snn": SNN, "others": [SELU_OTHER, RELU], "cells": {}}
    rows, profiles, acc, diverged = [], {}, {}, {}
    for c in result.cells:
        init, trained = _profile(c, "_init"), _profile(c, "")
        profiles[c.label], acc[c.label], diverged[c.label] = init, c.ci.mean, len(c.diverged)
        evidence["cells"][c.label] = {
            "overrides": dict(c.cell.overrides), "test_acc": c.ci.mean, "test_acc_ci": [c.ci.low, c.ci.high],
            "n": c.ci.n, "diverged_seeds": len(c.diverged),
            "act_mean_by_layer_init": init[0], "act_var_by_layer_init": init[1],
            "act_mean_by_layer": trained[0], "act_var_by_layer": trained[1],
            "keeps_init": keeps(*init), "outside_init": outside_layers(*init),
            "keeps_trained": keeps(*trained), "outside_trained": outside_layers(*trained),
            "inside_theorem_init": _inside_theorem(*init), "layers": len(init[0]),
        }
        e = evidence["cells"][c.label]
        rows.append([c.label, pct(c.ci), *(_range_text(*p) for p in (init, trained)),
                     f"{len(init[0]) - len(e['outside_init'])} / {len(init[0])}",
                     f"{e['inside_theorem_init']} / {len(init[0])}",
                     f"{len(trained[0]) - len(e['outside_trained'])} / {len(trained[0])}",
                     str(len(c.diverged)) if c.diverged else ""])
    held, verdict = decide(profiles, acc, diverged)
    snn = evidence["cells"].get(SNN)
    if snn is not None and snn["layers"]:
        verdict += (f" Inside Theorem 1's strict domain (|mean| <= {THEOREM_MEAN:g}, variance in "
                    f"[{THEOREM_VAR[0]:g}, {THEOREM_VAR[1]:g}]) at init: {snn['inside_theorem_init']} of "
                    f"{snn['layers']} layers of {SNN}.")
    verdict += " After training (reported, not judged): " + "; ".join(
        f"{label} {_range_text(e['act_mean_by_layer'], e['act_var_by_layer'])}, "
        f"{e['layers'] - len(e['outside_trained'])} of {e['layers']} layers inside"
        for label, e in evidence["cells"].items()) + "."
    verdict += " Test accuracy: " + ", ".join(f"{c.label} {pct(c.ci)}" for c in result.cells) + "."
    figure = _figure(result, out / "moments_by_depth.png")
    table = Table(["cell", "test acc (95% CI)", "moments at init", "moments after training",
                   "layers inside (init)", "inside Theorem 1's domain (init)", "layers inside (trained)",
                   "diverged seeds"], rows,
                  caption=(f"per hidden layer, mean and variance of the activations on the training split (mean over "
                           f"seeds): max |mean| and the variance range over the layers; inside: |mean| <= {MEAN_MAX:g} "
                           f"and variance in [{VAR_BAND[0]:g}, {VAR_BAND[1]:g}]; Theorem 1 (Klambauer et al. 2017): "
                           f"|mean| <= {THEOREM_MEAN:g}, variance in [{THEOREM_VAR[0]:g}, {THEOREM_VAR[1]:g}]"),
                  highlight={0})
    return LabOutcome(held, verdict, evidence, [table],
                      [(figure, "mean and variance of each hidden layer's activations (one line per cell; solid: "
                                "at initialisation, dotted: after training; grey: the thresholds)")])


def _range_text(means: Sequence[float], variances: Sequence[float]) -> str:
    if not means:
        return "–"
    return (f"max |mean| {num(max(abs(m) for m in means), 2)}, "
            f"variance {num(min(variances), 2)}–{num(max(variances), 2)}")


LAB = register(Lab(
    name="selu",
    claim=("A deep MLP without normalisation self-normalises with SELU and LeCun normal init (its activations keep "
           "mean ~0 and variance ~1 through every layer) and trains; SELU with another init, or ReLU, does not keep "
           "the moments."),
    question="Lecture: activation functions: SELU's self-normalisation (Klambauer et al. 2017) in a deep net.",
    base=["data.name=digits", "model.name=mlp", "model.depth=20", "model.width=128", "model.norm=none",
          "train.epochs=10", "optim.lr=0.01"],
    cells=[Cell(label, overrides) for label, overrides in CELLS.items()],
    analyse=analyse,
    seeds=3,
    measure="trainwell.experiments.labs.selu:measure",
    quick=["train.epochs=1", "data.limit=300", "model.width=64", "model.depth=8"],
))
