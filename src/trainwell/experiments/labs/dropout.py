"""Lab ``dropout``: dropout regularises a net that overfits: the train–test gap shrinks.

The lecture (review Q4): dropout zeroes each hidden unit with probability p during training, so
no unit can rely on particular others (co-adaptation) and the net behaves like an average of many
thinned nets; at test time every unit is kept (inverted dropout rescales during training). In a
small-data regime, where a wide net memorises its training set, this narrows the gap between
training and test accuracy.

Measured per run, with dropout off (eval mode) for both splits: training accuracy and loss, test
accuracy and loss, and their gaps. summary.json's ``final_train_acc`` is the running accuracy of
the last epoch with dropout on, which understates how well the net fits its training set and so
biases the gap downwards for large p; it is not used.

Default data: MNIST-1D with 1000 training examples and one wide hidden layer (1024 units, 40
epochs, no weight decay), which reaches 100% training accuracy and about 44% test accuracy: a
large gap for dropout to act on. On digits with 200 examples the same kind of MLP also fits its
training set perfectly but already generalises well (about 93% test), and in trial runs dropout
moved neither the gap nor the test accuracy there.
"""

from __future__ import annotations

from pathlib import Path

from trainwell.experiments.compare import Cell
from trainwell.experiments.lab import Lab, LabOutcome, register
from trainwell.experiments.labs.common import num, paired_measure, pct, train_test_gap
from trainwell.experiments.results import CompareResult
from trainwell.experiments.stats import mean_ci

PROBS = (0.0, 0.2, 0.5)


def p_label(p: float) -> str:
    return f"p={p:g}"


measure = train_test_gap  # train and test accuracy/loss in eval mode (dropout off) and their gaps


def decide(gap_diff: float, gap_p: float, acc_diff: float, acc_p: float, alpha: float = 0.05,
           high: str = "p=0.5", low: str = "p=0") -> tuple[bool, str]:
    """Held when the train − test accuracy gap with strong dropout (``high``) is significantly below
    the gap without (``low``): paired over seeds, ``gap_diff`` = mean of (gap_high − gap_low) per seed.

    The test-accuracy change (``acc_diff``, ``acc_p``) is reported alongside but is not required:
    the claim is that dropout reduces overfitting, which it may do without raising test accuracy.
    """
    shrinks = gap_diff < 0 and gap_p < alpha
    held = bool(shrinks)
    gap_text = (f"with {high} the train − test accuracy gap is {num(100 * abs(gap_diff), 3)} pp "
                f"{'smaller' if gap_diff < 0 else 'larger'} than with {low} (paired p = {num(gap_p, 2)}): "
                + ("it shrinks significantly" if shrinks else "not a significant shrinkage"))
    if acc_p < alpha:
        acc_text = (f"test accuracy {'improved' if acc_diff > 0 else 'got worse'} significantly, "
                    f"by {num(100 * acc_diff, 3)} pp (p = {num(acc_p, 2)})")
    else:
        acc_text = (f"test accuracy did not change significantly ({num(100 * acc_diff, 3)} pp, "
                    f"p = {num(acc_p, 2)})")
    return held, f"{gap_text}; {acc_text}."


