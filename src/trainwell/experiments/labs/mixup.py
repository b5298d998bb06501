"""Lab ``mixup``: training on mixed examples makes a net better calibrated without costing accuracy.

The lecture (review Q5): mixup trains on convex combinations of pairs of examples and of their
one-hot labels, λ ~ Beta(α, α). The targets are soft, so the net is never pushed towards
probability 1 on anything, and it has to behave linearly between examples: its confidence falls
towards its accuracy, i.e. its expected calibration error (ECE) drops, while accuracy stays.

Measured per run, on the test set: softmax probabilities of the trained model (eval mode), from
which :func:`trainwell.train.calibration.calibration_summary` gives accuracy, NLL, ECE (15
equal-width confidence bins), Brier score and the reliability bins; also the mean confidence.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from trainwell.experiments.compare import Cell
from trainwell.experiments.lab import Lab, LabOutcome, register
from trainwell.experiments.labs.common import num, paired_measure, pct
from trainwell.experiments.results import CompareResult, holm

ALPHAS = (0.0, 0.2, 0.4)
N_BINS = 15


def alpha_label(alpha: float) -> str:
    return "no mixup" if alpha == 0 else f"alpha={alpha:g}"


def measure(run: Any, splits: Any) -> dict[str, Any]:
    """Calibration of the trained model on the test set (eval mode, softmax of the logits)."""
    from trainwell.train.calibration import calibration_summary
    from trainwell.train.trainer import predict_logits

    device = next(run.model.parameters()).device
    probs = predict_logits(run.model, splits.test.x, device, run.config.train.eval_batch_size).softmax(1)
    cal = calibration_summary(probs, splits.test.y.to(device), N_BINS)
    return {"cal_acc": cal["acc"], "ece": cal["ece"], "nll": cal["nll"], "brier": cal["brier"],
            "mean_conf": float(probs.max(1).values.mean()), "reliability": cal["bins"]}


def pool_bins(bins: list[dict[str, Any]]) -> dict[str, Any]:
    """Reliability bins of several runs (same edges) pooled into those of all their examples together,
    with the pooled ECE: per bin, counts, confidence sums and numbers correct add up."""
    if not bins:
        raise ValueError("pool_bins needs at least one set of reliability bins.")
    edges = bins[0]["edges"]
    n = len(edges) - 1
    count = [0] * n
    conf_sum, correct_sum = [0.0] * n, [0.0] * n
    for b in bins:
        if len(b["edges"]) != len(edges) or any(abs(x - y) > 1e-12 for x, y in zip(b["edges"], edges)):
            raise ValueError("pool_bins: every run must use the same bin edges.")
        for i, (k, conf, acc) in enumerate(zip(b["count"], b["confidence"], b["accuracy"])):
            if k:
                count[i] += k
                conf_sum[i] += k * conf
                correct_sum[i] += k * acc
    total = sum(count)
    return {
        "edges": list(edges),
        "confidence": [s / k if k else None for s, k in zip(conf_sum, count)],
        "accuracy": [s / k if k else None for s, k in zip(correct_sum, count)],
        "count": count,
        "ece": sum(abs(a - c) for a, c in zip(correct_sum, conf_sum)) / total if total else math.nan,
    }


def decide(rows: list[dict[str, Any]], alpha: float = 0.05) -> tuple[bool, str]:
    """Held when some mixup setting lowers ECE significantly and does not significantly lower accuracy.

    ``rows``: one per mixup setting, each {"label", "ece_diff", "ece_p", "acc_diff", "acc_p"} with the
    paired differences (mixup − no mixup) over seeds and their p-values. The ECE p-values are
    Holm-adjusted over the settings (several chances to find a drop); the accuracy p-values are not
    (a harm counts even when only one setting shows it).
    """
    if not rows:
        return False, "No mixup setting ran: nothing to compare."
    adjusted = holm([r["ece_p"] for r in rows])
    parts, ok = [], []
    for r, p_ece in zip(rows, adjusted):
        lowers = r["ece_diff"] < 0 and p_ece < alpha
        hurts = r["acc_diff"] < 0 and r["acc_p"] < alpha
        ok.append(lowers and not hurts)
        ece_text = (f"ECE {'−' if r['ece_diff'] < 0 else '+'}{num(100 * abs(r['ece_diff']), 3)} pp "
                    f"(Holm p = {num(p_ece, 2)}, {'significantly lower' if lowers else 'not significantly lower'})")
        acc_text = (f"accuracy {'−' if r['acc_diff'] < 0 else '+'}{num(100 * abs(r['acc_diff']), 3)} pp "
                    f"(p = {num(r['acc_p'], 2)}, {'significantly worse' if hurts else 'not significantly worse'})")
        parts.append(f"{r['label']}: {ece_text}, {acc_text}")
    held = any(ok)
    good = [r["label"] for r, k in zip(rows, ok) if k]
    head = (f"mixup ({', '.join(good)}) lowers the calibration error without hurting accuracy" if held else
            "no mixup setting both lowers the calibration error significantly and keeps accuracy")
    return held, f"{head[0].upper()}{head[1:]}. Against no mixup, paired over seeds: " + "; ".join(parts) + "."


def analyse(result: CompareResult, out: Path) -> LabOutcome:
    from trainwell.train.calibration import plot_reliability
    from trainwell.htmlreport import Table

    base = result.cells[0]
    evidence: dict[str, Any] = {"n_bins": N_BINS}
    rows, decide_rows, curves = [], [], {}
    for c in result.cells:
        ece, nll, brier, conf = (c.mean_of(k) for k in ("ece", "nll", "brier", "mean_conf"))
        ece_test = None if c is base else paired_measure(c, base, "ece", result.alpha)
        nll_test = None if c is base else paired_measure(c, base, "nll", result.alpha)
        seed_bins = [s["reliability"] for s in c.summaries.values() if isinstance(s.get("reliability"), dict)]
        pooled = pool_bins(seed_bins) if seed_bins else None
        if pooled is not None:
            curves[c.label] = pooled
        evidence[c.label] = {
            "mixup_alpha": float(c.cell.overrides.get("mix.mixup_alpha", 0.0)),
            "test_acc": c.ci.mean, "test_acc_ci": [c.ci.low, c.ci.high],
            "ece": ece.mean, "ece_ci": [ece.low, ece.high], "ece_pooled": pooled["ece"] if pooled else None,
            "nll": nll.mean, "brier": brier.mean, "mean_confidence": conf.mean,
            "ece_diff": ece_test.diff.mean if ece_test else None, "ece_p": ece_test.p if ece_test else None,
            "nll_diff": nll_test.diff.mean if nll_test else None, "nll_p": nll_test.p if nll_test else None,
            "acc_diff": c.test.diff.mean if c.test else None, "acc_p": c.test.p if c.test else None,
        }
        if ece_test is not None and c.test is not None:
            decide_rows.append({"label": c.label, "ece_diff": ece_test.diff.mean, "ece_p": ece_test.p,
                                "acc_diff": c.test.diff.mean, "acc_p": c.test.p})
        rows.append([c.label, pct(c.ci), pct(ece), num(nll.mean), num(brier.mean), pct(conf),
                     "" if ece_test is None else num(ece_test.p, 2), "" if c.test is None else num(c.test.p, 2)])
    figure = plot_reliability(curves, out / "reliability.png",
                              title=f"test set, pooled over seeds {result.plan.seeds}")
    held, verdict = decide(decide_rows, result.alpha)
    verdict += (" Mean confidence vs accuracy: "
                + ", ".join(f"{c.label} {pct(c.mean_of('mean_conf'))} vs {pct(c.ci)}" for c in result.cells) + ".")
    table = Table(["mixup", "test acc", "ECE", "NLL", "Brier", "mean confidence", "ECE p vs none",
                   "acc p vs none"], rows,
                  caption=f"test set, mean ± 95% CI over seeds; ECE with {N_BINS} equal-width bins; p: paired "
                          "t-test against no mixup (unadjusted; the verdict Holm-adjusts the ECE p-values)")
    return LabOutcome(held, verdict, evidence, [table],
                      [(figure, "reliability diagram: accuracy per confidence bin, all seeds' test predictions "
                                "pooled (legend: pooled ECE); below the diagonal = over-confident")])


LAB = register(Lab(
    name="mixup",
    claim="Mixup makes a classifier better calibrated (lower ECE) without hurting its accuracy.",
    question="Q5: what does mixup do to the targets, and why does it improve calibration?",
    base=["data.name=mnist1d", "model.name=mlp", "model.depth=2", "model.width=256", "model.norm=none",
          "train.epochs=30", "optim.lr=0.05"],
    cells=[Cell(alpha_label(a), {"mix.mixup_alpha": a}) for a in ALPHAS],
    analyse=analyse,
    seeds=4,
    measure="trainwell.experiments.labs.mixup:measure",
    quick=["data.name=digits", "data.limit=300", "model.width=64", "train.epochs=1"],
))
