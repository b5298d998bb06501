"""Optimisers, parameter groups, penalties and schedules against their closed forms."""

import math

import pytest
import torch
from torch import nn

from trainwell.config import OptimConfig, SchedConfig, resolve
from trainwell.errors import ConfigError
from trainwell.train.optim import (
    OPTIMIZERS,
    SCHEDULES,
    build_optimizer,
    build_scheduler,
    lr_multiplier,
    penalty,
    split_param_groups,
)


def small_net():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3),
                         nn.LayerNorm(3))


def test_only_weights_of_linear_and_conv_layers_decay():
    groups = split_param_groups(small_net())
    assert [n for n, _ in groups.decay] == ["0.weight", "3.weight"]
    assert set(n for n, _ in groups.no_decay) == {"0.bias", "1.weight", "1.bias", "3.bias", "4.weight", "4.bias"}


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_weight_decay_shrinks_weights_and_leaves_biases_and_norms(name):
    torch.manual_seed(0)
    net = small_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt, groups = build_optimizer(net, OptimConfig(name=name, lr=1e-3, weight_decay=0.5, momentum=0.0))
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = net.state_dict()
    for k, _ in groups.decay:
        assert after[k].norm() < before[k].norm(), k
    for k, _ in groups.no_decay:
        assert torch.equal(after[k], before[k]), k


def test_sgd_decay_matches_closed_form():
    net = nn.Linear(5, 2)
    w0 = net.weight.detach().clone()
    opt, _ = build_optimizer(net, OptimConfig(name="sgd", lr=0.1, weight_decay=0.01, momentum=0.0))
    net.weight.grad = torch.zeros_like(net.weight)
    net.bias.grad = torch.zeros_like(net.bias)
    opt.step()
    torch.testing.assert_close(net.weight.detach(), w0 * (1 - 0.1 * 0.01))


def test_exemption_can_be_switched_off():
    groups = split_param_groups(small_net(), exempt_bias_and_norm=False)
    assert not groups.no_decay and len(groups.decay) == len(list(small_net().parameters()))


def test_penalty_is_l1_plus_half_l2_over_weights_only():
    net = small_net()
    groups = split_param_groups(net)
    weights = [p for _, p in groups.decay]
    expected = 0.3 * sum(w.abs().sum() for w in weights) + 0.5 * 0.7 * sum((w ** 2).sum() for w in weights)
    torch.testing.assert_close(penalty(groups, 0.3, 0.7), expected)
    assert penalty(groups, 0.0, 0.0) is None


def test_penalty_gradient_is_sign_and_weight():
    net = nn.Linear(4, 3, bias=True)
    groups = split_param_groups(net)
    penalty(groups, 0.2, 0.5).backward()
    torch.testing.assert_close(net.weight.grad, 0.2 * net.weight.sign() + 0.5 * net.weight.detach())
    assert net.bias.grad is None


@pytest.mark.parametrize("bad", ["optim.lr=0", "optim.lr=-1", "optim.weight_decay=-1", "optim.momentum=1",
                                 "optim.betas=0.9", "optim.name=adagrad"])
def test_bad_optimizer_settings_are_config_errors(bad):
    # ranges fail when the config is resolved (beside their keys), unknown names when the optimiser is built
    with pytest.raises(ConfigError, match=bad.split("=")[0] if "name" not in bad else "unknown optim"):
        build_optimizer(nn.Linear(2, 2), resolve([bad, "optim.name=adam"] if "betas" in bad else [bad]).optim)


def test_warmup_is_linear_then_schedule_starts_at_peak():
    cfg = SchedConfig(name="cosine", warmup_epochs=2)
    spe, total = 10, 100
    mult = [lr_multiplier(i, spe, total, cfg, 0.1) for i in range(total)]
    assert mult[:20] == pytest.approx([(i + 1) / 20 for i in range(20)])
    assert mult[20] == pytest.approx(1.0)


def test_cosine_follows_half_cosine_to_min_lr():
    cfg = SchedConfig(name="cosine", min_lr=0.01)
    total = 50
    for i in (0, 10, 25, 49):
        t = i / total
        expected = 0.1 + (1 - 0.1) * 0.5 * (1 + math.cos(math.pi * t))  # min_lr / lr = 0.1
        assert lr_multiplier(i, 10, total, cfg, 0.1) == pytest.approx(expected)


def test_step_schedule_decays_by_gamma_every_step_epochs():
    cfg = SchedConfig(name="step", step_epochs=3, gamma=0.5)
    assert [lr_multiplier(e * 4, 4, 40, cfg, 1.0) for e in range(7)] == pytest.approx(
        [1, 1, 1, 0.5, 0.5, 0.5, 0.25])


def test_onecycle_warms_up_for_30_percent_then_decays_to_zero():
    cfg = SchedConfig(name="onecycle")
    total = 100
    mult = [lr_multiplier(i, 10, total, cfg, 1.0) for i in range(total)]
    assert max(mult) == pytest.approx(1.0) and mult.index(max(mult)) == 29
    assert mult[-1] < 0.02 and all(a >= b for a, b in zip(mult[30:], mult[31:]))


def test_constant_schedule_is_constant_after_warmup():
    cfg = SchedConfig(name="constant", warmup_epochs=1)
    assert [lr_multiplier(i, 5, 20, cfg, 1.0) for i in range(5, 20)] == [1.0] * 15


def test_scheduler_drives_the_optimizer_lr():
    cfg = resolve(["optim.lr=0.2", "sched.name=cosine", "train.epochs=2"])
    opt, _ = build_optimizer(nn.Linear(2, 2), cfg.optim)
    sched = build_scheduler(opt, cfg, steps_per_epoch=5)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.2) and lrs[-1] < lrs[0]
    assert lrs == pytest.approx([0.2 * lr_multiplier(i, 5, 10, cfg.sched, 0.2) for i in range(10)])


def test_warmup_longer_than_training_is_rejected():
    cfg = resolve(["sched.warmup_epochs=5", "train.epochs=2"])
    opt, _ = build_optimizer(nn.Linear(2, 2), cfg.optim)
    with pytest.raises(ConfigError, match="warmup"):
        build_scheduler(opt, cfg, 3)


def test_every_schedule_is_registered_with_a_doc():
    assert {"constant", "step", "cosine", "onecycle"} <= set(SCHEDULES.names())
    assert all(e.doc for e in SCHEDULES)
