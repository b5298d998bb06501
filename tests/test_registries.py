"""One battery over every entry of every registry in ``trainwell.registry.ALL`` (timm's test_models.py idea).

Each registry has one :class:`Battery`: it knows how to build an entry with its defaults and run it on
a tiny input of the right kind. Five checks run over every (registry, entry) pair:

* ``smoke``: build with defaults, run on a tiny input, get finite output;
* ``bad_input``: bad arguments (or bad data) raise a one-line ConfigError (DataError for data);
* ``shape``: the output has the shape the entry promises, over every input kind it takes;
* ``reference``: the output equals an independent implementation (hand-written formulas,
  torch.nn.init statistics, torch.optim update rules and lr_scheduler, scikit-learn);
* ``gradcheck``: float64 ``torch.autograd.gradcheck`` where gradients matter.

A check that does not apply says why in its battery's ``skips``; a registry without a battery, an
entry a battery does not know, or a skip with no reason fails. So a newly registered entry runs the
whole battery, or fails until its battery learns it. Per-module tests go deeper on each entry.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pytest
import torch
from torch import nn

import trainwell.experiments.labs  # noqa: F401  (registers every lab; the imports below fill the rest of ALL)
from trainwell.config import Config, DataConfig, InitConfig, ModelConfig, OptimConfig, SchedConfig, TrainConfig
from trainwell.data import DATASETS, PREPROCESSORS, ArrayData, fit_preprocess, load_splits, validate
from trainwell.data.augment import AUGMENTATIONS, build_augmenter, parse_augment
from trainwell.errors import ConfigError, DataError
from trainwell.experiments.lab import LABS, get_lab, lab_plan
from trainwell.nn import ACTIVATIONS, INITS, MODELS, NORMS, build_activation, build_model, build_norm, num_groups
from trainwell.nn.init import init_model, lsuv_init
from trainwell.nn.models import linear
from trainwell.registry import ALL, NoMeta, Registry
from trainwell.train.optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_scheduler

CHECKS = ("smoke", "bad_input", "shape", "reference", "gradcheck")
ANY = "*"  # a skip for every entry of a registry


@dataclass
class Context:
    """What a check may need from pytest."""

    tmp_path: Any
    monkeypatch: Any


@dataclass
class Battery:
    """How to build and run the entries of one registry: a function per check, or a reason to skip it.

    ``checks[check](name, ctx)`` runs one check on one entry; ``skips[check]`` maps an entry name (or
    ``"*"``, every entry) to the reason the check does not apply. ``unknown(name)`` calls the
    registry's public entry point with an unknown name.
    """

    registry: Registry[Any]
    unknown: Callable[[str], Any]
    checks: dict[str, Callable[[str, Context], None]]
    skips: dict[str, dict[str, str]] = field(default_factory=dict)

    def skip_reason(self, check: str, name: str) -> str | None:
        reasons = self.skips.get(check, {})
        return reasons.get(name, reasons.get(ANY))


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _raises(error: type[Exception], call: Callable[[], Any]) -> str:
    """The one-line message of the ``error`` that ``call`` raises."""
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message and "Traceback" not in message, message
    return message


# ----------------------------------------------------------------------------- activations

#: Each activation from the formula in its docstring, written independently of torch.nn, float64.
_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805
ACTIVATION_FORMULAS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "sigmoid": lambda x: 1 / (1 + torch.exp(-x)),
    "tanh": lambda x: (torch.exp(x) - torch.exp(-x)) / (torch.exp(x) + torch.exp(-x)),
    "relu": lambda x: torch.where(x > 0, x, 0.0),
    "leaky_relu": lambda x: torch.where(x > 0, x, 0.01 * x),
    "elu": lambda x: torch.where(x > 0, x, torch.exp(x) - 1),
    "selu": lambda x: _SELU_SCALE * torch.where(x > 0, x, _SELU_ALPHA * (torch.exp(x) - 1)),
    "gelu": lambda x: x * 0.5 * (1 + torch.erf(x / math.sqrt(2))),
    "silu": lambda x: x / (1 + torch.exp(-x)),
}


def _activation_input(shape: tuple[int, ...] = (3, 4), dtype: torch.dtype = torch.float32) -> torch.Tensor:
    # Kept off x = 0, where the rectifiers' kinks have no derivative (gradcheck would see the jump).
    x = torch.randn(shape, generator=_gen(), dtype=dtype)
    return torch.where(x.abs() < 0.1, x.sign() * 0.1 + x, x)


def _activation_smoke(name: str, ctx: Context) -> None:
    assert _finite(build_activation(name)(_activation_input()))


def _activation_bad_input(name: str, ctx: Context) -> None:
    # A NaN for its first argument, or an argument when it takes none: both must be refused.
    takes_args = bool(inspect.signature(ACTIVATIONS.get(name)).parameters)
    _raises(ConfigError, lambda: build_activation(f"{name}:nan" if takes_args else f"{name}:1"))


def _activation_shape(name: str, ctx: Context) -> None:
    module = build_activation(name)
    for shape in [(5,), (2, 3), (2, 3, 4), (2, 3, 4, 5)]:
        x = _activation_input(shape)
        out = module(x)
        assert out.shape == x.shape and out.dtype == x.dtype


def _activation_reference(name: str, ctx: Context) -> None:
    assert name in ACTIVATION_FORMULAS, f"activation '{name}' needs a formula in ACTIVATION_FORMULAS"
    x = torch.linspace(-6, 6, 241, dtype=torch.float64)
    torch.testing.assert_close(build_activation(name)(x), ACTIVATION_FORMULAS[name](x), rtol=1e-12, atol=1e-12)


def _activation_gradcheck(name: str, ctx: Context) -> None:
    x = _activation_input((2, 5), torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(build_activation(name), (x,))


# ----------------------------------------------------------------------------- init

#: torch.nn.init's version of each scheme: (weight, gain, cfg, generator) -> None.
INIT_REFERENCES: dict[str, Callable[[torch.Tensor, float, InitConfig, torch.Generator], Any]] = {
    "default": lambda w, g, cfg, gen: nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen),
    "xavier_uniform": lambda w, g, cfg, gen: nn.init.xavier_uniform_(w, gain=g, generator=gen),
    "xavier_normal": lambda w, g, cfg, gen: nn.init.xavier_normal_(w, gain=g, generator=gen),
    "kaiming_uniform": lambda w, g, cfg, gen: nn.init.kaiming_uniform_(w, a=0.2, nonlinearity="leaky_relu",
                                                                       generator=gen),
    "kaiming_normal": lambda w, g, cfg, gen: nn.init.kaiming_normal_(w, a=0.2, nonlinearity="leaky_relu",
                                                                     generator=gen),
    "orthogonal": lambda w, g, cfg, gen: nn.init.orthogonal_(w, gain=g, generator=gen),
    "lecun_normal": lambda w, g, cfg, gen: nn.init.kaiming_normal_(w, nonlinearity="linear", generator=gen),
    "normal": lambda w, g, cfg, gen: nn.init.normal_(w, 0.0, cfg.std, generator=gen),
    "uniform": lambda w, g, cfg, gen: nn.init.uniform_(w, -math.sqrt(3) * cfg.std, math.sqrt(3) * cfg.std,
                                                       generator=gen),
    "lsuv": lambda w, g, cfg, gen: nn.init.orthogonal_(w, gain=1.0, generator=gen),
}
#: The gain of leaky_relu:0.2, the activation the references above assume (not 1, so a lost gain shows).
_INIT_GAIN = nn.init.calculate_gain("leaky_relu", 0.2)

#: Settings each scheme must refuse (schemes that read no init.* setting are skipped).
INIT_BAD: dict[str, dict[str, Any]] = {
    "kaiming_uniform": {"mode": "fan_middle"},
    "kaiming_normal": {"mode": "fan_middle"},
    "normal": {"std": 0.0},
    "uniform": {"std": -0.01},
    "lsuv": {"lsuv_tol": 2.0},
}


def _tiny_net() -> nn.Module:
    return nn.Sequential(linear(6, 8, "relu"), nn.ReLU(), linear(8, 3, "identity"))


def _init(name: str, weight: torch.Tensor, cfg: InitConfig | None = None) -> torch.Tensor:
    """``weight`` filled by the scheme's factory, as init_model calls it (gain of leaky_relu:0.2)."""
    with torch.no_grad():
        INITS.get(name)(weight, _INIT_GAIN, cfg or InitConfig(scheme=name), _gen(1))
    return weight