def analyse(result: CompareResult, out: Path) -> LabOutcome:
    from trainwell.htmlreport import Table
    from trainwell.train.plots import plt, save_figure

    base = result.cells[0]
    rows, evidence, xs = [], {}, []
    for c in result.cells:
        p = float(c.cell.overrides.get("model.dropout", 0.0))
        xs.append(p)
        train, test = c.mean_of("train_acc_eval"), c.mean_of("test_acc_eval")
        gap, gap_loss = c.mean_of("gap_acc"), c.mean_of("gap_loss")
        # What the gap would look like from summary.json's last-epoch training accuracy (dropout on).
        gap_on = mean_ci([s["final_train_acc"] - s["test_acc"] for s in c.summaries.values()
                          if isinstance(s.get("final_train_acc"), (int, float))
                          and isinstance(s.get("test_acc"), (int, float))])
        gap_test = None if c is base else paired_measure(c, base, "gap_acc", result.alpha)
        evidence[c.label] = {
            "dropout": p, "train_acc_eval": train.mean, "test_acc": test.mean, "test_acc_ci": [test.low, test.high],
            "gap_acc": gap.mean, "gap_acc_ci": [gap.low, gap.high], "gap_loss": gap_loss.mean,
            "gap_acc_dropout_on": gap_on.mean,
            "gap_diff_vs_p0": gap_test.diff.mean if gap_test else None,
            "gap_p_vs_p0": gap_test.p if gap_test else None,
            "acc_diff_vs_p0": c.test.diff.mean if c.test else None,
            "acc_p_vs_p0": c.test.p if c.test else None,
        }
        rows.append([c.label, pct(train), pct(test), pct(gap), "" if gap_test is None else num(gap_test.p, 2),
                     "" if c.test is None else num(c.test.p, 2), num(gap_loss.mean), pct(gap_on)])

    fig, (ax_gap, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.8), constrained_layout=True)
    for ax, key, title in ((ax_gap, "gap_acc", "train − test accuracy (eval mode)"),
                           (ax_acc, "test_acc_eval", "test accuracy")):
        means, lows, highs = [], [], []
        for p, c in zip(xs, result.cells):
            ci = c.mean_of(key)
            means.append(100 * ci.mean)
            lows.append(100 * (ci.mean - ci.low))
            highs.append(100 * (ci.high - ci.mean))
            seeds = [100 * s[key] for s in c.summaries.values() if isinstance(s.get(key), (int, float))]
            ax.plot([p] * len(seeds), seeds, "o", color="0.6", ms=3, zorder=1)
        ax.errorbar(xs, means, yerr=[lows, highs], marker="o", capsize=4, lw=1.8, zorder=2, label="mean, 95% CI")
        ax.set(xlabel="dropout probability p", ylabel="%", title=title, xticks=xs)
        ax.grid(alpha=0.3)
    ax_gap.legend(fontsize=8)
    figure = save_figure(fig, out / "gap_vs_dropout.png")

    high = max(result.cells, key=lambda c: float(c.cell.overrides.get("model.dropout", 0.0)))
    gap_test = paired_measure(high, base, "gap_acc", result.alpha) if high is not base else None
    if gap_test is None or high.test is None:
        held, verdict = False, "Only one dropout setting ran: nothing to compare."
    else:
        held, verdict = decide(gap_test.diff.mean, gap_test.p, high.test.diff.mean, high.test.p, result.alpha,
                               high=high.label, low=base.label)
        verdict = verdict[0].upper() + verdict[1:]
    verdict += (" Gap and test accuracy per setting: "
                + ", ".join(f"{c.label}: gap {pct(c.mean_of('gap_acc'))}, test {pct(c.ci)}" for c in result.cells)
                + ".")
    evidence["compared"] = {"high": high.label, "low": base.label}
    table = Table(["dropout", "train acc (eval mode)", "test acc", "gap (train − test)", "gap p vs p=0",
                   "test acc p vs p=0", "test − train loss", "gap if train acc had dropout on"], rows,
                  caption="accuracy with dropout off, mean ± 95% CI over seeds; p: paired t-test against the "
                          "first row; last column: the biased gap from the last epoch's running training "
                          "accuracy, measured with dropout on (not used)",
                  highlight={i for i, c in enumerate(result.cells) if c.label == high.label})
    return LabOutcome(held, verdict, evidence, [table],
                      [(figure, "train − test accuracy gap and test accuracy against the dropout probability "
                                "(grey: each seed)")])


LAB = register(Lab(
    name="dropout",
    claim="Dropout reduces overfitting: with dropout the gap between training and test accuracy shrinks.",
    question="Q4: how does dropout regularise a network, and what changes at test time?",
    base=["data.name=mnist1d", "data.limit=1000", "model.name=mlp", "model.depth=1", "model.width=1024",
          "model.norm=none", "optim.weight_decay=0", "train.epochs=40", "optim.lr=0.05"],
    cells=[Cell(p_label(p), {"model.dropout": p}) for p in PROBS],
    analyse=analyse,
    seeds=5,
    measure="trainwell.experiments.labs.dropout:measure",
    quick=["data.name=digits", "data.limit=200", "model.width=64", "train.epochs=1"],
))
