"""Lab ``activations``: ReLU beats sigmoid in a deep net, because sigmoid's gradient vanishes.

The lecture (review Q1): sigmoid saturates and its derivative is at most 1/4, so each sigmoid
layer shrinks the backward signal; in a deep net little gradient reaches the first layers, which
then barely learn. ReLU passes the gradient unchanged where it is active.

Measured per run: test accuracy after training, and the RMS gradient of every weight layer on
one training batch at initialisation (the same weights the run started from).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainwell.experiments.compare import Cell
from trainwell.experiments.lab import Lab, LabOutcome, register
from trainwell.experiments.labs.common import (
    by_label,
    mean_lists,
    model_at_init,
    num,
    pct,
    per_seed_lists,
    rms_gradients,
    training_batch,
)
from trainwell.experiments.plots import line_style
from trainwell.experiments.results import CompareResult

ACTIVATIONS = ("relu", "sigmoid", "tanh", "leaky_relu", "elu", "selu")


def measure(run: Any, splits: Any) -> dict[str, Any]:
    """RMS gradient per weight layer at initialisation, first layer and its ratio to the last."""
    x, y = training_batch(splits, 256, run.config.train.seed)
    rms = rms_gradients(model_at_init(run, splits), x, y)
    return {"grad_rms_by_layer": rms, "grad_rms_first": rms[0], "grad_first_over_last": rms[0] / rms[-1]}


def decide(relu_better: bool, relu_p: float, grad_ratio_sigmoid: float, grad_ratio_relu: float) -> tuple[bool, str]:
    """Held when ReLU's accuracy is significantly above sigmoid's (paired test) and the gradient
    reaching sigmoid's first layer, relative to its last, is smaller than ReLU's."""
    vanishes = grad_ratio_sigmoid < grad_ratio_relu
    held = relu_better and vanishes
    parts = [
        "ReLU's test accuracy is significantly higher than sigmoid's" if relu_better else
        f"ReLU's test accuracy is not significantly higher than sigmoid's (paired p = {num(relu_p, 2)})",
        (f"sigmoid's first layer gets {num(grad_ratio_sigmoid)}× the RMS gradient of its last layer at init, "
         f"ReLU's {num(grad_ratio_relu)}×: the gradient {'vanishes' if vanishes else 'does not vanish'} "
         "faster through sigmoid layers"),
    ]
    return held, "; ".join(parts) + "."


def analyse(result: CompareResult, out: Path) -> LabOutcome:
    from trainwell.htmlreport import Table
    from trainwell.train.plots import dodge, plt, save_figure

    cells = by_label(result)
    relu, sigmoid = cells["relu"], cells["sigmoid"]
    rows: list[list[str]] = []
    evidence: dict[str, Any] = {}
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for i, c in enumerate(result.cells):
        acc, grad, ratio = c.ci, c.mean_of("grad_rms_first"), c.mean_of("grad_first_over_last")
        evidence[c.label] = {"test_acc": acc.mean, "test_acc_ci": [acc.low, acc.high],
                             "grad_rms_first": grad.mean, "grad_first_over_last": ratio.mean,
                             "p_vs_relu": c.test.p if c.test else None}
        rows.append([c.label, pct(acc), num(grad.mean), num(ratio.mean),
                     "" if c.test is None else num(c.test.p, 2)])
        depth_profile = mean_lists(per_seed_lists(c, "grad_rms_by_layer"))
        if depth_profile:
            # Dodged: relu and leaky_relu(0.01) have all but equal gradients at init, and one line would hide the other.
            xs = [layer + dodge(i, len(result.cells)) for layer in range(1, len(depth_profile) + 1)]
            ax.plot(xs, depth_profile, label=c.label, **line_style(i))
    ax.set(yscale="log", xlabel="weight layer (1 = first; the lines side by side around each layer)", ylabel="RMS dL/dW at initialisation",
           title="gradient reaching each layer (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside the data
    figure = save_figure(fig, out / "gradients_by_layer.png")

    relu_better = sigmoid.test is not None and sigmoid.test.significant and sigmoid.test.diff.mean < 0
    held, verdict = decide(relu_better, sigmoid.test.p if sigmoid.test else float("nan"),
                           evidence["sigmoid"]["grad_first_over_last"], evidence["relu"]["grad_first_over_last"])
    ranking = sorted(result.cells, key=lambda c: -c.ci.mean)
    verdict += f" Ranking by test accuracy: {', '.join(f'{c.label} {pct(c.ci)}' for c in ranking)}."
    evidence["ranking"] = [c.label for c in ranking]
    table = Table(["activation", "test acc (95% CI)", "RMS grad, first layer", "first / last layer", "p vs relu"],
                  rows, caption="accuracy after training; gradients on one training batch at initialisation")
    return LabOutcome(held, verdict, evidence, [table], [(figure, "RMS gradient per layer at initialisation")])


LAB = register(Lab(
    name="activations",
    claim="In a deep net ReLU trains better than sigmoid, whose gradient vanishes on the way to the first layers.",
    question="Q1: why does ReLU train faster than sigmoid or tanh in deep networks?",
    base=["data.name=digits", "model.name=mlp", "model.depth=6", "model.width=128", "model.norm=none",
          "train.epochs=15", "optim.lr=0.05"],
    cells=[Cell(a, {"model.activation": a}) for a in ACTIVATIONS],
    analyse=analyse,
    seeds=3,
    measure="trainwell.experiments.labs.activations:measure",
    quick=["train.epochs=2", "data.limit=300"],
))
