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


# ----------------------------------------------------------------------------- edges the mutation run found


def _ids(*params):
    return sorted(id(p) for p in params)


def test_lr_scales_get_their_own_groups_largest_first_decay_before_no_decay_with_the_scaled_lr():
    # p.lr_scale (discriminative fine-tuning): one decay and one no-decay group per scale, largest scale
    # first; a group whose scale is not 1 carries it as "lr_scale" and starts at optim.lr * scale.
    net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    for p in net[0].parameters():
        p.lr_scale = 0.25
    for p in net[1].parameters():
        p.lr_scale = 0.5
    opt, _ = build_optimizer(net, OptimConfig(name="sgd", lr=0.1, weight_decay=0.01, momentum=0.0))
    got = [(_ids(*g["params"]), g["lr"], g["weight_decay"], g.get("lr_scale", "absent")) for g in opt.param_groups]
    assert got == [
        (_ids(net[2].weight), pytest.approx(0.1), 0.01, "absent"),
        (_ids(net[2].bias), pytest.approx(0.1), 0.0, "absent"),
        (_ids(net[1].weight, net[1].bias), pytest.approx(0.05), 0.0, 0.5),  # no decayed weight at 0.5: no empty group
        (_ids(net[0].weight), pytest.approx(0.025), 0.01, 0.25),
        (_ids(net[0].bias), pytest.approx(0.025), 0.0, 0.25),
    ]


def test_with_one_scale_the_decay_group_comes_first_even_when_empty():
    opt, _ = build_optimizer(nn.LayerNorm(3), OptimConfig(name="sgd", lr=0.1, weight_decay=0.01, momentum=0.0))
    assert [(len(g["params"]), g["weight_decay"]) for g in opt.param_groups] == [(0, 0.01), (2, 0.0)]


def test_frozen_parameters_are_left_out_unless_they_unfreeze_later():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2), nn.Linear(2, 2))
    for p in net[0].parameters():
        p.requires_grad_(False)
    net[1].bias.requires_grad_(False)
    net[1].bias.unfreezes_later = True
    assert split_param_groups(net).describe() == {"decay": ["1.weight", "2.weight"], "no_decay": ["1.bias", "2.bias"]}


def test_build_optimizer_passes_the_exemption_switch_on():
    opt, groups = build_optimizer(small_net(), OptimConfig(name="sgd", lr=0.1, weight_decay=0.01),
                                  exempt_bias_and_norm=False)
    assert not groups.no_decay and [g["weight_decay"] for g in opt.param_groups] == [0.01]


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_betas_are_passed_in_order(name):
    opt, _ = build_optimizer(nn.Linear(2, 2), OptimConfig(name=name, lr=0.1, betas=[0.8, 0.95]))
    assert opt.param_groups[0]["betas"] == (0.8, 0.95)


def test_a_model_without_trainable_parameters_and_an_unresolved_auto_lr_are_one_line_errors():
    frozen = nn.Linear(2, 2)
    frozen.requires_grad_(False)
    with pytest.raises(ConfigError, match=r"^the model has no trainable parameters\.$"):
        build_optimizer(frozen, OptimConfig(name="sgd", lr=0.1))
    build_optimizer(nn.Linear(2, 2, bias=False), OptimConfig(name="sgd", lr=0.1))  # only decayed weights: fine
    with pytest.raises(ConfigError, match=r"^optim\.lr=auto must be resolved by the LR range test before building "
                                          r"the optimiser\.$"):
        build_optimizer(nn.Linear(2, 2), OptimConfig(name="sgd", lr="auto"))


def test_penalty_with_only_one_of_l1_and_l2():
    net = nn.Linear(4, 3)
    groups = split_param_groups(net)
    torch.testing.assert_close(penalty(groups, 0.3, 0.0), 0.3 * net.weight.abs().sum())
    torch.testing.assert_close(penalty(groups, 0.0, 0.7), 0.5 * 0.7 * (net.weight ** 2).sum())


