"""Lab ``regularization``: L1 drives many weights to zero (sparsity); L2 shrinks all of them.

The lecture: an L2 penalty (l2/2 · Σw²) pulls each weight towards 0 with a force proportional to
the weight, so weights get small but rarely reach zero; an L1 penalty (l1 · Σ|w|) pulls with a
constant force l1·sign(w), which pins every weight whose data gradient is weaker than l1 at zero:
the weights become sparse.

Measured per run, over the weights (not biases) of every Linear/Conv layer of the trained model:
the fraction with |w| < 1e-3 (the threshold of the verdict), the fraction below 1% of their
layer's largest |w|, the L2 norm of all weights together, and a histogram of |w| on a log scale.
``optim.weight_decay=0`` in the base, so the cell without a penalty has no regularisation at all.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from trainwell.experiments.compare import Cell
from trainwell.experiments.lab import Lab, LabOutcome, register
from trainwell.experiments.labs.common import num, paired_measure, pct, weight_layers
from trainwell.experiments.results import CompareResult

#: |w| below this counts as zero for the verdict.
ZERO_THRESHOLD = 1e-3
#: |w| below this fraction of its layer's largest |w| counts as zero (the scale-free second measure).
RELATIVE_THRESHOLD = 0.01
#: Histogram of |w|: log-spaced edges from 1e-12 to 10 (5 bins a decade); smaller values (exact
#: zeros included) are counted apart as ``abs_hist_under``.
HIST_EDGES = np.logspace(-12, 1, 13 * 5 + 1)


def weight_stats(model: Any, threshold: float = ZERO_THRESHOLD, relative: float = RELATIVE_THRESHOLD) -> dict[str, Any]:
    """Sparsity and size of the weights of the model's Linear/Conv layers (biases excluded)."""
    layers = [m.weight.detach().double().flatten().cpu() for _, m in weight_layers(model)]
    if not layers:
        raise ValueError("the model has no Linear or Conv layer to measure.")
    absw = np.concatenate([w.abs().numpy() for w in layers])
    small_rel = [(w.abs() < relative * w.abs().max()).numpy() for w in layers]
    counts, _ = np.histogram(absw, bins=HIST_EDGES)
    return {
        "n_weights": int(absw.size),
        "frac_zero": float((absw < threshold).mean()),
        "frac_zero_rel": float(np.concatenate(small_rel).mean()),
        "frac_zero_by_layer": [float((w.abs() < threshold).double().mean()) for w in layers],
        "weight_norm": float(math.sqrt(float((absw ** 2).sum()))),
        "mean_abs_weight": float(absw.mean()),
        "abs_hist": [int(c) for c in counts],
        "abs_hist_under": int((absw < HIST_EDGES[0]).sum()),
    }


def measure(run: Any, splits: Any) -> dict[str, Any]:
    return weight_stats(run.model)


def decide(l1_vs_l2: tuple[float, float], l1_vs_none: tuple[float, float], l2_norm_vs_none: tuple[float, float],
           alpha: float = 0.05, threshold: float = ZERO_THRESHOLD) -> tuple[bool, str]:
    """Held when L1 leaves a significantly larger fraction of near-zero weights than both L2 and no
    penalty, and L2 leaves a significantly smaller weight norm than no penalty.

    Each argument is (mean paired difference over seeds, p-value): the near-zero fraction of L1
    minus that of L2 / of none, and the weight norm of L2 minus that of none.
    """
    sparse_l2 = l1_vs_l2[0] > 0 and l1_vs_l2[1] < alpha
    sparse_none = l1_vs_none[0] > 0 and l1_vs_none[1] < alpha
    shrinks = l2_norm_vs_none[0] < 0 and l2_norm_vs_none[1] < alpha
    held = sparse_l2 and sparse_none and shrinks

    def share(d: tuple[float, float], sig: bool, more: str, less: str) -> str:
        return (f"{num(100 * abs(d[0]), 3)} pp {more if d[0] > 0 else less} (p = {num(d[1], 2)}"
                f"{'' if sig else ', not significant'})")

    parts = [
        f"L1 leaves a fraction of weights with |w| < {threshold:g} that is "
        f"{share(l1_vs_l2, sparse_l2, 'larger', 'smaller')} than L2's and "
        f"{share(l1_vs_none, sparse_none, 'larger', 'smaller')} than without a penalty",
        f"L2 changes the weights' L2 norm by {num(l2_norm_vs_none[0], 3)} against no penalty "
        f"(p = {num(l2_norm_vs_none[1], 2)}{'' if shrinks else ', not a significant shrinkage'})",
    ]
    return held, "; ".join(parts) + "."


def _penalty(cell: Any) -> str:
    o = cell.cell.overrides
    if o.get("reg.l1"):
        return "l1"
    if o.get("reg.l2"):
        return "l2"
    return "none"


