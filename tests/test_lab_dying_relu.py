"""Lab ``dying_relu``: the verdict rule, the dead-unit measurements against a hand computation, and a smoke run."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import labverdicts
from labverdicts import assert_consistent
from trainwell.diagnose.thresholds import DEAD_WARN
from trainwell.experiments.labs import dying_relu
from trainwell.experiments.labs.dying_relu import decide, never_positive_fractions, unit_fractions

# A clear success: ReLU loses 78% of its units at the high LR (+75 points over the normal LR), Leaky
# ReLU has 53% on the leak, and Leaky ReLU's accuracy is 40 points higher.
GOOD = dict(relu_dead_high=0.78, rise_diff=0.75, rise_p=4e-5, leaky_never_high=0.53, alive_diff=0.25,
            alive_p=0.002, acc_diff=0.40, acc_p=0.03, leaky_diverged_high=0)


def test_decide_holds_when_every_sub_claim_holds():
    held, text = decide(**GOOD)
    assert held is True
    assert text.count("— held") == 3 and "did NOT hold" not in text
    assert "78% of its hidden units are dead" in text and f"{100 * DEAD_WARN:.0f}%" in text
    assert "+75.0 points against lr 0.05 (paired p = 4e-05)" in text
    assert "53% of its units are never > 0 at lr 1" in text and "+40.0 points" in text


@pytest.mark.parametrize("changes, which", [
    ({"relu_dead_high": DEAD_WARN - 0.01}, "(1)"),        # fewer dead than the doctor's warning level
    ({"relu_dead_high": None}, "(1)"),                     # not measured
    ({"rise_p": 0.2}, "(1)"),                              # no significant rise with the LR
    ({"rise_diff": -0.1}, "(1)"),                          # fewer dead at the high LR
    ({"alive_p": 0.05}, "(2)"),                            # p at alpha is not significant
    ({"alive_diff": -0.05}, "(2)"),                        # leaky has more units on the leak
    ({"alive_diff": math.nan}, "(2)"),                     # no test possible
    ({"acc_p": 0.3}, "(3)"),                               # accuracy not separated
    ({"acc_diff": -0.2}, "(3)"),                           # relu better
    ({"leaky_diverged_high": 1}, "(3)"),                   # a diverged cell is never called better
])
def test_decide_fails_when_one_sub_claim_fails_and_says_which(changes, which):
    held, text = decide(**{**GOOD, **changes})
    assert held is False
    failed = [p for p in text.split("; ") if "did NOT hold" in p]
    assert len(failed) == 1 and failed[0].startswith(which)


def test_decide_at_the_warning_level_itself_counts_as_dying():
    assert decide(**{**GOOD, "relu_dead_high": DEAD_WARN})[0] is True


def _evidence(args: dict) -> dict:
    """summary.json's evidence, built out of decide's arguments (what analyse writes)."""
    return {"thresholds": {"dead_warn": DEAD_WARN, "alpha": 0.05}, "normal_lr": 0.05, "high_lr": 1.0,
            "cells": {"relu / lr 1": {"activation": "relu", "lr": 1.0, "dead": args["relu_dead_high"],
                                      "never_positive": args["relu_dead_high"], "diverged_seeds": 0},
                      "leaky_relu / lr 1": {"activation": "leaky_relu", "lr": 1.0, "dead": None,
                                            "never_positive": args["leaky_never_high"],
                                            "diverged_seeds": args["leaky_diverged_high"]}},
            "tests": {"relu_dead_high_minus_normal": {"diff": args["rise_diff"], "p": args["rise_p"]},
                      "relu_dead_minus_leaky_never_positive_high": {"diff": args["alive_diff"], "p": args["alive_p"]},
                      "acc_leaky_minus_relu_high": {"diff": args["acc_diff"], "p": args["acc_p"]}}}


@pytest.mark.parametrize("changes", [{}, {"relu_dead_high": 0.1}, {"alive_p": 0.3}, {"acc_diff": -0.1},
                                     {"leaky_diverged_high": 2}, {"rise_diff": None}])
def test_decide_agrees_with_the_by_hand_rule_on_the_same_numbers(changes):
    args = {**GOOD, **changes}
    assert decide(**args)[0] is labverdicts.dying_relu(_evidence(args))


# ----------------------------------------------------------------------------- measurements


def _net(activation: type[nn.Module], bias: float) -> nn.Sequential:
    torch.manual_seed(0)
    first, second = nn.Linear(5, 6), nn.Linear(6, 4)
    with torch.no_grad():
        first.bias[:3] = bias  # three units pushed far below zero: never active on standard normal input
    return nn.Sequential(first, activation(), second, activation(), nn.Linear(4, 2))


def _never_positive_by_hand(net: nn.Sequential, x: torch.Tensor) -> list[float]:
    """Per hidden layer, the fraction of units whose output is <= 0 on every example (numpy, no hooks)."""
    h, out = x.numpy().astype(np.float64), []
    for module in net:
        if isinstance(module, nn.Linear):
            h = h @ module.weight.detach().numpy().T.astype(np.float64) + module.bias.detach().numpy()
        else:
            slope = module.negative_slope if isinstance(module, nn.LeakyReLU) else 0.0
            h = np.where(h > 0, h, slope * h)
            out.append(float(np.mean(~(h > 0).any(axis=0))))
    return out


@pytest.mark.parametrize("activation", [nn.ReLU, nn.LeakyReLU])
def test_never_positive_fractions_match_a_hand_computation(activation):
    net = _net(activation, bias=-50.0)
    x = torch.randn(70, 5, generator=torch.Generator().manual_seed(1))
    net.train()
    got = never_positive_fractions(net, x, batch_size=16)  # several batches: a unit alive in any is alive
    assert net.training and not any(m._forward_hooks for m in net.modules())  # mode restored, hooks removed
    want = _never_positive_by_hand(net, x)
    assert got == pytest.approx(want) and got[0] == pytest.approx(0.5)  # the three planted units of six


def test_the_recorder_counts_relu_units_as_dead_and_leaky_ones_never():
    x = torch.randn(70, 5, generator=torch.Generator().manual_seed(2))
    relu = unit_fractions(_net(nn.ReLU, bias=-50.0), x, batch_size=32)
    want = _never_positive_by_hand(_net(nn.ReLU, bias=-50.0), x)
    assert relu["dead_by_layer"] == pytest.approx(want)  # the recorder's rule is the hand rule
    assert relu["never_positive_by_layer"] == pytest.approx(want)
    assert relu["dead"] == pytest.approx(sum(want) / len(want)) == pytest.approx(relu["never_positive"])
    leaky = unit_fractions(_net(nn.LeakyReLU, bias=-50.0), x, batch_size=32)
    assert leaky["dead_by_layer"] == [None, None] and leaky["dead"] is None  # cannot die: not counted
    assert leaky["never_positive_by_layer"][0] == pytest.approx(0.5)  # but the planted units sit on the leak


def test_measure_reads_the_trained_model_and_the_one_rebuilt_at_init(monkeypatch):
    trained, init = _net(nn.ReLU, bias=-50.0), _net(nn.ReLU, bias=0.0)
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(dying_relu, "model_at_init", lambda run, splits: init)
    run = SimpleNamespace(model=trained, config=SimpleNamespace(train=SimpleNamespace(eval_batch_size=16)))
    got = dying_relu.measure(run, SimpleNamespace(train=SimpleNamespace(x=x)))
    assert got["dead_by_layer"] == pytest.approx(_never_positive_by_hand(trained, x))
    assert got["dead_by_layer_init"] == pytest.approx(_never_positive_by_hand(init, x))
    assert got["dead"] > got["dead_init"]


def test_cells_pair_both_activations_at_every_learning_rate():
    lab = dying_relu.LAB
    assert lab.seeds >= 3 and "model.norm=none" in lab.base and "data.name=digits" in lab.base
    assert {(c.overrides["model.activation"], c.overrides["optim.lr"]) for c in lab.cells} == \
        {(a, lr) for a in dying_relu.ACTIVATIONS for lr in dying_relu.LRS}


# ----------------------------------------------------------------------------- smoke run


@pytest.mark.slow
def test_dying_relu_lab_quick_run(tmp_path):
    from trainwell.experiments.lab import run_lab

    out = tmp_path / "lab"
    outcome = run_lab("dying_relu", out=out, quick=True, seeds=[0, 1], workers=1, quiet=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["claim"] and isinstance(summary["held"], bool) and summary["held"] == outcome.held
    assert_consistent("dying_relu", summary)  # held follows from the stated statistics
    assert summary["verdict"] == outcome.verdict and summary["runs"] == 2 * len(dying_relu.LAB.cells)
    ev = summary["evidence"]
    assert set(ev) >= {"cells", "tests", "thresholds", "normal_lr", "high_lr"}
    relu, leaky = ev["cells"]["relu / lr 1"], ev["cells"]["leaky_relu / lr 1"]
    assert 0 <= relu["dead"] <= 1 and relu["dead"] == pytest.approx(relu["never_positive"])
    assert leaky["dead"] is None and 0 <= leaky["never_positive"] <= 1
    assert (out / "dead_units_by_lr.png").is_file() and (out / "report.html").is_file()
