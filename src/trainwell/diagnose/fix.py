"""``trainwell doctor --fix``: turn findings into a corrected config, check it again, and repeat.

:func:`plan_fix` maps a report to config changes, each aimed at the cause its finding's evidence points
to and carrying that reason: raw input -> standardise it; units dead because the hidden biases push their
pre-activations below 0 -> start the biases at 0; saturating sigmoids -> a ReLU; a signal that
vanishes or explodes with depth -> the initialisation matched to the activation, or batch norm when the
init already matches; a too-high or too-low update ratio -> the lr that brings the *measured* ratio to
:data:`~trainwell.diagnose.thresholds.FIX_UPDATE_RATIO` (the ratio scales linearly with the lr); an
overfitting history -> dropout.

The lr is judged through the update ratio, which the other changes move (a dead net has no gradient,
so its updates look tiny), so a round that changes the input, the init or the activation leaves the lr
to the next round, which measures it again. :func:`fix_loop` runs fix -> diagnose rounds until the
check has no warning or error, at most ``max_rounds`` times, and says why it stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trainwell.config import Config, Spec, flatten, resolve
from trainwell.diagnose import thresholds as T
from trainwell.diagnose.report import Finding, Report
from trainwell.nn.activations import ACTIVATIONS, parse_activation
from trainwell.nn.init import INITS

SCALE_CODES = ("vanishing-activations", "exploding-activations", "vanishing-gradients", "exploding-gradients")
LR_HIGH_CODES = ("update-ratio-high", "lr-too-high", "divergence")
LR_LOW_CODES = ("update-ratio-low", "lr-too-low")
#: Schemes that ignore the activation's gain: the lecture's counter-examples.
GAINLESS_SCHEMES = {"default", "normal", "uniform"}
#: ReLUs that output exactly 0 for every negative input, so a unit pushed there gets no gradient back.
DYING_ACTIVATIONS = {"relu", "relu6"}
#: What replaces a dying ReLU when nothing in the evidence explains the deaths: its negative side has slope 0.1.
UNDYING_ACTIVATION = "leaky_relu:0.1"
#: The dropout an overfitting net gets (Srivastava et al. 2014 use 0.5 on wide layers; 0.3 on small nets).
FIX_DROPOUT = 0.3


@dataclass(frozen=True)
class Change:
    """One config change: the dotted ``key``, its new ``value``, the finding ``code`` it answers and why."""

    key: str
    value: Any
    code: str
    reason: str

    @property
    def override(self) -> str:
        return f"{self.key}={self.value}"


def matched_init(activation: str | Spec) -> str:
    """The initialisation that preserves variance for ``activation`` (He et al. 2015; Glorot & Bengio 2010)."""
    name = parse_activation(activation)[0]
    if name == "selu":
        return "lecun_normal"
    return "kaiming_normal" if ACTIVATIONS.entry(name).meta.family == "relu" else "xavier_normal"


def gain_one_on_a_rectifier(cfg: Config, activation: str | Spec) -> bool:
    """Whether ``cfg.init`` gives a ReLU-family net the papers' gain 1 of xavier_*/orthogonal
    (init.gain=default): each layer then halves the signal's second moment (He et al. 2015)."""
    meta = INITS.entry(cfg.init.scheme).meta
    family = ACTIVATIONS.entry(parse_activation(activation)[0]).meta.family
    return meta.uses_gain and not meta.activation_gain_by_default and cfg.init.gain == "default" and family == "relu"


def flagged(report: Report) -> dict[str, Finding]:
    """The report's warnings and errors by code (the worst of each: the report lists them worst first)."""
    found: dict[str, Finding] = {}
    for f in report.findings:
        if f.severity != "info":
            found.setdefault(f.code, f)
    return found


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# ----------------------------------------------------------------------------- the fixes, one per cause


def input_fix(cfg: Config, found: dict[str, Finding]) -> list[Change]:
    """Raw input -> standardise it with the training split's statistics (LeCun et al. 1998)."""
    f = found.get("unnormalized-input")
    if f is None or cfg.data.preprocess != "none":
        return []
    return [Change("data.preprocess", "standardize", f.code,
                   f"{f.message.rstrip('.')}: the first layer's init assumes inputs of mean 0 and std 1")]


