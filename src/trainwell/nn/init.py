"""Weight initialisation schemes, and :func:`init_model`, which applies one to a whole network.

Every entry of :data:`INITS` is a factory ``(weight, gain, cfg, generator) -> None`` that fills
``weight`` in place, drawing from ``generator`` (a ``torch.Generator``; None = the global RNG).
Fans come from :func:`fans`, so a Linear layer and a Conv layer of any kernel are treated alike.
Metadata (:class:`InitMeta`): ``uses_gain`` (whether ``gain`` enters the formula),
``activation_gain_by_default``, ``formula`` and ``needs_batch`` (below).

The gain ``g`` (:func:`scheme_gain`) is chosen by ``init.gain``:

``default``
    each scheme's own, as its paper and ``torch.nn.init`` define it: 1 for Xavier (Glorot & Bengio
    2010, Var(w) = 2 / (fan_in + fan_out), ``xavier_normal_(w)``) and orthogonal (Saxe et al. 2014,
    ``orthogonal_(w)``); the rectifier's gain of the activation that *follows* the layer for Kaiming
    (He et al. 2015, ``kaiming_normal_(w, nonlinearity=...)``: sqrt(2) for ReLU), whose formula is
    activation-aware by definition (``activation_gain_by_default``).
``auto``
    the following activation's gain (:func:`layer_gain`, ``torch.nn.init.calculate_gain``) for every
    gain-using scheme: Xavier then becomes Kaiming on square layers.
a positive number
    that gain for every gain-using scheme (1 with Kaiming is LeCun's 1/sqrt(fan_in)).

Extension point for data-dependent schemes (LSUV, Mishkin & Matas 2016: rescale each layer until its
output variance on a real batch is 1): they need a batch and a forward pass, so they cannot be a
``(weight, gain, cfg, generator)`` factory alone. Register them with ``needs_batch=True``: their
factory is the data-free start, which :func:`init_model` applies (so ``build_model`` and reloading a
saved run work without data), and a separate function taking the model and a batch does the data
step *after* it. ``lsuv`` is the one such scheme: ``init_model`` gives the orthonormal start and
:func:`lsuv_init` the rescaling.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from types import FrameType
import warnings

import torch
from torch import Tensor, nn
from torch.nn.init import _calculate_fan_in_and_fan_out

from trainwell.config import InitConfig
from trainwell.errors import ConfigError, DataError, unknown_name_message
from trainwell.nn.activations import activation_gain
from trainwell.nn.layers import NORM_LAYERS, WEIGHT_LAYERS
from trainwell.registry import Entry, new_registry


@dataclass(frozen=True)
class InitMeta:
    """What every init scheme promises."""

    uses_gain: bool  # a gain g enters the formula (init.gain chooses it, :func:`scheme_gain`)
    formula: str
    needs_batch: bool = False  # data-dependent: a second step on a batch follows (see the module docstring)
    # init.gain=default gives the following activation's gain (Kaiming); False: gain 1 (Xavier, orthogonal).
    activation_gain_by_default: bool = False


INITS = new_registry("init", InitMeta, "Weight initialisation; the gain g is set by init.gain (default: each "
                                       "scheme's own: 1 for xavier and orthogonal, the activation's for kaiming).")


def fans(weight: Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of a Linear or Conv weight: the inputs and outputs each weight connects.

    Linear, Shape (out, in): fan_in = in, fan_out = out. Conv, Shape (out, in / groups, *kernel):
    fan_in = in / groups * prod(kernel), fan_out = out * prod(kernel).
    """
    fan_in, fan_out = _calculate_fan_in_and_fan_out(weight)
    return int(fan_in), int(fan_out)


