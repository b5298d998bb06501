"""Lab schedules: the verdict rule, the eval-mode training loss, and a smoke run."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from trainwell.data.splits import TensorSplit
from trainwell.experiments.labs.schedules import CELLS, LR, beats, decide, measure
from labverdicts import assert_consistent

MOMENTUM_WINS = (-0.25, 0.001, 0.08, 0.0005)  # log10 loss diff, p, test-acc diff, p
COSINE_WINS = (-0.5, 0.003, 0.015, 0.2)
ONECYCLE_TIES = (0.02, 0.9, -0.002, 0.8)


def test_decide_holds_when_momentum_and_one_schedule_win():
    held, text = decide(MOMENTUM_WINS, {"momentum-cosine": COSINE_WINS, "momentum-onecycle": ONECYCLE_TIES})
    assert held
    assert "momentum's final training loss is 1.78× below plain sgd's (paired p = 0.001)" in text
    assert "momentum-cosine's final training loss is 3.16× below the constant lr's (Holm-adjusted p = 0.003)" in text
    assert "momentum-onecycle's final training loss is 1.05× above" in text and "it does not beat the constant lr" in text


@pytest.mark.parametrize("momentum", [(-0.25, 0.2, 0.08, 0.0005),  # not significant
                                      (0.25, 0.001, 0.08, 0.0005),  # significantly higher loss
                                      (-0.25, 0.001, -0.03, 0.01)])  # lower loss, significantly worse test
def test_decide_fails_when_momentum_does_not_beat_plain_sgd(momentum):
    held, text = decide(momentum, {"momentum-cosine": COSINE_WINS})
    assert not held and "it does not beat plain sgd" in text


def test_decide_fails_when_no_schedule_beats_the_constant_lr():
    held, text = decide(MOMENTUM_WINS, {"momentum-cosine": (-0.5, 0.07, 0.01, 0.3),
                                        "momentum-onecycle": ONECYCLE_TIES})
    assert not held and text.count("it does not beat the constant lr") == 2
    held, text = decide(MOMENTUM_WINS, {"momentum-cosine": (-0.5, 0.001, -0.02, 0.04)})
    assert not held and "significantly lower)" in text
    assert not decide(MOMENTUM_WINS, {})[0]


def test_beats_at_the_alpha_edge():
    assert beats(-0.1, 0.049, 0.0, 1.0) and not beats(-0.1, 0.05, 0.0, 1.0)
    assert beats(-0.1, 0.01, -0.01, 0.06)  # a worse test accuracy within noise does not veto
    assert not beats(-0.1, 0.001, -0.01, 0.01, alpha=0.05) and beats(-0.1, 0.001, -0.01, 0.01, alpha=0.005)
    assert not beats(math.nan, 0.01, 0.0, 1.0)


def test_cells_differ_only_in_momentum_schedule_and_the_control_lr():
    keys = {k for o in CELLS.values() for k in o}
    assert keys == {"optim.momentum", "sched.name", "optim.lr"}
    assert [label for label, o in CELLS.items() if "optim.lr" in o] == ["sgd-lr10"]
    assert CELLS["sgd-lr10"]["optim.lr"] == pytest.approx(LR / (1 - CELLS["momentum"]["optim.momentum"]))


def test_measure_evaluates_the_whole_training_split_in_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(70, 6, generator=g)
    train = TensorSplit(x, torch.randint(0, 3, (70,), generator=g))
    run = SimpleNamespace(model=model, config=SimpleNamespace(train=SimpleNamespace(eval_batch_size=16)))
    model.train()
    m = measure(run, SimpleNamespace(train=train))
    assert m == measure(run, SimpleNamespace(train=train)) and model.training  # dropout off, mode restored
    model.eval()
    with torch.no_grad():
        logits = model(x)
    want = nn.functional.cross_entropy(logits, train.y).item()
    assert m["train_loss_eval"] == pytest.approx(want, rel=1e-5)
    assert m["log10_train_loss"] == pytest.approx(math.log10(want), rel=1e-5)
    assert m["train_acc_eval"] == pytest.approx((logits.argmax(1) == train.y).float().mean().item())


@pytest.mark.slow
def test_schedules_lab_quick_run(tmp_path):
    from trainwell.experiments.lab import run_lab

    outcome = run_lab("schedules", out=tmp_path / "lab", quick=True, seeds=[0, 1], workers=1, quiet=True)
    summary = json.loads((tmp_path / "lab" / "summary.json").read_text())
    assert summary["claim"] and isinstance(summary["held"], bool) and summary["held"] == outcome.held
    assert_consistent("schedules", summary)  # held follows from the stated statistics
    assert summary["verdict"] == outcome.verdict and "plain sgd" in summary["verdict"]
    ev = summary["evidence"]
    assert set(ev["cells"]) == set(CELLS)
    assert set(ev["tests"]) == {"momentum_minus_sgd", "momentum-cosine_minus_momentum",
                                "momentum-onecycle_minus_momentum", "sgd-lr10_minus_momentum"}
    assert all(c["train_loss_eval"] > 0 for c in ev["cells"].values())
    assert (tmp_path / "lab" / "report.html").is_file() and (tmp_path / "lab" / "train_loss.png").is_file()
