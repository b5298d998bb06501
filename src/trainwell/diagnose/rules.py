"""The findings engine: pure functions from measured statistics (and the epoch history) to findings.

Each rule is registered in :data:`RULES` under its stable code with a one-line doc; a rule takes a
:class:`Context` and returns the findings it supports (usually zero or one). Rules compare against
the named constants of :mod:`trainwell.diagnose.thresholds` only.

:data:`RULES` is a plain :class:`~trainwell.registry.Registry`, deliberately not added to
``trainwell list``'s registries (see the report for the wiring).

Which layers the scale rules look at: hidden Linear/Conv outputs (pre-activations) that are not
rescaled by a norm layer right after. Normalised outputs are excluded (batch norm undoes their scale
by design) and so is the last weight layer (the logits grow legitimately as the model gets confident).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from trainwell.diagnose import thresholds as T
from trainwell.diagnose.report import Finding, InputStats, LayerStats
from trainwell.registry import NoMeta, Registry

RULES = Registry("finding", NoMeta, "Codes the doctor reports, each with the rule that detects it.")


@dataclass
class Context:
    """Everything a rule may look at. ``history``: the epoch rows of the trainer (train_loss, val_loss, ...)."""

    layers: list[LayerStats] = field(default_factory=list)
    input: InputStats | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    loss: float | None = None
    when: str = ""
    peak_lr: float | None = None

    @property
    def num_classes(self) -> int | None:
        """Outputs of the last layer when it is a Linear (the classifier head), else None."""
        weights = weight_layers(self.layers)
        return weights[-1].units if weights and weights[-1].kind == "linear" else None

    def lr_decayed(self) -> bool:
        """Whether the latest epoch's lr is below LR_DECAYED of the peak (the schedule's tail)."""
        lrs = [float(r["lr"]) for r in self.history if isinstance(r.get("lr"), (int, float))]
        peak = self.peak_lr if self.peak_lr is not None else max(lrs, default=None)
        return bool(lrs and peak and lrs[-1] < T.LR_DECAYED * peak)


def rule(code: str) -> Callable[[Callable[[Context], list[Finding]]], Callable[[Context], list[Finding]]]:
    """Register a rule under ``code``; its docstring's first line is the code's one-line doc."""
    return RULES.register(code)


def run_rules(ctx: Context) -> list[Finding]:
    """Every rule's findings for ``ctx`` (each finding's evidence records ``when``)."""
    found: list[Finding] = []
    for entry in RULES:
        for f in entry.factory(ctx):
            if ctx.when:
                f.evidence.setdefault("when", ctx.when)
            found.append(f)
    return found


# ----------------------------------------------------------------------------- helpers


def _sig(x: float | None, digits: int = 3) -> float | None:
    """Round to ``digits`` significant digits (evidence stays readable in JSON)."""
    if x is None or not isinstance(x, (int, float)) or not math.isfinite(x) or x == 0:
        return x
    return float(f"{x:.{digits}g}")


def _finite(x: float | None) -> TypeGuard[float]:
    return x is not None and math.isfinite(x)


def weight_layers(layers: list[LayerStats]) -> list[LayerStats]:
    return [layer for layer in layers if layer.is_weight]


def signal_layers(layers: list[LayerStats]) -> list[LayerStats]:
    """Hidden Linear/Conv layers whose output scale is not reset by a norm layer (see module doc)."""
    weights = weight_layers(layers)
    return [layer for layer in weights[:-1] if not layer.normalized]


def _input_std(ctx: Context) -> float:
    std = ctx.input.std if ctx.input is not None else math.nan
    return std if _finite(std) and std > 0 else 1.0


def _series(history: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) if r.get(key) is not None else math.nan for r in history if key in r]


def _update_ratios(ctx: Context) -> list[tuple[LayerStats, float]]:
    """The weight layers with a finite ``update_ratio``, each with it."""
    return [(layer, r) for layer in weight_layers(ctx.layers) if _finite(r := layer.update_ratio)]


def _median_ratio(ctx: Context) -> float | None:
    ratios = [r for _, r in _update_ratios(ctx)]
    return statistics.median(ratios) if ratios else None


def feeding_layer(layers: list[LayerStats], activation: LayerStats) -> LayerStats | None:
    """The weight layer whose output ``activation`` takes: the last one called before it, unless a norm layer
    rescales that output first (then the recorded statistics are not what the activation sees)."""
    before = [layer for layer in layers if layer.is_weight and layer.depth < activation.depth]
    if not before or before[-1].normalized or not _finite(before[-1].mean) or not _finite(before[-1].std):
        return None
    return before[-1]


def _preactivations(ctx: Context, activations: list[LayerStats]) -> dict[str, dict[str, Any]]:
    """{activation: {layer, mean, std}} of the pre-activations each of ``activations`` takes, where recorded:
    the evidence of *why* units die (a negative mean: the bias) or saturate (a large std: the init)."""
    found = {}
    for act in activations:
        layer = feeding_layer(ctx.layers, act)
        if layer is not None:
            found[act.name] = {"layer": layer.name, "mean": _sig(layer.mean), "std": _sig(layer.std)}
    return found


_INIT_FIX = ("initialise each layer for the activation that follows it: init.scheme=kaiming_normal for the ReLU "
             "family, xavier_normal for tanh/sigmoid, lecun_normal for selu (PyTorch: nn.init.kaiming_normal_"
             "(w, nonlinearity='relu')), or add normalisation (model.norm=batch)")


# ----------------------------------------------------------------------------- forward signal


@rule("vanishing-activations")
def vanishing_activations(ctx: Context) -> list[Finding]:
    """Hidden pre-activations shrink to < 10% of the input's std: the signal dies with depth (Glorot & Bengio 2010)."""
    ref = _input_std(ctx)
    layers = [layer for layer in signal_layers(ctx.layers) if _finite(layer.std)]
    low = [layer for layer in layers if layer.std / ref < T.ACT_VANISH_WARN]
    if not low:
        return []
    worst = min(layer.std / ref for layer in low)
    return [Finding(
        "vanishing-activations",
        "error" if worst < T.ACT_VANISH_ERROR else "warning",
        [layer.name for layer in low],
        {"input_std": _sig(ref), "std": {layer.name: _sig(layer.std) for layer in layers},
         "min_ratio": _sig(worst), "threshold": T.ACT_VANISH_WARN},
        _INIT_FIX,
        f"pre-activation std falls to {worst:.2g}x the input's (threshold {T.ACT_VANISH_WARN:g}x) in "
        f"{len(low)} of {len(layers)} hidden layers: later layers see an almost constant signal.",
    )]