def _fresh_weight(shape: tuple[int, ...]) -> torch.Tensor:
    """A weight as PyTorch's layer constructor leaves it (what scheme=default keeps)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        layer = nn.Linear(shape[1], shape[0]) if len(shape) == 2 else nn.Conv2d(shape[1], shape[0], shape[2:])
    return layer.weight.detach().clone()


def _init_smoke(name: str, ctx: Context) -> None:
    net = init_model(_tiny_net(), InitConfig(scheme=name), _gen())
    if INITS.entry(name).meta.needs_batch:
        lsuv_init(net, torch.randn(16, 6, generator=_gen(3)), InitConfig(scheme=name), _gen())
    assert all(_finite(p) for p in net.parameters())


def _init_bad_input(name: str, ctx: Context) -> None:
    assert name in INIT_BAD, f"init '{name}' needs settings it refuses in INIT_BAD, or a reason to skip"
    cfg = InitConfig(scheme=name, **INIT_BAD[name])
    if INITS.entry(name).meta.needs_batch:  # its settings are read by the data step
        _raises(ConfigError, lambda: lsuv_init(_tiny_net(), torch.randn(8, 6, generator=_gen()), cfg, _gen()))
    else:
        _raises(ConfigError, lambda: init_model(_tiny_net(), cfg, _gen()))


def _init_shape(name: str, ctx: Context) -> None:
    for shape in [(4, 3), (3, 7), (4, 2, 3, 3)]:
        weight = _init(name, _fresh_weight(shape))
        assert weight.shape == shape and weight.dtype == torch.float32 and _finite(weight)


def _init_reference(name: str, ctx: Context) -> None:
    """Quantiles of ours and torch.nn.init's on a 128 x 256 weight (32k draws, other seeds) agree
    within 0.06 std (3.5 standard errors at the 5% quantile), and so do their stds within 2%."""
    assert name in INIT_REFERENCES, f"init '{name}' needs a torch.nn.init reference in INIT_REFERENCES"
    shape = (128, 256)
    ours = _init(name, _fresh_weight(shape))
    theirs = torch.empty(shape)
    INIT_REFERENCES[name](theirs, _INIT_GAIN, InitConfig(scheme=name), _gen(4))
    qs = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])
    torch.testing.assert_close(ours.flatten().quantile(qs), theirs.flatten().quantile(qs),
                               rtol=0, atol=0.06 * float(theirs.std()))
    assert abs(float(ours.std()) / float(theirs.std()) - 1) < 0.02


# ----------------------------------------------------------------------------- models

_MODEL_SHAPES = {1: (6,), 2: (2, 9), 3: (2, 8, 8)}


def _model_cfg(name: str, **model: Any) -> Config:
    small = {"width": 4, "depth": 1, "channels": [3, 4], "hidden": 4, **model}
    return dataclasses.replace(Config(), model=dataclasses.replace(ModelConfig(), name=name, **small))


def _model_smoke(name: str, ctx: Context) -> None:
    rank = MODELS.entry(name).meta.input_ranks[0]
    net = build_model(_model_cfg(name), _MODEL_SHAPES[rank], 3, generator=_gen())
    assert _finite(net(torch.randn(2, *_MODEL_SHAPES[rank], generator=_gen())))


def _model_bad_input(name: str, ctx: Context) -> None:
    ranks = MODELS.entry(name).meta.input_ranks
    wrong = next(r for r in range(1, 5) if r not in ranks)
    message = _raises(ConfigError, lambda: build_model(_model_cfg(name), (2,) * wrong, 3))
    assert f"model.name={name}" in message
    _raises(ConfigError, lambda: build_model(_model_cfg(name, dropout=1.0), _MODEL_SHAPES[ranks[0]], 3))


def _model_shape(name: str, ctx: Context) -> None:
    for rank in MODELS.entry(name).meta.input_ranks:
        for n, classes in [(2, 3), (5, 1)]:
            net = build_model(_model_cfg(name), _MODEL_SHAPES[rank], classes, generator=_gen())
            assert net(torch.randn(n, *_MODEL_SHAPES[rank], generator=_gen())).shape == (n, classes)


def _model_gradcheck(name: str, ctx: Context) -> None:
    """d logits / d input by gradcheck (float64, a smooth activation), and every parameter gets a gradient."""
    rank = MODELS.entry(name).meta.input_ranks[-1]
    shape = {1: (5,), 2: (1, 6), 3: (1, 4, 4)}[rank]
    net = build_model(_model_cfg(name, activation="silu", width=2, channels=[2], hidden=2), shape, 2,
                      generator=_gen()).double()
    x = torch.randn(3, *shape, generator=_gen(), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(net, (x,))
    net(x).square().sum().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not dead, f"parameters without a gradient: {dead}"


# ----------------------------------------------------------------------------- norms


def _norm_input(dims: int, dtype: torch.dtype = torch.float32, n: int = 4, size: int = 5) -> torch.Tensor:
    return torch.randn((n, 8, *(size,) * dims), generator=_gen(), dtype=dtype) * 3 + 1


def _norm_smoke(name: str, ctx: Context) -> None:
    assert _finite(build_norm(name, 8, 0)(_norm_input(0)))


def _norm_bad_input(name: str, ctx: Context) -> None:
    _raises(ConfigError, lambda: build_norm(name, 0, 0))
    _raises(ConfigError, lambda: build_norm(name, 8, 3))


def _norm_shape(name: str, ctx: Context) -> None:
    for dims in (0, 1, 2):
        x = _norm_input(dims)
        assert build_norm(name, 8, dims)(x).shape == x.shape


def _standardised(x: torch.Tensor, over: tuple[int, ...]) -> torch.Tensor:
    mean = x.mean(over, keepdim=True)
    var = ((x - mean) ** 2).mean(over, keepdim=True)  # biased, as the normalisation uses
    return (x - mean) / torch.sqrt(var + 1e-5)


def _group_standardised(x: torch.Tensor, groups: int) -> torch.Tensor:
    grouped = x.reshape(x.shape[0], groups, -1)
    return _standardised(grouped, (2,)).reshape(x.shape)


#: Each norm, by hand (scale 1, shift 0, eps 1e-5): (x, dims) -> the normalised x in training mode.
NORM_FORMULAS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "none": lambda x, dims: x,
    "batch": lambda x, dims: _standardised(x, (0, *range(2, 2 + dims))),
    "layer": lambda x, dims: _standardised(x, tuple(range(1, 2 + dims))),
    "group": lambda x, dims: _group_standardised(x, num_groups(x.shape[1])),
}


def _norm_reference(name: str, ctx: Context) -> None:
    assert name in NORM_FORMULAS, f"norm '{name}' needs a formula in NORM_FORMULAS"
    for dims in (0, 1, 2):
        x = _norm_input(dims, torch.float64)
        module = build_norm(name, 8, dims).double().train()
        torch.testing.assert_close(module(x), NORM_FORMULAS[name](x, dims), rtol=1e-9, atol=1e-9)


def _norm_gradcheck(name: str, ctx: Context) -> None:
    for dims in (0, 1):
        module = build_norm(name, 8, dims).double().train()
        x = _norm_input(dims, torch.float64, n=3, size=3).requires_grad_()
        assert torch.autograd.gradcheck(module, (x,))


# ----------------------------------------------------------------------------- optimisers


def _optim_net() -> nn.Linear:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Linear(3, 2)


def _optim_step(name: str, **cfg: Any) -> tuple[nn.Linear, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One step of ``name`` on a Linear(3, 2) with a fixed gradient: (net, params before, their gradients)."""
    net = _optim_net()
    optimizer, _ = build_optimizer(net, OptimConfig(name=name, **cfg))
    x = torch.randn(4, 3, generator=_gen())
    net(x).square().sum().backward()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    grads = {n: p.grad.detach().clone() for n, p in net.named_parameters()}
    optimizer.step()
    return net, before, grads