def _preactivations(f: Finding) -> list[tuple[str, float, float]]:
    """(layer, mean, std) of the pre-activations the finding's layers take, from its evidence."""
    rows = f.evidence.get("preactivation") or {}
    out = []
    for row in rows.values() if isinstance(rows, dict) else []:
        mean, std = _number(row.get("mean")), _number(row.get("std"))
        if mean is not None and std is not None:
            out.append((str(row.get("layer")), mean, std))
    return out


def dead_units_fix(cfg: Config, found: dict[str, Finding]) -> list[Change]:
    """Dead ReLUs: negative biases that hold every pre-activation below 0 -> biases 0; a too-large lr ->
    nothing here (the lr fix is the cause's); no cause in the evidence -> an activation that cannot die."""
    f = found.get("dead-units")
    if f is None:
        return []
    pre = _preactivations(f)
    if cfg.init.bias < 0 and pre and all(mean < 0 for _, mean, _ in pre):
        where = ", ".join(f"mean {mean:.3g} (std {std:.3g}) at {layer}" for layer, mean, std in pre)
        return [Change("init.bias", 0.0, f.code,
                       f"{f.message.rstrip('.')}; the pre-activations they take have {where}: the hidden biases "
                       f"start at init.bias={cfg.init.bias:g} and hold them below 0, where a ReLU passes no "
                       "gradient, so start them at 0")]
    if any(code in found for code in LR_HIGH_CODES):
        return []
    if parse_activation(cfg.model.activation)[0] not in DYING_ACTIVATIONS:
        return []
    return [Change("model.activation", UNDYING_ACTIVATION, f.code,
                   f"{f.message.rstrip('.')}; neither the biases (init.bias={cfg.init.bias:g}) nor the update ratio "
                   f"explain it, so use an activation whose negative side still passes a gradient")]


def saturation_fix(cfg: Config, found: dict[str, Finding]) -> list[Change]:
    """Saturated sigmoids -> a ReLU (sigmoid has no place in hidden layers); saturated tanh keeps tanh and
    gets its scale fixed by :func:`scale_fix`."""
    f = found.get("saturation")
    if f is None or parse_activation(cfg.model.activation)[0] != "sigmoid":
        return []
    pre = _preactivations(f)
    scale = f" (pre-activation std up to {max(std for _, _, std in pre):.3g})" if pre else ""
    return [Change("model.activation", "relu", f.code,
                   f"{f.message.rstrip('.')}{scale}; a sigmoid passes back at most a quarter of the gradient even "
                   "unsaturated and its outputs are not centred: use a ReLU in hidden layers")]


def _scale_evidence(found: dict[str, Finding]) -> Finding | None:
    """The finding that shows the signal's scale is wrong: the first scale code flagged, or saturation."""
    return next((found[code] for code in (*SCALE_CODES, "saturation") if code in found), None)


def scale_fix(cfg: Config, found: dict[str, Finding], activation: str | Spec, activation_changed: bool) -> list[Change]:
    """A signal whose scale vanishes, explodes or saturates with depth -> the init matched to ``activation``
    when the current one ignores its gain (or the activation changes); else batch norm."""
    f = _scale_evidence(found)
    if f is None:
        return []
    name = parse_activation(activation)[0]
    if cfg.init.scheme in GAINLESS_SCHEMES or activation_changed or gain_one_on_a_rectifier(cfg, activation):
        scheme = matched_init(activation)
        why = (f"the activation becomes {name}" if activation_changed
               else f"init.scheme={cfg.init.scheme} does not scale the weights by {name}'s gain and the fan-in")
        return [Change("init.scheme", scheme, f.code,
                       f"{f.message.rstrip('.')}; {why}: {scheme} keeps the signal's variance through depth")]
    if cfg.model.norm == "none":
        return [Change("model.norm", "batch", f.code,
                       f"{f.message.rstrip('.')} although init.scheme={cfg.init.scheme} matches {name}: batch norm "
                       "resets each layer's scale")]
    return []


