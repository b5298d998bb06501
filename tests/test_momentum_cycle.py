"""Cyclical momentum (sched.momentum): against torch's OneCycleLR(cycle_momentum=True), by its properties on
every schedule, in SGD's momentum and Adam's beta1 (the update uses it), untouched by rollbacks, and resumed exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import trainwell
from interruption import as_if_killed_in_epoch_two
from trainwell.config import resolve
from trainwell.errors import ConfigError
from trainwell.train.optim import SCHEDULES, build_optimizer, build_scheduler, cycled_momentum

LOW, HIGH = 0.85, 0.95
TIMING = ("seconds", "examples_per_second")


def _torch_onecycle(total: int, lr: float, div_factor: float, pct_start: float, adam: bool = False):
    """lr and momentum at every step of torch's OneCycleLR (linear, final_div_factor=1: it ends where it starts)."""
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=lr) if adam else torch.optim.SGD([param], lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=total, pct_start=pct_start, anneal_strategy="linear", div_factor=div_factor,
        final_div_factor=1.0, cycle_momentum=True, base_momentum=LOW, max_momentum=HIGH)
    lrs, momenta = [], []
    for _ in range(total):
        group = opt.param_groups[0]
        lrs.append(group["lr"])
        momenta.append(group["betas"][0] if adam else group["momentum"])
        opt.step()
        sched.step()
    return lrs, momenta


def _table(overrides: list[str], steps_per_epoch: int, model: nn.Module | None = None):
    cfg = resolve(overrides)
    opt, _ = build_optimizer(model or nn.Linear(3, 2), cfg.optim)
    return cfg, opt, build_scheduler(opt, cfg, steps_per_epoch)


def _trajectory(table, steps: int) -> tuple[list[float], list[float]]:
    lrs, momenta = [], []
    for _ in range(steps):
        lrs.append(table.get_last_lr()[0])
        momenta.append(table.get_last_momentum()[0])
        table.step()
    return lrs, momenta


@pytest.mark.parametrize("adam", [False, True])
def test_the_formula_gives_onecyclelr_momentum_from_onecyclelr_own_learning_rates(adam):
    """Fed OneCycleLR's lr multipliers, the inverse rule reproduces OneCycleLR's momentum at every step
    (pct_start * total_steps whole: torch's peak falls on a step, so the run's largest lr is max_lr)."""
    lr = 0.4
    lrs, momenta = _torch_onecycle(36, lr, div_factor=8.0, pct_start=0.25, adam=adam)
    np.testing.assert_allclose(cycled_momentum([r / lr for r in lrs], LOW, HIGH), momenta, rtol=0, atol=1e-12)


def test_onecycle_with_momentum_follows_onecyclelr_step_for_step():
    """Configured alike (warmup W steps from lr/W, decay to lr/W): torch's run with its peak step taken twice
    and its last step dropped is ours — our warmup ends at the peak and the decay starts from it again."""
    spe, epochs, lr = 4, 10, 0.4
    total = spe * epochs
    warmup = int(SCHEDULES.entry("onecycle").meta.default_warmup_fraction * total)
    _, _, table = _table(["sched.name=onecycle", f"sched.momentum={LOW},{HIGH}", f"optim.lr={lr}",
                          f"sched.min_lr={lr / warmup}", f"train.epochs={epochs}"], spe)
    ours_lr, ours_m = _trajectory(table, total)
    ref_lr, ref_m = _torch_onecycle(total, lr, div_factor=warmup, pct_start=warmup / total)
    expected = slice(0, warmup), slice(warmup - 1, total - 1)
    np.testing.assert_allclose(ours_lr, [v for s in expected for v in ref_lr[s]], rtol=1e-12)
    np.testing.assert_allclose(ours_m, [v for s in expected for v in ref_m[s]], rtol=0, atol=1e-12)
    assert ours_m[0] == pytest.approx(HIGH) and min(ours_m) == pytest.approx(LOW)


