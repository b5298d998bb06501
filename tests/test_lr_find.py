"""LR range test: restores the model, suggests an LR that an early spike cannot move."""

import json
import math

import numpy as np
import pytest
import torch

import trainwell
from trainwell.data import load_splits
from trainwell.errors import ConfigError
from trainwell.nn import build_model
from trainwell.nn.pipeline import Classifier
from trainwell.train.lr_find import lr_range_test, smooth_losses, suggest_lr
from trainwell.train.build import build_classifier

QUICK = {"data.limit": 400, "train.progress": False, "model.name": "mlp", "model.width": 32}


def synthetic_curve(spike: bool):
    """A loss that falls until lr=1e-1, then explodes; optionally a large spike at the start."""
    lrs = list(np.logspace(-6, 1, 100))
    losses = [2.3 - 0.4 * max(0.0, math.log10(lr) + 4) if lr < 1e-1 else 2.3 + 20 * (math.log10(lr) + 1)
              for lr in lrs]
    if spike:
        losses[6:9] = [50.0, 40.0, 30.0]
    return lrs, losses


def test_smoothing_is_bias_corrected():
    assert smooth_losses([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])


def weighted_average_smoothing(losses, beta):
    """The bias-corrected EMA in closed form: s_t = sum_i beta^(t-i) l_i / sum_i beta^(t-i), i = 1..t
    (the EMA's weights (1 - beta) beta^(t-i) divided by their sum 1 - beta^t)."""
    out = []
    for t in range(1, len(losses) + 1):
        weights = [beta ** (t - i) for i in range(1, t + 1)]
        out.append(sum(w * v for w, v in zip(weights, losses[:t])) / sum(weights))
    return out


@pytest.mark.parametrize("beta", [0.5, 0.9, 0.98])
def test_smoothing_is_the_bias_corrected_weighted_average(beta):
    losses = list(np.random.default_rng(0).uniform(0.5, 3.0, 40))
    assert smooth_losses(losses, beta) == pytest.approx(weighted_average_smoothing(losses, beta), rel=1e-12)
    assert smooth_losses(losses) == pytest.approx(weighted_average_smoothing(losses, 0.9), rel=1e-12)


def test_the_range_test_records_the_smoothed_curve_of_its_own_losses():
    cfg = trainwell.resolve(QUICK)
    splits = load_splits(cfg.data)
    result = lr_range_test(build_classifier(cfg, splits), splits, cfg, torch.device("cpu"), steps=25, beta=0.7,
                           diverge_factor=1e9)
    assert len(result.smoothed) == len(result.losses) == 25
    assert result.smoothed == pytest.approx(weighted_average_smoothing(result.losses, 0.7), rel=1e-9)
    assert result.smoothed != pytest.approx(result.losses, rel=1e-6)  # smoothing did something


def test_suggestion_is_a_decade_below_the_smoothed_minimum():
    lrs, losses = synthetic_curve(spike=False)
    suggested, at_min = suggest_lr(lrs, smooth_losses(losses, 0.5))
    assert 5e-2 < at_min < 2e-1
    assert suggested == pytest.approx(at_min / 10)


def test_an_early_spike_does_not_move_the_suggestion():
    lrs, clean = synthetic_curve(spike=False)
    _, spiky = synthetic_curve(spike=True)
    assert suggest_lr(lrs, smooth_losses(spiky, 0.5)) == suggest_lr(lrs, smooth_losses(clean, 0.5))


def test_range_test_restores_the_model_and_rng():
    cfg = trainwell.resolve(QUICK)
    splits = load_splits(cfg.data)
    model = build_classifier(cfg, splits)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng_before = torch.get_rng_state()
    result = lr_range_test(model, splits, cfg, torch.device("cpu"), steps=30)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert len(result.lrs) == len(result.losses) <= 30
    assert all(b > a for a, b in zip(result.lrs, result.lrs[1:]))  # exponential growth
    assert result.lrs[0] <= result.suggested_lr <= result.min_loss_lr


def test_bad_ranges_are_config_errors():
    cfg = trainwell.resolve(QUICK)
    splits = load_splits(cfg.data)
    model = Classifier(build_model(cfg, splits.input_shape, splits.num_classes))
    with pytest.raises(ConfigError):
        lr_range_test(model, splits, cfg, torch.device("cpu"), start_lr=1.0, end_lr=0.1)
    with pytest.raises(ConfigError):
        lr_range_test(model, splits, cfg, torch.device("cpu"), steps=3)


def test_auto_lr_trains_with_the_suggested_lr(tmp_path):
    run = trainwell.train(dict(QUICK, **{"optim.lr": "auto", "train.epochs": 1}), out=tmp_path / "a", quiet=True)
    found = json.loads((run.dir / "lr_find.json").read_text())
    assert run.summary["lr_auto"] is True
    assert run.summary["lr"] == pytest.approx(found["suggested_lr"]) == pytest.approx(run.config.optim.lr)
    assert (run.dir / "lr_find.png").is_file()


def test_find_lr_api_writes_plot_and_summary(tmp_path):
    from trainwell.runs.train import find_lr

    summary = find_lr(QUICK, out=tmp_path / "f", steps=30)
    assert (tmp_path / "f" / "lr_find.png").is_file()
    assert json.loads((tmp_path / "f" / "summary.json").read_text())["suggested_lr"] == summary["suggested_lr"]
