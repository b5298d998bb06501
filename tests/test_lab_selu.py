"""Lab ``selu``: the verdict rule, the recorded moments against a hand computation, and a smoke run."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import labverdicts
from labverdicts import assert_consistent
from trainwell.experiments.labs import selu as lab_selu
from trainwell.experiments.labs.batchnorm import TRAINS_FRACTION
from trainwell.experiments.labs.selu import MEAN_MAX, RELU, SELU_OTHER, SNN, VAR_BAND, decide, keeps, moments, \
    outside_layers

KEPT = ([0.01, -0.13, 0.05, 0.0], [1.03, 0.9, 0.95, 0.88])
SHRINKS = ([-0.04, -0.02, -0.03, -0.05], [0.65, 0.3, 0.15, 0.06])
RELU_MOMENTS = ([0.56, 0.58, 0.6, 0.62], [0.7, 0.68, 0.75, 0.9])
GOOD = dict(profiles={SNN: KEPT, SELU_OTHER: SHRINKS, RELU: RELU_MOMENTS},
            acc={SNN: 0.97, SELU_OTHER: 0.96, RELU: 0.95}, diverged={SNN: 0, SELU_OTHER: 0, RELU: 0})


def _with(**changes):
    args = {k: dict(v) for k, v in GOOD.items()}
    for key, value in changes.items():
        args[key].update(value)
    return args


def test_outside_layers_and_keeps_apply_both_thresholds_inclusively():
    lo, hi = VAR_BAND
    assert outside_layers([0.0, MEAN_MAX, -MEAN_MAX, 0.0], [1.0, lo, hi, 1.0]) == []  # the edges are inside
    assert outside_layers([0.0, MEAN_MAX + 0.01, 0.0, 0.0, math.nan], [1.0, 1.0, lo - 0.01, hi + 0.01, 1.0]) == \
        [2, 3, 4, 5]
    assert keeps(*KEPT) and not keeps(*SHRINKS) and not keeps(*RELU_MOMENTS)
    assert not keeps([], []) and not keeps([0.0, 0.0], [1.0])  # nothing measured, or lists that do not match


def test_decide_holds_when_every_sub_claim_holds():
    held, text = decide(**GOOD)
    assert held is True
    assert text.count("— held") == 4 and "did NOT hold" not in text
    assert "max |mean| 0.13, variance 0.88 to 1 over 4 layers, every layer inside" in text
    assert "outside at layer(s) 2, 3, 4" in text and "outside at layer(s) 1, 2, 3, 4" in text
    assert f"{TRAINS_FRACTION:g} × the best cell's 97.00%" in text


@pytest.mark.parametrize("changes, which", [
    ({"profiles": {SNN: ([0.0, 0.3, 0.0, 0.0], KEPT[1])}}, "(1)"),        # a layer's mean off zero
    ({"profiles": {SNN: (KEPT[0], [1.0, 1.0, 2.5, 1.0])}}, "(1)"),        # a layer's variance too large
    ({"profiles": {SNN: ([], [])}}, "(1)"),                               # not measured
    ({"profiles": {SELU_OTHER: KEPT}}, "(2)"),                            # the other init keeps them too
    ({"profiles": {SELU_OTHER: ([], [])}}, "(2)"),                        # not measured: no evidence of drift
    ({"profiles": {RELU: ([0.05, 0.0, 0.0, 0.1], [1.0, 1.1, 0.9, 1.0])}}, "(3)"),  # relu centred (it is not)
    ({"acc": {SNN: 0.8}}, "(4)"),                                         # below 0.9 of the best cell
    ({"acc": {SNN: math.nan}}, "(4)"),                                    # every seed diverged
    ({"diverged": {SNN: 1}}, "(4)"),                                      # a diverged seed
])
def test_decide_fails_when_one_sub_claim_fails_and_says_which(changes, which):
    held, text = decide(**_with(**changes))
    assert held is False
    failed = [p for p in text.split("; ") if "did NOT hold" in p]
    assert len(failed) == 1 and failed[0].startswith(which)


@pytest.mark.parametrize("changes", [{}, {"profiles": {SNN: SHRINKS}}, {"profiles": {RELU: KEPT}},
                                     {"acc": {RELU: 1.0, SNN: 0.85}}, {"diverged": {SNN: 2}},
                                     {"acc": {SNN: TRAINS_FRACTION * 0.96, RELU: 0.96}}])
def test_decide_agrees_with_the_by_hand_rule_on_the_same_numbers(changes):
    args = _with(**changes)
    evidence = {"thresholds": {"mean_max": MEAN_MAX, "var_band": list(VAR_BAND), "trains_fraction": TRAINS_FRACTION},
                "snn": SNN, "others": [SELU_OTHER, RELU],
                "cells": {label: {"act_mean_by_layer_init": args["profiles"][label][0],
                                  "act_var_by_layer_init": args["profiles"][label][1],
                                  "test_acc": args["acc"][label], "diverged_seeds": args["diverged"][label]}
                          for label in lab_selu.CELLS}}
    assert decide(**args)[0] is labverdicts.selu(evidence)


# ----------------------------------------------------------------------------- measurements


def _net(activation: type[nn.Module], depth: int = 3) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    fan = 6
    for _ in range(depth):
        layers += [nn.Linear(fan, 16), activation()]
        fan = 16
    return nn.Sequential(*layers, nn.Linear(fan, 3))


def _moments_by_hand(net: nn.Sequential, x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Mean and population variance of every hidden activation layer, recomputed with numpy from the weights."""
    lam, alpha = 1.0507009873554805, 1.6732632423543772  # Klambauer et al. 2017, eq. 2
    h, means, variances = x.numpy().astype(np.float64), [], []
    for module in net:
        if isinstance(module, nn.Linear):
            h = h @ module.weight.detach().numpy().T.astype(np.float64) + module.bias.detach().numpy()
        else:
            h = lam * np.where(h > 0, h, alpha * np.expm1(np.minimum(h, 0))) if isinstance(module, nn.SELU) \
                else np.maximum(h, 0.0)
            means.append(float(h.mean()))
            variances.append(float(h.var()))
    return means, variances


