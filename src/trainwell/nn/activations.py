"""Nonlinearities, with the facts initialisation and diagnostics need about each.

Every entry of :data:`ACTIVATIONS` is a factory ``(**kwargs) -> nn.Module`` with metadata
(:class:`ActivationMeta`):

``gain``
    ``(**kwargs) -> float``: the init gain ``g`` such that ``std = g / sqrt(fan_in)`` (Kaiming) keeps
    the forward variance; equal to ``torch.nn.init.calculate_gain`` wherever PyTorch defines one.
``saturates``
    Where the derivative tends to 0 as ``|x|`` grows ("" = nowhere), i.e. where gradients vanish;
    "hard" when it is exactly 0 from some point on (Gulcehre et al. 2016, Noisy Activation Functions).
``zero_centred``
    Whether the output has mean ~0 for zero-mean, unit-variance input.
``formula``
    The function, in one line.
``family``
    "sigmoid" (bounded, squashing), "relu" (rectifier-like: identity for large x) or "identity".
``can_die``
    Whether a unit can get a derivative of exactly 0 for every input and so stop learning (a "dead"
    unit). Only ReLU, hard-saturating on the whole of x < 0. The others have a non-zero derivative
    everywhere (leaky_relu, elu, selu, gelu, silu keep a small one on the negative side).

Config values take arguments in the config's value grammar (docs/values.md): ``leaky_relu`` or
``leaky_relu:0.2`` (the slope), ``elu:0.5`` or ``elu:alpha=0.5``. The config layer reads them into a
:class:`~trainwell.config.Spec`; :func:`parse_activation` checks one against the factory's parameters,
and :func:`build_activation` and :func:`activation_gain` take the same specs or their text.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn
from torch.nn.init import calculate_gain

from trainwell.config import Spec, to_spec
from trainwell.errors import ConfigError
from trainwell.registry import new_registry


@dataclass(frozen=True)
class ActivationMeta:
    """What every activation promises (the module docstring says what each field means)."""

    family: Literal["sigmoid", "relu", "identity"]
    can_die: bool
    gain: Callable[..., float]  # (**the factory's kwargs) -> init gain
    formula: str  # "f(x) = ..."
    zero_centred: bool
    saturates: str  # "" = nowhere
    advantages: str
    drawbacks: str
    typical_use: str


ACTIVATIONS = new_registry(
    "activation", ActivationMeta, "Nonlinearities; arguments as name:value, e.g. leaky_relu:0.2."
)

_RELU_GAIN = calculate_gain("relu")


def _relu_gain_approx(**_: Any) -> float:
    # PyTorch defines no gain for these; sqrt(2) is the usual stand-in.
    return _RELU_GAIN


#: Allowed range of each activation argument: name -> (test, what the test asks for).
_ARG_CHECKS: dict[str, tuple[Callable[[float], bool], str]] = {
    "slope": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "alpha": (lambda v: v > 0.0, "> 0"),
}


@ACTIVATIONS.register(
    "identity",
    advantages="keeps the network linear; the head's 'activation'",
    drawbacks="a stack of linear layers is one linear map",
    typical_use="output layers, deep-linear-network demonstrations",
    gain=lambda: calculate_gain("linear"),
    saturates="",
    zero_centred=True,
    formula="f(x) = x",
    family="identity",
    can_die=False,
)
def identity() -> nn.Module:
    """f(x) = x: no nonlinearity (deep linear networks, Saxe et al. 2014); what a model's head 'follows'."""
    return nn.Identity()


@ACTIVATIONS.register(
    "sigmoid",
    advantages="squashes to (0, 1); reads as a firing rate or probability",
    drawbacks="saturated units kill gradients; outputs not zero-centred (zig-zag updates); exp is costly",
    typical_use="binary outputs and gates (LSTM), not hidden layers",
    gain=lambda: calculate_gain("sigmoid"),
    saturates="both tails (x -> -inf and x -> +inf)",
    zero_centred=False,
    formula="f(x) = 1 / (1 + exp(-x))",
    family="sigmoid",
    can_die=False,
)
def sigmoid() -> nn.Module:
    """Logistic sigmoid 1/(1+e^-x); saturates and is not zero-centred (LeCun et al. 1998, Efficient BackProp)."""
    return nn.Sigmoid()