def _median_update_ratio(f: Finding) -> float | None:
    """The median update ratio a finding measured (update-ratio-*: ``median``; lr-too-*: ``median_update_ratio``)."""
    value = _number(f.evidence.get("median", f.evidence.get("median_update_ratio")))
    return value if value is not None and value > 0 else None


def lr_scale(median: float) -> float:
    """The factor on the lr that moves the measured median update ratio to FIX_UPDATE_RATIO (linear in the lr)."""
    return T.FIX_UPDATE_RATIO / median


def _scaled_lr(lr: float, f: Finding, median: float) -> Change:
    factor = lr_scale(median)
    side = "above" if median > T.FIX_UPDATE_RATIO else "below"
    bound = T.UPDATE_RATIO_HIGH if side == "above" else T.UPDATE_RATIO_LOW
    return Change("optim.lr", float(f"{lr * factor:.3g}"), f.code,
                  f"the median update ratio is {median:.3g} (the warning is {side} {bound:g}); the ratio scales with "
                  f"the lr, so lr x {factor:.3g} aims at {T.FIX_UPDATE_RATIO:g}, {T.FIX_LR_MARGIN:g}x inside "
                  f"the {T.UPDATE_RATIO_HIGH:g} warning")


def _diverged_in_training(f: Finding) -> bool:
    """A divergence the lr can cause: a loss that became non-finite during training (not at init, not the input)."""
    return "nonfinite_train_loss_epoch" in f.evidence and not f.evidence.get("input_nonfinite")


def lr_fix(cfg: Config, found: dict[str, Finding]) -> list[Change]:
    """Updates too large -> the lr that brings the measured median update ratio to FIX_UPDATE_RATIO (a fixed
    FIX_LR_STEP lower when none was measured above the band); too small -> raised the same way, unless the
    signal's scale explains the tiny updates (vanishing gradients: the init's fault) or no update was measured."""
    lr = _number(cfg.optim.lr)
    if lr is None:
        return []
    high = [found[c] for c in LR_HIGH_CODES if c in found and (c != "divergence" or _diverged_in_training(found[c]))]
    if high:
        measured = [(f, m) for f in high if (m := _median_update_ratio(f)) is not None and m > T.UPDATE_RATIO_HIGH]
        if measured:
            return [_scaled_lr(lr, *measured[0])]
        f = high[0]
        return [Change("optim.lr", float(f"{lr / T.FIX_LR_STEP:.3g}"), f.code,
                       f"{f.message.rstrip('.')}; no update ratio above the band was measured to scale from, so "
                       f"{T.FIX_LR_STEP:g}x lower")]
    low = [found[c] for c in LR_LOW_CODES if c in found]
    if not low or any(code in found for code in SCALE_CODES):
        return []
    measured = [(f, m) for f in low if (m := _median_update_ratio(f)) is not None and m < T.UPDATE_RATIO_LOW]
    if measured:
        return [_scaled_lr(lr, *measured[0])]
    f = low[0]
    if _number(f.evidence.get("median", f.evidence.get("median_update_ratio"))) == 0:
        return []  # no weight moved at all: no gradient reaches them, which no lr fixes
    return [Change("optim.lr", float(f"{lr * T.FIX_LR_STEP:.3g}"), f.code,
                   f"{f.message.rstrip('.')}; no update ratio was measured to scale from, "
                   f"so {T.FIX_LR_STEP:g}x higher")]


def overfitting_fix(cfg: Config, found: dict[str, Finding]) -> list[Change]:
    """Val loss rising while train loss falls -> dropout (when the model has less)."""
    f = found.get("overfitting")
    if f is None or cfg.model.dropout >= FIX_DROPOUT:
        return []
    return [Change("model.dropout", FIX_DROPOUT, f.code,
                   f"{f.message.rstrip('.')}: dropout regularises the hidden layers")]