def test_cycle_position_cuts_progress_into_equal_cycles_and_t_1_ends_the_last():
    from trainwell.train.optim import cycle_position
    assert cycle_position(0.0, 3) == (0, 0.0)
    assert cycle_position(0.5, 4) == (2, 0.0)
    k, phase = cycle_position(0.6, 2)
    assert k == 1 and phase == pytest.approx(0.2)
    assert cycle_position(1.0, 3) == (2, pytest.approx(1.0))


def _cycles_cfg(*overrides):
    return resolve(["sched.name=cosine_restarts", *overrides])


@pytest.mark.parametrize("overrides, spe, message", [
    (["sched.name=cosine", "train.snapshots=2"], 4,
     "train.snapshots=2 needs sched.name=cosine_restarts (snapshots are taken at the end of each lr cycle), got "
     "sched.name=cosine; add sched.name=cosine_restarts."),
    (["train.snapshots=2", "sched.cycles=3", "train.epochs=4"], 4,
     "train.snapshots=2 takes one snapshot per cycle but sched.cycles=3; set sched.cycles=0 (it then follows "
     "train.snapshots) or equal to train.snapshots."),
    (["sched.cycles=0"], 4,
     "sched.name=cosine_restarts needs sched.cycles >= 1 (or train.snapshots >= 1); e.g. sched.cycles=4."),
    (["train.snapshots=2", "train.epochs=5"], 4,
     "train.snapshots=2 needs each cycle to end at an epoch end: train.epochs=5 minus sched.warmup_epochs=0 must be "
     "a positive multiple of 2 whole epochs; e.g. train.epochs=6."),
    (["train.snapshots=2", "train.epochs=5", "sched.warmup_epochs=0.5"], 4,
     "train.snapshots=2 needs each cycle to end at an epoch end: train.epochs=5 minus sched.warmup_epochs=0.5 must "
     "be a positive multiple of 2 whole epochs; e.g. train.epochs=5 with sched.warmup_epochs=1."),
    (["train.snapshots=2", "train.epochs=7", "sched.warmup_epochs=2"], 3,
     "train.snapshots=2 needs each cycle to end at an epoch end: train.epochs=7 minus sched.warmup_epochs=2 must "
     "be a positive multiple of 2 whole epochs; e.g. train.epochs=8."),
    (["train.snapshots=2", "train.epochs=2", "sched.warmup_epochs=2"], 4,  # no epoch left after warmup
     "train.snapshots=2 needs each cycle to end at an epoch end: train.epochs=2 minus sched.warmup_epochs=2 must "
     "be a positive multiple of 2 whole epochs; e.g. train.epochs=4."),
])
def test_cycle_and_snapshot_settings_that_cannot_work_are_refused_with_a_fix(overrides, spe, message):
    from trainwell.train.optim import check_cycles
    with pytest.raises(ConfigError) as exc:
        check_cycles(_cycles_cfg(*overrides), spe)
    assert str(exc.value) == message


@pytest.mark.parametrize("overrides", [
    ["sched.cycles=1"], ["train.snapshots=2", "train.epochs=4"], ["train.snapshots=2", "sched.cycles=2", "train.epochs=4"],
    ["train.snapshots=2", "train.epochs=5", "sched.warmup_epochs=1"], ["train.snapshots=2", "train.epochs=3",
                                                                       "sched.warmup_epochs=1"],
    ["train.snapshots=3", "train.epochs=6"],
])
def test_cycle_and_snapshot_settings_that_work_pass(overrides):
    from trainwell.train.optim import check_cycles
    check_cycles(_cycles_cfg(*overrides), 4)