def _fan(weight: Tensor, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ConfigError(f"init.mode must be 'fan_in' or 'fan_out', got '{mode}'.")
    fan_in, fan_out = fans(weight)
    return fan_in if mode == "fan_in" else fan_out


def _positive_std(cfg: InitConfig, scheme: str) -> float:
    if not (cfg.std > 0 and math.isfinite(cfg.std)):
        raise ConfigError(f"init.scheme={scheme} needs init.std > 0, got {cfg.std}; e.g. init.std=0.01.")
    return cfg.std


@INITS.register("default", uses_gain=False, formula="PyTorch's reset_parameters()")
def default(weight: Tensor, gain: float, cfg: InitConfig, generator: torch.Generator | None) -> None:
    """Keep PyTorch's own init (Kaiming-uniform with a = sqrt(5): U(±1/sqrt(fan_in)))."""


@INITS.register("xavier_uniform", uses_gain=True, formula="U(±a), a = g * sqrt(6 / (fan_in + fan_out))")
def xavier_uniform(weight: Tensor, gain: float, cfg: InitConfig, generator: torch.Generator | None) -> None:
    """U(±g*sqrt(6/(fan_in+fan_out))), Var = g²*2/(fan_in+fan_out); g = 1 by default (Glorot & Bengio 2010)."""
    nn.init.xavier_uniform_(weight, gain=gain, generator=generator)


@INITS.register("xavier_normal", uses_gain=True, formula="N(0, std²), std = g * sqrt(2 / (fan_in + fan_out))")
def xavier_normal(weight: Tensor, gain: float, cfg: InitConfig, generator: torch.Generator | None) -> None:
    """N(0, g²*2/(fan_in+fan_out)); g = 1 by default (Glorot & Bengio 2010, Understanding the difficulty...)."""
    nn.init.xavier_normal_(weight, gain=gain, generator=generator)


@INITS.register("kaiming_uniform", uses_gain=True, activation_gain_by_default=True,
                formula="U(±a), a = g * sqrt(3 / fan), fan = init.mode")
def kaiming_uniform(weight: Tensor, gain: float, cfg: InitConfig, generator: torch.Generator | None) -> None:
    """U(±g*sqrt(3/fan)); g = the next activation's gain by default, sqrt(2) for ReLU (He et al. 2015).

    fan = fan_in or fan_out (init.mode); Delving Deep into Rectifiers.
    """
    # torch's kaiming_uniform_ takes a nonlinearity name, not a gain; the formula with our gain is
    # the same one and also covers activations torch has no name for (gelu, silu, elu).
    bound = gain * math.sqrt(3.0 / _fan(weight, cfg.mode))
    nn.init.uniform_(weight, -bound, bound, generator=generator)


@INITS.register("kaiming_normal", uses_gain=True, activation_gain_by_default=True,
                formula="N(0, std²), std = g / sqrt(fan), fan = init.mode")
def kaiming_normal(weight: Tensor, gain: float, cfg: InitConfig, generator: torch.Generator | None) -> None:
    """N(0, g²/fan); g = the next activation's gain by default, sqrt(2) for ReLU (He et al. 2015).

    fan = fan_in or fan_out (init.mode); Delving Deep into Rectifiers.
    """
    nn.init.normal_(weight, 0.0, gain / math.sqrt(_fan(weight, cfg.mode)), generator=generator)


@INITS.register("orthogonal", uses_gain=True, formula="W = g * Q, Q (semi-)orthogonal")
def orthogonal(weight: Tensor, gain: float, cfg: InitConfig, generator: torch.Generator | None) -> None:
    """g * a random (semi-)orthogonal matrix, W Wᵀ = g² I when rows <= cols; g = 1 by default (Saxe et al. 2014).

    A conv weight (out, in, *kernel) is treated as the (out, in * prod(kernel)) matrix it applies.
    """
    nn.init.orthogonal_(weight, gain=gain, generator=generator)


@INITS.register("lecun_normal", uses_gain=False, formula="N(0, std²), std = 1 / sqrt(fan_in)")
def lecun_normal(weight: Tensor, gain: float, cfg: InitConfig, generator: torch.Generator | None) -> None:
    """N(0, 1/fan_in) (LeCun et al. 1998, Efficient BackProp); with selu, self-normalising (Klambauer 2017).

    ``init.gain`` is ignored on purpose: SELU's fixed point (mean 0, variance 1) needs
    Var(w) = 1/fan_in exactly; PyTorch's selu gain of 3/4 trades that away for gradient flow.
    """
    nn.init.normal_(weight, 0.0, 1.0 / math.sqrt(fans(weight)[0]), generator=generator)


@INITS.register("normal", uses_gain=False, formula="N(0, init.std²)")
def normal(weight: Tensor, gain: float, cfg: InitConfig, generator: torch.Generator | None) -> None:
    """N(0, init.std²) whatever the layer size: shows vanishing/exploding signals (for demonstrations)."""
    nn.init.normal_(weight, 0.0, _positive_std(cfg, "normal"), generator=generator)


@INITS.register("uniform", uses_gain=False, formula="U(±a), a = sqrt(3) * init.std")
def uniform(weight: Tensor, gain: float, cfg: InitConfig, generator: torch.Generator | None) -> None:
    """U(±sqrt(3)*init.std): variance init.std², comparable with scheme=normal (for demonstrations)."""
    # Reuses init.std rather than a separate bound so that normal and uniform at the same
    # init.std have the same variance and differ only in shape.
    bound = math.sqrt(3.0) * _positive_std(cfg, "uniform")
    nn.init.uniform_(weight, -bound, bound, generator=generator)


@INITS.register(
    "lsuv",
    uses_gain=False,
    needs_batch=True,
    formula="orthonormal W (gain 1), then per layer W /= std(output on a batch) until |Var - 1| < init.lsuv_tol",
)
def lsuv(weight: Tensor, gain: float, cfg: InitConfig, generator: torch.Generator | None) -> None:
    """Orthonormal start, then each layer rescaled to unit output variance on a batch (Mishkin & Matas 2016).

    This factory is the data-free part (a gain-1 orthogonal matrix, whatever the activation: the
    data step sets the scale); :func:`lsuv_init` does the rescaling on a batch.
    """
    nn.init.orthogonal_(weight, gain=1.0, generator=generator)


def layer_gain(layer: nn.Module) -> float:
    """The gain for ``layer``'s weight: that of the activation recorded in ``layer.follows``.

    Models record it when they build the layer (``"identity"`` for a head, gain 1). A layer with no
    record gets gain 1, as ``torch.nn.init.calculate_gain('linear')`` gives.
    """
    return activation_gain(getattr(layer, "follows", "identity"))


def scheme_gain(meta: InitMeta, layer: nn.Module, gain: float | str) -> float:
    """The gain g that a scheme with ``meta`` gets for ``layer``'s weight under ``init.gain = gain``.

    ``"default"``: the scheme's own (the following activation's, :func:`layer_gain`, when
    ``meta.activation_gain_by_default``, as Kaiming's formula has it; else 1, as Glorot's and
    Saxe's have it); ``"auto"``: the following activation's for every scheme; a number: itself.
    Schemes that do not use a gain ignore the result.
    """
    if gain == "auto" or (gain == "default" and meta.activation_gain_by_default):
        return layer_gain(layer)
    if gain == "default":
        return 1.0
    return float(gain)


@torch.no_grad()
def init_model(model: nn.Module, cfg: InitConfig, generator: torch.Generator | None = None) -> nn.Module:
    """Initialise ``model`` in place with ``cfg.scheme`` and return it.

    Every Linear/Conv weight gets the scheme with the gain ``cfg.gain`` chooses for it
    (:func:`scheme_gain`), every hidden bias ``cfg.bias`` (0 by default; e.g. 0.01 keeps ReLUs alive
    at the start, as some recommend) and the head's bias 0; norm layers get scale 1 and shift 0. Draws come from
    ``generator`` in module order. ``default`` leaves the model exactly as PyTorch built it, but for
    the hidden-to-hidden matrices of recurrent layers (``cfg.recurrent``, orthogonal unless it too is default).
    Schemes registered with ``needs_batch=True`` get their data-free start only: for ``lsuv`` call
    :func:`lsuv_init` with a batch afterwards. Recurrent layers (nn.RNN/GRU/LSTM) get
    :func:`init_recurrent`, whose hidden-to-hidden matrices follow ``cfg.recurrent`` whatever the scheme.
    """
    entry = INITS.entry(cfg.scheme)
    # A needs_batch scheme's factory is its data-free start (lsuv: orthonormal weights); its data
    # step (lsuv_init) runs afterwards on a batch.
    for module in model.modules():
        if isinstance(module, nn.RNNBase):
            init_recurrent(module, cfg, generator)  # its own keys (init.recurrent), under scheme=default too
        elif cfg.scheme == "default":
            continue
        elif isinstance(module, WEIGHT_LAYERS):
            entry.factory(module.weight, scheme_gain(entry.meta, module, cfg.gain), cfg, generator)
            if isinstance(module.bias, Tensor):  # a Parameter, or None for bias=False
                # The head keeps 0: a constant added to every logit changes nothing but the loss scale.
                module.bias.fill_(cfg.bias if getattr(module, "follows", "identity") != "identity" else 0.0)
        elif isinstance(module, NORM_LAYERS):
            weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
            if weight is not None:
                weight.fill_(1.0)
            if bias is not None:
                bias.zero_()
    return model


# ----------------------------------------------------------------------------- recurrent layers

#: The gate blocks stacked (in this order) in each weight and bias of torch's recurrent layers, by ``module.mode``.
GATES: dict[str, tuple[str, ...]] = {
    "RNN_TANH": ("hidden",),
    "RNN_RELU": ("hidden",),
    "GRU": ("reset", "update", "new"),
    "LSTM": ("input", "forget", "cell", "output"),
}


def recurrent_entry(cfg: InitConfig) -> Entry[InitMeta]:
    """The INITS entry ``cfg.recurrent`` names, or a ConfigError: a scheme with a data step is refused,
    since LSUV's step rescales Linear/Conv outputs and never the recurrent matrices."""
    if cfg.recurrent not in INITS:
        raise ConfigError(f"init.recurrent: {unknown_name_message('init', str(cfg.recurrent), INITS.names())}")
    entry = INITS.entry(cfg.recurrent)
    if entry.meta.needs_batch:
        raise ConfigError(f"init.recurrent={cfg.recurrent} needs a batch and has no recurrent step; "
                          "use orthogonal (or default for PyTorch's).")
    return entry


@torch.no_grad()
def init_recurrent(module: nn.RNNBase, cfg: InitConfig, generator: torch.Generator | None = None) -> None:
    """Initialise an nn.RNN/GRU/LSTM in place, gate block by gate block.

    torch stacks the gates of layer k (direction d) in ``weight_ih_l{k}`` (G*H x F: input to hidden)
    and ``weight_hh_l{k}`` (G*H x H: hidden to hidden), G = 1 (rnn), 3 (gru: reset, update, new) or
    4 (lstm: input, forget, cell, output). Each H x F block gets ``cfg.scheme`` and each H x H block
    ``cfg.recurrent``, with their own fans and gain 1: the gates' sigmoids and tanh work around 0,
    where their slope is at most 1, and a gain > 1 on the recurrent matrix would grow the state at
    every step. So ``orthogonal`` makes every recurrent gate matrix orthogonal (W Wᵀ = I; Saxe et al.
    2014), keeping a state's norm through the linear part of the recurrence. Keras' ``Orthogonal``
    recurrent_kernel instead draws the whole H x G*H matrix at once (orthonormal rows, not each
    block); PyTorch's own init is U(±1/sqrt(H)) for every weight and bias (``default``). An LSTM's
    projection ``weight_hr_l{k}`` (proj_size > 0) is one block with ``cfg.scheme``.

    Biases: unless ``cfg.scheme`` is ``default`` (PyTorch's biases stay), ``bias_ih`` holds
    ``cfg.bias`` in every gate and ``bias_hh`` zeros, so their sum, the bias the gate sees, is
    ``cfg.bias``; an LSTM's forget gate gets ``cfg.forget_bias`` (1: Jozefowicz et al. 2015).
    Draws come from ``generator`` in torch's parameter order (per layer and direction: ih, hh).
    Under ``init.scheme=lsuv`` the input blocks get its orthonormal start, and :func:`lsuv_init`
    leaves them there: its data step rescales Linear/Conv layers only.
    """
    scheme, recurrent = INITS.entry(cfg.scheme), recurrent_entry(cfg)
    gates = GATES[module.mode]
    hidden = module.hidden_size
    for name, param in module.named_parameters(recurse=False):
        kind = name.split("_l")[0]  # weight_ih, weight_hh, weight_hr, bias_ih, bias_hh
        if kind in ("weight_ih", "weight_hh"):
            entry = recurrent if kind == "weight_hh" else scheme
            for block in param.split(hidden):  # row-slices: contiguous views that the factories fill in place
                entry.factory(block, 1.0, cfg, generator)
        elif kind == "weight_hr":
            scheme.factory(param, 1.0, cfg, generator)
        elif cfg.scheme != "default":
            param.fill_(cfg.bias if kind == "bias_ih" else 0.0)
            if kind == "bias_ih" and "forget" in gates:
                forget = gates.index("forget")
                param[forget * hidden:(forget + 1) * hidden].fill_(cfg.forget_bias)


# ----------------------------------------------------------------------------- LSUV


class _Captured(Exception):
    """Raised by a forward hook to stop the forward pass once the layer of interest has run."""

    def __init__(self, output: Tensor) -> None:
        super().__init__()
        self.output = output


#: Packages whose frames a warning skips to name the code that called in: trainwell itself, torch (the
#: wrapper ``@torch.no_grad()`` puts around a function) and mutmut (the trampoline mutation testing,
#: ``tools/mutation.py``, puts around every function).
_INNER_PACKAGES = ("trainwell", "torch", "mutmut")


def _caller_stacklevel(frame: FrameType | None) -> int:
    """``warnings.warn``'s stacklevel naming the first frame outside :data:`_INNER_PACKAGES`: the caller's code.

    ``frame`` is the warning function's own (``sys._getframe()``), stacklevel 1. A fixed
    ``stacklevel=2`` names torch's ``no_grad`` wrapper, the frame a decorator adds between a caller and
    the decorated function.
    """
    level = 1
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] in _INNER_PACKAGES:
        level, frame = level + 1, frame.f_back
    return level