@ACTIVATIONS.register(
    "tanh",
    advantages="zero-centred, squashes to (-1, 1)",
    drawbacks="still saturates: gradients vanish in both tails",
    typical_use="recurrent nets; hidden layers when bounded outputs matter",
    gain=lambda: calculate_gain("tanh"),
    saturates="both tails (x -> -inf and x -> +inf)",
    zero_centred=True,
    formula="f(x) = tanh(x) = (e^x - e^-x) / (e^x + e^-x)",
    family="sigmoid",
    can_die=False,
)
def tanh() -> nn.Module:
    """Hyperbolic tangent; zero-centred but saturating (LeCun et al. 1998, Efficient BackProp)."""
    return nn.Tanh()


@ACTIVATIONS.register(
    "relu",
    advantages="no saturation for x > 0; cheap; converges ~6x faster than sigmoid/tanh (Krizhevsky et al. 2012)",
    drawbacks="not zero-centred; units with x < 0 on every input die and never recover",
    typical_use="the default for hidden layers of CNNs and MLPs",
    gain=lambda: calculate_gain("relu"),
    saturates="negative side, hard (f' = 0 for every x < 0)",
    zero_centred=False,
    formula="f(x) = max(0, x)",
    family="relu",
    can_die=True,
)
def relu() -> nn.Module:
    """max(0, x); derivative exactly 0 for x < 0, so units can die (Nair & Hinton 2010)."""
    return nn.ReLU()


@ACTIVATIONS.register(
    "leaky_relu",
    advantages="never saturates, never dies (gradient slope for x < 0)",
    drawbacks="the slope is one more hyperparameter; results vary",
    typical_use="when dead ReLUs are a problem",
    gain=lambda slope: calculate_gain("leaky_relu", slope),
    saturates="",
    zero_centred=False,
    formula="f(x) = x if x > 0 else slope * x",
    family="relu",
    can_die=False,
)
def leaky_relu(slope: float = 0.01) -> nn.Module:
    """max(x, slope*x); gain sqrt(2/(1+slope^2)) (Maas et al. 2013, Rectifier Nonlinearities)."""
    return nn.LeakyReLU(slope)


@ACTIVATIONS.register(
    "elu",
    advantages="all ReLU benefits; mean outputs closer to zero; robust to noise in the negative regime",
    drawbacks="needs exp",
    typical_use="deep nets without normalisation",
    gain=_relu_gain_approx,
    saturates="negative tail (x -> -inf, f -> -alpha)",
    zero_centred=False,
    formula="f(x) = x if x > 0 else alpha * (exp(x) - 1)",
    family="relu",
    can_die=False,
)
def elu(alpha: float = 1.0) -> nn.Module:
    """x for x > 0, alpha*(e^x - 1) otherwise (Clevert et al. 2016); gain: relu's sqrt(2), an approximation."""
    return nn.ELU(alpha)


@ACTIVATIONS.register(
    "selu",
    advantages="self-normalising: activations keep mean 0, variance 1 through depth",
    drawbacks="needs lecun_normal init, alpha dropout and no batch norm to hold",
    typical_use="deep fully connected nets (SNNs)",
    gain=lambda: calculate_gain("selu"),
    saturates="negative tail (x -> -inf, f -> -scale * alpha)",
    zero_centred=True,
    formula="f(x) = scale * (x if x > 0 else alpha * (exp(x) - 1)), scale ~ 1.0507, alpha ~ 1.6733",
    family="relu",
    can_die=False,
)
def selu() -> nn.Module:
    """Scaled ELU, self-normalising with init.scheme=lecun_normal (Klambauer et al. 2017)."""
    return nn.SELU()


@ACTIVATIONS.register(
    "gelu",
    advantages="smooth, non-monotonic ReLU; strong in practice",
    drawbacks="more costly than ReLU",
    typical_use="transformers, modern CNNs",
    gain=_relu_gain_approx,
    saturates="negative tail (x -> -inf, f -> 0)",
    zero_centred=False,
    formula="f(x) = x * Phi(x), Phi the standard normal CDF",
    family="relu",
    can_die=False,
)
def gelu() -> nn.Module:
    """x * Phi(x) (Hendrycks & Gimpel 2016); gain: relu's sqrt(2), an approximation."""
    return nn.GELU()