@pytest.mark.parametrize("activation", [nn.SELU, nn.ReLU])
def test_moments_match_a_hand_computation_over_several_batches(activation):
    net = _net(activation)
    x = 1.5 * torch.randn(90, 6, generator=torch.Generator().manual_seed(1)) + 0.3
    net.train()
    means, variances = moments(net, x, batch_size=32)  # three batches, merged by the recorder
    assert net.training and not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    want_means, want_vars = _moments_by_hand(net, x)
    assert means == pytest.approx(want_means, abs=1e-5)
    assert variances == pytest.approx(want_vars, rel=1e-4)


def test_selu_with_lecun_normal_weights_self_normalises_and_a_smaller_scale_does_not():
    """The physics the lab relies on (Klambauer et al. 2017): N(0, 1/n) weights keep a 24-layer SELU net's
    activations near (0, 1); Var(w) = (3/4)² / n, Kaiming's at torch's SELU gain, lets the variance shrink."""
    x = torch.randn(512, 256, generator=torch.Generator().manual_seed(4))

    def profile(std_times_sqrt_n: float) -> tuple[list[float], list[float]]:
        torch.manual_seed(0)
        layers: list[nn.Module] = []
        for _ in range(24):
            lin = nn.Linear(256, 256)
            nn.init.normal_(lin.weight, 0.0, std_times_sqrt_n / math.sqrt(256))
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.SELU()]
        return moments(nn.Sequential(*layers, nn.Linear(256, 10)), x, 256)

    assert keeps(*profile(1.0))
    shrunk = profile(torch.nn.init.calculate_gain("selu"))
    assert not keeps(*shrunk) and shrunk[1][-1] < 0.1 * shrunk[1][0]


def test_measure_reads_the_model_at_init_and_the_trained_one(monkeypatch):
    trained, init = _net(nn.SELU), _net(nn.ReLU)
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(5))
    monkeypatch.setattr(lab_selu, "model_at_init", lambda run, splits: init)
    run = SimpleNamespace(model=trained, config=SimpleNamespace(train=SimpleNamespace(eval_batch_size=1024)))
    got = lab_selu.measure(run, SimpleNamespace(train=SimpleNamespace(x=x)))
    assert got["act_mean_by_layer_init"] == pytest.approx(_moments_by_hand(init, x)[0], abs=1e-5)
    assert got["act_var_by_layer"] == pytest.approx(_moments_by_hand(trained, x)[1], rel=1e-4)


def test_cells_are_the_paper_setting_and_two_that_break_it():
    lab = lab_selu.LAB
    assert lab.seeds >= 3 and "model.norm=none" in lab.base
    depth = int(next(o for o in lab.base if o.startswith("model.depth=")).split("=")[1])
    assert depth >= 16
    assert {c.label: c.overrides for c in lab.cells} == lab_selu.CELLS
    assert lab.cells[0].overrides == {"model.activation": "selu", "init.scheme": "lecun_normal"}
    assert not any("init.gain" in c.overrides for c in lab.cells)  # kaiming at its default gain: 3/4 for selu


# ----------------------------------------------------------------------------- smoke run


@pytest.mark.slow
def test_selu_lab_quick_run(tmp_path):
    from trainwell.experiments.lab import run_lab

    out = tmp_path / "lab"
    outcome = run_lab("selu", out=out, quick=True, seeds=[0, 1], workers=1, quiet=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["claim"] and isinstance(summary["held"], bool) and summary["held"] == outcome.held
    assert_consistent("selu", summary)  # held follows from the stated statistics
    assert summary["verdict"] == outcome.verdict and summary["runs"] == 6
    ev = summary["evidence"]
    assert set(ev) >= {"cells", "thresholds", "snn", "others"}
    for cell in ev["cells"].values():
        assert len(cell["act_mean_by_layer_init"]) == len(cell["act_var_by_layer"]) == 8  # quick: depth 8
    assert ev["cells"][SNN]["keeps_init"] is True and ev["cells"][RELU]["keeps_init"] is False
    assert (out / "moments_by_depth.png").is_file() and (out / "report.html").is_file()