def _sgd_first_step(p: torch.Tensor, g: torch.Tensor, wd: float, cfg: OptimConfig) -> torch.Tensor:
    """SGD with (Nesterov) momentum, L2-coupled decay, from zero momentum: d = g + wd p; p - lr (1 + m) d."""
    d = g + wd * p
    return p - cfg.lr * ((1 + cfg.momentum) * d if cfg.nesterov else d)


def _adam_first_step(p: torch.Tensor, g: torch.Tensor, wd: float, cfg: OptimConfig,
                     decoupled: bool) -> torch.Tensor:
    """Adam's first step (bias-corrected moments m = g, v = g²): p - lr g / (|g| + eps); decay coupled
    into g, or decoupled as p (1 - lr wd) (AdamW)."""
    if decoupled:
        p = p * (1 - cfg.lr * wd)
    else:
        g = g + wd * p
    return p - cfg.lr * g / (g.abs() + cfg.eps)


#: Each optimiser's first step from zero state, by hand: (p, grad, weight decay, cfg, decoupled) -> p.
OPTIM_FIRST_STEPS: dict[str, Callable[..., torch.Tensor]] = {
    "sgd": lambda p, g, wd, cfg, decoupled: _sgd_first_step(p, g, wd, cfg),
    "adam": _adam_first_step,
    "adamw": _adam_first_step,
}