@ACTIVATIONS.register(
    "silu",
    advantages="smooth, non-monotonic, self-gated",
    drawbacks="more costly than ReLU",
    typical_use="EfficientNet-style CNNs, modern MLPs",
    gain=_relu_gain_approx,
    saturates="negative tail (x -> -inf, f -> 0)",
    zero_centred=False,
    formula="f(x) = x * sigmoid(x)",
    family="relu",
    can_die=False,
)
def silu() -> nn.Module:
    """x * sigmoid(x), a.k.a. swish (Elfwing et al. 2018; Ramachandran et al. 2017); gain: relu's, approximate."""
    return nn.SiLU()


# Why the relu gain is only an approximation for elu, gelu and silu: Kaiming's derivation makes
# Var(next pre-activation) = fan_in * Var(w) * E[f(z)^2], so the exact gain for z ~ N(0, 1) is
# 1 / sqrt(E[f(z)^2]). For relu that is sqrt(2) exactly; for gelu it is ~1.53, silu ~1.68, elu ~1.25,
# against sqrt(2) ~ 1.41 (within 8%, 16% and 14%), and it depends on Var(z) for these curves anyway.


def _params(name: str) -> list[inspect.Parameter]:
    return list(inspect.signature(ACTIVATIONS.get(name)).parameters.values())


def parse_activation(spec: str | Spec) -> tuple[str, dict[str, float]]:
    """``"leaky_relu:0.2"`` -> ``("leaky_relu", {"slope": 0.2})``; omitted arguments get their defaults.

    ``spec`` is a :class:`~trainwell.config.Spec` (what ``cfg.model.activation`` holds) or its text,
    read by the config's value grammar: ``name``, ``name:value[:value...]`` (values fill the factory's
    parameters in order) or ``name:param=value``. Unknown names and bad values raise a ConfigError
    saying how to fix them.
    """
    if not isinstance(spec, (str, Spec)):
        raise ConfigError(f"activation must be a string such as 'relu' or 'leaky_relu:0.2', got {spec!r}.")
    call = to_spec(spec, "model.activation")
    name = call.name
    ACTIVATIONS.entry(name)  # raises "unknown activation ... Valid: ..." for bad names
    params = _params(name)
    takes = ", ".join(p.name for p in params) or "no arguments"
    example = f"'{name}:{params[0].default}'" if params else f"'{name}'"
    if len(call.args) > len(params):
        raise ConfigError(f"activation '{call}': {name} takes {takes}; write e.g. {example}.")
    given = dict(zip((p.name for p in params), call.args))
    for key, value in call.kwargs:
        if key not in {p.name for p in params} or key in given:
            raise ConfigError(f"activation '{call}': {name} takes {takes}, each once; write e.g. {example}.")
        given[key] = value
    kwargs: dict[str, float] = {p.name: float(p.default) for p in params}
    for param in params:
        if param.name not in given:
            continue
        value = given[param.name]
        check, wanted = _ARG_CHECKS.get(param.name, (lambda v: True, "a number"))
        if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
                or not check(value)):
            raise ConfigError(
                f"activation '{call}': {param.name} must be a number {wanted}, got {value!r}; "
                f"e.g. '{name}:{param.default}'."
            )
        kwargs[param.name] = float(value)
    return name, kwargs


def build_activation(spec: str | Spec) -> nn.Module:
    """A fresh activation module from a config string such as ``"relu"`` or ``"elu:0.5"``."""
    name, kwargs = parse_activation(spec)
    return ACTIVATIONS.build(name, **kwargs)


def activation_gain(spec: str | Spec) -> float:
    """The init gain for weights whose outputs feed the activation ``spec`` (the one place gains come from).

    Matches ``torch.nn.init.calculate_gain`` (e.g. ``leaky_relu:0.2`` -> sqrt(2 / (1 + 0.2^2)));
    elu, gelu and silu, which PyTorch leaves out, use relu's sqrt(2) as an approximation.
    """
    name, kwargs = parse_activation(spec)
    return float(ACTIVATIONS.entry(name).meta.gain(**kwargs))
