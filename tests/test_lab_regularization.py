"""Lab regularization: the verdict rule, the weight statistics against numpy, and a smoke run."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from trainwell.experiments.labs.regularization import HIST_EDGES, decide, weight_stats
from labverdicts import assert_consistent


def test_decide_holds_when_l1_is_sparse_and_l2_is_small():
    held, text = decide(l1_vs_l2=(0.75, 1e-4), l1_vs_none=(0.8, 1e-4), l2_norm_vs_none=(-20.0, 1e-3))
    assert held
    assert "75 pp larger (p = 0.0001)" in text and "80 pp larger" in text and "by -20" in text
    assert "not significant" not in text


def test_decide_fails_when_a_part_of_the_claim_is_missing():
    # L1 not sparser than L2
    held, text = decide((0.01, 0.4), (0.8, 1e-4), (-20.0, 1e-3))
    assert not held and "not significant" in text
    # L1 sparser than nothing, but L2 sparser still
    assert not decide((-0.2, 1e-3), (0.5, 1e-3), (-20.0, 1e-3))[0]
    # L2 does not shrink the weights
    held, text = decide((0.75, 1e-4), (0.8, 1e-4), (-0.5, 0.3))
    assert not held and "not a significant shrinkage" in text


def test_weight_stats_match_numpy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 5), nn.BatchNorm1d(5),
                          nn.Linear(5, 3))
    with torch.no_grad():
        model[3].weight[:, :4] = 0.0  # exact zeros
        model[3].weight[0, 4] = 5e-4  # below the threshold
        model[5].weight[0, :] = 1e-7
        for m in (model[0], model[3], model[5]):
            m.bias.fill_(1e-9)  # biases are not weights: they must not count
    layers = [model[0].weight, model[3].weight, model[5].weight]
    w = np.concatenate([p.detach().numpy().ravel() for p in layers]).astype(np.float64)
    got = weight_stats(model, threshold=1e-3, relative=0.01)
    assert got["n_weights"] == 12 + 40 + 15
    assert got["frac_zero"] == pytest.approx(np.mean(np.abs(w) < 1e-3))
    rel = np.concatenate([np.abs(p.detach().numpy().ravel()) < 0.01 * np.abs(p.detach().numpy()).max()
                          for p in layers])
    assert got["frac_zero_rel"] == pytest.approx(rel.mean())
    assert got["weight_norm"] == pytest.approx(np.sqrt(np.sum(w ** 2)))
    assert got["frac_zero_by_layer"] == pytest.approx([np.mean(np.abs(p.detach().numpy()) < 1e-3) for p in layers])
    assert got["abs_hist"] == np.histogram(np.abs(w), bins=HIST_EDGES)[0].tolist()
    assert got["abs_hist_under"] == 20  # the exact zeros (1e-7 lands in the histogram)
    assert sum(got["abs_hist"]) + got["abs_hist_under"] == got["n_weights"]  # nothing above 10


@pytest.mark.slow
def test_regularization_lab_quick_run(tmp_path):
    from trainwell.experiments.lab import run_lab

    outcome = run_lab("regularization", out=tmp_path / "lab", quick=True, seeds=[0, 1], workers=1, quiet=True)
    summary = json.loads((tmp_path / "lab" / "summary.json").read_text())
    assert summary["claim"] and isinstance(summary["held"], bool) and summary["held"] == outcome.held
    assert_consistent("regularization", summary)  # held follows from the stated statistics
    assert summary["verdict"] == outcome.verdict and "L1" in summary["verdict"]
    ev = summary["evidence"]
    assert {"none", "zero_threshold", "tests"} <= set(ev)
    assert set(ev["tests"]) >= {"frac_zero_l1_minus_l2", "frac_zero_l1_minus_none", "weight_norm_l2_minus_none"}
    assert set(ev["none"]) >= {"frac_zero", "frac_zero_rel", "weight_norm", "test_acc"}
    assert (tmp_path / "lab" / "report.html").is_file() and (tmp_path / "lab" / "weight_histogram.png").is_file()
