"""LSUV (Mishkin & Matas 2016): orthonormal start, then unit output variance layer by layer, in forward order."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainwell.config import InitConfig, resolve
from trainwell.errors import ConfigError, DataError
from trainwell.nn import INITS, build_model, init_model
from trainwell.nn.init import WEIGHT_LAYERS, lsuv_init


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tanh_mlp(depth: int = 8):
    cfg = resolve(["model.name=mlp", f"model.depth={depth}", "model.width=48", "model.activation=tanh", "init.scheme=lsuv"])
    return build_model(cfg, (20,), 10, generator=_gen(0)), torch.randn(128, 20, generator=_gen(1)) * 3 + 1, cfg.init


def _relu_cnn():
    cfg = resolve(["model.name=cnn", "model.channels=8,16,16", "model.activation=relu", "init.scheme=lsuv"])
    return build_model(cfg, (3, 16, 16), 10, generator=_gen(0)), torch.rand(48, 3, 16, 16, generator=_gen(1)), cfg.init


MODELS = {"tanh_mlp": _tanh_mlp, "relu_cnn": _relu_cnn}


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)]


def measured_variances(model: nn.Module, batch: torch.Tensor) -> dict[str, float]:
    """Every Linear/Conv output variance on ``batch``, with our own hooks and one eval-mode pass."""
    out: dict[str, float] = {}

    def record(name: str):
        def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> None:  # must return None
            out.setdefault(name, float(output.double().var(unbiased=False)))

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in _layers(model)]
    was = model.training
    model.eval()
    with torch.no_grad():
        model(batch)
    model.train(was)
    for h in handles:
        h.remove()
    return out


def _is_orthonormal(weight: torch.Tensor, scale: float = 1.0, atol: float = 1e-5) -> bool:
    """W Wᵀ = scale² I when rows <= cols, Wᵀ W = scale² I otherwise (conv weights as (out, in * kernel))."""
    w = weight.detach().double().flatten(1)
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return torch.allclose(gram, scale**2 * torch.eye(len(gram), dtype=torch.float64), rtol=0, atol=atol * scale**2)


def test_lsuv_is_registered_as_needing_a_batch():
    entry = INITS.entry("lsuv")
    assert entry.meta.needs_batch is True and entry.meta.uses_gain is False and entry.doc


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_every_hidden_layer_has_unit_output_variance_after_lsuv(kind):
    model, batch, cfg = MODELS[kind]()
    *hidden, head = _layers(model)
    assert len(hidden) >= (8 if kind == "tanh_mlp" else 3)
    before = measured_variances(model, batch)
    assert any(abs(before[n] - 1) >= cfg.lsuv_tol for n, _ in hidden)  # the test is not vacuous
    returned = lsuv_init(model, batch, cfg, _gen(2))
    after = measured_variances(model, batch)
    assert set(returned) == {n for n, _ in hidden}  # head excluded by default
    for name, _ in hidden:
        assert abs(after[name] - 1.0) < cfg.lsuv_tol
        assert returned[name] == pytest.approx(after[name], rel=1e-6)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_head_keeps_its_orthonormal_weights_by_default_and_is_rescaled_with_lsuv_head(kind):
    model, batch, cfg = MODELS[kind]()
    lsuv_init(model, batch, cfg, _gen(2))
    head_name, head = _layers(model)[-1]
    assert _is_orthonormal(head.weight)  # untouched: gain-1 orthogonal
    assert abs(measured_variances(model, batch)[head_name] - 1.0) >= cfg.lsuv_tol  # so not at unit variance here

    cfg.lsuv_head = True
    returned = lsuv_init(model, batch, cfg, _gen(2))
    assert head_name in returned
    assert abs(measured_variances(model, batch)[head_name] - 1.0) < cfg.lsuv_tol


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_weights_are_orthonormal_before_the_data_step_and_proportional_after(kind):
    model, batch, cfg = MODELS[kind]()
    # build_model with scheme=lsuv already gives the gain-1 orthonormal start (no batch needed).
    assert all(_is_orthonormal(m.weight) for _, m in _layers(model))
    # lsuv_max_iter=0: the orthonormal start only (variances measured, nothing rescaled).
    cfg.lsuv_max_iter = 0
    lsuv_init(model, batch, cfg, _gen(2))
    start = {n: m.weight.detach().clone() for n, m in _layers(model)}
    for weight in start.values():
        assert _is_orthonormal(weight)
    # The data step multiplies each weight by one scalar: W Wᵀ stays ∝ I, and W is the same matrix.
    cfg.lsuv_max_iter = 10
    lsuv_init(model, batch, cfg, _gen(2))
    for name, layer in _layers(model):
        w, w0 = layer.weight.detach().double(), start[name].double()
        c = float(w.flatten().dot(w0.flatten()) / w0.flatten().dot(w0.flatten()))
        torch.testing.assert_close(w, c * w0, rtol=1e-5, atol=1e-7)
        assert _is_orthonormal(layer.weight, scale=abs(c), atol=1e-4)


def test_biases_are_zero_after_lsuv():
    model, batch, cfg = _tanh_mlp()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    lsuv_init(model, batch, cfg, _gen(2))
    assert all(torch.all(m.bias == 0) for _, m in _layers(model) if m.bias is not None)


def test_seeded_lsuv_is_repeatable_and_leaves_the_global_rng_alone():
    states = []
    rng = torch.get_rng_state()
    for seed in (5, 5, 6):
        model, batch, cfg = _relu_cnn()
        lsuv_init(model, batch, cfg, _gen(seed))
        states.append(model.state_dict())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


class _Reversed(nn.Module):
    """Layers registered in the reverse of the order the forward pass uses them."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Linear(32, 4)
        self.b = nn.Linear(32, 32)
        self.a = nn.Linear(16, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))


