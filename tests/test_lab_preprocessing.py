"""Lab preprocessing: the convergence measures, the verdict, and a smoke run."""

import json
import math

import numpy as np
import pytest

from trainwell.experiments.labs.preprocessing import decide, first_epoch_loss, loss_area
from labverdicts import assert_consistent

NAN = math.nan
EPOCHS = {"none": (3.4, 5, 5), "standardize": (2.0, 5, 5), "zca": (2.8, 5, 5)}


def test_decide_holds_when_a_preprocessing_converges_significantly_faster():
    held, text = decide({"none": 2.3, "standardize": 1.3, "zca": 2.4},
                        {"standardize": (-1.0, 0.001), "zca": (0.1, 0.5)},
                        {"none": 1.4, "standardize": 0.9, "zca": 1.5},
                        {"standardize": (-0.5, 0.002), "zca": (0.1, 0.02)}, EPOCHS, target=0.914, n_epochs=10)
    assert held
    assert text.startswith("standardize converged significantly faster than 'none'")
    assert "standardize 1.3 (Δ -1, p = 0.001, faster)" in text
    assert "zca 2.4 (Δ 0.1, p = 0.5, not significantly different)" in text
    assert "zca 1.5 (Δ 0.1, p = 0.02, slower)" in text  # epoch-1 loss reported, not decisive
    assert "91.4% validation accuracy" in text and "none 3.4 (5/5 seeds)" in text


def test_decide_does_not_hold_without_a_significant_speed_up():
    means = {"none": 2.3, "standardize": 2.0}
    # lower on average but not significant
    held, text = decide(means, {"standardize": (-0.3, 0.2)}, means, {"standardize": (-0.3, 0.2)}, EPOCHS, 0.9, 10)
    assert not held and text.startswith("no preprocessing converged significantly faster")
    # significant, but slower
    held, text = decide(means, {"standardize": (0.3, 0.01)}, means, {"standardize": (0.3, 0.01)}, EPOCHS, 0.9, 10)
    assert not held and "standardize significantly slower" in text
    # no test possible (one seed)
    assert not decide(means, {"standardize": (-0.3, NAN)}, means, {}, EPOCHS, 0.9, 10)[0]


def test_loss_area_and_first_epoch_loss_match_numpy():
    rng = np.random.default_rng(0)
    curve = rng.uniform(0.01, 2.0, size=10).tolist()
    assert loss_area(curve) == pytest.approx(float(np.sum(curve)))
    assert loss_area(curve[:1]) == pytest.approx(curve[0])
    assert first_epoch_loss(curve) == curve[0]
    assert math.isnan(loss_area([1.0, NAN]))  # a diverged run has no area
    assert math.isnan(loss_area([])) and math.isnan(first_epoch_loss([])) and math.isnan(first_epoch_loss([NAN]))


@pytest.mark.slow
def test_lab_runs_end_to_end(tmp_path):
    from trainwell.experiments.lab import run_lab

    outcome = run_lab("preprocessing", out=tmp_path, quick=True, seeds=[0, 1], workers=1, quiet=True)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["claim"] and isinstance(summary["held"], bool) and summary["verdict"] == outcome.verdict
    assert_consistent("preprocessing", summary)  # held follows from the stated statistics
    ev = summary["evidence"]
    assert {"none", "standardize", "pca_whiten", "zca", "target_val_acc", "faster_than_baseline"} <= set(ev)
    assert {"loss_area", "loss_epoch1", "epochs_to_target", "test_acc"} <= set(ev["none"])
    assert {"loss_area_p", "loss_area_diff", "loss_epoch1_p"} <= set(ev["zca"])
    assert (tmp_path / "report.html").is_file() and (tmp_path / "training_loss.png").is_file()
