"""Lab ``init``: the initial weights' scale decides whether a deep net's signal survives its depth.

The lecture (review Q3): with small random weights (N(0, 0.01²)) every layer multiplies the
signal by roughly 0.01·sqrt(width) < 1, so the activations shrink geometrically towards zero
layer by layer (and so do the gradients: the net does not learn); with large ones (N(0, 1)) tanh
units are driven into saturation at ±1, where their gradient is ~0. Xavier initialisation
(Glorot & Bengio 2010: Var(w) = 2 / (fan_in + fan_out), for tanh) keeps a tanh net's signal alive
and unsaturated; on a ReLU net, which zeroes half its inputs, it halves the second moment at every
layer, so a deep ReLU net's activations collapse by ~(1/2)^(depth/2) and it does not train, while
Kaiming initialisation (He et al. 2015: Var(w) = 2 / fan_in) keeps their scale at any depth and the
net trains (He et al., Fig. 3: a 30-layer ReLU net learns with Kaiming's init and stalls with Xavier's).

The grid: ``init.scheme`` normal(0.01), normal(1.0), xavier (xavier_normal), kaiming
(kaiming_normal), orthogonal and lsuv, on a 10-layer plain MLP (no normalisation layers, which would
hide the effect by re-standardising every layer) with ReLU and with tanh: 12 cells; and xavier
against kaiming on a 30-layer ReLU MLP (``relu-30``, He et al.'s depth; lr 0.005, at which the
Kaiming net trains in every seed): 2 more. The schemes are the papers' (``init.gain=default``):
xavier and orthogonal at gain 1, kaiming at the gain of the activation that follows the layer
(ReLU sqrt(2), tanh 5/3 as ``torch.nn.init.calculate_gain`` gives, its recommendation for tanh).

Measured per run, at initialisation (the same weights the run started from, rebuilt from its config
and seed) on one training batch: the std of every hidden activation layer's output, the fraction
of saturated units of bounded activations, and a histogram of each layer's outputs. After training:
the test accuracy and the test loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trainwell.diagnose.thresholds import SATURATED_ERROR, SATURATION_EPS
from trainwell.experiments.compare import Cell
from trainwell.experiments.lab import Lab, LabOutcome, register
from trainwell.experiments.labs.common import (
    by_label,
    finite,
    held_word,
    mean_lists,
    model_at_init,
    num,
    pct,
    per_seed_lists,
    points,
    training_batch,
)
from trainwell.experiments.plots import line_style
from trainwell.formatting import percent
from trainwell.experiments.results import CellResult, CompareResult
from trainwell.experiments.stats import paired_test

NETS = ("relu", "tanh")
#: The deep ReLU net of He et al. 2015 (Fig. 3), with its config overrides, and the schemes it compares.
DEEP = "relu-30"
DEEP_OVERRIDES: dict[str, Any] = {"model.activation": "relu", "model.depth": 30, "optim.lr": 0.005}
DEEP_SCHEMES = ("xavier", "kaiming")
#: Cell name of each scheme -> its config overrides.
SCHEMES: dict[str, dict[str, Any]] = {
    "normal(0.01)": {"init.scheme": "normal", "init.std": 0.01},
    "normal(1.0)": {"init.scheme": "normal", "init.std": 1.0},
    "xavier": {"init.scheme": "xavier_normal"},
    "kaiming": {"init.scheme": "kaiming_normal"},
    "orthogonal": {"init.scheme": "orthogonal"},
    "lsuv": {"init.scheme": "lsuv"},
}
SMALL, LARGE = "normal(0.01)", "normal(1.0)"
#: The scheme the lecture pairs with each activation.
MATCHED = {"relu": "kaiming", "tanh": "xavier"}
#: The activations collapse when the last hidden layer's std is below this fraction of the first's.
COLLAPSE_RATIO = 0.1
#: The scale is kept when the last/first hidden layer std ratio lies in this band (a factor of 2 either way):
#: Kaiming on ReLU. Xavier on tanh is held to "alive and unsaturated" instead (ratio >= COLLAPSE_RATIO):
#: at gain 1 the tanh net's std shrinks slowly with depth (tanh compresses; ~0.4 over 10 layers), not
#: geometrically as under normal(0.01).
HEALTHY_BAND = (0.5, 2.0)
#: The tanh net saturates when the mean saturated fraction of its deep half's layers exceeds this: the
#: doctor's error level (trainwell.diagnose.thresholds.SATURATED_ERROR).
SATURATED_DEEP = SATURATED_ERROR
HIST_BINS = 30
BATCH = 256


def cell_label(net: str, scheme: str) -> str:
    return f"{net} / {scheme}"


# ----------------------------------------------------------------------------- measuring


def _activation_modules(model: nn.Module) -> list[tuple[nn.Module, Any]]:
    from trainwell.diagnose.recorder import activation_info

    return [(m, info) for m in model.modules() if (info := activation_info(m)) is not None]


def saturated_fraction(y: Tensor, bounds: tuple[float, float], eps: float = SATURATION_EPS) -> float:
    """Fraction of ``y`` within ``eps`` of the output range from either bound (tanh: |y| > 0.95)."""
    lo, hi = bounds
    margin = eps * (hi - lo)
    return float(((y <= lo + margin) | (y >= hi - margin)).to(torch.float64).mean())


def histogram(y: Tensor, lo: float, hi: float, bins: int = HIST_BINS) -> list[float]:
    """Fraction of ``y`` in each of ``bins`` equal bins over [lo, hi]; values outside go to the end bins."""
    y = y.detach().flatten().to(torch.float64)
    if y.numel() == 0:
        return [0.0] * bins
    counts = torch.histc(y.clamp(lo, hi), bins=bins, min=lo, max=hi)
    return (counts / y.numel()).tolist()


def _row_range(first: Tensor, bounds: tuple[float, float] | None) -> tuple[float, float]:
    """The histogram range of a net: a bounded unit's output range, else the first hidden layer's
    0.5-99.5% quantiles (0 included), so deeper layers show as shrinking or spilling out of it."""
    if bounds is not None:
        return float(bounds[0]), float(bounds[1])
    v = first.detach().flatten().to(torch.float64)
    if v.numel() > 100_000:
        v = v[torch.randperm(v.numel(), generator=torch.Generator().manual_seed(0))[:100_000]]
    lo = min(0.0, float(v.quantile(0.005))) if v.numel() else 0.0
    hi = max(0.0, float(v.quantile(0.995))) if v.numel() else 1.0
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        hi = lo + 1.0
    return lo, hi


@torch.no_grad()
def activation_profile(model: nn.Module, x: Tensor, bins: int = HIST_BINS) -> dict[str, Any]:
    """Statistics of every activation layer's output, in call order, after one forward pass of ``x``.

    ``std``/``mean``: over all elements (batch × units) of the layer's output; ``saturated``: the
    fraction of saturated outputs of a bounded unit (tanh, sigmoid; None for others); ``zero``: the
    fraction of exact zeros; ``hist``: per layer, the fraction of outputs in each bin over
    ``hist_range`` (shared by all layers); for units that can die (ReLU) the exact zeros are left
    out of the histogram (else a spike of inactive units hides the active ones' scale).
    The pass runs in eval mode (the model's mode is restored).
    """
    sites = _activation_modules(model)
    outputs: list[tuple[Any, Tensor]] = []
    handles = [m.register_forward_hook(lambda mod, inp, out, info=info: outputs.append((info, out.detach())))
               for m, info in sites]
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    profile: dict[str, Any] = {"std": [], "mean": [], "saturated": [], "zero": [], "hist": [], "hist_range": None,
                               "hist_nonzero": False}
    if not outputs:
        return profile
    first_info, first = outputs[0]
    lo, hi = _row_range(first[first != 0] if first_info.can_die else first, first_info.bounds)
    profile["hist_range"] = [lo, hi]
    profile["hist_nonzero"] = bool(first_info.can_die)
    for info, y in outputs:
        y64 = y.to(torch.float64)
        profile["std"].append(float(y64.std(unbiased=False)))
        profile["mean"].append(float(y64.mean()))
        profile["saturated"].append(saturated_fraction(y64, info.bounds) if info.bounds is not None else None)
        profile["zero"].append(float((y64 == 0).to(torch.float64).mean()))
        profile["hist"].append(histogram(y64[y64 != 0] if info.can_die else y64, lo, hi, bins))
    return profile


def std_ratio(stds: Sequence[float]) -> float:
    """Last over first hidden layer's activation std (NaN when undefined)."""
    if len(stds) < 1 or not (stds[0] > 0) or not all(math.isfinite(s) for s in (stds[0], stds[-1])):
        return math.nan
    return stds[-1] / stds[0]


def deep_mean(values: Sequence[float | None]) -> float | None:
    """Mean over the deep half of the layers (the last ceil(n/2)); None when a value is missing."""
    deep = list(values)[len(values) // 2:]
    measured = [v for v in deep if finite(v)]
    if not deep or len(measured) < len(deep):
        return None
    return sum(measured) / len(measured)


def measure(run: Any, splits: Any) -> dict[str, Any]:
    """Activation statistics at initialisation, on a training batch (the same for every cell of a seed)."""
    x, _ = training_batch(splits, BATCH, run.config.train.seed)
    prof = activation_profile(model_at_init(run, splits), x)
    ratio = std_ratio(prof["std"])
    return {
        "act_std_by_layer": prof["std"],
        "act_mean_by_layer": prof["mean"],
        "act_std_ratio": ratio if math.isfinite(ratio) else None,
        "saturated_by_layer": prof["saturated"],
        "saturated_deep": deep_mean(prof["saturated"]),
        "zero_by_layer": prof["zero"],
        "act_hist": prof["hist"],
        "act_hist_range": prof["hist_range"],
        "act_hist_nonzero": prof["hist_nonzero"],
    }


# ----------------------------------------------------------------------------- verdict


def decide(small_ratio: dict[str, float], large_saturated_tanh: float | None, kaiming_ratio: dict[str, float],
           deep_xavier_ratio: float | None, tanh_xavier_ratio: float | None, tanh_xavier_saturated: float | None,
           acc_diff: dict[str, float], acc_p: dict[str, float], deep_acc_diff: float | None,
           deep_acc_p: float | None, alpha: float = 0.05) -> tuple[bool, str]:
    """Held when all seven sub-claims hold, each judged on its own:

    1. normal(0.01) collapses: the last/first hidden layer activation std ratio is below
       :data:`COLLAPSE_RATIO` in every net (``small_ratio``: net -> ratio);
    2. normal(1.0) saturates the tanh net: the mean saturated fraction of its deep layers is above
       :data:`SATURATED_DEEP`;
    3. Kaiming keeps the ReLU nets' scale: the ratio lies within :data:`HEALTHY_BAND` at every
       depth (``kaiming_ratio``: net -> ratio; relu and relu-30);
    4. Xavier collapses the 30-layer ReLU net: its ratio is below :data:`COLLAPSE_RATIO`
       (He et al. 2015: each ReLU layer halves the second moment at Var(w) = 1/n);
    5. Xavier keeps the tanh net alive and unsaturated: its ratio is at least :data:`COLLAPSE_RATIO`
       and its deep layers' saturated fraction at most :data:`SATURATED_DEEP`;
    6. the matched scheme's (:data:`MATCHED`) test accuracy is significantly above normal(0.01)'s in
       each 10-layer net (``acc_diff``: mean paired difference, matched − normal(0.01); ``acc_p``:
       its paired p-value);
    7. on the 30-layer ReLU net Kaiming's test accuracy is significantly above Xavier's
       (``deep_acc_diff``: kaiming − xavier, paired over seeds; ``deep_acc_p``).
    """
    lo, hi = HEALTHY_BAND
    nets = list(acc_diff)

    collapse = bool(small_ratio) and all(finite(r) and r < COLLAPSE_RATIO for r in small_ratio.values())
    saturates = finite(large_saturated_tanh) and large_saturated_tanh > SATURATED_DEEP
    kaiming_keeps = bool(kaiming_ratio) and all(finite(r) and lo <= r <= hi for r in kaiming_ratio.values())
    xavier_collapses_deep = finite(deep_xavier_ratio) and deep_xavier_ratio < COLLAPSE_RATIO
    xavier_keeps_tanh = (finite(tanh_xavier_ratio) and tanh_xavier_ratio >= COLLAPSE_RATIO
                         and finite(tanh_xavier_saturated) and tanh_xavier_saturated <= SATURATED_DEEP)
    better = bool(nets) and all(finite(acc_diff.get(n)) and finite(acc_p.get(n)) and acc_diff[n] > 0 and acc_p[n] < alpha
                                for n in nets)
    deep_better = finite(deep_acc_diff) and finite(deep_acc_p) and deep_acc_diff > 0 and deep_acc_p < alpha

    parts = [
        (f"(1) {SMALL} collapses the activations with depth (last/first hidden layer std ratio < {COLLAPSE_RATIO:g}): "
         + ", ".join(f"{n} {num(r)}" for n, r in small_ratio.items()) + f" — {held_word(collapse)}"),
        (f"(2) {LARGE} saturates the tanh net (mean saturated fraction of the deep layers > "
         f"{100 * SATURATED_DEEP:.0f}%): {percent(large_saturated_tanh, 0)} — {held_word(saturates)}"),
        (f"(3) kaiming keeps the ReLU nets' std ratio within [{lo:g}, {hi:g}]: "
         + ", ".join(f"{n} {num(r)}" for n, r in kaiming_ratio.items()) + f" — {held_word(kaiming_keeps)}"),
        (f"(4) xavier (gain 1) collapses the 30-layer ReLU net (ratio < {COLLAPSE_RATIO:g}, where He et al. "
         f"predict (1/2)^(29/2) = {num(0.5 ** 14.5)}): {num(deep_xavier_ratio)} — {held_word(xavier_collapses_deep)}"),
        (f"(5) xavier keeps the tanh net alive and unsaturated (ratio >= {COLLAPSE_RATIO:g}, deep saturated fraction "
         f"<= {100 * SATURATED_DEEP:.0f}%): {num(tanh_xavier_ratio)}, {percent(tanh_xavier_saturated, 0)} — "
         f"{held_word(xavier_keeps_tanh)}"),
        (f"(6) the matched scheme's test accuracy is significantly above {SMALL}'s (paired t-test, α = {alpha:g}): "
         + ", ".join(f"{MATCHED.get(n, '?')} on {n} {points(acc_diff.get(n))} (p = {num(acc_p.get(n), 2)})"
                     for n in nets)
         + f" — {held_word(better)}"),
        (f"(7) on the 30-layer ReLU net kaiming's test accuracy is significantly above xavier's (paired t-test, "
         f"α = {alpha:g}): {points(deep_acc_diff)} (p = {num(deep_acc_p, 2)}) — {held_word(deep_better)}"),
    ]
    held = collapse and saturates and kaiming_keeps and xavier_collapses_deep and xavier_keeps_tanh and better \
        and deep_better
    return held, "; ".join(parts) + "."


# ----------------------------------------------------------------------------- analysis


def _first_seed_summary(cell: CellResult | None) -> dict[str, Any] | None:
    if cell is None:
        return None
    for seed in sorted(cell.summaries):
        if isinstance(cell.summaries[seed].get("act_hist"), list) and cell.summaries[seed]["act_hist"]:
            return cell.summaries[seed]
    return None


def _histogram_figure(cells: dict[str, CellResult], net: str, path: Path) -> tuple[Path, int | None] | None:
    from trainwell.train.plots import plt, save_figure

    rows = [(s, m) for s in SCHEMES if (m := _first_seed_summary(cells.get(cell_label(net, s)))) is not None]
    if not rows:
        return None
    seed = next((sd for sd, sm in cells[cell_label(net, rows[0][0])].summaries.items() if sm is rows[0][1]), None)
    n_layers = max(len(m["act_hist"]) for _, m in rows)
    # No constrained layout and one stairs artist per panel: a 6 x 10 grid otherwise takes seconds.
    fig, axes = plt.subplots(len(rows), n_layers, figsize=(1.35 * n_layers + 1.2, 1.2 * len(rows) + 0.9),
                             squeeze=False)
    fig.subplots_adjust(left=0.9 / (1.35 * n_layers + 1.2), right=0.99, bottom=0.05,
                        top=1 - 0.85 / (1.2 * len(rows) + 0.9), wspace=0.08, hspace=0.3)
    for r, (scheme, m) in enumerate(rows):
        lo, hi = m["act_hist_range"]
        for c in range(n_layers):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(m["act_hist"]):
                ax.axis("off")
                continue
            hist = m["act_hist"][c]
            edges = [lo + i * (hi - lo) / len(hist) for i in range(len(hist) + 1)]
            ax.stairs(hist, edges, fill=True, color=f"C{r}")
            ax.set_ylim(0, 1.08 * max(max(hist), 1e-12))
            ax.set_xlim(lo, hi)
            std = m["act_std_by_layer"][c]
            ax.set_xlabel(f"σ={std:.2g}", fontsize=7, labelpad=1)  # under the panel: never over the end bins
            if r == 0:
                ax.set_title(f"layer {c + 1}", fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{scheme}\n[{lo:.2g}, {hi:.2g}]", fontsize=8)
    what = "nonzero outputs" if rows[0][1].get("act_hist_nonzero") else "outputs"
    fig.suptitle(f"{net} net at initialisation{'' if seed is None else f' (seed {seed})'}: histogram of each hidden "
                 f"layer's {what}\nx range per row (under the scheme's name); values outside it go to the end bins",
                 fontsize=10)
    return save_figure(fig, path), seed


#: The schemes of each net, in the order of the table and the figure.
NET_SCHEMES: dict[str, tuple[str, ...]] = {**{net: tuple(SCHEMES) for net in NETS}, DEEP: DEEP_SCHEMES}


def _std_figure(cells: dict[str, CellResult], path: Path) -> Path:
    from matplotlib.ticker import MaxNLocator

    from trainwell.train.plots import figure_legend, plt, save_figure

    nets = list(NET_SCHEMES)
    fig, axes = plt.subplots(1, len(nets), figsize=(5.5 * len(nets), 4), constrained_layout=True, squeeze=False)
    for ax, net in zip(axes[0], nets):
        matched = MATCHED.get(net, "kaiming")
        for scheme in NET_SCHEMES[net]:
            cell = cells.get(cell_label(net, scheme))
            profile = mean_lists(per_seed_lists(cell, "act_std_by_layer")) if cell else []
            profile = [v if v > 0 else math.nan for v in profile]
            if profile:
                # A dash pattern and a hollow marker per scheme: xavier and orthogonal (both gain 1) lie on
                # top of each other on the ReLU net, and each must stay visible.
                index = list(SCHEMES).index(scheme)
                ax.plot(range(1, len(profile) + 1), profile, ms=4, color=f"C{index}", label=scheme,
                        lw=2.2 if scheme == matched else 1.3, **line_style(index))
        title = (f"{net} net (matched: {matched})" if net != DEEP
                 else "ReLU net, 30 layers (He et al. 2015, Fig. 3)")
        ax.set(yscale="log", xlabel="hidden layer (1 = first)", ylabel="std of the activations at init", title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both")
    figure_legend(fig, ncols=len(SCHEMES))  # under the panels, each scheme once
    fig.suptitle("activation std by depth at initialisation (mean over seeds)", fontsize=10)
    return save_figure(fig, path)


def _paired(cell: CellResult | None, base: CellResult | None) -> tuple[float, float, bool]:
    if cell is None or base is None or cell is base:
        return math.nan, math.nan, False
    t = paired_test(cell.values, base.values)
    return t.diff.mean, t.p, t.significant


def _mean(cell: CellResult | None, key: str) -> float:
    return cell.mean_of(key).mean if cell is not None else math.nan


def _cell_evidence(net: str, scheme: str, c: CellResult, cells: dict[str, CellResult]) -> dict[str, Any]:
    """One cell's measures: accuracy, loss, the activation statistics, and paired differences in test
    accuracy against normal(0.01) and (for kaiming) xavier of the same net."""
    profile = mean_lists(per_seed_lists(c, "act_std_by_layer"))
    diff, p, sig = _paired(c, cells.get(cell_label(net, SMALL)))
    vs_xavier = _paired(c, cells.get(cell_label(net, "xavier"))) if scheme == "kaiming" else (math.nan,) * 3
    return {
        "net": net, "scheme": scheme,
        "overrides": {**(DEEP_OVERRIDES if net == DEEP else {"model.activation": net}), **SCHEMES[scheme]},
        "test_acc": c.ci.mean, "test_acc_ci": [c.ci.low, c.ci.high], "n": c.ci.n,
        "test_loss": _mean(c, "test_loss"),
        "act_std_by_layer": profile, "act_std_ratio": _mean(c, "act_std_ratio"),
        "saturated_deep": _mean(c, "saturated_deep"),
        "diverged_seeds": sum(bool(s.get("diverged")) for s in c.summaries.values()),
        "diff_vs_small": diff, "p_vs_small": p, "significant_vs_small": sig,
        "diff_vs_xavier": vs_xavier[0], "p_vs_xavier": vs_xavier[1], "significant_vs_xavier": vs_xavier[2],
    }


def _row(e: dict[str, Any], c: CellResult) -> list[str]:
    profile, sat, net, scheme = e["act_std_by_layer"], e["saturated_deep"], e["net"], e["scheme"]
    return [net, scheme + (" (matched)" if scheme == MATCHED.get(net) else ""), pct(c.ci), num(e["test_loss"]),
            num(profile[0]) if profile else "–", num(profile[-1]) if profile else "–", num(e["act_std_ratio"]),
            percent(sat, 0),
            "" if scheme == SMALL or not math.isfinite(e["diff_vs_small"]) else
            f"{points(e['diff_vs_small'])}, p = {num(e['p_vs_small'], 2)}",
            "" if scheme != "kaiming" else f"{points(e['diff_vs_xavier'])}, p = {num(e['p_vs_xavier'], 2)}",
            str(e["diverged_seeds"]) if e["diverged_seeds"] else ""]


def analyse(result: CompareResult, out: Path) -> LabOutcome:
    from trainwell.htmlreport import Table

    cells = by_label(result)
    evidence: dict[str, Any] = {"thresholds": {"collapse_ratio": COLLAPSE_RATIO, "healthy_band": list(HEALTHY_BAND),
                                               "saturated_deep": SATURATED_DEEP,
                                               "saturation_eps": SATURATION_EPS},
                                "matched": dict(MATCHED), "deep_net": DEEP, "cells": {}}
    rows = []
    for net, schemes in NET_SCHEMES.items():
        for scheme in schemes:
            c = cells.get(cell_label(net, scheme))
            if c is not None:
                evidence["cells"][c.label] = _cell_evidence(net, scheme, c, cells)
                rows.append(_row(evidence["cells"][c.label], c))

    def ev(net: str, scheme: str, key: str) -> float:
        value = evidence["cells"].get(cell_label(net, scheme), {}).get(key)
        return value if value is not None else math.nan

    small_ratio = {net: ev(net, SMALL, "act_std_ratio") for net in NETS}
    kaiming_ratio = {net: ev(net, "kaiming", "act_std_ratio") for net in ("relu", DEEP)}
    deep_xavier_ratio = ev(DEEP, "xavier", "act_std_ratio")
    tanh_xavier_ratio, tanh_xavier_sat = ev("tanh", "xavier", "act_std_ratio"), ev("tanh", "xavier", "saturated_deep")
    acc_diff = {net: ev(net, MATCHED[net], "diff_vs_small") for net in NETS}
    acc_p = {net: ev(net, MATCHED[net], "p_vs_small") for net in NETS}
    deep_diff, deep_p = ev(DEEP, "kaiming", "diff_vs_xavier"), ev(DEEP, "kaiming", "p_vs_xavier")
    large_sat = ev("tanh", LARGE, "saturated_deep")
    held, verdict = decide(small_ratio, large_sat, kaiming_ratio, deep_xavier_ratio, tanh_xavier_ratio,
                           tanh_xavier_sat, acc_diff, acc_p, deep_diff, deep_p)
    lo, hi = HEALTHY_BAND
    evidence["sub_claims"] = {
        "small_collapses": {"ratio": small_ratio,
                            "held": all(math.isfinite(r) and r < COLLAPSE_RATIO for r in small_ratio.values())},
        "large_saturates_tanh": {"saturated_deep": large_sat,
                                 "held": math.isfinite(large_sat) and large_sat > SATURATED_DEEP},
        "kaiming_keeps_relu_scale": {"ratio": kaiming_ratio,
                                     "held": all(math.isfinite(r) and lo <= r <= hi for r in kaiming_ratio.values())},
        "xavier_collapses_deep_relu": {"ratio": deep_xavier_ratio,
                                       "held": math.isfinite(deep_xavier_ratio) and deep_xavier_ratio < COLLAPSE_RATIO},
        "xavier_keeps_tanh_alive": {"ratio": tanh_xavier_ratio, "saturated_deep": tanh_xavier_sat,
                                    "held": math.isfinite(tanh_xavier_ratio) and tanh_xavier_ratio >= COLLAPSE_RATIO
                                    and math.isfinite(tanh_xavier_sat) and tanh_xavier_sat <= SATURATED_DEEP},
        "matched_beats_small": {"diff": acc_diff, "p": acc_p,
                                "held": all(math.isfinite(acc_diff[n]) and math.isfinite(acc_p[n]) and acc_diff[n] > 0
                                            and acc_p[n] < 0.05 for n in NETS)},
        "kaiming_beats_xavier_deep": {"diff": deep_diff, "p": deep_p,
                                      "held": math.isfinite(deep_diff) and math.isfinite(deep_p) and deep_diff > 0
                                      and deep_p < 0.05},
    }
    tanh_k = evidence["cells"].get(cell_label("tanh", "kaiming"))
    if tanh_k is not None:
        verdict += (f" On tanh, kaiming (tanh's gain 5/3, as torch.nn.init.calculate_gain recommends) against xavier "
                    f"(gain 1): std ratio {num(tanh_k['act_std_ratio'])} vs {num(tanh_xavier_ratio)}, deep saturated "
                    f"fraction {percent(tanh_k['saturated_deep'], 0)} vs {percent(tanh_xavier_sat, 0)}, test accuracy "
                    f"{points(tanh_k['diff_vs_xavier'])} (p = {num(tanh_k['p_vs_xavier'], 2)}; not part of the "
                    "verdict: both keep a tanh net trainable, the factor 2 matters on ReLU).")
    relu_large = ev("relu", LARGE, "act_std_ratio")
    if math.isfinite(relu_large):
        verdict += (f" Also: {LARGE} makes the ReLU net's activations grow {num(relu_large)}× from the first to the "
                    "last hidden layer")
        d = evidence["cells"].get(cell_label("relu", LARGE), {}).get("diverged_seeds", 0)
        verdict += f" ({d} of its seeds diverged in training)." if d else "."
    ranking = sorted((c for c in result.cells if math.isfinite(c.ci.mean)), key=lambda c: -c.ci.mean)
    verdict += f" Best by test accuracy: {', '.join(f'{c.label} {pct(c.ci)}' for c in ranking[:4])}."

    figures = [(_std_figure(cells, out / "act_std_by_depth.png"),
                "std of each hidden layer's activations at initialisation, by depth (log scale, mean over seeds); "
                "right: xavier against kaiming on the 30-layer ReLU net")]
    for net in NETS:
        made = _histogram_figure(cells, net, out / f"act_hist_{net}.png")
        if made is not None:
            path, seed = made
            figures.append((path, f"{net} net: histogram of each hidden layer's activations at initialisation "
                                  f"(rows: schemes, columns: layers; seed {seed}); σ: the layer's std"))
    table = Table(["net", "init", "test acc (95% CI)", "test loss", "act std, layer 1", "act std, last layer",
                   "last / first", "saturated (deep half)", f"Δ acc vs {SMALL} (same net)",
                   "Δ acc vs xavier (same net)", "diverged seeds"],
                  rows, caption="activation statistics at initialisation on one training batch (mean over seeds); "
                                "test accuracy and loss after training; Δ: paired over seeds. relu, tanh: 10 layers; "
                                "relu-30: 30 layers at lr 0.005. The papers' gains (init.gain=default): xavier and "
                                "orthogonal 1, kaiming the activation's (ReLU √2, tanh 5/3)")
    return LabOutcome(held, verdict, evidence, [table], figures)


LAB = register(Lab(
    name="init",
    claim=("Weight initialisation must match the depth and the activation: too-small weights make the activations "
           "collapse towards zero layer by layer, too-large ones saturate tanh; Xavier keeps a tanh net's signal "
           "alive but lets a deep ReLU net's collapse, while Kaiming keeps the ReLU net's scale at any depth and the "
           "deep net trains."),
    question="Q3: why does weight initialisation matter in a deep network, and how should the weights be initialised?",
    base=["data.name=digits", "model.name=mlp", "model.depth=10", "model.width=128", "model.norm=none",
          "train.epochs=6", "optim.lr=0.02"],
    cells=[*(Cell(cell_label(net, scheme), {"model.activation": net, **overrides})
             for net in NETS for scheme, overrides in SCHEMES.items()),
           *(Cell(cell_label(DEEP, scheme), {**DEEP_OVERRIDES, **SCHEMES[scheme]}) for scheme in DEEP_SCHEMES)],
    analyse=analyse,
    seeds=3,
    measure="trainwell.experiments.labs.init:measure",
    quick=["train.epochs=1", "data.limit=300", "model.width=64", "model.depth=4"],
))