def _check_lsuv_cfg(cfg: InitConfig) -> None:
    if not (isinstance(cfg.lsuv_tol, (int, float)) and math.isfinite(cfg.lsuv_tol) and 0 < cfg.lsuv_tol < 1):
        raise ConfigError(f"init.lsuv_tol must be in (0, 1), got {cfg.lsuv_tol}; e.g. init.lsuv_tol=0.1.")
    if isinstance(cfg.lsuv_max_iter, bool) or not isinstance(cfg.lsuv_max_iter, int) or cfg.lsuv_max_iter < 0:
        raise ConfigError(f"init.lsuv_max_iter must be an integer >= 0, got {cfg.lsuv_max_iter!r}; e.g. init.lsuv_max_iter=10.")


def _output_variance(model: nn.Module, batch: Tensor, layer: nn.Module) -> float:
    """Var of ``layer``'s output (all elements, float64) on ``batch``; the forward pass stops at ``layer``."""

    def hook(module: nn.Module, inputs: object, output: Tensor) -> None:
        raise _Captured(output)

    handle = layer.register_forward_hook(hook)
    try:
        model(batch)
    except _Captured as captured:
        return float(captured.output.detach().to(torch.float64).var(unbiased=False))
    finally:
        handle.remove()
    raise ConfigError("lsuv: a Linear/Conv layer of the model did not run on the batch.")