def _optim_smoke(name: str, ctx: Context) -> None:
    net, before, _ = _optim_step(name)
    assert all(_finite(p) for p in net.parameters())
    assert not torch.equal(net.weight, before["weight"])


def _optim_bad_input(name: str, ctx: Context) -> None:
    _raises(ConfigError, lambda: build_optimizer(_optim_net(), OptimConfig(name=name, lr=-0.1)))
    _raises(ConfigError, lambda: build_optimizer(_optim_net(), OptimConfig(name=name, lr="auto")))
    _raises(ConfigError, lambda: build_optimizer(nn.Identity(), OptimConfig(name=name)))


def _optim_shape(name: str, ctx: Context) -> None:
    net, before, _ = _optim_step(name)
    assert {n: p.shape for n, p in net.named_parameters()} == {n: p.shape for n, p in before.items()}


def _optim_reference(name: str, ctx: Context) -> None:
    """The first step equals the update rule written out, decaying the weight only (decoupled or not as
    the entry's metadata says)."""
    assert name in OPTIM_FIRST_STEPS, f"optimiser '{name}' needs a first step in OPTIM_FIRST_STEPS"
    cfg = OptimConfig(name=name, lr=0.01, weight_decay=0.1)
    net, before, grads = _optim_step(name, lr=cfg.lr, weight_decay=cfg.weight_decay)
    decoupled = OPTIMIZERS.entry(name).meta.decoupled
    for param_name, p in net.named_parameters():
        wd = cfg.weight_decay if param_name == "weight" else 0.0  # biases never decay
        expected = OPTIM_FIRST_STEPS[name](before[param_name], grads[param_name], wd, cfg, decoupled)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- schedules

#: Settings a schedule needs beyond the defaults to run at all.
SCHED_NEEDS: dict[str, dict[str, Any]] = {"cosine_restarts": {"cycles": 2}}
_STEPS_PER_EPOCH, _EPOCHS, _LR, _STEP_EPOCHS, _MIN_LR = 3, 8, 0.1, 3, 0.001


def _sched_config(name: str, **sched: Any) -> Config:
    return dataclasses.replace(
        Config(), sched=SchedConfig(name=name, **{**SCHED_NEEDS.get(name, {}), **sched}),
        train=dataclasses.replace(TrainConfig(), epochs=_EPOCHS), optim=OptimConfig(lr=_LR),
    )