def plan_fix(cfg: Config, report: Report) -> list[Change]:
    """The changes that address the report's warnings and errors, each with its reason ([] when none apply)."""
    found = flagged(report)
    changes = input_fix(cfg, found) + dead_units_fix(cfg, found) + saturation_fix(cfg, found)
    new_activation = next((c.value for c in changes if c.key == "model.activation"), None)
    activation = cfg.model.activation if new_activation is None else new_activation
    changes += scale_fix(cfg, found, activation, new_activation is not None)
    if not changes:  # the update ratio is measured again once the changes above are in
        changes += lr_fix(cfg, found)
    return changes + overfitting_fix(cfg, found)


def propose_fix(cfg: Config, report: Report) -> dict[str, Any]:
    """Dotted config changes that address the report's warnings and errors ({} when none apply)."""
    return {c.key: c.value for c in plan_fix(cfg, report)}


def as_overrides(changes: dict[str, Any]) -> list[str]:
    return [f"{key}={value}" for key, value in changes.items()]


# ----------------------------------------------------------------------------- the rounds


@dataclass
class FixRound:
    """One round: ``config`` and its report ``before``, the changes made for its findings, and ``after``,
    the check of the changed config."""

    config: Config
    before: Report
    changes: list[Change]
    after: Report

    def old_value(self, key: str) -> Any:
        """The value of the dotted ``key`` before this round's changes."""
        return flatten(self.config.to_dict())[key]


def _rounds(n: int) -> str:
    return f"{n} round{'s' * (n != 1)}"


#: Why :func:`fix_loop` stopped: its check is clean, or it could not go on (and why).
STOP_REASONS = ("clean", "rounds", "no-change", "repeat")


@dataclass
class FixOutcome:
    """What :func:`fix_loop` did: the rounds, the final ``config`` and its ``report``, and why it stopped."""

    initial: Report
    config: Config
    report: Report
    rounds: list[FixRound] = field(default_factory=list)
    stopped: str = "clean"
    max_rounds: int = T.FIX_MAX_ROUNDS

    @property
    def clean(self) -> bool:
        return self.stopped == "clean"

    def changes(self) -> dict[str, Any]:
        """Every key changed over the rounds with its final value, in the order first changed."""
        merged: dict[str, Any] = {}
        for r in self.rounds:
            for c in r.changes:
                merged[c.key] = c.value
        return merged

    def line(self) -> str:
        """The verdict in one line: clean after how many rounds, or that it could not and what is left."""
        if self.clean:
            if not self.rounds:
                return "doctor --fix: nothing to fix: no warning or error."
            return (f"doctor --fix: clean after {_rounds(len(self.rounds))} (no warning or error): "
                    + " ".join(as_overrides(self.changes())))
        left = ", ".join(f"{f.code} ({f.severity})" for f in flagged(self.report).values())
        why = {"rounds": f"still flagged after {_rounds(self.max_rounds)}",
               "no-change": "no change addresses the remaining findings",
               "repeat": "the next change would return to a config already tried"}[self.stopped]
        return f"doctor --fix: could not clear the findings ({why}); left: {left}."


def fix_loop(cfg: Config, diagnose: Callable[[Config], Report], max_rounds: int = T.FIX_MAX_ROUNDS) -> FixOutcome:
    """Diagnose ``cfg``, fix, diagnose the fixed config, ... until the check has no warning or error, for at
    most ``max_rounds`` rounds; stops early when no change applies or a change would revisit a config."""
    if max_rounds < 1:
        raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
    report = diagnose(cfg)
    outcome = FixOutcome(report, cfg, report, max_rounds=max_rounds)
    tried = [cfg.to_dict()]
    while flagged(outcome.report):
        if len(outcome.rounds) == max_rounds:
            outcome.stopped = "rounds"
            break
        changes = plan_fix(outcome.config, outcome.report)
        if not changes:
            outcome.stopped = "no-change"
            break
        fixed = resolve([c.override for c in changes], base=outcome.config)
        if fixed.to_dict() in tried:
            outcome.stopped = "repeat"
            break
        tried.append(fixed.to_dict())
        after = diagnose(fixed)
        outcome.rounds.append(FixRound(outcome.config, outcome.report, changes, after))
        outcome.config, outcome.report = fixed, after
    return outcome