@pytest.mark.parametrize("name", SCHEDULES.names())
@pytest.mark.parametrize("warmup", [0.0, 1.5])
def test_momentum_moves_against_the_learning_rate_at_every_step_of_every_schedule(name, warmup):
    spe, epochs = 3, 8
    _, _, table = _table([f"sched.name={name}", f"sched.momentum={LOW},{HIGH}", f"sched.warmup_epochs={warmup}",
                          "sched.step_epochs=3", "sched.cycles=2", "sched.min_lr=0.001", f"train.epochs={epochs}"],
                         spe)
    lrs, momenta = map(np.array, _trajectory(table, spe * epochs))
    assert np.all((momenta >= LOW - 1e-12) & (momenta <= HIGH + 1e-12))
    if lrs.max() == lrs.min():  # a flat lr: a large constant momentum
        assert np.all(momenta == HIGH)
        return
    assert momenta[lrs.argmax()] == pytest.approx(LOW) and momenta[lrs.argmin()] == pytest.approx(HIGH)
    dlr, dm = np.diff(lrs), np.diff(momenta)
    assert np.all(np.sign(np.round(dm, 12)) == -np.sign(np.round(dlr, 12)))  # opposite, or both still
    # linear in the lr: one line through all (lr, momentum) pairs
    np.testing.assert_allclose(momenta, HIGH - (HIGH - LOW) * (lrs - lrs.min()) / (lrs.max() - lrs.min()), atol=1e-12)


def test_a_constant_lr_after_warmup_holds_the_low_momentum_and_without_warmup_the_high_one():
    _, _, warm = _table(["sched.name=constant", f"sched.momentum={LOW},{HIGH}", "sched.warmup_epochs=1",
                         "train.epochs=3"], 4)
    assert warm.momenta[0] == HIGH and warm.momenta[4:] == [pytest.approx(LOW)] * 8
    _, _, flat = _table(["sched.name=constant", f"sched.momentum={LOW},{HIGH}", "train.epochs=3"], 4)
    assert flat.momenta == [HIGH] * 12


def test_off_by_default_the_optimiser_keeps_its_own_momentum():
    _, opt, table = _table(["sched.name=onecycle", "optim.momentum=0.7", "train.epochs=2"], 5)
    assert table.momenta is None
    _, momenta = _trajectory(table, 10)
    assert momenta == [0.7] * 10 and opt.param_groups[0]["momentum"] == 0.7


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_every_param_group_gets_the_momentum_and_the_learning_rates_are_unchanged(name):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))  # decay and no-decay groups
    base = [f"optim.name={name}", "optim.lr=0.01", "sched.name=cosine", "sched.warmup_epochs=1", "train.epochs=3"]
    _, opt, table = _table(base + [f"sched.momentum={LOW},{HIGH}"], 4, model)
    _, plain_opt, plain = _table(base, 4, model)
    assert len(opt.param_groups) == 2
    for i in range(12):
        for group, plain_group in zip(opt.param_groups, plain_opt.param_groups):
            assert group["lr"] == plain_group["lr"]
            if name == "sgd":
                assert group["momentum"] == table.momenta[i]
            else:
                assert group["betas"] == (table.momenta[i], 0.999)  # beta1 cycles, beta2 stays
        table.step()
        plain.step()


def test_sgd_and_adam_updates_use_the_cycled_momentum():
    """Two steps by hand: heavy-ball buf = m * buf + g (w -= lr * buf); Adam's first moment
    exp_avg = beta1 * exp_avg + (1 - beta1) * g, with each step's own momentum."""
    g1, g2 = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 3.0])
    for name in ("sgd", "adam"):
        w = nn.Parameter(torch.tensor([0.3, -0.1]))
        model = nn.Module()
        model.register_parameter("w", w)
        cfg = [f"optim.name={name}", "optim.nesterov=false", "optim.weight_decay=0", "sched.name=onecycle",
               f"sched.momentum={LOW},{HIGH}", "train.epochs=4"]
        _, opt, table = _table(cfg, 3, model)
        lr, m = table.multipliers, table.momenta
        assert m[0] != m[1]
        for g in (g1, g2):
            w.grad = g.clone()
            opt.step()
            table.step()
        if name == "sgd":
            buf = m[1] * g1 + g2
            expected = torch.tensor([0.3, -0.1]) - 0.05 * lr[0] * g1 - 0.05 * lr[1] * buf
            torch.testing.assert_close(w.detach(), expected, rtol=1e-6, atol=1e-7)
        else:
            exp_avg = m[1] * (1 - m[0]) * g1 + (1 - m[1]) * g2
            torch.testing.assert_close(opt.state[w]["exp_avg"], exp_avg, rtol=1e-6, atol=1e-7)