def _schedule(name: str, **sched: Any) -> list[float]:
    """The learning rate at every step of an 8-epoch run of 3 steps each."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=_LR)
    table = build_scheduler(optimizer, _sched_config(name, **sched), _STEPS_PER_EPOCH)
    rates = []
    for _ in range(_STEPS_PER_EPOCH * _EPOCHS):
        rates.append(optimizer.param_groups[0]["lr"])
        table.step()
    return rates


def _torch_schedule(make: Callable[[torch.optim.Optimizer], Any]) -> list[float]:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=_LR)
    scheduler = make(optimizer)
    rates = []
    for _ in range(_STEPS_PER_EPOCH * _EPOCHS):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


_TOTAL = _STEPS_PER_EPOCH * _EPOCHS
#: torch.optim.lr_scheduler's version of each schedule (no warmup, sched.min_lr=0.001, step_epochs=3, 2 cycles).
SCHED_REFERENCES: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "constant": lambda opt: torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0),
    "step": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=_STEP_EPOCHS * _STEPS_PER_EPOCH,
                                                        gamma=SchedConfig().gamma),
    "cosine": lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=_TOTAL, eta_min=_MIN_LR),
    "cosine_restarts": lambda opt: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=_TOTAL // 2,
                                                                                         eta_min=_MIN_LR),
}


def _sched_smoke(name: str, ctx: Context) -> None:
    rates = _schedule(name)
    assert all(math.isfinite(r) and 0 <= r <= _LR * (1 + 1e-12) for r in rates)


def _sched_bad_input(name: str, ctx: Context) -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=_LR)
    _raises(ConfigError, lambda: build_scheduler(optimizer, _sched_config(name, warmup_epochs=_EPOCHS + 1),
                                                 _STEPS_PER_EPOCH))
    _raises(ConfigError, lambda: SchedConfig(name=name, warmup_epochs=-1.0))


def _sched_shape(name: str, ctx: Context) -> None:
    """One rate per step; with warmup, it rises linearly to optim.lr first (the promise of every schedule)."""
    assert len(_schedule(name)) == _TOTAL
    warm = _schedule(name, warmup_epochs=2.0)
    warmup = 2 * _STEPS_PER_EPOCH
    np.testing.assert_allclose(warm[:warmup], [_LR * (i + 1) / warmup for i in range(warmup)], rtol=1e-12)


def _sched_reference(name: str, ctx: Context) -> None:
    assert name in SCHED_REFERENCES, f"schedule '{name}' needs a torch.optim.lr_scheduler reference"
    np.testing.assert_allclose(_schedule(name, min_lr=_MIN_LR, step_epochs=_STEP_EPOCHS),
                               _torch_schedule(SCHED_REFERENCES[name]),
                               rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- preprocessing


def _pre_cfg(**data: Any) -> DataConfig:
    return dataclasses.replace(DataConfig(), **{"pca_components": 3, **data})


def _pre_input(shape: tuple[int, ...] = (6,), n: int = 40) -> torch.Tensor:
    # Correlated features with unequal scales and a non-zero mean: every step of every preprocessor matters.
    z = torch.randn(n, math.prod(shape), generator=_gen())
    mix = torch.randn(z.shape[1], z.shape[1], generator=_gen(1))
    return (z @ mix * torch.linspace(0.5, 3, z.shape[1]) + 2).reshape(n, *shape)


def _pre_smoke(name: str, ctx: Context) -> None:
    """Fit, forward, and inverse(forward(x)) == x where the entry promises to be invertible."""
    x = _pre_input()
    module = fit_preprocess(name, x, _pre_cfg(whiten_eps=0.0))
    out = module(x)
    assert _finite(out) and out.dtype == torch.float32
    if PREPROCESSORS.entry(name).meta.invertible:
        torch.testing.assert_close(module.inverse(out), x, rtol=1e-4, atol=1e-4)


def _pre_bad_input(name: str, ctx: Context) -> None:
    x = _pre_input()
    x[3, 2] = math.nan
    _raises(DataError, lambda: fit_preprocess(name, x, _pre_cfg()))
    _raises(DataError, lambda: fit_preprocess(name, torch.zeros(0, 6), _pre_cfg()))
    if name in PRE_BAD:
        _raises(ConfigError, lambda: fit_preprocess(name, _pre_input(), _pre_cfg(**PRE_BAD[name])))


#: Settings each preprocessor that reads one must refuse.
PRE_BAD: dict[str, dict[str, Any]] = {
    "pca": {"pca_components": 0},
    "pca_whiten": {"pca_components": -1},
    "zca": {"whiten_eps": -1.0},
}


def _pre_shape(name: str, ctx: Context) -> None:
    reduces = PREPROCESSORS.entry(name).meta.reduces_dims
    for shape in [(6,), (2, 5), (1, 3, 3)]:
        x = _pre_input(shape)
        module = fit_preprocess(name, x, _pre_cfg())
        promised = module.output_shape(shape)
        assert module(x).shape == (len(x), *promised)
        assert promised == ((3,) if reduces else shape)
    pixels = torch.randint(0, 256, (30, 1, 3, 3), generator=_gen(), dtype=torch.uint8)
    module = fit_preprocess(name, pixels, _pre_cfg())
    assert module(pixels).dtype == torch.float32


def _sklearn_pca(x: np.ndarray, whiten: bool) -> np.ndarray:
    from sklearn.decomposition import PCA

    return PCA(n_components=3, whiten=whiten).fit(x).transform(x)


def _numpy_zca(x: np.ndarray) -> np.ndarray:
    """ZCA by hand (scikit-learn has none): (x - mean) U diag(1/sqrt(λ)) Uᵀ, covariance over N - 1 as in PCA."""
    centred = x - x.mean(0)
    eigenvalues, u = np.linalg.eigh(np.cov(centred, rowvar=False))
    return centred @ u @ np.diag(eigenvalues ** -0.5) @ u.T


def _sklearn_standardize(x: np.ndarray) -> np.ndarray:
    from sklearn.preprocessing import StandardScaler

    return StandardScaler().fit_transform(x)


#: scikit-learn's (or numpy's) version of each preprocessor on (N, F) float64 data, exact (eps 0).
PRE_REFERENCES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda x: x,
    "standardize": _sklearn_standardize,
    "pca": lambda x: _sklearn_pca(x, whiten=False),
    "pca_whiten": lambda x: _sklearn_pca(x, whiten=True),
    "zca": _numpy_zca,
}


def _pre_reference(name: str, ctx: Context) -> None:
    assert name in PRE_REFERENCES, f"preprocess '{name}' needs a reference in PRE_REFERENCES"
    x = _pre_input()
    ours = fit_preprocess(name, x, _pre_cfg(whiten_eps=0.0))(x)
    np.testing.assert_allclose(ours.numpy(), PRE_REFERENCES[name](x.double().numpy()), rtol=1e-3, atol=1e-4)


# ----------------------------------------------------------------------------- data sources


def _write_idx(path) -> tuple[np.ndarray, np.ndarray]:
    from test_data_sources import make_idx_folder

    x, y, _, _ = make_idx_folder(path, n=12, n_test=5)
    return x[:, None], y


def _write_cifar(path) -> tuple[np.ndarray, np.ndarray]:
    from test_data_sources import cifar10_files, unpickled, write_files

    files = cifar10_files()
    write_files(path, files)
    batches = [unpickled(files[f"data_batch_{i}"]) for i in (1, 2)]
    x = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
    return x, np.concatenate([b[b"labels"] for b in batches])


def _write_folder(path) -> tuple[np.ndarray, np.ndarray]:
    from test_data_sources import save_png

    x = np.random.default_rng(0).integers(0, 256, (4, 1, 5, 6), dtype=np.uint8)
    for i, image in enumerate(x):
        save_png(path / ("ab"[i // 2]) / f"{i}.png", image[0])
    return x, np.array([0, 0, 1, 1])


def _write_npz(path) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(0).normal(size=(10, 2, 8)).astype(np.float32)
    y = np.arange(10) % 3
    path.mkdir()
    np.savez(path / "d.npz", x=x, y=y)
    return x, y


def _write_csv(path) -> tuple[np.ndarray, np.ndarray]:
    x = np.round(np.random.default_rng(0).normal(size=(8, 3)), 3).astype(np.float32)
    y = np.arange(8) % 2
    path.mkdir()
    rows = ["a,b,c,label"] + [",".join(f"{v:g}" for v in row) + f",{label}" for row, label in zip(x, y)]
    (path / "d.csv").write_text("\n".join(rows) + "\n")
    return x, y


#: A tiny input of every file-based source: (folder) -> (x, y) written; data.path is the folder or
#: its one file.
DATA_WRITERS: dict[str, Callable[[Any], tuple[np.ndarray, np.ndarray]]] = {
    "idx": _write_idx, "cifar": _write_cifar, "folder": _write_folder, "npz": _write_npz, "csv": _write_csv,
}
#: The arrays each kind of source promises: example rank, dtype.
DATA_KINDS = {"image": (3, np.uint8), "signal": (2, np.float32), "tabular": (1, np.float32)}


def _data_load(name: str, ctx: Context) -> tuple[ArrayData, tuple[np.ndarray, np.ndarray] | None]:
    """Load ``name`` from a tiny input (written first for a file source): (data, what was written)."""
    if not DATASETS.entry(name).meta.needs_path:
        if name == "mnist1d":  # generated: keep it small, in a private cache
            from trainwell.data import sources

            ctx.monkeypatch.setenv("TRAINWELL_CACHE", str(ctx.tmp_path / "cache"))
            ctx.monkeypatch.setitem(sources.MNIST1D_ARGS, "num_samples", 100)
        return DATASETS.get(name)(DataConfig(name=name)), None
    assert name in DATA_WRITERS, f"data source '{name}' needs a writer of a tiny input in DATA_WRITERS"
    folder = ctx.tmp_path / name
    written = DATA_WRITERS[name](folder)
    files = [p for p in folder.iterdir() if p.is_file()]
    path = files[0] if len(files) == 1 else folder
    return DATASETS.get(name)(DataConfig(name=name, path=str(path))), written


def _data_smoke(name: str, ctx: Context) -> None:
    data, _ = _data_load(name, ctx)
    validate(data, name)


def _data_bad_input(name: str, ctx: Context) -> None:
    message = _raises(ConfigError, lambda: DATASETS.get(name)(DataConfig(name=name)))
    assert "data.path" in message
    missing = ctx.tmp_path / "missing"
    _raises(DataError, lambda: DATASETS.get(name)(DataConfig(name=name, path=str(missing))))


def _data_shape(name: str, ctx: Context) -> None:
    data, _ = _data_load(name, ctx)
    kind = DATASETS.entry(name).meta.kind
    rank, dtype = DATA_KINDS.get(kind, (data.x.ndim - 1, data.x.dtype))
    assert data.x.ndim == rank + 1 and data.x.dtype == dtype, (data.x.shape, data.x.dtype)
    assert data.y.shape == (len(data.x),) and data.y.dtype == np.int64
    assert len(data.classes) > int(max(data.y.max(), -1 if data.y_test is None else data.y_test.max()))
    if data.x_test is not None:
        assert data.x_test.shape[1:] == data.x.shape[1:] and data.y_test.shape == (len(data.x_test),)


def _data_reference(name: str, ctx: Context) -> None:
    data, (x, y) = _data_load(name, ctx)
    np.testing.assert_array_equal(data.x, x.astype(data.x.dtype))
    np.testing.assert_array_equal(data.y, y)


# ----------------------------------------------------------------------------- augmentations

_AUG_SHAPES = {0: (5,), 1: (2, 12), 2: (2, 10, 10)}


def _aug_input(rank: int, dtype: torch.dtype = torch.float32, n: int = 4) -> torch.Tensor:
    return torch.rand((n, *_AUG_SHAPES[rank]), generator=_gen(), dtype=dtype)


def _aug_ranks(name: str) -> list[int]:
    return sorted(AUGMENTATIONS.entry(name).meta.ranks)


def _aug_smoke(name: str, ctx: Context) -> None:
    rank = _aug_ranks(name)[0]
    aug = build_augmenter([name], _AUG_SHAPES[rank])
    assert _finite(aug(_aug_input(rank), _gen()))


def _aug_bad_input(name: str, ctx: Context) -> None:
    assert "no argument 'nope'" in _raises(ConfigError, lambda: parse_augment(f"{name}:nope=1"))
    _raises(ConfigError, lambda: parse_augment([{name: {"p": 2}}]))
    wrong = next((r for r in (0, 1, 2) if r not in AUGMENTATIONS.entry(name).meta.ranks), None)
    if wrong is not None:  # an input it does not fit
        _raises(ConfigError, lambda: build_augmenter([name], _AUG_SHAPES[wrong]))


def _aug_shape(name: str, ctx: Context) -> None:
    for rank in _aug_ranks(name):
        for n in (1, 3):
            x = _aug_input(rank, n=n)
            out = build_augmenter([name], _AUG_SHAPES[rank])(x, _gen())
            assert out.shape == x.shape and out.dtype == x.dtype


def _sample_params(params: Any, i: int, n: int) -> Any:
    """Sample ``i``'s share of a batch's params: every (N, ...) tensor field sliced to (1, ...)."""
    return dataclasses.replace(params, **{
        f.name: getattr(params, f.name)[i : i + 1]
        for f in dataclasses.fields(params)
        if isinstance(getattr(params, f.name), torch.Tensor) and getattr(params, f.name).shape[:1] == (n,)
    })


def _aug_reference(name: str, ctx: Context) -> None:
    """The batched op equals the op applied to each sample alone with its own parameters (a per-sample loop)."""
    for rank in _aug_ranks(name):
        x = _aug_input(rank)
        aug = build_augmenter([{name: {"p": 0.5}}], _AUG_SHAPES[rank])  # some samples on, some off
        (params,) = aug.sample(x.shape, _gen(5), x.device)
        apply = AUGMENTATIONS.entry(name).meta.apply
        looped = torch.cat([apply(x[i : i + 1], _sample_params(params, i, len(x))) for i in range(len(x))])
        torch.testing.assert_close(apply(x, params), looped, rtol=1e-6, atol=1e-6)


def _aug_gradcheck(name: str, ctx: Context) -> None:
    """d apply(x, params) / dx, float64, with the random params drawn once (every op is linear in x)."""
    apply = AUGMENTATIONS.entry(name).meta.apply
    for rank in _aug_ranks(name):
        x = _aug_input(rank, torch.float64, n=2)[..., :5].contiguous().requires_grad_()
        (params,) = build_augmenter([name], x.shape[1:]).sample(x.shape, _gen(5), x.device)
        assert torch.autograd.gradcheck(lambda t: apply(t, params), (x,))


# ----------------------------------------------------------------------------- labs


def _lab_smoke(name: str, ctx: Context) -> None:
    """The lab's quick plan resolves to a config per cell (what `trainwell lab NAME` runs first)."""
    lab = get_lab(name)
    assert all(isinstance(c, Config) for c in lab_plan(lab, quick=True).configs())


