"""Lab orthogonal: the verdict rule, dL/dh_t against torch's own RNN, and a smoke run."""

import json
import math

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from torch import nn

from trainwell.config.resolution import resolve
from trainwell.errors import ConfigError
from trainwell.experiments.labs.orthogonal import BAND, decide, geometric_mean, in_band, state_grad_norms
from trainwell.nn.pipeline import Classifier
from trainwell.nn.recurrent import RecurrentClassifier
from labverdicts import assert_consistent

GOOD_RATIOS = {"gauss-0.5": 1.4e-12, "gauss-2": 2.2e3}
GOOD_ACC = {"gauss-0.5": (0.15, 0.001), "gauss-2": (0.2, 0.004)}


def test_decide_holds_when_orthogonal_keeps_the_norm_and_trains_better():
    held, text = decide(0.065, GOOD_RATIOS, GOOD_ACC)
    assert held
    assert "0.065 for orthogonal (inside the band [0.01, 100])" in text
    assert "gauss-0.5 (vanishes)" in text and "gauss-2 (explodes)" in text
    assert "15 pp higher than gauss-0.5's" in text and "p = 0.001: significant" in text


@pytest.mark.parametrize("ratio", [0.004, 300.0, math.nan])
def test_decide_fails_when_orthogonal_leaves_the_band(ratio):
    held, text = decide(ratio, GOOD_RATIOS, GOOD_ACC)
    assert not held and "outside the band" in text


def test_decide_fails_when_a_gaussian_keeps_the_norm_or_was_not_measured():
    held, text = decide(0.065, {**GOOD_RATIOS, "gauss-2": 3.0}, GOOD_ACC)
    assert not held and "3 for gauss-2 (stays in the band)" in text
    held, text = decide(0.065, {**GOOD_RATIOS, "gauss-0.5": math.nan}, GOOD_ACC)
    assert not held and "gauss-0.5 (not measured)" in text


@pytest.mark.parametrize("acc", [(0.02, 0.3), (-0.05, 0.01), (0.1, 0.05)])
def test_decide_fails_unless_orthogonal_is_significantly_more_accurate(acc):
    held, text = decide(0.065, GOOD_RATIOS, {**GOOD_ACC, "gauss-2": acc})
    assert not held and "not significantly higher" in text


def test_decide_needs_a_test_for_every_gaussian_and_respects_the_band():
    assert not decide(0.065, GOOD_RATIOS, {"gauss-0.5": GOOD_ACC["gauss-0.5"]})[0]
    assert not decide(0.065, {}, {})[0]
    # a narrower band puts orthogonal's 0.065 outside
    held, text = decide(0.065, GOOD_RATIOS, GOOD_ACC, band=(0.1, 10.0))
    assert not held and "[0.1, 10]" in text


def test_band_edges_and_geometric_mean_match_scipy():
    assert in_band(BAND[0]) and in_band(BAND[1]) and not in_band(BAND[0] * 0.99) and not in_band(math.inf)
    values = [1e-12, 3e-11, 2e-12, 5e-13]
    assert geometric_mean(values) == pytest.approx(scipy.stats.gmean(values), rel=1e-12)
    assert geometric_mean([0.0, 1.0]) == 0.0 and math.isnan(geometric_mean([math.nan]))


def _classifier(layers: int, hidden: int = 5, features: int = 3, classes: int = 4) -> Classifier:
    cfg = resolve(["model.name=rnn", f"model.hidden={hidden}", f"model.layers={layers}"]).model
    torch.manual_seed(layers)
    net = RecurrentClassifier(nn.RNN, features, cfg, classes)
    with torch.no_grad():  # a scale at which the gradient neither vanishes nor blows up in 12 steps
        for name, p in net.rnn.named_parameters():
            p.copy_(torch.randn_like(p) * (0.6 if "weight_hh" in name else 0.4))
    return Classifier(net)


