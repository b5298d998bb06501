"""trainwell.nn.layers: one definition of the weight and norm layer kinds, and what each user does with them."""

from __future__ import annotations

from importlib import import_module

import pytest
import torch
from torch import nn

from trainwell.config import InitConfig
from trainwell.nn.layers import NORM_LAYERS, WEIGHT_LAYERS

# import_module: the package's name ``trainwell.train`` is the train function, not the subpackage.
init, layer_groups, optim, recorder = (import_module(f"trainwell.{m}") for m in
                                       ("nn.init", "nn.layer_groups", "train.optim", "diagnose.recorder"))

WEIGHTS = [nn.Linear(3, 4), nn.Conv1d(2, 3, 3), nn.Conv2d(2, 3, 3), nn.Conv3d(2, 3, 3), nn.ConvTranspose2d(2, 3, 3)]
NORMS = [nn.BatchNorm1d(4), nn.BatchNorm2d(4), nn.BatchNorm3d(4), nn.InstanceNorm2d(4), nn.GroupNorm(2, 4),
         nn.LayerNorm(4), nn.LocalResponseNorm(2)]
NEITHER = [nn.ReLU(), nn.Dropout(), nn.Embedding(5, 4), nn.MaxPool2d(2), nn.Flatten(), nn.Identity()]


@pytest.mark.parametrize("module", WEIGHTS, ids=lambda m: type(m).__name__)
def test_weight_layers(module):
    assert isinstance(module, WEIGHT_LAYERS) and not isinstance(module, NORM_LAYERS)


@pytest.mark.parametrize("module", NORMS, ids=lambda m: type(m).__name__)
def test_norm_layers(module):
    assert isinstance(module, NORM_LAYERS) and not isinstance(module, WEIGHT_LAYERS)


@pytest.mark.parametrize("module", NEITHER, ids=lambda m: type(m).__name__)
def test_other_layers_are_neither(module):
    assert not isinstance(module, WEIGHT_LAYERS + NORM_LAYERS)


def test_every_user_reads_the_one_definition():
    assert init.WEIGHT_LAYERS is WEIGHT_LAYERS
    assert init.NORM_LAYERS is optim.NORM_LAYERS is recorder.NORM_LAYERS is layer_groups.NORM_LAYERS is NORM_LAYERS


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.LocalResponseNorm(2), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3))


def test_local_response_norm_has_no_parameter_to_decay_or_initialise():
    net = _net()
    groups = optim.split_param_groups(net)
    assert [n for n, _ in groups.decay] == ["0.weight", "5.weight"]
    assert [n for n, _ in groups.no_decay] == ["0.bias", "2.weight", "2.bias", "5.bias"]
    init.init_model(net, InitConfig(scheme="kaiming_normal"), torch.Generator().manual_seed(0))
    assert torch.equal(net[2].weight, torch.ones(4)) and torch.equal(net[2].bias, torch.zeros(4))


def test_the_doctor_counts_local_response_norm_as_a_norm_site():
    kinds = {site.name: site.kind for site in recorder._sites(_net())}
    assert kinds["0"] == "conv" and kinds["1"] == "norm" and kinds["2"] == "norm" and kinds["5"] == "linear"