def _lab_bad_input(name: str, ctx: Context) -> None:
    _raises(ConfigError, lambda: lab_plan(get_lab(name), ["model.nope=1"], quick=True).configs())


def _lab_shape(name: str, ctx: Context) -> None:
    lab = get_lab(name)
    plan = lab_plan(lab, quick=True)
    assert lab.name == name and lab.claim and LABS.entry(name).meta.question == lab.question
    assert len(plan.configs()) == len(lab.cells) >= 1 and len(plan.seeds) == lab.seeds
    # a lab compares cells, or (one cell, as ensembles) compares what it forms from many seeds
    assert len(lab.cells) >= 2 or lab.seeds >= 4
    assert len({c.label for c in lab.cells}) == len(lab.cells)


# ----------------------------------------------------------------------------- the batteries

_NO_GRADIENT = "no gradient flows through it"
BATTERIES: dict[str, Battery] = {
    "activation": Battery(
        ACTIVATIONS, build_activation,
        {"smoke": _activation_smoke, "bad_input": _activation_bad_input, "shape": _activation_shape,
         "reference": _activation_reference, "gradcheck": _activation_gradcheck},
    ),
    "init": Battery(
        INITS, lambda name: init_model(_tiny_net(), InitConfig(scheme=name)),
        {"smoke": _init_smoke, "bad_input": _init_bad_input, "shape": _init_shape, "reference": _init_reference},
        {"gradcheck": {ANY: f"fills weights in place under no_grad: {_NO_GRADIENT}"},
         "bad_input": {**{n: "reads no init.* setting that could be wrong" for n in ("default", "lecun_normal")},
                       **{n: "reads only init.gain, which InitConfig refuses itself when bad (tests/test_nn_init.py)"
                          for n in ("xavier_uniform", "xavier_normal", "orthogonal")}}},
    ),
    "model": Battery(
        MODELS, lambda name: build_model(_model_cfg(name), (6,), 3),
        {"smoke": _model_smoke, "bad_input": _model_bad_input, "shape": _model_shape, "gradcheck": _model_gradcheck},
        {"reference": {ANY: "no independent implementation of these architectures (torchvision's are ImageNet-sized)"}},
    ),
    "norm": Battery(
        NORMS, lambda name: build_norm(name, 8, 0),
        {"smoke": _norm_smoke, "bad_input": _norm_bad_input, "shape": _norm_shape, "reference": _norm_reference,
         "gradcheck": _norm_gradcheck},
    ),
    "optim": Battery(
        OPTIMIZERS, lambda name: build_optimizer(_optim_net(), OptimConfig(name=name)),
        {"smoke": _optim_smoke, "bad_input": _optim_bad_input, "shape": _optim_shape, "reference": _optim_reference},
        {"gradcheck": {ANY: f"an optimiser step is not differentiated: {_NO_GRADIENT}"}},
    ),
    "sched": Battery(
        SCHEDULES, lambda name: _schedule(name),
        {"smoke": _sched_smoke, "bad_input": _sched_bad_input, "shape": _sched_shape, "reference": _sched_reference},
        {"gradcheck": {ANY: f"a learning rate per step: {_NO_GRADIENT}"},
         "reference": {"onecycle": "torch's OneCycleLR warms up from max_lr/div_factor, not from lr/warmup_steps; "
                                   "test_optim.py checks the closed form"}},
    ),
    "preprocess": Battery(
        PREPROCESSORS, lambda name: fit_preprocess(name, _pre_input()),
        {"smoke": _pre_smoke, "bad_input": _pre_bad_input, "shape": _pre_shape, "reference": _pre_reference},
        {"gradcheck": {ANY: f"fitted statistics, no trainable parameters, applied to data: {_NO_GRADIENT} that training uses"}},
    ),
    "data": Battery(
        DATASETS, lambda name: load_splits(DataConfig(name=name)),
        {"smoke": _data_smoke, "bad_input": _data_bad_input, "shape": _data_shape, "reference": _data_reference},
        {"gradcheck": {ANY: f"loads arrays: {_NO_GRADIENT}"},
         "bad_input": {"digits": "takes no path or setting of its own", "mnist1d": "takes no path or setting of its own"},
         "reference": {"digits": "test_data_sources.py compares it with sklearn.datasets.load_digits",
                       "mnist1d": "test_data_sources.py compares it with the reference generator"}},
    ),
    "augment": Battery(
        AUGMENTATIONS, lambda name: parse_augment(name),
        {"smoke": _aug_smoke, "bad_input": _aug_bad_input, "shape": _aug_shape, "reference": _aug_reference,
         "gradcheck": _aug_gradcheck},
        {"gradcheck": {n: "writes its result with out=, which autograd refuses; augmentations run on data, "
                          "which needs no gradient" for n in ("hflip", "vflip", "rotation", "scale")}},
    ),
    "lab": Battery(
        LABS, get_lab,
        {"smoke": _lab_smoke, "bad_input": _lab_bad_input, "shape": _lab_shape},
        {"reference": {ANY: "a lab's verdict comes from real runs; test_lab_*.py run each one quickly"},
         "gradcheck": {ANY: f"a plan of runs: {_NO_GRADIENT}"}},
    ),
}

