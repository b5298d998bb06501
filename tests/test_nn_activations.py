"""Activations: values and gradients against torch.nn.functional, gains, metadata, spec parsing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import integrate, stats
from torch.nn.init import calculate_gain

from trainwell.errors import ConfigError
from trainwell.nn import ACTIVATIONS, activation_gain, build_activation, parse_activation
from trainwell.registry import ALL

#: Reference implementation of every entry, as (spec, function of x).
REFERENCE = {
    "identity": ("identity", lambda x: x),
    "sigmoid": ("sigmoid", torch.sigmoid),
    "tanh": ("tanh", torch.tanh),
    "relu": ("relu", F.relu),
    "leaky_relu": ("leaky_relu:0.2", lambda x: F.leaky_relu(x, 0.2)),
    "elu": ("elu:0.5", lambda x: F.elu(x, 0.5)),
    "selu": ("selu", F.selu),
    "gelu": ("gelu", F.gelu),
    "silu": ("silu", F.silu),
}

#: Entries whose gain torch.nn.init.calculate_gain defines, with the name and argument it takes.
TORCH_GAIN = {
    "identity": ("linear", None),
    "sigmoid": ("sigmoid", None),
    "tanh": ("tanh", None),
    "relu": ("relu", None),
    "leaky_relu": ("leaky_relu", 0.01),
    "selu": ("selu", None),
}


def _at(module: torch.nn.Module, x: float) -> float:
    """The activation at one point, in float64 (for scipy's quadrature)."""
    return float(module(torch.tensor(x, dtype=torch.float64)))


def _inputs(dtype: torch.dtype) -> torch.Tensor:
    # Points across both tails and the middle, kept off x = 0 where relu-like kinks are not differentiable.
    x = torch.linspace(-6.0, 6.0, 121, dtype=dtype)
    return x[x.abs() > 0.05]


def test_every_entry_has_a_reference():
    assert set(REFERENCE) == set(ACTIVATIONS.names())


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_values_match_torch_functional(name):
    spec, ref = REFERENCE[name]
    x = _inputs(torch.float64)
    torch.testing.assert_close(build_activation(spec)(x), ref(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_gradients_pass_gradcheck_and_match_torch_functional(name):
    spec, ref = REFERENCE[name]
    module = build_activation(spec)
    x = _inputs(torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(module, (x,))
    (ours,) = torch.autograd.grad(module(x).sum(), x)
    (theirs,) = torch.autograd.grad(ref(x).sum(), x)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(TORCH_GAIN))
def test_gain_equals_calculate_gain_where_torch_defines_it(name):
    torch_name, param = TORCH_GAIN[name]
    assert activation_gain(name) == calculate_gain(torch_name, param)


@pytest.mark.parametrize("name", ["elu", "gelu", "silu"])
def test_gain_of_unlisted_rectifiers_is_the_relu_approximation(name):
    assert activation_gain(name) == calculate_gain("relu")
    assert "approximat" in ACTIVATIONS.entry(name).doc


@pytest.mark.parametrize("slope", [0.0, 0.01, 0.1, 0.2, 0.5])
def test_leaky_relu_slope_sets_the_gain_as_calculate_gain_says(slope):
    assert activation_gain(f"leaky_relu:{slope}") == calculate_gain("leaky_relu", slope)
    assert activation_gain(f"leaky_relu:{slope}") == pytest.approx(math.sqrt(2.0 / (1.0 + slope**2)), rel=1e-15)


@pytest.mark.parametrize("spec", ["relu", "leaky_relu:0.2", "leaky_relu:0.5"])
def test_rectifier_gain_preserves_the_second_moment_exactly(spec):
    # He et al. 2015: gain^2 * E[f(z)^2] = 1 for z ~ N(0, 1) makes Var(next pre-activation) = Var(z).
    module = build_activation(spec)
    halves = [(-np.inf, 0.0), (0.0, np.inf)]  # split at the kink so quad integrates smooth pieces
    second_moment = sum(integrate.quad(lambda x: _at(module, x) ** 2 * stats.norm.pdf(x), a, b)[0] for a, b in halves)
    assert activation_gain(spec) ** 2 * second_moment == pytest.approx(1.0, rel=1e-8)


def test_metadata_is_complete_and_typed():
    for entry in ACTIVATIONS:
        meta = entry.meta
        assert entry.doc, entry.name
        assert callable(meta.gain) and meta.gain(**parse_activation(entry.name)[1]) > 0
        assert isinstance(meta.saturates, str)
        assert isinstance(meta.zero_centred, bool)
        assert isinstance(meta.formula, str) and meta.formula.startswith("f(x) =")
        assert meta.family in ("sigmoid", "relu", "identity")
        assert isinstance(meta.can_die, bool)


def test_only_relu_can_die():
    assert [e.name for e in ACTIVATIONS if e.meta.can_die] == ["relu"]


def test_saturating_entries_have_vanishing_derivatives_where_they_say():
    x = torch.tensor([-30.0, 30.0], dtype=torch.float64, requires_grad=True)
    for entry in ACTIVATIONS:
        (grad,) = torch.autograd.grad(build_activation(entry.name)(x).sum(), x)
        for side, g in zip(("negative", "positive"), grad.abs().tolist()):
            says = side in entry.meta.saturates or "both" in entry.meta.saturates
            assert (g < 1e-6) == says, (entry.name, side, g)


def test_zero_centred_entries_have_mean_zero_output_on_standard_normal_input():
    for entry in ACTIVATIONS:
        module = build_activation(entry.name)
        mean = integrate.quad(lambda x: _at(module, x) * stats.norm.pdf(x), -12, 12)[0]
        assert (abs(mean) < 1e-3) == entry.meta.zero_centred, (entry.name, mean)


def test_registry_is_listed_for_trainwell_list():
    assert ALL["activation"] is ACTIVATIONS


def test_parse_fills_defaults_and_reads_arguments():
    assert parse_activation("relu") == ("relu", {})
    assert parse_activation("leaky_relu") == ("leaky_relu", {"slope": 0.01})
    assert parse_activation("leaky_relu:0.2") == ("leaky_relu", {"slope": 0.2})
    assert parse_activation(" elu : 0.5 ") == ("elu", {"alpha": 0.5})


def test_built_modules_carry_the_parsed_arguments():
    assert build_activation("leaky_relu:0.2").negative_slope == 0.2
    assert build_activation("elu:0.5").alpha == 0.5
    assert build_activation("leaky_relu").negative_slope == 0.01


def test_unknown_name_lists_every_valid_name():
    with pytest.raises(ConfigError) as info:
        parse_activation("rleu")
    message = str(info.value)
    assert "'rleu'" in message and "Did you mean 'relu'" in message
    for name in ACTIVATIONS.names():
        assert name in message


@pytest.mark.parametrize(
    "spec, says",
    [
        ("relu:0.1", "takes no arguments"),
        ("leaky_relu:0.1:0.2", "takes slope"),
        ("leaky_relu:abc", "slope must be a number in [0, 1)"),
        ("leaky_relu:-0.1", "slope must be a number in [0, 1)"),
        ("leaky_relu:1.5", "slope must be a number in [0, 1)"),
        ("leaky_relu:nan", "slope must be a number"),
        ("elu:0", "alpha must be a number > 0"),
        ("elu:", "alpha must be a number > 0"),
    ],
)
def test_bad_arguments_raise_config_error_saying_what(spec, says):
    with pytest.raises(ConfigError) as info:
        build_activation(spec)
    assert says in str(info.value)
    with pytest.raises(ConfigError):
        activation_gain(spec)


def test_non_string_spec_is_a_config_error():
    with pytest.raises(ConfigError, match="must be a string"):
        parse_activation(None)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- messages and keywords, word for word


@pytest.mark.parametrize("spec, message", [
    ("leaky_relu:slop=0.2",
     "activation 'leaky_relu:slop=0.2': leaky_relu takes slope, each once; write e.g. 'leaky_relu:0.01'."),
    ("leaky_relu:0.1:slope=0.2",
     "activation 'leaky_relu:0.1:slope=0.2': leaky_relu takes slope, each once; write e.g. 'leaky_relu:0.01'."),
    ("leaky_relu:0.1:0.2", "activation 'leaky_relu:0.1:0.2': leaky_relu takes slope; write e.g. 'leaky_relu:0.01'."),
    ("relu:0.1", "activation 'relu:0.1': relu takes no arguments; write e.g. 'relu'."),
    ("relu:slope=0.1", "activation 'relu:slope=0.1': relu takes no arguments, each once; write e.g. 'relu'."),
    ("elu:inf", "activation 'elu:inf': alpha must be a number > 0, got inf; e.g. 'elu:1.0'."),
    ("elu:-1", "activation 'elu:-1': alpha must be a number > 0, got -1; e.g. 'elu:1.0'."),
    ("leaky_relu:[1", "config key 'model.activation': unexpected '[' at position 12 of 'leaky_relu:[1'; "
                      "separate items with ',' and close each '[' with ']'."),
])
def test_bad_activation_specs_say_exactly_what_and_how_to_fix(spec, message):
    with pytest.raises(ConfigError) as info:
        parse_activation(spec)
    assert str(info.value) == message


def test_keyword_arguments_reach_the_module_and_omitted_ones_keep_the_documented_defaults():
    assert parse_activation("elu:alpha=0.5") == ("elu", {"alpha": 0.5})
    assert parse_activation("leaky_relu:slope=0.2") == ("leaky_relu", {"slope": 0.2})
    assert build_activation("elu:alpha=0.5").alpha == 0.5
    # The documented defaults are torch's: LeakyReLU(0.01), ELU(1.0).
    assert parse_activation("leaky_relu") == ("leaky_relu", {"slope": torch.nn.LeakyReLU().negative_slope})
    assert parse_activation("elu") == ("elu", {"alpha": torch.nn.ELU().alpha})