@rule("exploding-activations")
def exploding_activations(ctx: Context) -> list[Finding]:
    """Hidden pre-activations grow past 10x the input's std with depth (weights too large, no normalisation)."""
    ref = _input_std(ctx)
    layers = [layer for layer in signal_layers(ctx.layers) if _finite(layer.std)]
    high = [layer for layer in layers if layer.std / ref > T.ACT_EXPLODE_WARN]
    if not high:
        return []
    worst = max(layer.std / ref for layer in high)
    return [Finding(
        "exploding-activations",
        "error" if worst > T.ACT_EXPLODE_ERROR else "warning",
        [layer.name for layer in high],
        {"input_std": _sig(ref), "std": {layer.name: _sig(layer.std) for layer in layers},
         "max_ratio": _sig(worst), "threshold": T.ACT_EXPLODE_WARN},
        "use smaller initial weights with the right gain (" + _INIT_FIX + "); during training, also lower optim.lr",
        f"pre-activation std grows to {worst:.3g}x the input's (threshold {T.ACT_EXPLODE_WARN:g}x) in "
        f"{len(high)} of {len(layers)} hidden layers.",
    )]


@rule("saturation")
def saturation(ctx: Context) -> list[Finding]:
    """Sigmoid/tanh outputs within 2.5% of a bound (gradient < 10% of peak) in > 25% of cases (Glorot & Bengio 2010)."""
    measured = [(layer, v) for layer in ctx.layers if _finite(v := layer.saturated_fraction)]
    bad = [(layer, v) for layer, v in measured if v > T.SATURATED_WARN]
    if not bad:
        return []
    worst = max(v for _, v in bad)
    return [Finding(
        "saturation",
        "error" if worst > T.SATURATED_ERROR else "warning",
        [layer.name for layer, _ in bad],
        {"saturated_fraction": {layer.name: _sig(v) for layer, v in measured},
         "threshold": T.SATURATED_WARN, "eps": T.SATURATION_EPS,
         "preactivation": _preactivations(ctx, [layer for layer, _ in bad])},
        "use a ReLU-family activation in hidden layers (model.activation=relu), or keep tanh with "
        "init.scheme=xavier_normal, standardised inputs and model.norm=batch before the nonlinearity; "
        "never sigmoid in hidden layers of a deep net",
        f"{100 * worst:.0f}% of outputs are saturated in {bad[0][0].name}"
        + (f" (and {len(bad) - 1} more layers)" if len(bad) > 1 else "")
        + f": they pass back < 10% of the gradient (threshold {100 * T.SATURATED_WARN:.0f}%).",
    )]