CASES = [pytest.param(kind, entry.name, id=f"{kind}-{entry.name}") for kind in sorted(ALL) for entry in ALL[kind]]


def _run(check: str, kind: str, name: str, ctx: Context) -> None:
    battery = BATTERIES.get(kind)
    if battery is None:
        pytest.fail(f"registry '{kind}' has no battery in BATTERIES")
    reason = battery.skip_reason(check, name)
    if reason:
        pytest.skip(reason)
    if check not in battery.checks:
        pytest.fail(f"the {kind} battery has no {check} check and states no reason to skip it for '{name}'")
    battery.checks[check](name, ctx)


@pytest.fixture
def ctx(tmp_path, monkeypatch) -> Context:
    return Context(tmp_path, monkeypatch)


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize(("kind", "name"), CASES)
def test_battery(check, kind, name, ctx):
    _run(check, kind, name, ctx)


# ----------------------------------------------------------------------------- the batteries themselves


def test_every_registry_has_a_battery_and_every_battery_a_registry():
    assert set(BATTERIES) == set(ALL)
    assert all(BATTERIES[kind].registry is ALL[kind] for kind in ALL)


def test_every_skip_names_a_check_and_an_entry_and_gives_a_reason():
    for kind, battery in BATTERIES.items():
        for check, reasons in battery.skips.items():
            assert check in CHECKS, (kind, check)
            assert not (check in battery.checks and ANY in reasons), f"{kind}: {check} both run and skipped"
            for name, reason in reasons.items():
                assert name == ANY or name in battery.registry, f"{kind}: skip of unknown entry '{name}'"
                assert isinstance(reason, str) and len(reason.split()) >= 3, (kind, check, name)
                assert not (name != ANY and check not in battery.checks), f"{kind}: {check} has no check to skip"


