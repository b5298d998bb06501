"""Models: one battery over every model x input rank x norm x activation, then per-model facts."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainwell.config import Config, resolve
from trainwell.errors import ConfigError
from trainwell.nn import MODELS, NORMS, build_model
from trainwell.registry import ALL

NUM_CLASSES = 3
BATCH = 4
#: One input shape per rank: features, 1-D signal (C, L), 2-D image (C, H, W).
SHAPES = {1: (20,), 2: (2, 24), 3: (1, 10, 10)}
ACTS = ("relu", "tanh")


def _cfg(name: str, norm: str = "none", activation: str = "relu", **model) -> Config:
    cfg = Config()
    cfg.model.name, cfg.model.norm, cfg.model.activation = name, norm, activation
    # Small sizes keep the battery fast; dropout on so eval-mode determinism means something.
    cfg.model.depth, cfg.model.width, cfg.model.channels, cfg.model.dropout = 2, 8, [4, 8], 0.2
    if name == "resnet":
        cfg.model.depth, cfg.model.width = 1, 4
    for key, value in model.items():
        setattr(cfg.model, key, value)
    return cfg


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _x(shape, seed: int = 1, n: int = BATCH) -> torch.Tensor:
    return torch.randn(n, *shape, generator=_gen(seed))


CASES = [
    pytest.param(name, rank, norm, act, id=f"{name}-rank{rank}-{norm}-{act}")
    for name in MODELS.names()
    for rank in MODELS.entry(name).meta.input_ranks
    for norm in NORMS.names()
    for act in ACTS
]


def test_battery_covers_every_model_and_rank():
    assert {(c.values[0], c.values[1]) for c in CASES} == {
        (e.name, r) for e in MODELS for r in e.meta.input_ranks
    }
    assert ALL["model"] is MODELS


@pytest.mark.parametrize("name, rank, norm, act", CASES)
def test_forward_gives_finite_logits_and_every_parameter_a_finite_gradient(name, rank, norm, act):
    model = build_model(_cfg(name, norm, act), SHAPES[rank], NUM_CLASSES, _gen()).train()
    out = model(_x(SHAPES[rank]))
    assert out.shape == (BATCH, NUM_CLASSES)
    assert torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.arange(BATCH) % NUM_CLASSES).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name, rank, norm, act", CASES)
def test_eval_mode_is_deterministic(name, rank, norm, act):
    model = build_model(_cfg(name, norm, act), SHAPES[rank], NUM_CLASSES, _gen()).eval()
    x = _x(SHAPES[rank])
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name, rank, norm, act", CASES)
def test_eval_output_of_an_example_does_not_depend_on_the_rest_of_the_batch(name, rank, norm, act):
    model = build_model(_cfg(name, norm, act), SHAPES[rank], NUM_CLASSES, _gen()).eval()
    x = _x(SHAPES[rank])
    with torch.no_grad():
        torch.testing.assert_close(model(x[:1]), model(x)[:1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, rank, norm, act", CASES)
def test_seeded_build_is_repeatable(name, rank, norm, act):
    cfg = _cfg(name, norm, act)
    a, b, c = (build_model(cfg, SHAPES[rank], NUM_CLASSES, _gen(seed)) for seed in (7, 7, 8))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("name", MODELS.names())
def test_layers_record_the_activation_that_follows_and_the_head_identity(name):
    rank = MODELS.entry(name).meta.input_ranks[-1]
    model = build_model(_cfg(name, activation="leaky_relu:0.2"), SHAPES[rank], NUM_CLASSES)
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    *hidden, head = layers
    assert isinstance(head, nn.Linear) and head.out_features == NUM_CLASSES and head.follows == "identity"
    recurrent = [m for m in model.modules() if isinstance(m, nn.RNNBase)]
    if recurrent:  # rnn/gru/lstm: the stack keeps its cell's own nonlinearity, the head is the only Linear
        assert not hidden and all(getattr(m, "nonlinearity", "tanh") == "tanh" for m in recurrent)
    else:
        assert hidden and all(layer.follows == "leaky_relu:0.2" for layer in hidden)


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_can_fit_a_small_batch(name):
    # The usual sanity check: a working net memorises a few examples quickly.
    rank = MODELS.entry(name).meta.input_ranks[-1]
    torch.manual_seed(0)
    cfg = _cfg(name, "batch", dropout=0.0, width=32 if name == "mlp" else 8, channels=[8, 16])
    model = build_model(cfg, SHAPES[rank], NUM_CLASSES, _gen())
    x, y = _x(SHAPES[rank], n=16), torch.arange(16) % NUM_CLASSES
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert (model.eval()(x).argmax(1) == y).all()


# ----------------------------------------------------------------------------- param counts


def _norm_params(norm: str, channels: int) -> int:
    return 0 if norm == "none" else 2 * channels


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("norm", NORMS.names())
@pytest.mark.parametrize("depth", [0, 1, 3])
def test_mlp_param_count_matches_closed_form(depth, norm):
    f, w, k = 20, 8, NUM_CLASSES
    bias = int(norm != "batch")  # batch norm absorbs the bias of the layer before it
    hidden = [(f if i == 0 else w) * w + bias * w + _norm_params(norm, w) for i in range(depth)]
    expected = sum(hidden) + (w if depth else f) * k + k
    assert _count(build_model(_cfg("mlp", norm, depth=depth), (f,), k)) == expected


def test_mlp_of_depth_zero_is_logistic_regression():
    model = build_model(_cfg("mlp", depth=0), (2, 5, 4), NUM_CLASSES)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and linears[0].in_features == 40
    assert not any(isinstance(m, (nn.ReLU, nn.Dropout)) for m in model.modules())


@pytest.mark.parametrize("norm", NORMS.names())
@pytest.mark.parametrize(
    "shape, final_size, head",
    [((1, 40), 5, "flatten"), ((3, 9, 5), 2 * 2, "flatten"), ((1, 40), 1, "avg"), ((3, 9, 5), 1, "avg")],
)
def test_cnn_param_count_matches_closed_form(shape, final_size, head, norm):
    # Pooling halves an axis while it is >= 4 long: 40 -> 20 -> 10 -> 5; 9x5 -> 4x2 -> 2x2 -> 2x2.
    channels, k = [4, 8, 16], 5
    bias = int(norm != "batch")
    c_in, expected = shape[0], 0
    for c in channels:
        expected += c_in * c * k ** (len(shape) - 1) + bias * c + _norm_params(norm, c)
        c_in = c
    expected += c_in * final_size * NUM_CLASSES + NUM_CLASSES
    model = build_model(_cfg("cnn", norm, channels=channels, kernel_size=k, head=head), shape, NUM_CLASSES)
    assert _count(model) == expected


@pytest.mark.parametrize("norm", NORMS.names())
@pytest.mark.parametrize("depth", [1, 2])
def test_resnet_param_count_matches_closed_form(depth, norm):
    w, c = 4, 3
    bias = int(norm != "batch")
    expected = c * w * 9 + bias * w  # stem
    c_in = w
    for stage, c_out in enumerate((w, 2 * w, 4 * w)):
        for block in range(depth):
            expected += _norm_params(norm, c_in) + c_in * c_out * 9 + bias * c_out
            expected += _norm_params(norm, c_out) + c_out * c_out * 9 + bias * c_out
            if c_in != c_out:  # projection shortcut at the start of stages 2 and 3
                expected += c_in * c_out + bias * c_out
            c_in = c_out
    expected += _norm_params(norm, 4 * w) + 4 * w * NUM_CLASSES + NUM_CLASSES
    model = build_model(_cfg("resnet", norm, depth=depth, width=w), (c, 16, 16), NUM_CLASSES)
    assert _count(model) == expected
    projections = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert len(projections) == 2 and all(m.stride == (2, 2) for m in projections)


# ----------------------------------------------------------------------------- input sizes


@pytest.mark.parametrize("shape", [(1, 40), (1, 3), (1, 1), (1, 8, 8), (1, 28, 28), (3, 32, 32), (2, 3, 50)])
def test_cnn_handles_signals_and_images_of_any_size(shape):
    for head in ("flatten", "avg"):
        model = build_model(_cfg("cnn", "batch", channels=[4, 8, 8], head=head), shape, NUM_CLASSES, _gen())
        assert model.eval()(_x(shape)).shape == (BATCH, NUM_CLASSES)


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28), (1, 8, 8), (2, 9, 13)])
def test_resnet_handles_image_sizes_down_to_8x8(shape):
    model = build_model(_cfg("resnet", "batch"), shape, NUM_CLASSES, _gen())
    assert model.eval()(_x(shape)).shape == (BATCH, NUM_CLASSES)


# ----------------------------------------------------------------------------- build_model


@pytest.mark.parametrize("scheme", ["default", "kaiming_normal"])
def test_build_with_generator_is_repeatable_and_leaves_global_rng_alone(scheme):
    cfg = _cfg("cnn")
    cfg.init.scheme = scheme
    state = torch.get_rng_state()
    a = build_model(cfg, (1, 12), NUM_CLASSES, _gen(3))
    b = build_model(cfg, (1, 12), NUM_CLASSES, _gen(3))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_build_without_generator_follows_the_global_seed():
    cfg = _cfg("mlp")
    torch.manual_seed(4)
    a = build_model(cfg, (5,), NUM_CLASSES)
    torch.manual_seed(4)
    b = build_model(cfg, (5,), NUM_CLASSES)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_build_applies_the_init_config():
    cfg = _cfg("mlp", width=300)
    cfg.init.scheme, cfg.init.std = "normal", 0.5
    model = build_model(cfg, (300,), NUM_CLASSES, _gen())
    assert model[1].weight.std().item() == pytest.approx(0.5, rel=0.02)


def test_resolved_config_builds_the_mnist1d_recipe():
    cfg = resolve(["model.name=cnn", "model.channels=32,64,128", "model.kernel_size=5", "model.norm=batch"])
    assert build_model(cfg, (1, 40), 10, _gen()).eval()(torch.zeros(2, 1, 40)).shape == (2, 10)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "name, overrides, shape, says",
    [
        ("mlp", {"depth": -1}, (4,), "model.depth must be >= 0"),
        ("mlp", {"width": 0}, (4,), "model.width must be >= 1"),
        ("resnet", {"depth": 0}, (1, 8, 8), "model.depth must be >= 1"),
        ("resnet", {"width": 0}, (1, 8, 8), "model.width must be >= 1"),
        ("cnn", {"channels": []}, (1, 8), "model.channels must be a non-empty list"),
        ("cnn", {"channels": [4, 0]}, (1, 8), "model.channels must be a non-empty list"),
        ("cnn", {"kernel_size": 0}, (1, 8), "model.kernel_size must be >= 1"),
        ("cnn", {"head": "max"}, (1, 8), "model.head must be one of flatten, avg"),
        ("mlp", {"dropout": 1.0}, (4,), "model.dropout must be in [0, 1)"),
        ("cnn", {"dropout": -0.1}, (1, 8), "model.dropout must be in [0, 1)"),
        ("mlp", {"depth": 0, "activation": "rleu"}, (4,), "unknown activation 'rleu'"),
        ("mlp", {"depth": 0, "norm": "bn"}, (4,), "unknown norm 'bn'"),
        ("resnet", {}, (1, 40), "use model.name=cnn"),
        ("resnet", {}, (40,), "use model.name=mlp"),
        ("cnn", {}, (40,), "use model.name=mlp"),
        ("mlp", {}, (1, 2, 3, 4), "reshape the input"),
        ("mlp", {}, (0, 4), "input_shape must be positive integers"),
    ],
)
def test_bad_values_are_config_errors_with_the_fix(name, overrides, shape, says):
    with pytest.raises(ConfigError) as info:
        build_model(_cfg(name, **overrides), shape, NUM_CLASSES)
    assert says in str(info.value)


def test_bad_num_classes_and_unknown_model_are_config_errors():
    with pytest.raises(ConfigError, match="num_classes must be an integer >= 1"):
        build_model(_cfg("mlp"), (4,), 0)
    with pytest.raises(ConfigError, match="unknown model 'vgg'.*Valid: cnn, gru, lstm, mlp, resnet, rnn"):
        build_model(_cfg("vgg"), (4,), NUM_CLASSES)


def test_selu_mlp_uses_alpha_dropout_and_relu_plain_dropout():
    from torch import nn

    from trainwell.config import resolve
    from trainwell.nn import build_model

    selu = build_model(resolve(["model.name=mlp", "model.activation=selu", "model.dropout=0.1"]), (1, 8, 8), 10)
    relu = build_model(resolve(["model.name=mlp", "model.activation=relu", "model.dropout=0.1"]), (1, 8, 8), 10)
    assert any(isinstance(m, nn.AlphaDropout) for m in selu.modules())
    assert not any(isinstance(m, nn.AlphaDropout) for m in relu.modules())
    assert any(type(m) is nn.Dropout for m in relu.modules())


@pytest.mark.parametrize("kernel_size", [3, 4, 5])
@pytest.mark.parametrize("shape", [(1, 28, 28), (2, 9, 13), (1, 40), (1, 7)])
def test_cnn_stem_stride_2_replaces_the_first_pool_by_a_strided_conv(shape, kernel_size):
    plain = build_model(_cfg("cnn", "batch", channels=[4, 8], kernel_size=kernel_size, head="flatten"), shape,
                        NUM_CLASSES, _gen())
    stem = build_model(_cfg("cnn", "batch", channels=[4, 8], kernel_size=kernel_size, head="flatten", stem_stride=2),
                       shape, NUM_CLASSES, _gen())
    first = [m for m in stem.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))][0]
    assert first.stride == (2,) * (len(shape) - 1)
    # The first block is conv -> norm -> act with no max-pool; the plain one pools there.
    assert [type(m).__name__ for m in stem][:4] == [type(first).__name__, type(stem[1]).__name__, "ReLU",
                                                    type(first).__name__]
    assert "MaxPool" in type(plain[3]).__name__
    # The flatten head's width is the last map's true size: the forward pass fits the Linear layer.
    recorded: list[torch.Size] = []
    first.register_forward_hook(lambda mod, inp, out: recorded.append(out.shape))
    assert stem.eval()(_x(shape)).shape == (BATCH, NUM_CLASSES)
    expected = [(s + 2 * (kernel_size // 2) - kernel_size) // 2 + 1 for s in shape[1:]]  # torch's conv size formula
    assert list(recorded[0][2:]) == expected


def test_cnn_stem_stride_must_be_1_or_2():
    for bad in (0, 3):
        with pytest.raises(ConfigError, match="model.stem_stride"):
            build_model(_cfg("cnn", stem_stride=bad), (1, 8, 8), NUM_CLASSES)


@pytest.mark.parametrize("convs", [1, 2, 3])
@pytest.mark.parametrize("shape", [(1, 12, 12), (2, 40)])
def test_cnn_convs_per_block_add_same_size_convolutions_before_each_pool(shape, convs):
    channels, k, norm = [4, 8], 3, "batch"
    model = build_model(_cfg("cnn", norm, channels=channels, kernel_size=k, head="avg", convs=convs), shape,
                        NUM_CLASSES, _gen())
    kinds = [type(m).__name__ for m in model]
    per_block = ["Conv", "BatchNorm", "ReLU"] * convs + ["MaxPool"]
    assert [k_[:len(p)] for k_, p in zip(kinds, per_block * 2)] == per_block * 2
    # Parameters by hand: the first conv of a block maps c_in -> c, the others c -> c; no bias before batch norm.
    c_in, expected = shape[0], 0
    for c in channels:
        expected += (c_in * c + (convs - 1) * c * c) * k ** (len(shape) - 1) + convs * _norm_params(norm, c)
        c_in = c
    expected += c_in * NUM_CLASSES + NUM_CLASSES
    assert _count(model) == expected
    assert model.eval()(_x(shape)).shape == (BATCH, NUM_CLASSES)


def test_cnn_convs_must_be_positive():
    with pytest.raises(ConfigError, match="model.convs"):
        build_model(_cfg("cnn", convs=0), (1, 8, 8), NUM_CLASSES)