def test_layers_are_rescaled_in_forward_order_not_registration_order():
    model, batch = _Reversed(), torch.randn(256, 16, generator=_gen(1)) * 5
    cfg = InitConfig(scheme="lsuv", lsuv_head=True, lsuv_max_iter=1)  # one rescaling each: order matters
    lsuv_init(model, batch, cfg, _gen(0))
    after = measured_variances(model, batch)
    for name in "abc":
        assert abs(after[name] - 1.0) < 1e-4


def test_modes_and_batch_norm_running_statistics_are_left_alone():
    cfg = resolve(["model.name=cnn", "model.channels=8,8", "model.norm=batch", "model.dropout=0.5", "init.scheme=lsuv"])
    model = build_model(cfg, (2, 12, 12), 5, generator=_gen(0))
    model.train()
    model[1].eval()  # a mixed-mode model keeps each module's own mode
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    stats = [(m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked)) for m in bn]
    modes = {m: m.training for m in model.modules()}
    lsuv_init(model, torch.randn(32, 2, 12, 12, generator=_gen(1)), cfg.init, _gen(2))
    assert {m: m.training for m in model.modules()} == modes
    for m, (mean, var, n) in zip(bn, stats):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var) and int(m.num_batches_tracked) == n


def test_init_model_with_lsuv_gives_the_orthonormal_start_whatever_the_activation():
    layer = nn.Linear(64, 32)
    layer.follows = "relu"  # gain sqrt(2) for orthogonal, ignored by lsuv (the data step sets the scale)
    init_model(layer, InitConfig(scheme="lsuv", gain=3.0), _gen())
    assert _is_orthonormal(layer.weight) and torch.all(layer.bias == 0)


@pytest.mark.parametrize(
    "field, value", [("lsuv_tol", 0.0), ("lsuv_tol", -0.1), ("lsuv_tol", float("nan")), ("lsuv_tol", 1.5),
                     ("lsuv_max_iter", -1)]
)
def test_bad_lsuv_config_is_a_config_error(field, value):
    model, batch, cfg = _tanh_mlp(depth=2)
    setattr(cfg, field, value)
    with pytest.raises(ConfigError, match=f"init.{field}"):
        lsuv_init(model, batch, cfg)


def test_bad_batches_are_data_errors():
    model, batch, cfg = _tanh_mlp(depth=2)
    with pytest.raises(DataError, match="at least 2 examples"):
        lsuv_init(model, batch[:1], cfg)
    bad = batch.clone()
    bad[0, 0] = math.nan
    with pytest.raises(DataError, match="NaN/inf"):
        lsuv_init(model, bad, cfg)
    with pytest.raises(DataError, match="output variance"):
        lsuv_init(model, torch.zeros(8, 20), cfg)  # zero input: nothing to rescale


def test_config_keys_resolve():
    cfg = resolve(["init.scheme=lsuv", "init.lsuv_tol=0.05", "init.lsuv_max_iter=3", "init.lsuv_head=true"])
    assert (cfg.init.lsuv_tol, cfg.init.lsuv_max_iter, cfg.init.lsuv_head) == (0.05, 3, True)


@pytest.mark.parametrize("field, value", [("lsuv_tol", 1.0), ("lsuv_tol", "0.1"), ("lsuv_max_iter", 2.5),
                                          ("lsuv_max_iter", True), ("lsuv_max_iter", "3")])