def test_each_entry_runs_each_check_or_says_why_not():
    for kind, battery in BATTERIES.items():
        for entry in battery.registry:
            for check in CHECKS:
                assert check in battery.checks or battery.skip_reason(check, entry.name), (kind, entry.name, check)


@pytest.mark.parametrize("kind", sorted(BATTERIES))
def test_unknown_name_is_a_config_error_listing_every_choice(kind):
    message = _raises(ConfigError, lambda: BATTERIES[kind].unknown("no_such_entry"))
    assert "unknown" in message and "'no_such_entry'" in message
    listed = message.rsplit("Valid: ", 1)[1].removesuffix(".").split(", ")
    assert listed == sorted(BATTERIES[kind].registry.names()), message


# ----------------------------------------------------------------------------- typed metadata


@pytest.mark.parametrize("kind", sorted(ALL))
def test_each_registry_declares_a_frozen_meta_dataclass_and_its_entries_carry_it(kind):
    registry = ALL[kind]
    assert dataclasses.is_dataclass(registry.meta_type) and registry.meta_type.__dataclass_params__.frozen
    for entry in registry:
        assert type(entry.meta) is registry.meta_type
        with pytest.raises(dataclasses.FrozenInstanceError):
            entry.meta.__setattr__(dataclasses.fields(entry.meta)[0].name, None)


@dataclass(frozen=True)
class _Meta:
    family: Literal["a", "b"]
    gain: Callable[..., float]
    ranks: tuple[int, ...]
    fraction: float | None = None
    names: frozenset[str] = frozenset()
    defaults: dict[str, Any] = field(default_factory=dict)


def _registered(**meta: Any) -> Any:
    registry = Registry("thing", _Meta)
    registry.add("x", lambda: None, "A thing.", **meta)
    return registry.entry("x").meta


_GOOD = {"family": "a", "gain": lambda: 1.0, "ranks": (1, 2)}


def test_good_metadata_is_kept_typed_with_its_defaults():
    meta = _registered(**_GOOD, fraction=3, names=frozenset({"p"}))
    assert meta == _Meta("a", _GOOD["gain"], (1, 2), 3, frozenset({"p"}), {})
    assert _registered(**_GOOD).fraction is None


@pytest.mark.parametrize(("change", "says"), [
    ({"family": "c"}, r"thing 'x': metadata field family must be Literal\['a', 'b'\], got 'c'"),
    ({"gain": 1.0}, r"field gain must be Callable\[\.\.\., float\], got 1\.0"),
    ({"ranks": [1, 2]}, r"field ranks must be tuple\[int, \.\.\.\], got \[1, 2\]"),
    ({"ranks": (1, "2")}, r"field ranks must be tuple\[int, \.\.\.\]"),
    ({"ranks": (True,)}, r"field ranks must be tuple\[int, \.\.\.\]"),  # a bool is not an int here
    ({"fraction": "0.3"}, r"field fraction must be float \| None, got '0\.3'"),
    ({"names": frozenset({1})}, r"field names must be frozenset\[str\]"),
    ({"defaults": {1: 2}}, r"field defaults must be dict\[str, Any\]"),
    ({"gainz": 1.0}, r"thing 'x': unknown metadata field\(s\) gainz \(_Meta fields: family, gain, ranks, fraction"),
    ({"ranks": None, "gain": None}, r"must be"),
])
def test_wrong_unknown_or_mistyped_metadata_raises_naming_entry_field_and_type(change, says):
    with pytest.raises(TypeError, match=says):
        _registered(**{**_GOOD, **change})


def test_missing_metadata_raises_naming_every_missing_field():
    with pytest.raises(TypeError, match=r"thing 'x': missing metadata field\(s\) gain, ranks \(_Meta fields"):
        _registered(family="a")


def test_a_registry_without_metadata_takes_none():
    registry = Registry("finding", NoMeta)
    registry.add("f", lambda: None, "A finding.")
    assert registry.entry("f").meta == NoMeta()
    with pytest.raises(TypeError, match="unknown metadata field"):
        registry.add("g", lambda: None, "Another.", severity=1)


def test_bad_metadata_fails_at_import_time():
    """A module registering a mistyped entry cannot be imported: the error is the registration's."""
    import sys
    import textwrap
    import types

    source = textwrap.dedent('''
        from trainwell.nn.norms import NORMS

        @NORMS.register("broken_norm", absorbs_bias="no", batch_dependent=False)
        def broken(num_features, dims):
            "Never registered."
    ''')
    module = types.ModuleType("_broken_norm_module")
    with pytest.raises(TypeError, match=r"norm 'broken_norm': metadata field absorbs_bias must be bool, got 'no'"):
        exec(compile(source, "<broken_norm_module>", "exec"), module.__dict__)
    assert "broken_norm" not in NORMS and "_broken_norm_module" not in sys.modules
