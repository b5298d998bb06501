"""Architectures: an MLP, a CNN for 1-D signals and 2-D images, and a small pre-activation ResNet
(the recurrent rnn/gru/lstm register here from :mod:`trainwell.nn.recurrent`).

Every entry of :data:`MODELS` is a factory ``(cfg: ModelConfig, input_shape, num_classes) -> nn.Module``
whose output has Shape (N, num_classes) for input of Shape (N, *input_shape). Metadata
(:class:`ModelMeta`): ``input_ranks`` lists the ranks of ``input_shape`` the model accepts.

Each Linear/Conv layer records in ``layer.follows`` the activation spec applied to its output (after
any norm, residual sum or pooling), so :func:`~trainwell.nn.init.init_model` can give its weights the
right gain; the classifier head follows ``"identity"`` (gain 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trainwell.config import Config, ModelConfig, Spec
from trainwell.errors import ConfigError
from trainwell.nn.activations import build_activation, parse_activation
from trainwell.nn.init import init_model
from trainwell.nn.norms import NORMS, build_norm
from trainwell.registry import new_registry


@dataclass(frozen=True)
class ModelMeta:
    """What every model promises."""

    input_ranks: tuple[int, ...]  # accepted len(input_shape): 1 (F,), 2 (C, L), 3 (C, H, W)


MODELS = new_registry("model", ModelMeta, "Architectures; input shapes exclude the batch axis.")

#: The cnn's head choices (``model.head``).
CNN_HEADS = ("flatten", "avg")

_RANK_NAMES = {1: "(F,)", 2: "(C, L)", 3: "(C, H, W)"}
#: The model to suggest for an input rank a model rejects.
_SUGGEST = {1: "mlp", 2: "cnn", 3: "cnn"}


# ----------------------------------------------------------------------------- checks


def check_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, ranks: Sequence[int],
                shape_names: dict[int, str] = _RANK_NAMES) -> None:
    """Reject bad values shared by every model with one line saying how to fix them; ``shape_names``
    names each accepted rank in the message."""
    if not (isinstance(num_classes, int) and num_classes >= 1):
        raise ConfigError(f"num_classes must be an integer >= 1, got {num_classes!r}.")
    if not all(isinstance(s, int) and s >= 1 for s in input_shape):
        raise ConfigError(f"input_shape must be positive integers (batch axis excluded), got {input_shape}.")
    if len(input_shape) not in ranks:
        wanted = " or ".join(shape_names[r] for r in ranks)
        other = _SUGGEST.get(len(input_shape))
        fix = f"; use model.name={other}" if other else "; reshape the input"
        raise ConfigError(f"model.name={cfg.name} needs input of shape {wanted}, got {tuple(input_shape)}{fix}.")
    if not (0.0 <= cfg.dropout < 1.0):
        raise ConfigError(f"model.dropout must be in [0, 1), got {cfg.dropout}; e.g. model.dropout=0.1.")
    parse_activation(cfg.activation)
    NORMS.entry(cfg.norm)


def _check_depth_width(cfg: ModelConfig, min_depth: int) -> None:
    if cfg.depth < min_depth:
        raise ConfigError(f"model.depth must be >= {min_depth} for model.name={cfg.name}, got {cfg.depth}.")
    if cfg.width < 1:
        raise ConfigError(f"model.width must be >= 1, got {cfg.width}; e.g. model.width=64.")


# ----------------------------------------------------------------------------- layers


def _bias(cfg: ModelConfig) -> bool:
    # A bias before batch norm is subtracted right away: a wasted parameter (and a weight-decay target).
    return not NORMS.entry(cfg.norm).meta.absorbs_bias


def linear(in_features: int, out_features: int, follows: str | Spec, bias: bool = True) -> nn.Linear:
    """``nn.Linear`` that records the activation its output feeds (``layer.follows``)."""
    layer = nn.Linear(in_features, out_features, bias=bias)
    # its normal text: reports store it as JSON
    layer.follows = str(follows)  # type: ignore[assignment]  # nn.Module types attributes as tensors/modules
    return layer


def conv(
    dims: int, c_in: int, c_out: int, kernel_size: int, follows: str | Spec, stride: int = 1, bias: bool = True
) -> nn.Module:
    """Conv1d/Conv2d keeping the size at stride 1 ('same' padding), halving it at stride 2; records ``follows``.

    Shape (N, c_in, *S) -> (N, c_out, *S) at stride 1, (N, c_out, *ceil(S/2)) at stride 2 (odd kernels).
    """
    cls = (nn.Conv1d, nn.Conv2d)[dims - 1]
    padding = "same" if stride == 1 else kernel_size // 2
    layer = cls(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=bias)
    # its normal text: reports store it as JSON
    layer.follows = str(follows)  # type: ignore[assignment]  # nn.Module types attributes as tensors/modules
    return layer


def _dropout(p: float, activation: str | Spec = "relu") -> list[nn.Module]:
    """Dropout, or alpha dropout after SELU: plain dropout's zeros would break SELU's fixed point of
    mean 0 / variance 1, alpha dropout keeps it (Klambauer et al. 2017)."""
    if p <= 0:
        return []
    return [nn.AlphaDropout(p) if parse_activation(activation)[0] == "selu" else nn.Dropout(p)]


# ----------------------------------------------------------------------------- mlp


@MODELS.register("mlp", input_ranks=(1, 2, 3))
def mlp(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """flatten -> [Linear(width) -> norm -> act -> dropout] x depth -> Linear; depth 0 = logistic regression."""
    check_model(cfg, input_shape, num_classes, ranks=(1, 2, 3))
    _check_depth_width(cfg, min_depth=0)
    layers: list[nn.Module] = [nn.Flatten()]
    fan = math.prod(input_shape)
    for _ in range(cfg.depth):
        layers += [
            linear(fan, cfg.width, cfg.activation, bias=_bias(cfg)),
            build_norm(cfg.norm, cfg.width, 0),
            build_activation(cfg.activation),
            *_dropout(cfg.dropout, cfg.activation),
        ]
        fan = cfg.width
    layers.append(linear(fan, num_classes, "identity"))
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- cnn


def _pool(dims: int, size: list[int]) -> tuple[nn.Module | None, list[int]]:
    """Max-pool by 2 along every axis still >= 4 long (so at least 2 positions remain), else nothing."""
    kernel = tuple(2 if s >= 4 else 1 for s in size)
    if all(k == 1 for k in kernel):
        return None, size
    pool = (nn.MaxPool1d, nn.MaxPool2d)[dims - 1](kernel if dims > 1 else kernel[0])
    return pool, [s // k for s, k in zip(size, kernel)]


@MODELS.register("cnn", input_ranks=(2, 3))
def cnn(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """[[conv('same') -> norm -> act] x model.convs -> max-pool 2] per model.channels, then flatten/avg ->
    dropout -> Linear.

    Works on 1-D signals (C, L) and 2-D images (C, H, W). Pooling stops once an axis is shorter than 4.
    ``model.stem_stride=2`` makes the first convolution strided (early down-sampling, as ResNet's and
    airbench's stems do): it halves each axis itself instead of its max-pool, so the layer with the
    most positions computes, normalises and activates a quarter of them — on a CPU the norm,
    activation and pooling of that first map cost more than its convolution (bench/profile_epoch.py).
    ``model.head=avg`` averages the last map over positions (shift-invariant, size-independent);
    ``flatten`` keeps positions. On MNIST-1D, channels 32,64,128, kernel 5, norm batch, dropout 0.3
    and head avg reach ~98% test accuracy (flatten ~97%), against ~94% for the paper's CNN.
    """
    check_model(cfg, input_shape, num_classes, ranks=(2, 3))
    if not cfg.channels or any(c < 1 for c in cfg.channels):
        raise ConfigError(
            f"model.channels must be a non-empty list of sizes >= 1, got {cfg.channels}; e.g. model.channels=32,64."
        )
    if cfg.kernel_size < 1:
        raise ConfigError(f"model.kernel_size must be >= 1, got {cfg.kernel_size}; e.g. model.kernel_size=3.")
    if cfg.head not in CNN_HEADS:
        raise ConfigError(f"model.head must be one of {', '.join(CNN_HEADS)}, got '{cfg.head}'.")
    if cfg.convs < 1:
        raise ConfigError(f"model.convs must be >= 1, got {cfg.convs}; e.g. model.convs=2.")
    if cfg.stem_stride not in (1, 2):
        raise ConfigError(f"model.stem_stride must be 1 or 2, got {cfg.stem_stride}; 2 = early down-sampling.")
    dims = len(input_shape) - 1
    c_in, size = input_shape[0], list(input_shape[1:])
    layers: list[nn.Module] = []
    for i, c_out in enumerate(cfg.channels):
        stride = cfg.stem_stride if i == 0 else 1
        for j in range(cfg.convs):
            layers += [
                conv(dims, c_in if j == 0 else c_out, c_out, cfg.kernel_size, cfg.activation,
                     stride=stride if j == 0 else 1, bias=_bias(cfg)),
                build_norm(cfg.norm, c_out, dims),
                build_activation(cfg.activation),
            ]
        if stride == 2:  # the strided convolution did this block's down-sampling
            k = cfg.kernel_size
            size = [(s + 2 * (k // 2) - k) // 2 + 1 for s in size]  # conv()'s padding at stride 2
        else:
            pool, size = _pool(dims, size)
            layers += [pool] if pool is not None else []
        c_in = c_out
    if cfg.head == "avg":
        layers.append((nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)[dims - 1](1))
        features = c_in
    else:
        features = c_in * math.prod(size)
    layers += [nn.Flatten(), *_dropout(cfg.dropout), linear(features, num_classes, "identity")]
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- resnet


class PreActBlock(nn.Module):
    """x + conv(act(norm(conv(act(norm(x)))))), He et al. 2016, Identity Mappings in Deep Residual Networks.

    When the stride or width changes, the shortcut is a 1x1 projection of act(norm(x)).
    Shape (N, c_in, H, W) -> (N, c_out, ceil(H/stride), ceil(W/stride)).
    """

    def __init__(self, cfg: ModelConfig, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        bias = _bias(cfg)
        self.norm1 = build_norm(cfg.norm, c_in, 2)
        self.act1 = build_activation(cfg.activation)
        self.conv1 = conv(2, c_in, c_out, 3, cfg.activation, stride=stride, bias=bias)
        self.norm2 = build_norm(cfg.norm, c_out, 2)
        self.act2 = build_activation(cfg.activation)
        # conv2's output joins the sum that the next block (or the final norm) sends through act.
        self.conv2 = conv(2, c_out, c_out, 3, cfg.activation, bias=bias)
        self.shortcut = (
            conv(2, c_in, c_out, 1, cfg.activation, stride=stride, bias=bias)
            if stride != 1 or c_in != c_out
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.act1(self.norm1(x))
        skip = x if self.shortcut is None else self.shortcut(h)
        return skip + self.conv2(self.act2(self.norm2(self.conv1(h))))


@MODELS.register("resnet", input_ranks=(3,))
def resnet(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Pre-activation ResNet (He et al. 2016): 3 stages of model.depth blocks, widths w-2w-4w, avg pool, Linear.

    Sized for 32x32 images and fine on any 2-D size (28x28, 8x8); set model.width small (e.g. 16):
    parameters grow as width².
    """
    check_model(cfg, input_shape, num_classes, ranks=(3,))
    _check_depth_width(cfg, min_depth=1)
    w = cfg.width
    layers: list[nn.Module] = [conv(2, input_shape[0], w, 3, cfg.activation, bias=_bias(cfg))]
    c_in = w
    for stage, c_out in enumerate((w, 2 * w, 4 * w)):
        for block in range(cfg.depth):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(PreActBlock(cfg, c_in, c_out, stride))
            c_in = c_out
    layers += [
        # Pre-activation blocks end on a sum: normalise and activate once more before pooling.
        build_norm(cfg.norm, c_in, 2),
        build_activation(cfg.activation),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        *_dropout(cfg.dropout),
        linear(c_in, num_classes, "identity"),
    ]
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- build


def build_model(
    cfg: Config, input_shape: Sequence[int], num_classes: int, generator: torch.Generator | None = None
) -> nn.Module:
    """The network ``cfg.model`` for inputs of ``input_shape`` (batch axis excluded), initialised by ``cfg.init``.

    Shape of the model: (N, *input_shape) -> (N, num_classes) logits.

    With a ``generator``, the build (PyTorch's default init included, for init.scheme=default) draws
    only from it and leaves the global RNG untouched, so a seeded generator gives the same network.
    """
    input_shape = tuple(input_shape)
    factory = MODELS.get(cfg.model.name)
    if generator is None:
        model = factory(cfg.model, input_shape, num_classes)
    else:
        # Module constructors draw their default init from the global RNG; run them on a private
        # copy of it seeded from the generator.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = factory(cfg.model, input_shape, num_classes)
    return init_model(model, cfg.init, generator)
