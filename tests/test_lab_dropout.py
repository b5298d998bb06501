"""Lab dropout: the verdict rule, the eval-mode measurement, and a smoke run."""

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from trainwell.data.splits import TensorSplit
from trainwell.experiments.labs.dropout import decide, measure
from labverdicts import assert_consistent


def test_decide_holds_when_the_gap_shrinks_significantly():
    held, text = decide(gap_diff=-0.067, gap_p=0.004, acc_diff=0.06, acc_p=0.006)
    assert held
    assert "6.7 pp smaller" in text and "p = 0.004" in text and "shrinks significantly" in text
    assert "test accuracy improved significantly" in text
    # the gap shrinks while test accuracy does not move: still held, and said so
    held, text = decide(-0.05, 0.01, 0.002, 0.7)
    assert held and "did not change significantly" in text


def test_decide_fails_without_a_significant_shrinkage():
    held, text = decide(-0.01, 0.3, 0.01, 0.4)  # smaller, but within seed noise
    assert not held and "not a significant shrinkage" in text and "p = 0.3" in text
    held, text = decide(0.04, 0.001, -0.03, 0.01)  # significantly larger gap
    assert not held and "larger" in text and "got worse significantly" in text


def _split(n: int, seed: int) -> TensorSplit:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return TensorSplit(x, (x[:, 0] > 0).long())


def test_measure_uses_eval_mode_and_matches_a_hand_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 2))
    run = SimpleNamespace(model=model, config=SimpleNamespace(train=SimpleNamespace(eval_batch_size=7)))
    splits = SimpleNamespace(train=_split(50, 1), test=_split(40, 2))
    model.train()
    m1, m2 = measure(run, splits), measure(run, splits)
    assert m1 == m2  # dropout off: deterministic despite the model being left in training mode
    assert model.training  # and the model's mode is restored
    model.eval()
    with torch.no_grad():
        want_train = (model(splits.train.x).argmax(1) == splits.train.y).float().mean().item()
        want_test = (model(splits.test.x).argmax(1) == splits.test.y).float().mean().item()
        loss_train = nn.functional.cross_entropy(model(splits.train.x), splits.train.y).item()
        loss_test = nn.functional.cross_entropy(model(splits.test.x), splits.test.y).item()
    assert m1["train_acc_eval"] == pytest.approx(want_train)
    assert m1["test_acc_eval"] == pytest.approx(want_test)
    assert m1["gap_acc"] == pytest.approx(want_train - want_test)
    assert m1["gap_loss"] == pytest.approx(loss_test - loss_train, rel=1e-5)


@pytest.mark.slow
def test_dropout_lab_quick_run(tmp_path):
    from trainwell.experiments.lab import run_lab

    outcome = run_lab("dropout", out=tmp_path / "lab", quick=True, seeds=[0, 1], workers=1, quiet=True)
    summary = json.loads((tmp_path / "lab" / "summary.json").read_text())
    assert summary["claim"] and isinstance(summary["held"], bool) and summary["held"] == outcome.held
    assert_consistent("dropout", summary)  # held follows from the stated statistics
    assert summary["verdict"] == outcome.verdict and "gap" in summary["verdict"]
    ev = summary["evidence"]
    assert set(ev) >= {"p=0", "p=0.2", "p=0.5", "compared"}
    assert set(ev["p=0.5"]) >= {"train_acc_eval", "test_acc", "gap_acc", "gap_p_vs_p0", "acc_p_vs_p0"}
    assert (tmp_path / "lab" / "report.html").is_file() and (tmp_path / "lab" / "gap_vs_dropout.png").is_file()