def _forward_order(model: nn.Module, batch: Tensor) -> list[tuple[str, nn.Module]]:
    """The model's Linear/Conv layers in the order the forward pass first calls them."""
    names: dict[nn.Module, str] = {m: n for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)}
    order: list[nn.Module] = []

    def hook(module: nn.Module, inputs: object, output: object) -> None:
        if module not in order:
            order.append(module)

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return [(names[m], m) for m in order]


@torch.no_grad()
def lsuv_init(
    model: nn.Module, batch: Tensor, cfg: InitConfig, generator: torch.Generator | None = None
) -> dict[str, float]:
    """Layer-sequential unit-variance init (Mishkin & Matas 2016, "All you need is a good init").

    1. Orthonormal start: :func:`init_model` with scheme ``lsuv`` (every Linear/Conv weight a gain-1
       (semi-)orthogonal matrix drawn from ``generator``, biases 0, norm layers identity).
    2. For each Linear/Conv layer in forward order (found by running ``batch`` once), run ``batch``
       through the model and divide the layer's weight by the std of the layer's output, until
       ``|Var(output) - 1| < cfg.lsuv_tol`` or ``cfg.lsuv_max_iter`` rescalings.

    ``batch`` is what the model takes (already preprocessed), e.g. one training batch; at least 2
    examples. The variance is measured on the layer's own output, before any norm and activation
    (the pre-activation the paper uses), over all its elements. With biases 0 one rescaling is
    exact, since earlier layers are already fixed; more are needed only when the layer's input
    depends on the batch's own statistics.

    The passes run in **eval mode** (each module's mode is restored afterwards): dropout is off and
    batch norm uses its running statistics, so the result is deterministic, no random numbers are
    drawn, and no running statistics are updated. A freshly built batch norm (mean 0, var 1)
    then passes values through, and in training it normalises each layer's output whatever that
    layer's scale: LSUV matters for networks *without* batch norm, where nothing else sets the
    signal's scale layer by layer.

    The head (the last Linear/Conv layer in forward order) keeps its orthonormal weights unless
    ``cfg.lsuv_head``: its output is the logits, whose scale is the softmax's initial confidence,
    not a signal that later layers need at unit variance. The paper rescales every layer; set
    ``init.lsuv_head=true`` for that.

    Returns the final output variance of each layer it rescaled, by module name (the head only
    with ``lsuv_head``). Draws come only from ``generator`` (step 1), so a seeded generator gives
    the same weights every time.
    """
    _check_lsuv_cfg(cfg)
    if not isinstance(batch, Tensor) or batch.ndim < 1 or len(batch) < 2:
        shape = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
        raise DataError(f"lsuv needs a batch of at least 2 examples to measure variances; got {shape}.")
    if batch.is_floating_point() and not bool(torch.isfinite(batch).all()):
        raise DataError("lsuv: the batch holds NaN/inf values; clean or preprocess the data first.")
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        init_model(model, dataclasses.replace(cfg, scheme="lsuv"), generator)
        layers = _forward_order(model, batch)
        if not layers:
            raise ConfigError("init.scheme=lsuv needs a model with Linear/Conv layers that run on the batch.")
        if not cfg.lsuv_head:
            layers = layers[:-1]
        variances: dict[str, float] = {}
        for name, layer in layers:
            weight = layer.weight
            assert isinstance(weight, Tensor)  # a Linear/Conv weight; nn.Module types attributes Tensor | Module
            for step in range(cfg.lsuv_max_iter + 1):
                var = _output_variance(model, batch, layer)
                if not (math.isfinite(var) and var > 0):
                    raise DataError(
                        f"lsuv: layer '{name}' has output variance {var} on the batch, so it cannot be rescaled; "
                        "use a larger, varied batch (or another init.scheme)."
                    )
                if abs(var - 1.0) < cfg.lsuv_tol or step == cfg.lsuv_max_iter:
                    break
                weight.div_(math.sqrt(var))
            if abs(var - 1.0) >= cfg.lsuv_tol and cfg.lsuv_max_iter > 0:
                warnings.warn(
                    f"lsuv: layer '{name}' output variance {var:.3g} after {cfg.lsuv_max_iter} rescalings "
                    f"(tolerance {cfg.lsuv_tol}); raise init.lsuv_max_iter.",
                    stacklevel=_caller_stacklevel(sys._getframe()),
                )
            variances[name] = var
    finally:
        for module, training in modes.items():
            module.training = training
    return variances
