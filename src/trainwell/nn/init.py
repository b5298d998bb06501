"""Weight initialisation schemes, and :func:`init_model`, which applies one to a whole network.

Every entry of :data:`INITS` is a factory ``(weight, gain, cfg, generator) -> None`` that fills
``weight`` in place, drawing from ``generator`` (a ``torch.Generator``; None = the global RNG).
``gain`` is the gain of the activation that *follows* the layer (:func:`activation_gain`); fans
come from :func:`fans`, so a Linear layer and a Conv layer of any kernel are treated alike.
Metadata: ``uses_gain`` (whether ``gain`` enters the formula) and ``formula``.

Extension point for data-dependent schemes (LSUV, Mishkin & Matas 2016: rescale each layer until its
output variance on a real batch is 1): they need a batch and a forward pass, so they cannot be a
``(weight, gain, cfg, generator)`` factory. Register them with ``needs_batch=True`` and run them
*after* :func:`init_model` (which refuses them) in a function that takes the model and a batch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.init import _calculate_fan_in_and_fan_out

from trainwell.config import InitConfig
from trainwell.errors import ConfigError
from trainwell.nn.activations import activation_gain
from trainwell.registry import new_registry

INITS = new_registry("init", "Weight initialisation; gains follow the activation after each layer.")

#: Layers whose weight an init scheme sets (Linear and Conv1d/2d/3d, transposed ones included).
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)
#: Normalisation layers: init_model sets their scale to 1 and shift to 0.
NORM_LAYERS: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


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


@INITS.register("xavier_uniform", uses_gain=True, formula="U(±a), a = gain * sqrt(6 / (fan_in + fan_out))")
def xavier_uniform(weight: Tensor, gain: float, cfg: InitConfig, generator: torch.Generator | None) -> None:
    """U(±gain*sqrt(6/(fan_in+fan_out))) (Glorot & Bengio 2010, Understanding the difficulty...)."""
    nn.init.xavier_uniform_(weight, gain=gain, generator=generator)


@INITS.register("xavier_normal", uses_gain=True, formula="N(0, std²), std = gain * sqrt(2 / (fan_in + fan_out))")
def xavier_normal(weight: Tensor, gain: float, cfg: InitConfig, generator: torch.Generator | None) -> None:
    """N(0, gain²*2/(fan_in+fan_out)) (Glorot & Bengio 2010, Understanding the difficulty...)."""
    nn.init.xavier_normal_(weight, gain=gain, generator=generator)


@INITS.register("kaiming_uniform", uses_gain=True, formula="U(±a), a = gain * sqrt(3 / fan), fan = init.mode")
def kaiming_uniform(weight: Tensor, gain: float, cfg: InitConfig, generator: torch.Generator | None) -> None:
    """U(±gain*sqrt(3/fan)), fan = fan_in or fan_out (He et al. 2015, Delving Deep into Rectifiers)."""
    # torch's kaiming_uniform_ takes a nonlinearity name, not a gain; the formula with our gain is
    # the same one and also covers activations torch has no name for (gelu, silu, elu).
    bound = gain * math.sqrt(3.0 / _fan(weight, cfg.mode))
    nn.init.uniform_(weight, -bound, bound, generator=generator)


@INITS.register("kaiming_normal", uses_gain=True, formula="N(0, std²), std = gain / sqrt(fan), fan = init.mode")
def kaiming_normal(weight: Tensor, gain: float, cfg: InitConfig, generator: torch.Generator | None) -> None:
    """N(0, gain²/fan), fan = fan_in or fan_out (He et al. 2015, Delving Deep into Rectifiers)."""
    nn.init.normal_(weight, 0.0, gain / math.sqrt(_fan(weight, cfg.mode)), generator=generator)


@INITS.register("orthogonal", uses_gain=True, formula="W = init.gain * gain * Q, Q (semi-)orthogonal")
def orthogonal(weight: Tensor, gain: float, cfg: InitConfig, generator: torch.Generator | None) -> None:
    """init.gain * gain * a random (semi-)orthogonal matrix, W Wᵀ = g² I when rows <= cols (Saxe et al. 2014).

    A conv weight (out, in, *kernel) is treated as the (out, in * prod(kernel)) matrix it applies.
    """
    nn.init.orthogonal_(weight, gain=cfg.gain * gain, generator=generator)


@INITS.register("lecun_normal", uses_gain=False, formula="N(0, std²), std = 1 / sqrt(fan_in)")
def lecun_normal(weight: Tensor, gain: float, cfg: InitConfig, generator: torch.Generator | None) -> None:
    """N(0, 1/fan_in) (LeCun et al. 1998, Efficient BackProp); with selu, self-normalising (Klambauer 2017).

    The activation gain is ignored on purpose: SELU's fixed point (mean 0, variance 1) needs
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


def layer_gain(layer: nn.Module) -> float:
    """The gain for ``layer``'s weight: that of the activation recorded in ``layer.follows``.

    Models record it when they build the layer (``"identity"`` for a head, gain 1). A layer with no
    record gets gain 1, as ``torch.nn.init.calculate_gain('linear')`` gives.
    """
    return activation_gain(getattr(layer, "follows", "identity"))


@torch.no_grad()
def init_model(model: nn.Module, cfg: InitConfig, generator: torch.Generator | None = None) -> nn.Module:
    """Initialise ``model`` in place with ``cfg.scheme`` and return it.

    Every Linear/Conv weight gets the scheme with the gain of the activation that follows it
    (:func:`layer_gain`), every such bias 0; norm layers get scale 1 and shift 0. Draws come from
    ``generator`` in module order. ``default`` leaves the model exactly as PyTorch built it.
    """
    entry = INITS.entry(cfg.scheme)
    if entry.meta.get("needs_batch"):
        raise ConfigError(f"init.scheme={cfg.scheme} needs a batch of data; it cannot run in init_model.")
    if cfg.scheme == "default":
        return model
    for module in model.modules():
        if isinstance(module, WEIGHT_LAYERS):
            entry.factory(module.weight, layer_gain(module), cfg, generator)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, NORM_LAYERS):
            if getattr(module, "weight", None) is not None:
                module.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
    return model
