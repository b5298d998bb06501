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
from trainwell.nn import INITS, build_model, fans, init_model, layer_gain
from trainwell.nn.init import InitMeta, scheme_gain


def _normal(std):
    return stats.norm(0.0, std)


def _uniform(bound):
    return stats.uniform(-bound, 2 * bound)


#: The exact distribution of each iid scheme, from (fan_in, fan_out, gain g, cfg), written from the papers.
DIST = {
    "xavier_uniform": lambda fi, fo, g, cfg: _uniform(g * math.sqrt(6.0 / (fi + fo))),
    "xavier_normal": lambda fi, fo, g, cfg: _normal(g * math.sqrt(2.0 / (fi + fo))),
    "kaiming_uniform": lambda fi, fo, g, cfg: _uniform(g * math.sqrt(3.0 / (fi if cfg.mode == "fan_in" else fo))),
    "kaiming_normal": lambda fi, fo, g, cfg: _normal(g / math.sqrt(fi if cfg.mode == "fan_in" else fo)),
    "lecun_normal": lambda fi, fo, g, cfg: _normal(1.0 / math.sqrt(fi)),
    "normal": lambda fi, fo, g, cfg: _normal(cfg.std),
    "uniform": lambda fi, fo, g, cfg: _uniform(math.sqrt(3.0) * cfg.std),
}
#: The schemes whose formula has a gain g (init.gain chooses it), and those whose paper's g is the
#: rectifier's (Kaiming: sqrt(2) for ReLU); Glorot's and Saxe's g is 1.
USES_GAIN = {"xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal"}
ACTIVATION_GAIN_BY_DEFAULT = {"kaiming_uniform", "kaiming_normal"}

#: Large layers (over 90k weights each), their fans computed by hand, the activation after them and
#: that activation's gain as torch.nn.init.calculate_gain gives it.
LAYERS = {
    "linear": (lambda: nn.Linear(800, 400), 800, 400, "relu", calculate_gain("relu")),
    "conv1d": (lambda: nn.Conv1d(48, 128, 7), 48 * 7, 128 * 7, "leaky_relu:0.2", calculate_gain("leaky_relu", 0.2)),
    "conv2d": (lambda: nn.Conv2d(64, 96, (5, 3)), 64 * 15, 96 * 15, "tanh", calculate_gain("tanh")),
}


def _expected_gain(scheme: str, gain: float | str, torch_gain: float) -> float:
    """The g the papers (init.gain=default), the following activation (auto) or the number give."""
    if gain == "auto" or (gain == "default" and scheme in ACTIVATION_GAIN_BY_DEFAULT):
        return torch_gain
    return 1.0 if gain == "default" else float(gain)


def _layer(kind: str, follows: str | None = None) -> nn.Module:
    make, _, _, default_follows, _ = LAYERS[kind]
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


@pytest.mark.parametrize("gain", ["default", "auto", 0.7])
@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("scheme", sorted(DIST))
def test_weights_follow_the_exact_distribution_of_the_scheme(scheme, kind, gain):
    # default: Glorot's Var = 2/(fan_in+fan_out) at g = 1, He's g/sqrt(fan) at the rectifier's g;
    # auto: the following activation's g (calculate_gain) for every gain-using scheme; a number: itself.
    cfg = InitConfig(scheme=scheme, std=0.05, gain=gain)
    layer = _layer(kind)
    init_model(layer, cfg, _gen())
    _, fan_in, fan_out, _, torch_gain = LAYERS[kind]
    dist = DIST[scheme](fan_in, fan_out, _expected_gain(scheme, gain, torch_gain), cfg)
    w = layer.weight.detach().double().flatten().numpy()
    assert w.std() == pytest.approx(dist.std(), rel=0.01)
    assert abs(w.mean()) < 4 * dist.std() / math.sqrt(w.size)
    assert stats.kstest(w, dist.cdf).pvalue > 1e-3


@pytest.mark.parametrize("scheme", ["xavier_normal", "xavier_uniform"])
@pytest.mark.parametrize("follows", ["relu", "tanh", "leaky_relu:0.2", "identity"])
def test_xavier_by_default_is_glorots_gain_one_formula_whatever_follows(scheme, follows):
    # Glorot & Bengio 2010 eq. 16: Var(w) = 2 / (fan_in + fan_out), with no activation factor.
    layer = nn.Linear(500, 300)
    layer.follows = follows
    init_model(layer, InitConfig(scheme=scheme), _gen())
    w = layer.weight.detach().double().flatten().numpy()
    assert w.var() == pytest.approx(2.0 / (500 + 300), rel=0.02)
    dist = _normal(math.sqrt(2.0 / 800)) if scheme == "xavier_normal" else _uniform(math.sqrt(6.0 / 800))
    assert stats.kstest(w, dist.cdf).pvalue > 1e-3


