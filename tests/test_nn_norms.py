"""Norm layers: each normalises over the axes its paper says, for features, 1-D and 2-D maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainwell.errors import ConfigError
from trainwell.nn import NORMS, build_norm, num_groups

SHAPES = {0: (6, 12), 1: (6, 12, 7), 2: (6, 12, 5, 3)}


def _x(dims: int) -> torch.Tensor:
    return torch.randn(*SHAPES[dims], generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 1


@pytest.mark.parametrize("dims", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(NORMS.names()))
def test_every_norm_keeps_the_shape(name, dims):
    x = _x(dims)
    assert build_norm(name, 12, dims).double()(x).shape == x.shape


@pytest.mark.parametrize("dims", [0, 1, 2])
def test_layer_norm_normalises_each_example_over_all_channels_and_positions(dims):
    x = _x(dims)
    expected = F.layer_norm(x, x.shape[1:])  # LayerNorm((C, *spatial)) at its init (scale 1, shift 0)
    torch.testing.assert_close(build_norm("layer", 12, dims).double()(x), expected)


@pytest.mark.parametrize("dims", [0, 1, 2])
def test_batch_norm_normalises_each_channel_over_batch_and_positions(dims):
    x = _x(dims)
    axes = [0] + list(range(2, x.ndim))
    mean, var = x.mean(axes, keepdim=True), x.var(axes, unbiased=False, keepdim=True)
    torch.testing.assert_close(build_norm("batch", 12, dims).double().train()(x), (x - mean) / torch.sqrt(var + 1e-5))


@pytest.mark.parametrize("dims", [0, 1, 2])
def test_group_norm_normalises_groups_of_channels_per_example(dims):
    x = _x(dims)
    g = num_groups(12)
    grouped = x.reshape(x.shape[0], g, -1)
    mean, var = grouped.mean(-1, keepdim=True), grouped.var(-1, unbiased=False, keepdim=True)
    expected = ((grouped - mean) / torch.sqrt(var + 1e-5)).reshape(x.shape)
    torch.testing.assert_close(build_norm("group", 12, dims).double()(x), expected)


@pytest.mark.parametrize(
    "channels, groups",
    [(1, 1), (3, 1), (4, 1), (8, 2), (12, 3), (16, 4), (24, 6), (30, 6), (32, 8), (40, 8), (64, 8), (7, 1), (44, 4)],
)
def test_group_count_is_largest_divisor_at_most_eight_with_four_channels_per_group(channels, groups):
    assert num_groups(channels) == groups
    assert build_norm("group", channels, 2).num_groups == groups


def test_none_is_identity_and_only_batch_absorbs_bias():
    x = _x(2)
    assert torch.equal(build_norm("none", 12, 2)(x), x)
    assert [e.name for e in NORMS if e.meta.absorbs_bias] == ["batch"]
    assert [e.name for e in NORMS if e.meta.batch_dependent] == ["batch"]


def test_batch_norm_modules_match_the_input_rank():
    assert isinstance(build_norm("batch", 4, 0), nn.BatchNorm1d)
    assert isinstance(build_norm("batch", 4, 1), nn.BatchNorm1d)
    assert isinstance(build_norm("batch", 4, 2), nn.BatchNorm2d)


@pytest.mark.parametrize("num_features, dims", [(0, 0), (4, 3), (4, -1)])
def test_bad_sizes_are_config_errors(num_features, dims):
    with pytest.raises(ConfigError):
        build_norm("batch", num_features, dims)


def test_unknown_norm_lists_valid_names():
    with pytest.raises(ConfigError, match="unknown norm 'bn'.*Valid: batch, group, layer, none"):
        build_norm("bn", 4, 0)