def test_lsuv_config_at_its_edges_and_of_the_wrong_type_is_a_config_error(field, value):
    # the edges the mutation run found: tol is in the open interval (0, 1), max_iter an int (bool is not one)
    model, batch, cfg = _tanh_mlp(depth=2)
    setattr(cfg, field, value)
    with pytest.raises(ConfigError, match=f"init.{field}"):
        lsuv_init(model, batch, cfg)


def test_lsuv_config_just_inside_its_edges_is_accepted():
    model, batch, cfg = _tanh_mlp(depth=2)
    cfg.lsuv_tol, cfg.lsuv_max_iter = 0.999, 0
    lsuv_init(model, batch, cfg)


class _Column(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # a 1-D batch of scalars -> (N, 1)
        return x[:, None]


def test_lsuv_batch_errors_say_what_they_got_and_a_batch_of_two_scalars_is_enough():
    import warnings
    model, batch, cfg = _tanh_mlp(depth=2)
    with pytest.raises(DataError, match=r"^lsuv needs a batch of at least 2 examples to measure variances; got "
                                        r"\(1, 20\)\.$"):
        lsuv_init(model, batch[:1], cfg)
    with pytest.raises(DataError, match=r"; got list\.$"):
        lsuv_init(model, batch.tolist(), cfg)
    with pytest.raises(DataError, match=r"; got \(\)\.$"):
        lsuv_init(model, torch.tensor(1.0), cfg)
    bad = batch.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(DataError, match=r"^lsuv: the batch holds NaN/inf values; clean or preprocess the data first\.$"):
        lsuv_init(model, bad, cfg)
    scalars = nn.Sequential(_Column(), nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert set(lsuv_init(scalars, torch.tensor([-1.0, 2.0]), cfg)) == {"1", "3"}  # 1-D, two examples


def test_lsuv_without_weight_layers_or_with_a_constant_layer_output_is_refused_in_one_line():
    _, batch, cfg = _tanh_mlp(depth=2)
    with pytest.raises(ConfigError, match=r"^init\.scheme=lsuv needs a model with Linear/Conv layers that run on the "
                                          r"batch\.$"):
        lsuv_init(nn.Tanh(), batch, cfg)
    model = nn.Sequential(nn.Linear(20, 4), nn.Tanh(), nn.Linear(4, 2))
    with pytest.raises(DataError, match=r"^lsuv: layer '0' has output variance 0\.0 on the batch, so it cannot be "
                                        r"rescaled; use a larger, varied batch \(or another init\.scheme\)\.$"):
        lsuv_init(model, torch.zeros(8, 20), cfg)  # zero inputs, zero biases: a constant output


def test_lsuv_starts_orthonormal_whatever_scheme_the_config_names():
    model, batch, cfg = _tanh_mlp(depth=3)
    cfg.scheme, cfg.lsuv_max_iter = "normal", 0
    lsuv_init(model, batch, cfg, _gen(0))
    assert all(_is_orthonormal(m.weight) for _, m in _layers(model))


def test_a_layer_already_within_tolerance_is_not_rescaled_and_nothing_warns():
    import warnings
    model, _, cfg = _tanh_mlp(depth=3)
    batch = torch.randn(128, 20, generator=_gen(1))  # unit-variance inputs: every layer's start is near 1
    cfg.lsuv_tol, cfg.lsuv_max_iter = 0.999, 10  # every orthonormal start is within (0.001, 1.999) here
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        variances = lsuv_init(model, batch, cfg, _gen(0))
    assert all(abs(v - 1) < 0.999 for v in variances.values())
    assert all(_is_orthonormal(m.weight) for _, m in _layers(model))  # not one rescaling


def test_with_no_rescaling_allowed_nothing_warns_and_with_too_few_it_warns_naming_the_layer():
    import warnings
    model, batch, cfg = _tanh_mlp(depth=3)
    cfg.lsuv_tol, cfg.lsuv_max_iter = 1e-9, 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lsuv_init(model, batch, cfg, _gen(0))
    cfg.lsuv_max_iter = 1
    with pytest.warns(UserWarning, match=r"^lsuv: layer '.*' output variance .* after 1 rescalings \(tolerance 1e-09\); "
                                         r"raise init\.lsuv_max_iter\.$"):
        lsuv_init(model, batch, cfg, _gen(0))


@pytest.mark.parametrize("scheme", ["normal", "uniform"])
def test_std_schemes_name_themselves_when_std_is_not_positive(scheme):
    with pytest.raises(ConfigError, match=rf"^init\.scheme={scheme} needs init\.std > 0, got 0\.0; e\.g\. init\.std=0\.01\.$"):
        init_model(nn.Linear(3, 2), InitConfig(scheme=scheme, std=0.0), _gen(0))


def test_the_returned_variances_are_the_float64_variances_of_each_layers_output():
    # The docstring's float64: measured in float32 the variance would differ from ours by ~1e-7.
    for kind in sorted(MODELS):
        model, batch, cfg = MODELS[kind]()
        returned = lsuv_init(model, batch, cfg, _gen(2))
        after = measured_variances(model, batch)
        assert returned and all(returned[name] == pytest.approx(after[name], rel=1e-13, abs=0) for name in returned)


class _FirstPassOnly(nn.Module):
    """Uses its middle layer on the first forward pass only: a forward that changes from pass to pass."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 2)
        self.passes = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.passes += 1
        h = torch.tanh(self.a(x))
        return self.c(torch.tanh(self.b(h)) if self.passes == 1 else h)


def test_a_layer_that_stops_running_on_the_batch_is_one_config_error_line_and_modes_are_restored():
    model, batch = _FirstPassOnly().train(), torch.randn(32, 6, generator=_gen(1))
    with pytest.raises(ConfigError) as info:
        lsuv_init(model, batch, InitConfig(scheme="lsuv"), _gen(0))
    assert str(info.value) == "lsuv: a Linear/Conv layer of the model did not run on the batch."
    assert all(m.training for m in model.modules())


def test_a_layer_exactly_at_the_tolerance_is_rescaled_and_just_inside_it_is_not():
    """|Var - 1| < lsuv_tol is strict. A 1 x 1 layer starts at weight ±1 (orthonormal) and sees ±0.5:
    Var = 0.25 exactly, |Var - 1| = 0.75; at lsuv_tol = 0.75 one rescaling (w /= 0.5) gives Var = 1."""
    model, batch = nn.Sequential(_Column(), nn.Linear(1, 1)), torch.tensor([-0.5, 0.5])
    at = lsuv_init(model, batch, InitConfig(scheme="lsuv", lsuv_tol=0.75, lsuv_head=True), _gen(0))
    assert at == {"1": 1.0} and abs(float(model[1].weight.detach())) == 2.0
    inside = lsuv_init(model, batch, InitConfig(scheme="lsuv", lsuv_tol=0.75 + 1e-9, lsuv_head=True), _gen(0))
    assert inside == {"1": 0.25} and abs(float(model[1].weight.detach())) == 1.0


class _Standardised(nn.Linear):
    """A weight-standardised layer (its weight divided by its norm before use): rescaling W changes nothing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight / self.weight.norm(), self.bias)


def test_a_scale_invariant_layer_warns_after_max_iter_rescalings_even_exactly_at_the_tolerance():
    """The layer's Var stays 0.25 (|Var - 1| = 0.75) whatever LSUV divides W by: not within lsuv_tol = 0.75
    (strict), so it warns; within 0.75 + 1e-9 it does not."""
    import warnings
    model, batch = nn.Sequential(_Column(), _Standardised(1, 1)), torch.tensor([-0.5, 0.5])
    cfg = InitConfig(lsuv_tol=0.75, lsuv_max_iter=3, lsuv_head=True)
    with pytest.warns(UserWarning, match=r"^lsuv: layer '1' output variance 0\.25 after 3 rescalings \(tolerance 0\.75\)"):
        assert lsuv_init(model, batch, cfg, _gen(0)) == {"1": 0.25}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lsuv_init(model, batch, InitConfig(lsuv_tol=0.75 + 1e-9, lsuv_max_iter=3, lsuv_head=True),
                         _gen(0)) == {"1": 0.25}


def test_the_too_few_rescalings_warning_points_at_the_code_that_called_lsuv_init():
    # Not at torch's no_grad wrapper (what stacklevel=2 named) nor inside trainwell.
    model, batch = nn.Sequential(_Column(), _Standardised(1, 1)), torch.tensor([-0.5, 0.5])
    with pytest.warns(UserWarning, match="raise init.lsuv_max_iter") as record:
        lsuv_init(model, batch, InitConfig(lsuv_max_iter=1, lsuv_head=True), _gen(0))
    assert [w.filename for w in record] == [__file__]


def test_the_warning_names_a_caller_whose_globals_have_no_module_name():
    # Code run by exec() with a bare globals dict has no __name__: it is the caller, and no error is raised.
    model, batch = nn.Sequential(_Column(), _Standardised(1, 1)), torch.tensor([-0.5, 0.5])
    scope = {"lsuv_init": lsuv_init, "model": model, "batch": batch, "gen": _gen(0),
             "cfg": InitConfig(lsuv_max_iter=1, lsuv_head=True)}
    with pytest.warns(UserWarning, match="raise init.lsuv_max_iter") as record:
        exec(compile("lsuv_init(model, batch, cfg, gen)", "<lsuv caller>", "exec"), scope)
    assert "__name__" not in scope and [w.filename for w in record] == ["<lsuv caller>"]