@rule("dead-units")
def dead_units(ctx: Context) -> list[Finding]:
    """ReLU units that output 0 for every sampled example (> 20% of a layer): they no longer learn."""
    measured = [(layer, v) for layer in ctx.layers
                if _finite(v := layer.dead_fraction) and layer.examples >= T.DEAD_MIN_EXAMPLES]
    bad = [(layer, v) for layer, v in measured if v > T.DEAD_WARN]
    if not bad:
        return []
    worst = max(v for _, v in bad)
    return [Finding(
        "dead-units",
        "error" if worst > T.DEAD_ERROR else "warning",
        [layer.name for layer, _ in bad],
        {"dead_fraction": {layer.name: _sig(v) for layer, v in measured},
         "examples": min(layer.examples for layer, _ in bad), "threshold": T.DEAD_WARN,
         "preactivation": _preactivations(ctx, [layer for layer, _ in bad])},
        "check the biases start at 0 and the init matches ReLU (init.scheme=kaiming_normal); lower optim.lr "
        "(a too-large step pushes units into the negative region for good); or use model.activation=leaky_relu "
        "or elu, which cannot die",
        f"{100 * worst:.0f}% of the units of {max(bad, key=lambda pair: pair[1])[0].name} never fire on "
        f"{min(layer.examples for layer, _ in bad)} examples (threshold {100 * T.DEAD_WARN:.0f}%).",
    )]


# ----------------------------------------------------------------------------- backward signal


def _grad_layers(ctx: Context) -> list[tuple[LayerStats, float]]:
    """The hidden signal layers with a finite ``grad_std``, each with it."""
    return [(layer, g) for layer in signal_layers(ctx.layers) if _finite(g := layer.grad_std)]


def _grad_ratio(ctx: Context) -> tuple[float, list[tuple[LayerStats, float]]] | None:
    """std(dL/dz) at the first hidden layer over that at the last hidden layer, or None."""
    layers = _grad_layers(ctx)
    if len(layers) < 2 or not layers[-1][1] > 0:
        return None
    return layers[0][1] / layers[-1][1], layers


@rule("vanishing-gradients")
def vanishing_gradients(ctx: Context) -> list[Finding]:
    """The back-propagated gradient at the first hidden layer is < 1% of that at the last (Bengio et al. 1994)."""
    found = _grad_ratio(ctx)
    if found is None or not found[0] < T.GRAD_VANISH_WARN:
        return []
    ratio, layers = found
    return [Finding(
        "vanishing-gradients",
        "error" if ratio < T.GRAD_VANISH_ERROR else "warning",
        [layer.name for layer, g in layers if g < T.GRAD_VANISH_WARN * layers[-1][1]],
        {"grad_std": {layer.name: _sig(g) for layer, g in layers}, "ratio": _sig(ratio),
         "threshold": T.GRAD_VANISH_WARN},
        "avoid saturating activations in deep stacks (model.activation=relu), " + _INIT_FIX
        + "; for very deep nets add residual connections (model.name=resnet)",
        f"dL/dz shrinks {1 / ratio:.3g}x from {layers[-1][0].name} back to {layers[0][0].name} "
        f"(threshold {1 / T.GRAD_VANISH_WARN:g}x): the first layers barely learn.",
    )]