#: torch.nn.init's own call for a scheme at init.gain=default, given the activation after the layer.
TORCH_DEFAULT = {
    "xavier_normal": lambda w, follows, gen: nn.init.xavier_normal_(w, generator=gen),
    "xavier_uniform": lambda w, follows, gen: nn.init.xavier_uniform_(w, generator=gen),
    "orthogonal": lambda w, follows, gen: nn.init.orthogonal_(w, generator=gen),
    "kaiming_normal": lambda w, follows, gen: nn.init.kaiming_normal_(w, **_torch_nonlinearity(follows), generator=gen),
    "kaiming_uniform": lambda w, follows, gen: nn.init.kaiming_uniform_(w, **_torch_nonlinearity(follows),
                                                                          generator=gen),
}


def _torch_nonlinearity(follows: str) -> dict:
    if follows.startswith("leaky_relu:"):
        return {"nonlinearity": "leaky_relu", "a": float(follows.split(":")[1])}
    return {"nonlinearity": follows}


@pytest.mark.parametrize("follows", ["relu", "leaky_relu:0.2", "tanh"])
@pytest.mark.parametrize("scheme", sorted(TORCH_DEFAULT))
def test_default_gain_is_torch_nn_init_with_its_defaults_draw_for_draw(scheme, follows):
    """init.gain=default is torch.nn.init's call as its docs give it (xavier_*_/orthogonal_ at gain 1,
    kaiming_*_(nonlinearity=the activation after the layer)), on the same generator state."""
    layer = nn.Conv2d(24, 40, 3)
    layer.follows = follows
    init_model(layer, InitConfig(scheme=scheme), _gen(7))
    theirs = torch.empty_like(layer.weight)
    TORCH_DEFAULT[scheme](theirs, follows, _gen(7))
    torch.testing.assert_close(layer.weight.detach(), theirs, rtol=1e-6, atol=0)