def test_a_rollback_factor_scales_the_learning_rate_only_and_the_index_restores_both():
    overrides = ["optim.name=adamw", "optim.lr=0.01", "sched.name=onecycle", f"sched.momentum={LOW},{HIGH}",
                 "train.epochs=2"]
    _, opt, table = _table(overrides, 5)
    for _ in range(3):
        table.step()
    table.factor = 0.5
    table.load_state_dict(table.state_dict())
    assert table.get_last_lr()[0] == pytest.approx(0.01 * table.multipliers[3] * 0.5)
    assert table.get_last_momentum() == [table.momenta[3]] * len(opt.param_groups)
    _, fresh_opt, fresh = _table(overrides, 5)
    fresh.load_state_dict(table.state_dict())
    assert fresh.get_last_lr() == table.get_last_lr() and fresh.get_last_momentum() == table.get_last_momentum()
    assert fresh_opt.param_groups[0]["betas"][1] == 0.999


@pytest.mark.parametrize("bad, match", [
    ("sched.momentum=0.9", "two numbers"),
    ("sched.momentum=0.85,0.9,0.95", "two numbers"),
    ("sched.momentum=0.95,0.85", "min 0.95 > max 0.85; swap them: sched.momentum=0.85,0.95"),
    ("sched.momentum=0.85,1", r"in \[0, 1\)"),
    ("sched.momentum=-0.1,0.9", r"in \[0, 1\)"),
])
def test_bad_momentum_ranges_are_one_config_error_line(bad, match):
    with pytest.raises(ConfigError, match=match) as err:
        resolve([bad])
    assert "\n" not in str(err.value)


def test_sgd_without_momentum_refuses_a_momentum_cycle_at_preflight(tmp_path):
    with pytest.raises(ConfigError, match="optim.momentum=0 .*set optim.momentum .* or drop sched.momentum"):
        _table(["optim.momentum=0", f"sched.momentum={LOW},{HIGH}"], 4)
    with pytest.raises(ConfigError, match="drop sched.momentum"):
        trainwell.train({"optim.momentum": 0, "sched.momentum": [LOW, HIGH], "data.limit": 100,
                         "train.progress": False}, out=tmp_path / "r", quiet=True)
    assert not (tmp_path / "r").exists()  # refused before the run folder was made
    _table(["optim.name=adam", "optim.momentum=0", f"sched.momentum={LOW},{HIGH}"], 4)  # adam cycles beta1


@pytest.mark.parametrize("optim", ["sgd", "adamw"])
def test_a_run_resumed_mid_epoch_equals_the_uninterrupted_one(tmp_path, optim):
    cfg = {"data.limit": 300, "train.epochs": 3, "train.progress": False, "train.plots": False, "model.name": "mlp",
           "model.width": 32, "optim.name": optim, "optim.lr": 0.05 if optim == "sgd" else 3e-3,
           "sched.name": "onecycle", "sched.momentum": [LOW, HIGH], "train.checkpoint_every": 3,
           "train.keep_checkpoints": 100}
    run = trainwell.train(cfg, out=tmp_path / "r", quiet=True)
    rows = (run.dir / "metrics.jsonl").read_text().splitlines()
    weights = load_file(run.dir / "model.safetensors")
    as_if_killed_in_epoch_two(run.dir, run.summary["steps"], 3)
    resumed = trainwell.train(resume=run.dir, quiet=True)
    again = load_file(resumed.dir / "model.safetensors")
    assert weights.keys() == again.keys() and all(torch.equal(weights[k], again[k]) for k in weights)

    def untimed(lines: list[str]) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]

    assert untimed((resumed.dir / "metrics.jsonl").read_text().splitlines()) == untimed(rows)
    assert resumed.summary["test_loss"] == run.summary["test_loss"]


def test_the_metrics_row_shows_the_momentum_at_each_epochs_first_step(tmp_path):
    cfg = {"data.limit": 200, "train.epochs": 3, "train.progress": False, "train.plots": False, "model.name": "mlp",
           "model.width": 16, "sched.name": "onecycle", "sched.momentum": [LOW, HIGH]}
    run = trainwell.train(cfg, out=tmp_path / "r", quiet=True)
    rows = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
    steps_per_epoch = run.summary["steps"] // 3
    _, _, table = _table([f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in cfg.items()],
                         steps_per_epoch)
    assert [r["momentum"] for r in rows] == [table.momenta[e * steps_per_epoch] for e in range(3)]
    assert rows[0]["momentum"] > rows[1]["momentum"] < rows[2]["momentum"]  # the peak lr's epoch has the lowest