@rule("exploding-gradients")
def exploding_gradients(ctx: Context) -> list[Finding]:
    """The back-propagated gradient grows > 100x from the last hidden layer to the first (Pascanu et al. 2013)."""
    found = _grad_ratio(ctx)
    if found is None or not found[0] > T.GRAD_EXPLODE_WARN:
        return []
    ratio, layers = found
    return [Finding(
        "exploding-gradients",
        "error" if ratio > T.GRAD_EXPLODE_ERROR else "warning",
        [layer.name for layer, g in layers if g > T.GRAD_EXPLODE_WARN * layers[-1][1]],
        {"grad_std": {layer.name: _sig(g) for layer, g in layers}, "ratio": _sig(ratio),
         "threshold": T.GRAD_EXPLODE_WARN},
        "use smaller initial weights (" + _INIT_FIX + "); clip the gradient norm (train.grad_clip=1.0)",
        f"dL/dz grows {ratio:.3g}x from {layers[-1][0].name} back to {layers[0][0].name} "
        f"(threshold {T.GRAD_EXPLODE_WARN:g}x).",
    )]


# ----------------------------------------------------------------------------- input


@rule("unnormalized-input")
def unnormalized_input(ctx: Context) -> list[Finding]:
    """Input features far from zero mean / unit variance, as the first layer sees them (LeCun et al. 1998)."""
    x = ctx.input
    if x is None or not all(_finite(v) for v in (x.mean, x.std, x.feature_mean_abs_max, x.feature_std_max)):
        return []
    evidence = {"mean": _sig(x.mean), "std": _sig(x.std), "feature_mean_abs_max": _sig(x.feature_mean_abs_max),
                "feature_std_min": _sig(x.feature_std_min), "feature_std_max": _sig(x.feature_std_max),
                "features": x.features}
    fix = ("standardise the inputs with statistics of the training split (data.preprocess=standardize; "
           "PyTorch: (x - mean) / std per feature or channel)")
    problems = []
    if x.feature_mean_abs_max > T.INPUT_MEAN_MAX:
        problems.append(f"a feature's mean is {x.feature_mean_abs_max:.3g} (limit {T.INPUT_MEAN_MAX:g})")
    if x.feature_std_max > T.INPUT_STD_MAX:
        problems.append(f"a feature's std is {x.feature_std_max:.3g} (limit {T.INPUT_STD_MAX:g})")
    if x.std < T.INPUT_STD_MIN:
        problems.append(f"the input std is {x.std:.3g} (limit {T.INPUT_STD_MIN:g})")
    if problems:
        return [Finding("unnormalized-input", "warning", [], evidence, fix,
                        "the network's input is not standardised: " + "; ".join(problems) + ".")]
    if abs(x.mean) > T.INPUT_CENTRED_MAX * x.std:
        return [Finding("unnormalized-input", "info", [], evidence, fix,
                        f"the input is not zero-centred (mean {x.mean:.3g}, std {x.std:.3g}); centring it "
                        "speeds up the first layer's learning.")]
    return []


# ----------------------------------------------------------------------------- updates


@rule("update-ratio-high")
def update_ratio_high(ctx: Context) -> list[Finding]:
    """Median ||dW||/||W|| per step > 5e-2, 50x the ~1e-3 rule of thumb (Karpathy, CS231n)."""
    layers = _update_ratios(ctx)
    median = _median_ratio(ctx)
    if median is None or not median > T.UPDATE_RATIO_HIGH:
        return []
    return [Finding(
        "update-ratio-high",
        "error" if median > T.UPDATE_RATIO_HIGH_ERROR else "warning",
        [layer.name for layer, r in layers if r > T.UPDATE_RATIO_HIGH],
        {"update_ratio": {layer.name: _sig(r) for layer, r in layers}, "median": _sig(median),
         "threshold": T.UPDATE_RATIO_HIGH, "rule_of_thumb": T.UPDATE_RATIO_TARGET},
        "lower optim.lr (try 3-10x lower, or trainwell lr-find); add warmup (sched.warmup_epochs=1)",
        f"the median step changes the weights by {100 * median:.3g}% of their norm (rule of thumb ~0.1%, "
        f"threshold {100 * T.UPDATE_RATIO_HIGH:g}%).",
    )]


