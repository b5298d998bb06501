"""Init schemes: each draws from the distribution its paper gives, with the right fans and gains."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torch import nn
from torch.nn.init import calculate_gain

from trainwell.config import Config, InitConfig
from trainwell.errors import ConfigError
from trainwell.nn import INITS, activation_gain, build_model, fans, init_model, layer_gain


def _normal(std):
    return stats.norm(0.0, std)


def _uniform(bound):
    return stats.uniform(-bound, 2 * bound)


#: The exact distribution of each iid scheme, from (fan_in, fan_out, gain, cfg), written from the papers.
DIST = {
    "xavier_uniform": lambda fi, fo, g, cfg: _uniform(g * math.sqrt(6.0 / (fi + fo))),
    "xavier_normal": lambda fi, fo, g, cfg: _normal(g * math.sqrt(2.0 / (fi + fo))),
    "kaiming_uniform": lambda fi, fo, g, cfg: _uniform(g * math.sqrt(3.0 / (fi if cfg.mode == "fan_in" else fo))),
    "kaiming_normal": lambda fi, fo, g, cfg: _normal(g / math.sqrt(fi if cfg.mode == "fan_in" else fo)),
    "lecun_normal": lambda fi, fo, g, cfg: _normal(1.0 / math.sqrt(fi)),
    "normal": lambda fi, fo, g, cfg: _normal(cfg.std),
    "uniform": lambda fi, fo, g, cfg: _uniform(math.sqrt(3.0) * cfg.std),
}

#: Large layers (over 90k weights each), their fans computed by hand, and the activation after them.
LAYERS = {
    "linear": (lambda: nn.Linear(800, 400), 800, 400, "relu"),
    "conv1d": (lambda: nn.Conv1d(48, 128, 7), 48 * 7, 128 * 7, "leaky_relu:0.2"),
    "conv2d": (lambda: nn.Conv2d(64, 96, (5, 3)), 64 * 15, 96 * 15, "tanh"),
}


def _layer(kind: str, follows: str | None = None) -> nn.Module:
    make, _, _, default_follows = LAYERS[kind]
    layer = make()
    layer.follows = follows or default_follows
    return layer


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_every_scheme_is_covered():
    # lsuv's data step is tested in test_lsuv.py; its start is the gain-1 orthogonal matrix below.
    assert set(DIST) | {"default", "orthogonal", "lsuv"} == set(INITS.names())


@pytest.mark.parametrize(
    "layer, expected",
    [
        (nn.Linear(7, 5), (7, 5)),
        (nn.Conv1d(3, 4, 5), (3 * 5, 4 * 5)),
        (nn.Conv2d(3, 4, 3), (3 * 3 * 3, 4 * 3 * 3)),
        (nn.Conv2d(3, 4, (5, 2)), (3 * 10, 4 * 10)),
        (nn.Conv3d(2, 6, 3), (2 * 27, 6 * 27)),
    ],
)
def test_fans_are_channels_times_kernel_size(layer, expected):
    assert fans(layer.weight) == expected


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("scheme", sorted(DIST))
def test_weights_follow_the_exact_distribution_of_the_scheme(scheme, kind):
    cfg = InitConfig(scheme=scheme, std=0.05)
    layer = _layer(kind)
    init_model(layer, cfg, _gen())
    _, fan_in, fan_out, follows = LAYERS[kind]
    dist = DIST[scheme](fan_in, fan_out, activation_gain(follows), cfg)
    w = layer.weight.detach().double().flatten().numpy()
    assert w.std() == pytest.approx(dist.std(), rel=0.01)
    assert abs(w.mean()) < 4 * dist.std() / math.sqrt(w.size)
    assert stats.kstest(w, dist.cdf).pvalue > 1e-3


@pytest.mark.parametrize("scheme", ["kaiming_normal", "kaiming_uniform"])
def test_kaiming_fan_out_mode_uses_fan_out(scheme):
    cfg = InitConfig(scheme=scheme, mode="fan_out")
    layer = _layer("conv2d")
    init_model(layer, cfg, _gen())
    _, fan_in, fan_out, follows = LAYERS["conv2d"]
    dist = DIST[scheme](fan_in, fan_out, activation_gain(follows), cfg)
    assert dist.std() == pytest.approx(activation_gain(follows) / math.sqrt(fan_out))
    w = layer.weight.detach().double().flatten().numpy()
    assert w.std() == pytest.approx(dist.std(), rel=0.01)
    assert stats.kstest(w, dist.cdf).pvalue > 1e-3


@pytest.mark.parametrize("scheme", sorted(e.name for e in INITS if e.name != "default"))
def test_weights_scale_with_the_gain_exactly_when_the_scheme_uses_it(scheme):
    # Same draws, two activations after the layer: the weights differ by the ratio of their gains.
    cfg = InitConfig(scheme=scheme)
    low, high = _layer("linear", "leaky_relu:0.5"), _layer("linear", "leaky_relu:0.01")
    init_model(low, cfg, _gen())
    init_model(high, cfg, _gen())
    ratio = calculate_gain("leaky_relu", 0.01) / calculate_gain("leaky_relu", 0.5)
    expected = ratio if INITS.entry(scheme).meta.uses_gain else 1.0
    torch.testing.assert_close(high.weight, low.weight * expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("slope", [0.0, 0.01, 0.2, 0.5])
def test_leaky_relu_slope_sets_the_layer_gain_as_calculate_gain_says(slope):
    layer = _layer("linear", f"leaky_relu:{slope}")
    assert layer_gain(layer) == calculate_gain("leaky_relu", slope)


@pytest.mark.parametrize(
    "make", [lambda: nn.Linear(256, 64), lambda: nn.Conv2d(8, 16, 3), lambda: nn.Conv1d(10, 40, 5)]
)
@pytest.mark.parametrize("follows, cfg_gain", [("relu", 1.0), ("tanh", 0.5), ("identity", 2.0)])
def test_orthogonal_rows_are_orthogonal_with_norm_gain(make, follows, cfg_gain):
    layer = make()  # rows (out) <= columns (in * kernel) in every case
    layer.follows = follows
    init_model(layer, InitConfig(scheme="orthogonal", gain=cfg_gain), _gen())
    w = layer.weight.detach().double().flatten(1)
    assert w.shape[0] <= w.shape[1]
    g = cfg_gain * activation_gain(follows)
    torch.testing.assert_close(w @ w.T, g**2 * torch.eye(w.shape[0], dtype=torch.float64), rtol=0, atol=1e-5 * g**2)


def test_orthogonal_tall_weights_have_orthonormal_columns_times_gain():
    layer = nn.Linear(16, 64)
    layer.follows = "relu"
    init_model(layer, InitConfig(scheme="orthogonal"), _gen())
    w = layer.weight.detach().double()
    torch.testing.assert_close(w.T @ w, 2.0 * torch.eye(16, dtype=torch.float64), rtol=0, atol=1e-5)


def _mixed_model() -> nn.Module:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.GroupNorm(2, 8), nn.Flatten(),
        nn.Linear(8 * 6 * 6, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 4),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(3.0)
    return model


@pytest.mark.parametrize("scheme", sorted(e.name for e in INITS if e.name != "default"))
def test_biases_zero_and_norms_identity_after_init(scheme):
    model = init_model(_mixed_model(), InitConfig(scheme=scheme), _gen())
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            assert torch.all(module.bias == 0)
            assert not torch.all(module.weight == 3.0)
        if isinstance(module, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)


def test_default_scheme_leaves_every_parameter_as_pytorch_made_it():
    model = _mixed_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    init_model(model, InitConfig(scheme="default"), _gen())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_layer_without_a_record_gets_gain_one():
    assert layer_gain(nn.Linear(3, 3)) == 1.0 == calculate_gain("linear")


def test_head_gets_gain_one_and_hidden_layers_the_activation_gain():
    cfg = Config()
    cfg.model.name = "mlp"  # explicit: the default model may change
    cfg.model.depth, cfg.model.width, cfg.model.activation = 2, 400, "relu"
    cfg.init.scheme = "kaiming_normal"
    model = build_model(cfg, (400,), num_classes=400, generator=_gen())
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    *hidden, head = linears
    assert head.follows == "identity" and layer_gain(head) == 1.0
    assert head.weight.std().item() == pytest.approx(1.0 / math.sqrt(400), rel=0.02)
    for layer in hidden:
        assert layer.weight.std().item() == pytest.approx(math.sqrt(2.0) / math.sqrt(400), rel=0.02)


def test_same_generator_seed_gives_same_weights_and_leaves_global_rng_alone():
    a, b, c = (_layer("conv1d") for _ in range(3))
    state = torch.get_rng_state()
    for layer, seed in [(a, 5), (b, 5), (c, 6)]:
        init_model(layer, InitConfig(scheme="kaiming_uniform"), _gen(seed))
    assert torch.equal(a.weight, b.weight)
    assert not torch.equal(a.weight, c.weight)
    assert torch.equal(torch.get_rng_state(), state)


def test_unknown_scheme_lists_valid_names():
    with pytest.raises(ConfigError) as info:
        init_model(nn.Linear(2, 2), InitConfig(scheme="kaiming"))
    for name in INITS.names():
        assert name in str(info.value)


def test_bad_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="init.mode must be 'fan_in' or 'fan_out'"):
        init_model(nn.Linear(2, 2), InitConfig(scheme="kaiming_normal", mode="fan_avg"))


@pytest.mark.parametrize("scheme", ["normal", "uniform"])
@pytest.mark.parametrize("std", [0.0, -1.0, float("nan")])
def test_non_positive_std_is_a_config_error(scheme, std):
    with pytest.raises(ConfigError, match="init.std > 0"):
        init_model(nn.Linear(2, 2), InitConfig(scheme=scheme, std=std))


def test_metadata_is_complete():
    for entry in INITS:
        assert entry.doc and isinstance(entry.meta.uses_gain, bool) and entry.meta.formula


def test_needs_batch_schemes_get_their_data_free_start_in_init_model():
    # build_model and reloading a saved run call init_model without data: it must not refuse lsuv.
    layer = nn.Conv2d(8, 16, 3)
    layer.follows = "tanh"
    init_model(layer, InitConfig(scheme="lsuv"), _gen())
    w = layer.weight.detach().double().flatten(1)
    torch.testing.assert_close(w @ w.T, torch.eye(16, dtype=torch.float64), rtol=0, atol=1e-5)
    assert all(e.meta.needs_batch == (e.name == "lsuv") for e in INITS)


def test_hidden_biases_take_the_constant_and_the_head_stays_zero():
    from trainwell.config import resolve
    from trainwell.nn import build_model

    model = build_model(resolve(["model.name=mlp", "model.norm=none", "init.bias=0.01", "model.depth=2"]), (6,), 3)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert all(torch.all(m.bias == 0.01) for m in linears[:-1])
    assert torch.all(linears[-1].bias == 0)