def _by_splitting_the_sequence(clf: Classifier, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """dL/dh_t by torch's fused nn.RNN: run steps 1..t, make the states at t a leaf, run the rest from it."""
    net = clf.net
    seq = net.sequence(x)
    norms = []
    for t in range(1, seq.shape[1] + 1):
        _, h_t = net.rnn(seq[:, :t])
        h0 = h_t.detach().clone().requires_grad_(True)  # (layers, N, H): every layer's state after step t
        final = net.rnn(seq[:, t:], h0)[1][-1] if t < seq.shape[1] else h0[-1]
        grad = torch.autograd.grad(F.cross_entropy(net.head(final), y), h0)[0][-1]  # the top layer's
        norms.append(float(grad.norm()))
    return norms


@pytest.mark.parametrize("layers", [1, 2])
def test_state_grad_norms_match_torchs_rnn_split_at_every_step(layers):
    clf = _classifier(layers)
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(8, 3, 12, generator=g), torch.randint(0, 4, (8,), generator=g)
    got = state_grad_norms(clf, x, y)
    want = _by_splitting_the_sequence(clf, x, y)
    assert len(got) == 12
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert max(got) / min(got) > 1.5  # the profile varies over time: a constant answer would not pass


def test_state_grad_norms_match_backprop_through_time_by_hand():
    """One layer, in float64 numpy: g_T = W_headᵀ (softmax − onehot) / N, g_(t-1) = (g_t ⊙ (1 − h_t²)) W_hh."""
    clf = _classifier(1)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(6, 3, 10, generator=g), torch.randint(0, 4, (6,), generator=g)
    rnn, head = clf.net.rnn, clf.net.head
    w_ih, w_hh = rnn.weight_ih_l0.detach().double().numpy(), rnn.weight_hh_l0.detach().double().numpy()
    b = (rnn.bias_ih_l0 + rnn.bias_hh_l0).detach().double().numpy()
    seq = x.double().numpy().transpose(0, 2, 1)  # (N, T, F)
    h, hs = np.zeros((6, 5)), []
    for t in range(10):
        h = np.tanh(seq[:, t] @ w_ih.T + h @ w_hh.T + b)
        hs.append(h)
    logits = hs[-1] @ head.weight.detach().double().numpy().T + head.bias.detach().double().numpy()
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    grad = (p - np.eye(4)[y.numpy()]) / 6 @ head.weight.detach().double().numpy()
    want = [np.linalg.norm(grad)]
    for t in range(9, 0, -1):
        grad = (grad * (1 - hs[t] ** 2)) @ w_hh
        want.append(np.linalg.norm(grad))
    np.testing.assert_allclose(state_grad_norms(clf, x, y), want[::-1], rtol=1e-4)


def test_state_grad_norms_refuse_a_gated_or_bidirectional_net():
    for overrides in (["model.name=gru"], ["model.name=rnn", "model.bidirectional=true"],
                      ["model.name=rnn", "model.readout=mean"]):
        cfg = resolve([*overrides, "model.hidden=4"]).model
        cell = nn.GRU if cfg.name == "gru" else nn.RNN
        clf = Classifier(RecurrentClassifier(cell, 2, cfg, 3))
        with pytest.raises(ConfigError, match="model.name=rnn"):
            state_grad_norms(clf, torch.randn(4, 2, 5), torch.tensor([0, 1, 2, 0]))


@pytest.mark.slow
def test_orthogonal_lab_quick_run(tmp_path):
    from trainwell.experiments.lab import run_lab

    outcome = run_lab("orthogonal", out=tmp_path / "lab", quick=True, seeds=[0, 1], workers=1, quiet=True)
    summary = json.loads((tmp_path / "lab" / "summary.json").read_text())
    assert summary["claim"] and isinstance(summary["held"], bool) and summary["held"] == outcome.held
    assert_consistent("orthogonal", summary)  # held follows from the stated statistics
    assert summary["verdict"] == outcome.verdict and "||dL/dh_1|| / ||dL/dh_T||" in summary["verdict"]
    ev = summary["evidence"]
    assert set(ev["cells"]) == {"orthogonal", "gauss-0.5", "gauss-2", "gauss-1"} and ev["band"] == list(BAND)
    for c in ev["cells"].values():
        assert len(c["grad_ratio_by_seed"]) == 2 and all(r > 0 for r in c["grad_ratio_by_seed"])
    # the vanishing and exploding scales show even at init on the quick data
    assert ev["cells"]["gauss-0.5"]["grad_ratio"] < BAND[0] < BAND[1] < ev["cells"]["gauss-2"]["grad_ratio"]
    assert (tmp_path / "lab" / "report.html").is_file() and (tmp_path / "lab" / "grad_by_step.png").is_file()