@pytest.mark.parametrize("scheme", sorted(TORCH_DEFAULT))
def test_a_number_is_the_gain_torch_nn_init_takes_draw_for_draw(scheme):
    # init.gain=2.5 on kaiming: std = 2.5 / sqrt(fan_in), torch's kaiming_normal_ at a gain of 2.5 is
    # its 'linear' gain 1 scaled by 2.5 (same draws), so compare against that.
    layer = nn.Linear(90, 60)
    layer.follows = "relu"
    init_model(layer, InitConfig(scheme=scheme, gain=2.5), _gen(3))
    theirs = torch.empty_like(layer.weight)
    if scheme.startswith("kaiming"):
        getattr(nn.init, scheme + "_")(theirs, nonlinearity="linear", generator=_gen(3))
        theirs.mul_(2.5)
    else:
        getattr(nn.init, scheme + "_")(theirs, gain=2.5, generator=_gen(3))
    torch.testing.assert_close(layer.weight.detach(), theirs, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("scheme", ["kaiming_normal", "kaiming_uniform"])
def test_kaiming_fan_out_mode_uses_fan_out(scheme):
    cfg = InitConfig(scheme=scheme, mode="fan_out")
    layer = _layer("conv2d")
    init_model(layer, cfg, _gen())
    _, fan_in, fan_out, _, torch_gain = LAYERS["conv2d"]
    dist = DIST[scheme](fan_in, fan_out, torch_gain, cfg)
    assert dist.std() == pytest.approx(calculate_gain("tanh") / math.sqrt(fan_out))
    w = layer.weight.detach().double().flatten().numpy()
    assert w.std() == pytest.approx(dist.std(), rel=0.01)
    assert stats.kstest(w, dist.cdf).pvalue > 1e-3


@pytest.mark.parametrize("gain", ["default", "auto", 0.7])
@pytest.mark.parametrize("scheme", sorted(e.name for e in INITS if e.name != "default"))
def test_weights_scale_with_the_activation_gain_exactly_when_the_option_says(scheme, gain):
    # Same draws, two activations after the layer: the weights differ by the ratio of their gains when
    # the scheme's g is the activation's (kaiming by default; every gain-using scheme with auto).
    cfg = InitConfig(scheme=scheme, gain=gain)
    low, high = _layer("linear", "leaky_relu:0.5"), _layer("linear", "leaky_relu:0.01")
    init_model(low, cfg, _gen())
    init_model(high, cfg, _gen())
    follows = scheme in USES_GAIN and (gain == "auto" or (gain == "default" and scheme in ACTIVATION_GAIN_BY_DEFAULT))
    expected = calculate_gain("leaky_relu", 0.01) / calculate_gain("leaky_relu", 0.5) if follows else 1.0
    torch.testing.assert_close(high.weight, low.weight * expected, rtol=1e-5, atol=1e-7)


def test_gain_metadata_says_which_schemes_use_a_gain_and_whose_it_is():
    assert {e.name for e in INITS if e.meta.uses_gain} == USES_GAIN
    assert {e.name for e in INITS if e.meta.activation_gain_by_default} == ACTIVATION_GAIN_BY_DEFAULT


@pytest.mark.parametrize("gain, by_default, expected", [
    ("default", True, calculate_gain("leaky_relu", 0.3)),   # kaiming: the rectifier's gain
    ("default", False, 1.0),                                # xavier, orthogonal: 1
    ("auto", True, calculate_gain("leaky_relu", 0.3)),
    ("auto", False, calculate_gain("leaky_relu", 0.3)),     # auto: the activation's for every scheme
    (0.25, True, 0.25),
    (3, False, 3.0),
])
def test_scheme_gain_of_each_option(gain, by_default, expected):
    layer = nn.Linear(4, 4)
    layer.follows = "leaky_relu:0.3"
    meta = InitMeta(uses_gain=True, formula="-", activation_gain_by_default=by_default)
    got = scheme_gain(meta, layer, gain)
    assert got == expected and type(got) is float


@pytest.mark.parametrize("slope", [0.0, 0.01, 0.2, 0.5])
def test_leaky_relu_slope_sets_the_layer_gain_as_calculate_gain_says(slope):
    layer = _layer("linear", f"leaky_relu:{slope}")
    assert layer_gain(layer) == calculate_gain("leaky_relu", slope)


@pytest.mark.parametrize(
    "make", [lambda: nn.Linear(256, 64), lambda: nn.Conv2d(8, 16, 3), lambda: nn.Conv1d(10, 40, 5)]
)
@pytest.mark.parametrize("follows, gain, g", [
    ("relu", "default", 1.0),                    # Saxe et al.: gain 1 whatever follows
    ("tanh", "default", 1.0),
    ("tanh", "auto", calculate_gain("tanh")),
    ("relu", "auto", calculate_gain("relu")),
    ("identity", 2.0, 2.0),
    ("relu", 0.5, 0.5),                          # a number replaces the activation's gain
])
def test_orthogonal_rows_are_orthogonal_with_norm_gain(make, follows, gain, g):
    layer = make()  # rows (out) <= columns (in * kernel) in every case
    layer.follows = follows
    init_model(layer, InitConfig(scheme="orthogonal", gain=gain), _gen())
    w = layer.weight.detach().double().flatten(1)
    assert w.shape[0] <= w.shape[1]
    torch.testing.assert_close(w @ w.T, g**2 * torch.eye(w.shape[0], dtype=torch.float64), rtol=0, atol=1e-5 * g**2)


@pytest.mark.parametrize("gain, g2", [("default", 1.0), ("auto", 2.0)])
def test_orthogonal_tall_weights_have_orthonormal_columns_times_gain(gain, g2):
    layer = nn.Linear(16, 64)
    layer.follows = "relu"
    init_model(layer, InitConfig(scheme="orthogonal", gain=gain), _gen())
    w = layer.weight.detach().double()
    torch.testing.assert_close(w.T @ w, g2 * torch.eye(16, dtype=torch.float64), rtol=0, atol=1e-5)


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


@pytest.mark.parametrize("norm", [nn.LocalResponseNorm(2), nn.LayerNorm(4, elementwise_affine=False),
                                  nn.BatchNorm2d(4, affine=False)], ids=["lrn", "layer_no_affine", "batch_no_affine"])
def test_norm_layers_without_a_scale_or_shift_are_left_alone(norm):
    # LocalResponseNorm has no weight/bias attribute at all, the non-affine norms hold None: nothing to set.
    model = nn.Sequential(nn.Conv2d(3, 4, 3), norm, nn.ReLU(), nn.Conv2d(4, 4, 3))
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    init_model(model, InitConfig(scheme="xavier_normal"), _gen())
    after = norm.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    g = _gen()  # and both convs got torch's xavier_normal_, in module order, from the one generator
    for conv in (model[0], model[3]):
        theirs = nn.init.xavier_normal_(torch.empty_like(conv.weight), generator=g)
        torch.testing.assert_close(conv.weight.detach(), theirs, rtol=1e-6, atol=0)


def test_default_scheme_leaves_every_parameter_as_pytorch_made_it():
    model = _mixed_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    init_model(model, InitConfig(scheme="default"), _gen())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_layer_without_a_record_gets_gain_one():
    assert layer_gain(nn.Linear(3, 3)) == 1.0 == calculate_gain("linear")


@pytest.mark.parametrize("follows, bias, g", [(None, 0.0, 1.0), ("identity", 0.0, 1.0), ("relu", 0.25, math.sqrt(2))])
def test_a_layer_without_a_record_is_treated_as_followed_by_identity_for_its_gain_and_its_bias(follows, bias, g):
    # No `follows` record reads as identity (calculate_gain('linear') = 1), like a head: gain 1 and bias 0,
    # where a layer recorded as followed by a ReLU gets init.bias and kaiming's sqrt(2).
    layer = nn.Linear(600, 300)
    if follows is not None:
        layer.follows = follows
    init_model(layer, InitConfig(scheme="kaiming_normal", bias=0.25), _gen())
    assert torch.all(layer.bias == bias)
    w = layer.weight.detach().double().flatten().numpy()
    assert stats.kstest(w, _normal(g / math.sqrt(600)).cdf).pvalue > 1e-3


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


# ----------------------------------------------------------------------------- init.gain in the config


@pytest.mark.parametrize("text, expected", [("default", "default"), ("auto", "auto"), ("1.5", 1.5), ("2", 2.0)])
def test_init_gain_resolves_to_its_option(text, expected):
    from trainwell.config import resolve

    gain = resolve([f"init.gain={text}"]).init.gain
    assert gain == expected and type(gain) is type(expected)


def test_init_gain_defaults_to_each_schemes_own():
    assert InitConfig().gain == "default" and Config().init.gain == "default"


@pytest.mark.parametrize("text, says", [
    ("-1", "init.gain must be a number > 0, 'default' or 'auto', got -1.0"),
    ("0", "init.gain must be a number > 0, 'default' or 'auto', got 0.0"),
    (".inf", "init.gain must be a number > 0, 'default' or 'auto', got inf"),
    ("banana", "config key 'init.gain' expects a number or 'default' or 'auto', got 'banana'"),
    ("nan", "config key 'init.gain' expects a number or 'default' or 'auto', got 'nan'"),
    ("true", "config key 'init.gain' expects a number or 'default' or 'auto', got True"),
])
def test_bad_init_gain_is_one_config_error_line(text, says):
    from trainwell.config import resolve

    with pytest.raises(ConfigError) as info:
        resolve([f"init.gain={text}"])
    assert str(info.value).startswith(says) and "\n" not in str(info.value)


@pytest.mark.parametrize("gain", [True, -0.5, math.nan, "Auto"])
def test_init_config_refuses_a_bad_gain_built_in_python(gain):
    with pytest.raises(ConfigError, match="init.gain must be a number > 0, 'default' or 'auto'"):
        InitConfig(gain=gain)


def test_init_gain_round_trips_through_a_saved_config():
    from trainwell.config import from_dict, resolve

    for text in ("default", "auto", "0.8"):
        cfg = resolve([f"init.gain={text}"])
        assert from_dict(cfg.to_dict()).init.gain == cfg.init.gain


# ----------------------------------------------------------------------------- the lecture's deep ReLU net


def _hidden_std_ratio(overrides: list[str], depth: int = 30, width: int = 256) -> float:
    """Last over first hidden ReLU output std of trainwell's mlp (no norm) on a standard normal batch."""
    from trainwell.config import resolve

    cfg = resolve(["model.name=mlp", f"model.depth={depth}", f"model.width={width}", "model.norm=none",
                   "model.activation=relu", *overrides])
    model = build_model(cfg, (64,), num_classes=10, generator=_gen(11))
    stds: list[float] = []
    hooks = [m.register_forward_hook(lambda mod, i, out: stds.append(float(out.double().std())))
             for m in model.modules() if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        model(torch.randn(512, 64, generator=_gen(12)))
    for h in hooks:
        h.remove()
    assert len(stds) == depth
    return stds[-1] / stds[0]


def test_xavier_collapses_a_deep_relu_net_and_kaiming_keeps_its_scale():
    """He et al. 2015 (Sec. 2.2, Fig. 3): with Var(w) = 1/n on square layers each ReLU halves the
    second moment, so after the first hidden layer 29 more shrink the std by (1/2)^(29/2) ~ 4e-5;
    Kaiming's 2/n keeps it. Measured: xavier 3.9e-5, kaiming 0.90 (seed 11, width 256)."""
    xavier = _hidden_std_ratio(["init.scheme=xavier_normal"])
    kaiming = _hidden_std_ratio(["init.scheme=kaiming_normal"])
    predicted = 0.5 ** (29 / 2)
    assert predicted / 3 < xavier < 3 * predicted
    assert 0.5 < kaiming < 2.0
    # init.gain=auto is the old activation-aware Xavier: on square layers it is Kaiming, so the same
    # draws give the same ratio (only the non-square first layer differs, by a constant factor).
    assert _hidden_std_ratio(["init.scheme=xavier_normal", "init.gain=auto"]) == pytest.approx(kaiming, rel=1e-5)