@rule("update-ratio-low")
def update_ratio_low(ctx: Context) -> list[Finding]:
    """Median ||dW||/||W|| per step < 1e-4, 10x below the ~1e-3 rule of thumb (Karpathy, CS231n)."""
    layers = _update_ratios(ctx)
    median = _median_ratio(ctx)
    if median is None or not median < T.UPDATE_RATIO_LOW or ctx.lr_decayed():
        return []
    return [Finding(
        "update-ratio-low", "warning",
        [layer.name for layer, r in layers if r < T.UPDATE_RATIO_LOW],
        {"update_ratio": {layer.name: _sig(r) for layer, r in layers}, "median": _sig(median),
         "threshold": T.UPDATE_RATIO_LOW, "rule_of_thumb": T.UPDATE_RATIO_TARGET},
        "raise optim.lr (try 10x higher, or trainwell lr-find)",
        f"the median step changes the weights by {median:.2g} of their norm (rule of thumb ~1e-3, "
        f"threshold {T.UPDATE_RATIO_LOW:g}): training will crawl.",
    )]


# ----------------------------------------------------------------------------- history


@rule("divergence")
def divergence(ctx: Context) -> list[Finding]:
    """The loss, an activation or a gradient became NaN/inf."""
    evidence: dict[str, Any] = {}
    layers: list[str] = []
    if ctx.loss is not None and not math.isfinite(ctx.loss):
        evidence["loss"] = str(ctx.loss)
    train = _series(ctx.history, "train_loss")
    bad_epochs = [r.get("epoch", i + 1) for i, (r, v) in enumerate(zip(ctx.history, train)) if not math.isfinite(v)]
    if bad_epochs:
        evidence["nonfinite_train_loss_epoch"] = bad_epochs[0]
    layers = [layer.name for layer in ctx.layers if layer.nonfinite]
    if layers:
        evidence["nonfinite_layers"] = layers
    if ctx.input is not None and ctx.input.nonfinite:
        evidence["input_nonfinite"] = True
    if not evidence:
        return []
    if evidence.get("input_nonfinite"):
        fix = "the input holds NaN/inf: clean the data (the doctor saw them before the first layer)"
    else:
        fix = ("lower optim.lr (10x, or trainwell lr-find), add warmup (sched.warmup_epochs=1) and gradient "
               "clipping (train.grad_clip=1.0); check for log(0) or division by zero in a custom loss")
    where = f" at epoch {bad_epochs[0]}" if bad_epochs else ""
    sources = {"loss": "the loss", "nonfinite_train_loss_epoch": "the training loss",
               "nonfinite_layers": "the outputs of " + ", ".join(layers), "input_nonfinite": "the input"}
    return [Finding("divergence", "error", layers, evidence, fix,
                    f"training diverged{where}: non-finite values in " + ", ".join(sources[k] for k in evidence) + ".")]


@rule("overfitting")
def overfitting(ctx: Context) -> list[Finding]:
    """Val loss > 10% above its minimum, reached 3+ epochs earlier, while train loss falls (Prechelt 1998, GL criterion)."""
    train, val = _series(ctx.history, "train_loss"), _series(ctx.history, "val_loss")
    if len(val) < T.OVERFIT_PATIENCE + 2 or len(train) != len(val) or not all(map(math.isfinite, train + val)):
        return []
    best = min(range(len(val)), key=val.__getitem__)
    gl = val[-1] / val[best] - 1.0 if val[best] > 0 else 0.0
    rising = len(val) - 1 - best
    gap_best, gap_last = val[best] - train[best], val[-1] - train[-1]
    if not (gl > T.OVERFIT_GL and rising >= T.OVERFIT_PATIENCE and train[-1] < train[best] and gap_last > gap_best):
        return []
    epoch = ctx.history[best].get("epoch", best + 1)
    return [Finding(
        "overfitting", "warning", [],
        {"best_epoch": epoch, "val_loss_min": _sig(val[best]), "val_loss_last": _sig(val[-1]),
         "generalisation_loss": _sig(gl), "gap_at_best": _sig(gap_best), "gap_last": _sig(gap_last),
         "threshold": T.OVERFIT_GL},
        f"stop near epoch {epoch} (train.epochs={epoch}) or regularise: optim.weight_decay, model.dropout=0.3, "
        "augment, mix.mixup_alpha=0.2; more data helps most",
        f"val loss rose {100 * gl:.0f}% above its minimum (epoch {epoch}) over {rising} epochs while train loss "
        f"fell; the train-val gap grew from {gap_best:.3g} to {gap_last:.3g}.",
    )]


