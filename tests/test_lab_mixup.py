"""Lab mixup: the verdict rule (with Holm), pooling reliability bins, the measurement, a smoke run."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from trainwell.data.splits import TensorSplit
from trainwell.train.calibration import calibration_summary, expected_calibration_error
from trainwell.experiments.labs.mixup import decide, measure, pool_bins
from labverdicts import assert_consistent


def row(label="alpha=0.2", ece_diff=-0.09, ece_p=0.001, acc_diff=0.003, acc_p=0.6):
    return {"label": label, "ece_diff": ece_diff, "ece_p": ece_p, "acc_diff": acc_diff, "acc_p": acc_p}


def test_decide_holds_when_ece_drops_and_accuracy_stays():
    held, text = decide([row(), row("alpha=0.4", -0.08, 0.002, -0.004, 0.5)])
    assert held and "lowers the calibration error without hurting accuracy" in text
    assert "alpha=0.2: ECE −9 pp (Holm p = 0.002, significantly lower)" in text  # 2 × 0.001
    assert "not significantly worse" in text


def test_decide_fails_when_accuracy_is_hurt_or_ece_does_not_drop():
    held, text = decide([row(acc_diff=-0.03, acc_p=0.01)])
    assert not held and "significantly worse" in text
    held, text = decide([row(ece_diff=-0.01, ece_p=0.4)])
    assert not held and "not significantly lower" in text
    assert not decide([row(ece_diff=0.05, ece_p=0.001)])[0]  # ECE significantly *higher*
    assert not decide([])[0]


def test_decide_adjusts_the_ece_p_values_for_several_settings():
    # each p = 0.03 alone would pass; Holm over two settings makes both 0.06
    held, text = decide([row(ece_p=0.03), row("alpha=0.4", ece_p=0.03)])
    assert not held and text.count("Holm p = 0.06") == 2
    assert decide([row(ece_p=0.03)])[0]


def test_pool_bins_equals_the_calibration_of_all_examples_together():
    rng = np.random.default_rng(0)
    parts = []
    for n in (50, 80, 120):
        logits = rng.normal(size=(n, 5)) * 3
        probs = torch.tensor(logits).softmax(1)
        parts.append((probs, torch.tensor(rng.integers(0, 5, size=n))))
    pooled = pool_bins([calibration_summary(p, y, 15)["bins"] for p, y in parts])
    together = calibration_summary(torch.cat([p for p, _ in parts]), torch.cat([y for _, y in parts]), 15)
    assert pooled["count"] == together["bins"]["count"]
    assert pooled["ece"] == pytest.approx(together["ece"], abs=1e-12)
    for got, want in zip(pooled["accuracy"], together["bins"]["accuracy"]):
        assert (got is None and want is None) or got == pytest.approx(want)
    for got, want in zip(pooled["confidence"], together["bins"]["confidence"]):
        assert (got is None and want is None) or got == pytest.approx(want)
    with pytest.raises(ValueError):
        pool_bins([])
    with pytest.raises(ValueError):
        pool_bins([calibration_summary(*parts[0], 15)["bins"], calibration_summary(*parts[0], 10)["bins"]])


def test_measure_is_the_calibration_of_the_eval_mode_softmax():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    x = torch.randn(60, 4)
    y = torch.randint(0, 3, (60,))
    run = SimpleNamespace(model=model, config=SimpleNamespace(train=SimpleNamespace(eval_batch_size=16)))
    m = measure(run, SimpleNamespace(test=TensorSplit(x, y)))
    model.eval()
    with torch.no_grad():
        probs = model(x).softmax(1)
    assert m["ece"] == pytest.approx(expected_calibration_error(probs, y, 15), abs=1e-6)
    assert m["cal_acc"] == pytest.approx((probs.argmax(1) == y).float().mean().item())
    assert m["mean_conf"] == pytest.approx(probs.max(1).values.mean().item(), abs=1e-6)
    assert m["nll"] == pytest.approx(nn.functional.nll_loss(probs.log(), y).item(), abs=1e-5)
    assert sum(m["reliability"]["count"]) == 60


@pytest.mark.slow
def test_mixup_lab_quick_run(tmp_path):
    from trainwell.experiments.lab import run_lab

    outcome = run_lab("mixup", out=tmp_path / "lab", quick=True, seeds=[0, 1], workers=1, quiet=True)
    summary = json.loads((tmp_path / "lab" / "summary.json").read_text())
    assert summary["claim"] and isinstance(summary["held"], bool) and summary["held"] == outcome.held
    assert_consistent("mixup", summary)  # held follows from the stated statistics
    assert summary["verdict"] == outcome.verdict and "ECE" in summary["verdict"]
    ev = summary["evidence"]
    assert set(ev) >= {"no mixup", "alpha=0.2", "alpha=0.4", "n_bins"}
    assert set(ev["alpha=0.2"]) >= {"test_acc", "ece", "ece_p", "nll", "acc_p", "ece_pooled"}
    assert (tmp_path / "lab" / "report.html").is_file() and (tmp_path / "lab" / "reliability.png").is_file()
