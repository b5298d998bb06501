"""Lab ``init``: the verdict function, the activation measurements, and a smoke run."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from trainwell.experiments.labs import init as lab_init
from trainwell.experiments.labs.init import (
    COLLAPSE_RATIO,
    HEALTHY_BAND,
    SATURATED_DEEP,
    activation_profile,
    decide,
    deep_mean,
    histogram,
    saturated_fraction,
    std_ratio,
)
import labverdicts
from labverdicts import assert_consistent

# A clear success: collapse in both nets, tanh saturated, Kaiming healthy at both depths, Xavier collapsing
# the 30-layer ReLU net but keeping tanh alive, matched schemes and deep Kaiming much better.
GOOD = dict(small_ratio={"relu": 1e-9, "tanh": 3e-8}, large_saturated_tanh=0.9,
            kaiming_ratio={"relu": 0.95, "relu-30": 0.87}, deep_xavier_ratio=4e-5,
            tanh_xavier_ratio=0.4, tanh_xavier_saturated=0.0,
            acc_diff={"relu": 0.85, "tanh": 0.87}, acc_p={"relu": 1e-4, "tanh": 1e-5},
            deep_acc_diff=0.68, deep_acc_p=2e-3)


def _with(**changes):
    args = {k: (dict(v) if isinstance(v, dict) else v) for k, v in GOOD.items()}
    for key, value in changes.items():
        if isinstance(value, dict):
            args[key].update(value)
        else:
            args[key] = value
    return args


# ----------------------------------------------------------------------------- decide


def test_decide_holds_when_every_sub_claim_holds():
    held, text = decide(**GOOD)
    assert held is True
    assert text.count("— held") == 7 and "did NOT hold" not in text
    assert "1e-09" in text and "90%" in text and "relu-30 0.87" in text and "+85.0 points" in text
    assert "4e-05" in text and "0.4, 0%" in text and "+68.0 points (p = 0.002)" in text
    assert f"(1/2)^(29/2) = {0.5 ** 14.5:.3g}" in text  # He et al.'s prediction, stated


@pytest.mark.parametrize("changes, which", [
    ({"small_ratio": {"tanh": 0.5}}, "(1)"),                       # small init does not collapse the tanh net
    ({"small_ratio": {"relu": COLLAPSE_RATIO}}, "(1)"),             # the threshold itself is not below it
    ({"large_saturated_tanh": SATURATED_DEEP - 0.01}, "(2)"),       # tanh not saturated enough
    ({"large_saturated_tanh": SATURATED_DEEP}, "(2)"),              # the threshold itself is not above it
    ({"large_saturated_tanh": None}, "(2)"),                        # not measured
    ({"kaiming_ratio": {"relu": HEALTHY_BAND[0] / 2}}, "(3)"),      # kaiming lets the scale shrink
    ({"kaiming_ratio": {"relu-30": HEALTHY_BAND[1] * 2}}, "(3)"),   # or grow, at depth 30
    ({"kaiming_ratio": {"relu-30": math.nan}}, "(3)"),              # not measured
    ({"deep_xavier_ratio": COLLAPSE_RATIO}, "(4)"),                 # xavier does not collapse the deep ReLU net
    ({"deep_xavier_ratio": None}, "(4)"),
    ({"tanh_xavier_ratio": COLLAPSE_RATIO * 0.99}, "(5)"),          # xavier lets the tanh net collapse
    ({"tanh_xavier_ratio": math.nan}, "(5)"),
    ({"tanh_xavier_saturated": SATURATED_DEEP + 0.01}, "(5)"),      # or saturates it
    ({"tanh_xavier_saturated": None}, "(5)"),
    ({"acc_p": {"relu": 0.2}}, "(6)"),                              # not significant
    ({"acc_diff": {"tanh": -0.1}}, "(6)"),                          # significant, but worse
    ({"acc_p": {"tanh": math.nan}}, "(6)"),                         # no test possible (one seed)
    ({"deep_acc_p": 0.05}, "(7)"),                                  # p at alpha is not significant
    ({"deep_acc_diff": -0.3}, "(7)"),                               # xavier better
    ({"deep_acc_diff": None}, "(7)"),                               # not measured
])
def test_decide_fails_when_one_sub_claim_fails_and_says_which(changes, which):
    held, text = decide(**_with(**changes))
    assert held is False
    parts = text.split("; ")
    failed = [p for p in parts if "did NOT hold" in p]
    assert len(failed) == 1 and failed[0].startswith(which)


def test_decide_without_kaiming_cells_does_not_hold():
    held, text = decide(**{**GOOD, "kaiming_ratio": {}})
    assert held is False and [p for p in text.split("; ") if "did NOT hold" in p][0].startswith("(3)")


def test_decide_band_and_threshold_edges_count_as_holding():
    held, _ = decide(**_with(kaiming_ratio={"relu": HEALTHY_BAND[0], "relu-30": HEALTHY_BAND[1]},
                             tanh_xavier_ratio=COLLAPSE_RATIO, tanh_xavier_saturated=SATURATED_DEEP))
    assert held is True


@pytest.mark.parametrize("changes", [{}, {"deep_xavier_ratio": 0.5}, {"tanh_xavier_saturated": 0.9},
                                     {"kaiming_ratio": {"relu-30": 3.0}}, {"deep_acc_p": 0.3}])
def test_decide_agrees_with_the_by_hand_rule_on_the_same_numbers(changes):
    """``held`` recomputed by tests/labverdicts.py from evidence built out of the same numbers."""
    args = _with(**changes)
    cells = {}

    def put(net, scheme, **values):
        cells[f"{net} / {scheme}"] = {"net": net, "scheme": scheme, **values}

    for net in ("relu", "tanh"):
        put(net, "normal(0.01)", act_std_ratio=args["small_ratio"][net])
        put(net, lab_init.MATCHED[net], diff_vs_small=args["acc_diff"][net], p_vs_small=args["acc_p"][net])
    put("tanh", "normal(1.0)", saturated_deep=args["large_saturated_tanh"])
    cells["relu / kaiming"]["act_std_ratio"] = args["kaiming_ratio"]["relu"]
    put("tanh", "xavier", act_std_ratio=args["tanh_xavier_ratio"], saturated_deep=args["tanh_xavier_saturated"],
        diff_vs_small=args["acc_diff"]["tanh"], p_vs_small=args["acc_p"]["tanh"])
    put("relu-30", "xavier", act_std_ratio=args["deep_xavier_ratio"])
    put("relu-30", "kaiming", act_std_ratio=args["kaiming_ratio"]["relu-30"], diff_vs_xavier=args["deep_acc_diff"],
        p_vs_xavier=args["deep_acc_p"])
    evidence = {"thresholds": {"collapse_ratio": COLLAPSE_RATIO, "healthy_band": list(HEALTHY_BAND),
                               "saturated_deep": SATURATED_DEEP}, "matched": dict(lab_init.MATCHED),
                "deep_net": lab_init.DEEP, "cells": cells}
    assert decide(**args)[0] is labverdicts.init(evidence)


# ----------------------------------------------------------------------------- measurements


def test_histogram_clamps_outliers_into_the_end_bins_like_numpy():
    y = torch.tensor([-5.0, -0.9, -0.2, 0.0, 0.3, 0.99, 7.0])
    got = histogram(y, -1.0, 1.0, bins=4)
    counts, _ = np.histogram(np.clip(y.numpy(), -1, 1), bins=4, range=(-1, 1))
    np.testing.assert_allclose(got, counts / len(y))
    assert histogram(torch.tensor([]), 0.0, 1.0, bins=3) == [0.0, 0.0, 0.0]


def test_saturated_fraction_is_within_eps_of_a_bound():
    y = torch.tensor([-1.0, -0.96, -0.94, 0.0, 0.5, 0.94, 0.951, 1.0])
    assert saturated_fraction(y, (-1.0, 1.0), eps=0.025) == pytest.approx(4 / 8)  # |y| >= 0.95
    assert saturated_fraction(torch.tensor([0.0, 0.01, 0.5, 0.99]), (0.0, 1.0), eps=0.025) == pytest.approx(3 / 4)


def _net(activation: nn.Module, depth: int = 3, width: int = 32, std: float = 0.3) -> nn.Sequential:
    torch.manual_seed(0)
    layers, fan = [], 8
    for _ in range(depth):
        lin = nn.Linear(fan, width)
        nn.init.normal_(lin.weight, 0.0, std)
        nn.init.normal_(lin.bias, 0.0, 0.1)
        layers += [lin, type(activation)()]
        fan = width
    layers.append(nn.Linear(fan, 3))
    return nn.Sequential(*layers)


def _numpy_activations(net: nn.Sequential, x: torch.Tensor, kind: str) -> list[np.ndarray]:
    """The hidden activations recomputed with numpy from the weights, without hooks."""
    h = x.numpy().astype(np.float64)
    outs = []
    for module in net:
        if isinstance(module, nn.Linear):
            h = h @ module.weight.detach().numpy().T.astype(np.float64) + module.bias.detach().numpy()
        else:
            h = np.tanh(h) if kind == "tanh" else np.maximum(h, 0.0)
            outs.append(h)
    return outs


def test_activation_profile_of_a_tanh_net_matches_numpy():
    net = _net(nn.Tanh(), std=0.6)
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(1))
    net.train()
    prof = activation_profile(net, x, bins=10)
    assert net.training  # mode restored
    assert not any(m._forward_hooks for m in net.modules())  # hooks removed
    ref = _numpy_activations(net, x, "tanh")
    assert len(prof["std"]) == 3 and prof["hist_range"] == [-1.0, 1.0] and prof["hist_nonzero"] is False
    for i, a in enumerate(ref):
        assert prof["std"][i] == pytest.approx(np.std(a), rel=1e-5)
        assert prof["mean"][i] == pytest.approx(np.mean(a), abs=1e-6)
        # float32 (torch) vs float64 (numpy) may move a value sitting on an edge: allow 2 of them.
        assert prof["saturated"][i] == pytest.approx(np.mean(np.abs(a) >= 0.95), abs=2.5 / a.size)
        counts, _ = np.histogram(a, bins=10, range=(-1, 1))
        np.testing.assert_allclose(prof["hist"][i], counts / a.size, atol=2.5 / a.size)


def test_activation_profile_of_a_relu_net_matches_numpy():
    net = _net(nn.ReLU(), std=0.3)
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(2))
    prof = activation_profile(net, x, bins=12)
    ref = _numpy_activations(net, x, "relu")
    nonzero0 = ref[0][ref[0] != 0]
    lo, hi = min(0.0, np.quantile(nonzero0, 0.005)), np.quantile(nonzero0, 0.995)
    assert prof["hist_nonzero"] is True
    np.testing.assert_allclose(prof["hist_range"], [lo, hi], rtol=1e-5)
    for i, a in enumerate(ref):
        assert prof["std"][i] == pytest.approx(np.std(a), rel=1e-5)
        assert prof["saturated"][i] is None
        assert prof["zero"][i] == pytest.approx(np.mean(a == 0), abs=1e-9)
        nz = a[a != 0]
        counts, _ = np.histogram(np.clip(nz, lo, hi), bins=12, range=(lo, hi))
        np.testing.assert_allclose(prof["hist"][i], counts / nz.size, atol=2.5 / nz.size)


def test_small_normal_init_collapses_and_kaiming_keeps_the_scale():
    """The physics the lab relies on, on a plain 8-layer ReLU MLP: N(0, 0.01²) shrinks the std about
    0.01·sqrt(width/2) per layer, Kaiming keeps it (an independent check of the measurement's sense)."""
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(3))

    def ratio(init):
        torch.manual_seed(0)
        layers, fan = [], 64
        for _ in range(8):
            lin = nn.Linear(fan, 256)
            init(lin.weight)
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.ReLU()]
            fan = 256
        return std_ratio(activation_profile(nn.Sequential(*layers, nn.Linear(256, 10)), x)["std"])

    small = ratio(lambda w: nn.init.normal_(w, 0.0, 0.01))
    assert small == pytest.approx((0.01 * math.sqrt(256 / 2)) ** 7, rel=0.5)
    assert HEALTHY_BAND[0] <= ratio(lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu")) <= HEALTHY_BAND[1]


def test_std_ratio_and_deep_mean():
    assert std_ratio([2.0, 1.0, 0.5]) == 0.25
    assert math.isnan(std_ratio([])) and math.isnan(std_ratio([0.0, 1.0])) and math.isnan(std_ratio([1.0, math.inf]))
    assert deep_mean([0.0, 0.0, 0.5, 1.0]) == 0.75  # the last half
    assert deep_mean([0.0, 0.2, 0.4, 0.6, 0.8]) == pytest.approx(0.6)  # the last ceil(n/2)
    assert deep_mean([None, None]) is None and deep_mean([]) is None


def test_cells_cover_both_nets_and_every_scheme_and_the_deep_relu_net():
    lab = lab_init.LAB
    assert len(lab.cells) == 14 and lab.seeds >= 3
    labels = {c.label for c in lab.cells}
    assert {"relu / normal(0.01)", "tanh / xavier", "relu / kaiming", "tanh / lsuv"} <= labels
    small = next(c for c in lab.cells if c.label == "tanh / normal(0.01)")
    assert small.overrides == {"model.activation": "tanh", "init.scheme": "normal", "init.std": 0.01}
    assert "model.norm=none" in lab.base
    deep = {c.label: c.overrides for c in lab.cells if c.label.startswith("relu-30")}
    assert deep == {"relu-30 / xavier": {"model.activation": "relu", "model.depth": 30, "optim.lr": 0.005,
                                         "init.scheme": "xavier_normal"},
                    "relu-30 / kaiming": {"model.activation": "relu", "model.depth": 30, "optim.lr": 0.005,
                                          "init.scheme": "kaiming_normal"}}
    assert not any("init.gain" in c.overrides for c in lab.cells)  # the papers' gains: init.gain=default


# ----------------------------------------------------------------------------- smoke run


@pytest.mark.slow
def test_run_lab_init_quick(tmp_path):
    from trainwell.experiments.lab import run_lab

    out = tmp_path / "lab"
    outcome = run_lab("init", out=out, quick=True, seeds=[0, 1], workers=1, quiet=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lab"] == "init" and summary["claim"] and isinstance(summary["held"], bool)
    assert_consistent("init", summary)  # held follows from the stated statistics
    assert summary["held"] == outcome.held and summary["verdict"] == outcome.verdict and summary["runs"] == 28
    evidence = summary["evidence"]
    assert set(evidence) >= {"cells", "sub_claims", "thresholds", "matched"}
    assert set(evidence["sub_claims"]) == {"small_collapses", "large_saturates_tanh", "kaiming_keeps_relu_scale",
                                           "xavier_collapses_deep_relu", "xavier_keeps_tanh_alive",
                                           "matched_beats_small", "kaiming_beats_xavier_deep"}
    cell = evidence["cells"]["tanh / normal(0.01)"]
    assert len(cell["act_std_by_layer"]) == 4 and cell["act_std_ratio"] < COLLAPSE_RATIO  # depth 4 in quick mode
    assert evidence["cells"]["tanh / normal(1.0)"]["saturated_deep"] > 0.5
    deep = evidence["cells"]["relu-30 / xavier"]
    assert len(deep["act_std_by_layer"]) == 30 and deep["act_std_ratio"] < COLLAPSE_RATIO  # He et al.'s collapse
    assert HEALTHY_BAND[0] <= evidence["cells"]["relu-30 / kaiming"]["act_std_ratio"] <= HEALTHY_BAND[1]
    assert all(math.isfinite(c["test_loss"]) for c in evidence["cells"].values())
    for name in ("act_std_by_depth.png", "act_hist_relu.png", "act_hist_tanh.png", "report.html"):
        assert (out / name).is_file()
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 5  # 3 lab figures, bars, curves
