"""Lab ``augmentation``: on a small training set, data augmentation narrows the train–test gap and
raises test accuracy.

The lecture: a net with few training examples memorises them; random label-preserving
transformations of each batch (a shift, a crop) make every epoch show new variants, so the net
cannot fit the particular examples and has to learn what the transformations leave unchanged. The
training set is fitted less perfectly, the test set better.

Measured per run (:func:`trainwell.experiments.labs.common.train_test_gap`): accuracy on the
training split as stored (no augmentation) and on the test split, both in eval mode, and their gap
train − test. summary.json's ``final_train_acc`` is the running accuracy on the *augmented* batches,
which understates the fit to the training set and so would flatter augmentation; it is not used.

Verdict: against no augmentation, paired over seeds (seed s of every cell shares the data and the
initialisation), some augmentation must both shrink the gap (gap difference < 0) and raise the
test accuracy (difference > 0), each significant at alpha = 0.05 after Holm's correction over the
augmentations tested (one family for the gap, one for the accuracy: several chances to find an
effect). Both clauses, because a gap can also shrink by fitting the training set worse without
any gain on the test set.

Default data: MNIST-1D with 500 training examples and one hidden layer of 256 units (no
normalisation, no weight decay, 60 epochs: an augmented net needs more epochs to fit). Without
augmentation it fits its training set (100% in eval mode, 4 seeds) and reaches 35.4% test accuracy:
a gap of 65 points. Its signals are a pattern placed at a random offset (Greydanus 2020), so a
shift (``translation``: up to 10% of the length = 4 steps, zero fill) and a crop of the
reflect-padded signal (``crop``: up to 12.5% = 5 steps) are label-preserving; with either, the
training set is fitted to about 71% and the test accuracy rises to about 50.6% (a gap of about 20
points; at 30 epochs: 60% and 45%). On 8x8 digits with 200 training images (one-seed trials) a CNN
already reached 96.7% test accuracy without augmentation (a gap of 3 points to act on, at 9x the
MLP's cost per run), and an MLP lost 8 points with a 1-pixel translation (digits are centred; an
eighth of the side is a large move).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainwell.experiments.compare import Cell
from trainwell.experiments.lab import Lab, LabOutcome, register
from trainwell.experiments.labs.common import num, paired_measure, pct
from trainwell.experiments.results import CellResult, CompareResult, holm

#: (cell label, augment value); the first is the baseline every other is compared with.
AUGMENTS = (("none", None), ("translation", "translation"), ("crop", "crop:mode=reflect"))


def decide(rows: list[dict[str, Any]], alpha: float = 0.05) -> tuple[bool, str]:
    """Held when some augmentation significantly shrinks the train − test accuracy gap AND significantly
    raises test accuracy against no augmentation.

    ``rows``: one per augmentation, each {"label", "gap_diff", "gap_p", "acc_diff", "acc_p"}: the mean
    paired difference (augmentation − none) over seeds of the gap and of the test accuracy, and the
    two-sided paired t-test p-values. Each family of p-values (gap, accuracy) is Holm-adjusted over
    the augmentations.
    """
    if not rows:
        return False, "No augmentation ran: nothing to compare with no augmentation."
    gap_adj, acc_adj = holm([r["gap_p"] for r in rows]), holm([r["acc_p"] for r in rows])
    parts, good = [], []
    for r, p_gap, p_acc in zip(rows, gap_adj, acc_adj):
        shrinks = r["gap_diff"] < 0 and p_gap < alpha
        raises = r["acc_diff"] > 0 and p_acc < alpha
        if shrinks and raises:
            good.append(r["label"])
        parts.append(f"{r['label']}: gap {'−' if r['gap_diff'] < 0 else '+'}{num(100 * abs(r['gap_diff']), 3)} pp "
                     f"(Holm p = {num(p_gap, 2)}, {'significantly smaller' if shrinks else 'not significantly smaller'})"
                     f", test accuracy {'−' if r['acc_diff'] < 0 else '+'}{num(100 * abs(r['acc_diff']), 3)} pp "
                     f"(Holm p = {num(p_acc, 2)}, {'significantly higher' if raises else 'not significantly higher'})")
    head = (f"Augmentation ({', '.join(good)}) both narrows the train − test gap and raises test accuracy" if good
            else "No augmentation both narrows the train − test gap and raises test accuracy significantly")
    return bool(good), (f"{head} (alpha = {alpha:g}, Holm-adjusted over {len(rows)} augmentations). "
                        "Against none, paired over seeds: " + "; ".join(parts) + ".")


def _p(test: Any) -> float | None:
    return None if test is None else test.p


def _diff(test: Any) -> float | None:
    return None if test is None else test.diff.mean


def plot_fit(cells: list[CellResult], path: Path) -> Path:
    """Left: train (eval mode, no augmentation) and test accuracy per cell; right: their gap per cell.
    Mean as a dot with its 95% CI, each seed a small grey dot."""
    from trainwell.experiments.plots import line_style
    from trainwell.train.plots import plt, save_figure

    fig, (ax_acc, ax_gap) = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
    xs = list(range(len(cells)))
    panels = ((ax_acc, (("train_acc_eval", "train (eval mode, no augmentation)", -0.12),
                        ("test_acc_eval", "test", 0.12)), "accuracy (%)"),
              (ax_gap, (("gap_acc", "train − test", 0.0),), "train − test accuracy gap (pp)"))
    drawn = 0  # one colour and marker per series across both panels
    for ax, series, ylabel in panels:
        for key, label, offset in series:
            means, lows, highs = [], [], []
            for x, c in zip(xs, cells):
                ci = c.mean_of(key)
                means.append(100 * ci.mean)
                lows.append(100 * (ci.mean - ci.low))
                highs.append(100 * (ci.high - ci.mean))
                seeds = [100 * v for v in c.values_of(key).values()]
                ax.plot([x + offset] * len(seeds), seeds, "o", color="0.6", ms=3, zorder=1)
            ax.errorbar([x + offset for x in xs], means, yerr=[lows, highs], capsize=4, ls="none", color=f"C{drawn}",
                        marker=line_style(drawn)["marker"], ms=7, zorder=2, label=f"{label}: mean, 95% CI")
            drawn += 1
        ax.set(ylabel=ylabel)
        ax.set_xticks(xs, [c.label for c in cells], fontsize=8)
        ax.set_xlim(-0.5, len(cells) - 0.5)
        ax.grid(alpha=0.3)
    ax_acc.set_title("accuracy per augmentation")
    ax_gap.set_title("train − test gap per augmentation")
    handles = [h for ax in (ax_acc, ax_gap) for h in ax.get_legend_handles_labels()[0]]
    labels = [t for ax in (ax_acc, ax_gap) for t in ax.get_legend_handles_labels()[1]]
    handles.append(plt.Line2D([], [], marker="o", ls="", color="0.6", ms=3))
    labels.append("one seed")
    fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncols=4)
    return save_figure(fig, path)


def analyse(result: CompareResult, out: Path) -> LabOutcome:
    from trainwell.htmlreport import Table

    base = result.cells[0]
    others = result.cells[1:]
    gap_tests = {c.label: paired_measure(c, base, "gap_acc", result.alpha) for c in others}
    gap_holm = dict(zip(gap_tests, holm([t.p for t in gap_tests.values()])))
    acc_holm = dict(zip(gap_tests, holm([c.test.p if c.test else float("nan") for c in others])))
    evidence: dict[str, Any] = {"baseline": base.label, "alpha": result.alpha,
                                "rule": "some augmentation: gap_diff < 0 and gap_p_holm < alpha, and "
                                        "acc_diff > 0 and acc_p_holm < alpha (Holm over the augmentations)"}
    rows, decide_rows = [], []
    for c in result.cells:
        train, gap = c.mean_of("train_acc_eval"), c.mean_of("gap_acc")
        gap_test = gap_tests.get(c.label)
        evidence[c.label] = {
            "augment": c.cell.overrides.get("augment"), "train_acc_eval": train.mean,
            "test_acc": c.ci.mean, "test_acc_ci": [c.ci.low, c.ci.high],
            "gap_acc": gap.mean, "gap_acc_ci": [gap.low, gap.high],
            "gap_diff": _diff(gap_test), "gap_p": _p(gap_test), "gap_p_holm": gap_holm.get(c.label),
            "acc_diff": _diff(c.test), "acc_p": _p(c.test), "acc_p_holm": acc_holm.get(c.label),
        }
        if gap_test is not None and c.test is not None:
            decide_rows.append({"label": c.label, "gap_diff": gap_test.diff.mean, "gap_p": gap_test.p,
                                "acc_diff": c.test.diff.mean, "acc_p": c.test.p})
        rows.append([c.label, str(c.cell.overrides.get("augment", "–")), pct(train), pct(c.ci), pct(gap),
                     "" if gap_test is None else num(gap_holm[c.label], 2),
                     "" if c.test is None else num(acc_holm[c.label], 2)])
    figure = plot_fit(result.cells, out / "fit_by_augmentation.png")
    held, verdict = decide(decide_rows, result.alpha)
    verdict += (" Train (eval mode) / test accuracy per cell: "
                + ", ".join(f"{c.label} {pct(c.mean_of('train_acc_eval'))} / {pct(c.ci)}" for c in result.cells)
                + ".")
    table = Table(["augmentation", "augment=", "train acc (eval, no augmentation)", "test acc", "gap (train − test)",
                   "gap Holm p vs none", "test acc Holm p vs none"], rows,
                  caption="mean ± 95% CI over seeds; p: paired t-test against no augmentation, Holm-adjusted "
                          "over the augmentations (gap and accuracy separately)")
    return LabOutcome(held, verdict, evidence, [table],
                      [(figure, "training accuracy (eval mode, the stored training set) and test accuracy per "
                                "augmentation, and their gap (grey: each seed)")])


LAB = register(Lab(
    name="augmentation",
    claim="On a small training set, data augmentation narrows the train–test gap and raises test accuracy.",
    question="Lecture: data augmentation: why do random label-preserving transformations of the training "
             "data reduce overfitting?",
    base=["data.name=mnist1d", "data.limit=500", "model.name=mlp", "model.depth=1", "model.width=256",
          "model.norm=none", "optim.weight_decay=0", "train.epochs=60", "optim.lr=0.05"],
    cells=[Cell(label, {} if value is None else {"augment": value}) for label, value in AUGMENTS],
    analyse=analyse,
    seeds=4,
    measure="trainwell.experiments.labs.common:train_test_gap",
    quick=["data.name=digits", "data.limit=200", "model.width=64", "train.epochs=1"],
))