@pytest.mark.parametrize("overrides, spe, epochs", [
    (["train.snapshots=4", "train.epochs=4"], 2, [1, 2, 3, 4]),
    (["train.snapshots=3", "train.epochs=7", "sched.warmup_epochs=1"], 3, [3, 5, 7]),
    (["train.snapshots=2", "train.epochs=6", "sched.warmup_epochs=2"], 4, [4, 6]),
    (["train.snapshots=1", "train.epochs=3"], 5, [3]),
])
def test_snapshots_are_taken_at_the_epoch_end_where_each_cycle_ends(overrides, spe, epochs):
    from trainwell.train.optim import snapshot_epochs
    cfg = _cycles_cfg(*overrides)
    assert snapshot_epochs(cfg, spe) == epochs
    opt, _ = build_optimizer(nn.Linear(2, 2), cfg.optim)
    m = build_scheduler(opt, cfg, spe).multipliers  # the restarts the snapshots follow
    warm = round(cfg.sched.warmup_epochs * spe)
    restarts = [s for s in range(warm + 1, len(m)) if m[s] > m[s - 1]]
    assert [s // spe for s in restarts] == epochs[:-1]


def test_build_scheduler_follows_train_snapshots_when_sched_cycles_is_0():
    cfg = _cycles_cfg("train.snapshots=2", "train.epochs=4", "sched.min_lr=0")
    opt, _ = build_optimizer(nn.Linear(2, 2), cfg.optim)
    m = build_scheduler(opt, cfg, 3).multipliers  # two cycles of 6 steps
    assert m[0] == m[6] == pytest.approx(1.0) and m[5] < 0.1 and m[11] < 0.1


def test_build_scheduler_checks_the_snapshot_cycles_with_its_steps_per_epoch():
    cfg = _cycles_cfg("train.snapshots=2", "train.epochs=5")
    opt, _ = build_optimizer(nn.Linear(2, 2), cfg.optim)
    with pytest.raises(ConfigError, match="multiple of 2 whole epochs"):
        build_scheduler(opt, cfg, 4)


def test_warmup_as_long_as_training_is_allowed():
    cfg = resolve(["sched.warmup_epochs=2", "train.epochs=2", "sched.name=constant"])
    opt, _ = build_optimizer(nn.Linear(2, 2), cfg.optim)
    assert build_scheduler(opt, cfg, 3).multipliers == pytest.approx([(i + 1) / 6 for i in range(6)])


def test_schedule_table_state_is_its_step_and_factor_and_resumes_the_same_lr():
    cfg = resolve(["optim.lr=0.2", "sched.name=cosine", "train.epochs=2"])
    opt, _ = build_optimizer(nn.Linear(2, 2), cfg.optim)
    table = build_scheduler(opt, cfg, 5)
    for _ in range(3):
        table.step()
    table.factor = 0.5
    table.step()
    assert table.state_dict() == {"index": 4, "factor": 0.5}
    assert table.get_last_lr() == [pytest.approx(0.2 * table.multipliers[4] * 0.5)] * len(opt.param_groups)
    opt2, _ = build_optimizer(nn.Linear(2, 2), cfg.optim)
    fresh = build_scheduler(opt2, cfg, 5)
    fresh.load_state_dict({"index": 4, "factor": 0.5})
    assert fresh.get_last_lr() == table.get_last_lr() and fresh.index == 4 and fresh.factor == 0.5
    fresh.load_state_dict({"index": 7})  # checkpoints from before the factor: 1.0
    assert fresh.factor == 1.0 and opt2.param_groups[0]["lr"] == pytest.approx(0.2 * fresh.multipliers[7])
    fresh.load_state_dict({"index": 99})  # past the end: the last rate
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.2 * fresh.multipliers[-1])


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_eps_is_passed_on(name):
    opt, _ = build_optimizer(nn.Linear(2, 2), OptimConfig(name=name, lr=0.1, eps=1e-5))
    assert opt.param_groups[0]["eps"] == 1e-5


def test_onecycle_decays_linearly_to_min_lr_over_lr():
    cfg = SchedConfig(name="onecycle", min_lr=0.02)
    total, lr = 100, 0.1  # warmup: the first 30 steps
    for i in (30, 50, 99):
        t = (i - 30) / 70
        assert lr_multiplier(i, 10, total, cfg, lr) == pytest.approx(0.2 + 0.8 * (1 - t))


def test_step_schedule_with_step_epochs_1_decays_every_epoch():
    cfg = SchedConfig(name="step", step_epochs=1, gamma=0.5)
    assert [lr_multiplier(e * 4, 4, 20, cfg, 1.0) for e in range(4)] == pytest.approx([1, 0.5, 0.25, 0.125])


def test_snapshots_with_one_step_per_epoch():
    from trainwell.train.optim import snapshot_epochs
    assert snapshot_epochs(_cycles_cfg("train.snapshots=2", "train.epochs=4"), 1) == [2, 4]
