"""``trainwell doctor --fix``: turn findings into a corrected config, then check it again.

Each finding maps to the change a senior engineer would try first (the lecture's remedies):
standardise raw input, match the initialisation to the activation, add batch norm when the scale
still drifts with depth, replace saturating or dying units, move the learning rate by 10x, add
dropout when the model overfits.
"""

from __future__ import annotations

from typing import Any

from trainwell.config import Config, Spec
from trainwell.diagnose.report import Report
from trainwell.nn.activations import ACTIVATIONS, parse_activation
from trainwell.nn.init import INITS

SCALE_CODES = {"vanishing-activations", "exploding-activations", "vanishing-gradients", "exploding-gradients"}
LR_HIGH_CODES = {"update-ratio-high", "lr-too-high", "divergence"}
LR_LOW_CODES = {"update-ratio-low", "lr-too-low"}
#: Schemes that ignore the activation's gain: the lecture's counter-examples.
GAINLESS_SCHEMES = {"default", "normal", "uniform"}


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


def propose_fix(cfg: Config, report: Report) -> dict[str, Any]:
    """Dotted config changes that address the report's warnings and errors ({} when none apply)."""
    codes = set(report.codes("warning"))
    changes: dict[str, Any] = {}
    activation: str | Spec = cfg.model.activation
    name = parse_activation(activation)[0]
    if "unnormalized-input" in codes and cfg.data.preprocess == "none":
        changes["data.preprocess"] = "standardize"
    if "saturation" in codes and name in ("sigmoid", "tanh"):
        activation = changes["model.activation"] = "relu"
    if "dead-units" in codes and name == "relu":
        activation = changes["model.activation"] = "leaky_relu:0.1"
    if codes & SCALE_CODES or "saturation" in codes:
        if cfg.init.scheme in GAINLESS_SCHEMES or "model.activation" in changes \
                or gain_one_on_a_rectifier(cfg, activation):
            changes["init.scheme"] = matched_init(activation)
        elif cfg.model.norm == "none":
            changes["model.norm"] = "batch"
    lr = cfg.optim.lr if isinstance(cfg.optim.lr, float) else None
    if lr is not None and codes & LR_HIGH_CODES:
        changes["optim.lr"] = lr / 10
    elif lr is not None and codes & LR_LOW_CODES and not codes & SCALE_CODES:
        # Tiny updates from vanishing gradients are the init's fault, not the LR's: fix the cause.
        changes["optim.lr"] = lr * 10
    if "overfitting" in codes and cfg.model.dropout < 0.3:
        changes["model.dropout"] = 0.3
    return changes


def as_overrides(changes: dict[str, Any]) -> list[str]:
    return [f"{key}={value}" for key, value in changes.items()]