def analyse(result: CompareResult, out: Path) -> LabOutcome:
    from trainwell.htmlreport import Table
    from trainwell.train.plots import plt, save_figure

    kinds = {_penalty(c): c for c in result.cells}
    rows: list[list[str]] = []
    evidence: dict[str, Any] = {"zero_threshold": ZERO_THRESHOLD, "relative_threshold": RELATIVE_THRESHOLD}
    fig, ax = plt.subplots(figsize=(7.5, 4.2), constrained_layout=True)
    for c in result.cells:
        frac, rel, norm = c.mean_of("frac_zero"), c.mean_of("frac_zero_rel"), c.mean_of("weight_norm")
        evidence[c.label] = {
            "overrides": dict(c.cell.overrides), "frac_zero": frac.mean, "frac_zero_ci": [frac.low, frac.high],
            "frac_zero_rel": rel.mean, "weight_norm": norm.mean, "weight_norm_ci": [norm.low, norm.high],
            "test_acc": c.ci.mean, "test_acc_ci": [c.ci.low, c.ci.high],
            "acc_diff_vs_none": c.test.diff.mean if c.test else None, "acc_p_vs_none": c.test.p if c.test else None,
        }
        rows.append([c.label, pct(frac), pct(rel), f"{num(norm.mean, 4)} ± {num(norm.half_width, 2)}", pct(c.ci),
                     "" if c.test is None else num(c.test.p, 2)])
        hists = [s["abs_hist"] for s in c.summaries.values() if isinstance(s.get("abs_hist"), list)]
        if hists:
            total = np.sum(hists, axis=0).astype(float)
            under = sum(int(s.get("abs_hist_under", 0)) for s in c.summaries.values())
            n = total.sum() + under
            ax.stairs(total / n, HIST_EDGES, lw=1.8,
                      label=f"{c.label}: {pct(frac)} below {ZERO_THRESHOLD:g}, norm {num(norm.mean, 3)}")
    ax.axvline(ZERO_THRESHOLD, color="0.4", ls="--", lw=1, label=f"|w| = {ZERO_THRESHOLD:g}")
    ax.set(xscale="log", xlabel="|w| (weights of every Linear/Conv layer)", ylabel="fraction of weights per bin",
           title=f"weight magnitudes after training, pooled over seeds {result.plan.seeds}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    figure = save_figure(fig, out / "weight_histogram.png")

    missing = [k for k in ("none", "l1", "l2") if k not in kinds]
    if missing:
        held, verdict = False, f"The lab needs cells without a penalty, with L1 and with L2; missing: {missing}."
    else:
        none, l1, l2 = kinds["none"], kinds["l1"], kinds["l2"]
        t12 = paired_measure(l1, l2, "frac_zero", result.alpha)
        t1n = paired_measure(l1, none, "frac_zero", result.alpha)
        t2n = paired_measure(l2, none, "weight_norm", result.alpha)
        t1n_norm = paired_measure(l1, none, "weight_norm", result.alpha)
        held, verdict = decide((t12.diff.mean, t12.p), (t1n.diff.mean, t1n.p), (t2n.diff.mean, t2n.p),
                               result.alpha)
        evidence["tests"] = {
            "frac_zero_l1_minus_l2": {"diff": t12.diff.mean, "p": t12.p},
            "frac_zero_l1_minus_none": {"diff": t1n.diff.mean, "p": t1n.p},
            "weight_norm_l2_minus_none": {"diff": t2n.diff.mean, "p": t2n.p},
            "weight_norm_l1_minus_none": {"diff": t1n_norm.diff.mean, "p": t1n_norm.p},
        }
        acc = []
        for c in (l2, l1):
            if c.test is not None and c.test.significant:
                change = "significantly " + ("higher" if c.test.diff.mean > 0 else "lower")
            else:
                change = "no significant difference"
            acc.append(f"{c.label} {pct(c.ci)} ({change}, p = {num(c.test.p if c.test else math.nan, 2)})")
        verdict += (" Weight L2 norm: " + ", ".join(f"{c.label} {num(c.mean_of('weight_norm').mean)}"
                                                    for c in (none, l2, l1))
                    + f". Test accuracy: {none.label} {pct(none.ci)}, " + ", ".join(acc) + ".")
    table = Table(["penalty", f"|w| < {ZERO_THRESHOLD:g}", f"|w| < {RELATIVE_THRESHOLD:g}·layer max",
                   "weight L2 norm", "test acc", "acc p vs none"], rows,
                  caption="weights (not biases) of every Linear/Conv layer after training; mean ± 95% CI over "
                          "seeds; p: paired t-test against the first row")
    return LabOutcome(held, verdict, evidence, [table],
                      [(figure, "histogram of |w| on a log axis, all seeds pooled (legend: fraction below the "
                                "threshold and the weight norm, means over seeds)")])


LAB = register(Lab(
    name="regularization",
    claim="An L1 penalty makes the weights sparse (many exactly or nearly zero); an L2 penalty makes them "
          "small but not zero.",
    question="Lecture, L1 vs L2 regularisation: which penalty gives sparse weights, and why?",
    base=["data.name=digits", "model.name=mlp", "model.depth=2", "model.width=256", "model.norm=none",
          "optim.weight_decay=0", "train.epochs=30", "optim.lr=0.05"],
    cells=[Cell("none", {}), Cell("L2 (reg.l2=0.01)", {"reg.l2": 0.01}), Cell("L1 (reg.l1=0.001)", {"reg.l1": 0.001})],
    analyse=analyse,
    seeds=4,
    measure="trainwell.experiments.labs.regularization:measure",
    quick=["data.limit=300", "model.width=64", "train.epochs=1"],
))