@rule("lr-too-high")
def lr_too_high(ctx: Context) -> list[Finding]:
    """Loss diverges, is worse than chance after an epoch, rises early or oscillates, or big updates do not lower it."""
    train = _series(ctx.history, "train_loss")
    median = _median_ratio(ctx)
    evidence: dict[str, Any] = {"train_loss": [_sig(v) for v in train[:10]]}
    if median is not None:
        evidence["median_update_ratio"] = _sig(median)
    reasons = []
    severity = "warning"
    finite = [v for v in train if math.isfinite(v)]
    k = ctx.num_classes
    chance = math.log(k) if k and k >= 2 else None
    if len(finite) < len(train):
        reasons.append("the loss became non-finite")
        severity = "error"
    elif chance is not None and max(finite, default=0.0) > T.LOSS_CHANCE * chance:
        worst = max(range(len(train)), key=train.__getitem__)
        evidence["chance_loss"] = _sig(chance)
        reasons.append(f"the mean train loss of epoch {worst + 1} ({train[worst]:.3g}) is worse than guessing "
                       f"(ln {k} = {chance:.3g})")
    elif len(train) >= 2 and max(train[1:4]) > train[0] * (1 + T.LOSS_RISE_TOL):
        reasons.append("the train loss rose after the first epoch")
    elif len(train) >= 4:
        steps = [b - a for a, b in zip(train[:10], train[1:10])]
        ups = sum(d > 0 for d in steps)
        if ups / len(steps) >= T.LOSS_OSCILLATION:
            reasons.append(f"the train loss rose in {ups} of {len(steps)} epochs (oscillation)")
    if (not reasons and median is not None and median > T.UPDATE_RATIO_HIGH and len(train) >= 2
            and train[-1] > train[0] * (1 - T.LOSS_FLAT_REL)):
        reasons.append(f"updates are {median:.2g} of the weights per step while the loss does not fall")
    if not reasons:
        return []
    return [Finding(
        "lr-too-high", severity, [], evidence,
        "lower optim.lr 3-10x (trainwell lr-find suggests one); add warmup (sched.warmup_epochs=1) and "
        "train.grad_clip=1.0",
        "the learning rate is too high: " + "; ".join(reasons) + ".",
    )]


@rule("lr-too-low")
def lr_too_low(ctx: Context) -> list[Finding]:
    """Updates < 1e-4 of the weights per step and the train loss flat (fell < 5%)."""
    train = [v for v in _series(ctx.history, "train_loss") if math.isfinite(v)]
    median = _median_ratio(ctx)
    if median is None or not median < T.UPDATE_RATIO_LOW or len(train) < 2 or not train[0] > 0 or ctx.lr_decayed():
        return []
    drop = (train[0] - train[-1]) / train[0]
    if drop >= T.LOSS_FLAT_REL:
        return []
    return [Finding(
        "lr-too-low", "warning", [],
        {"median_update_ratio": _sig(median), "train_loss": [_sig(v) for v in train[:10]],
         "relative_drop": _sig(drop), "threshold": T.LOSS_FLAT_REL},
        "raise optim.lr 10x (trainwell lr-find suggests one)",
        f"updates are {median:.2g} of the weights per step and the train loss fell only {100 * drop:.1f}% "
        f"over {len(train)} epochs.",
    )]
