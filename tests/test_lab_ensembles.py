"""Lab ensembles: the verdict rule, the saved test logits, ensembles formed by hand, and a smoke run."""

import itertools
import json
import math
import statistics
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from trainwell.data.splits import TensorSplit
from trainwell.experiments.labs.ensembles import by_size, decide, disjoint_groups, ensemble_accuracy, measure, subsets
from labverdicts import assert_consistent


def test_decide_holds_when_the_ensemble_beats_its_members_and_varies_less():
    held, text = decide(4, 3, gain=0.052, gain_p=0.01, std_k=0.006, std_1=0.015)
    assert held and text.startswith("Averaging models pays")
    assert "ensemble of 4 is 5.2 pp more accurate" in text and "over 3 disjoint groups, p = 0.01" in text
    assert "std 0.6 pp against 1.5 pp" in text and "ratio 0.4" in text and ": smaller" in text


@pytest.mark.parametrize("args, why", [
    ((4, 3, 0.052, 0.2, 0.006, 0.015), "gain within group noise"),
    ((4, 3, -0.03, 0.01, 0.006, 0.015), "the ensemble is significantly worse"),
    ((4, 3, 0.052, 0.01, 0.02, 0.015), "the ensemble varies more"),
    ((4, 3, 0.052, 0.01, 0.015, 0.015), "the ensemble varies as much"),
    ((4, 3, 0.052, 0.01, math.nan, 0.015), "no spread measured"),
])
def test_decide_fails_when_either_clause_fails(args, why):
    held, text = decide(*args)
    assert not held, why
    assert text.startswith("The claim did not hold")


def _split(n: int, seed: int) -> TensorSplit:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    return TensorSplit(x, (x[:, 0] - x[:, 2] > 0).long() + (x[:, 1] > 1).long())


def test_measure_saves_the_eval_mode_test_logits_and_labels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 3))
    run = SimpleNamespace(model=model, config=SimpleNamespace(train=SimpleNamespace(eval_batch_size=7)))
    splits = SimpleNamespace(train=_split(10, 1), test=_split(30, 2))
    model.train()
    m = measure(run, splits)
    assert model.training  # mode restored
    json.dumps(m)  # saved as measures.json
    with torch.no_grad():
        want = model[3](torch.relu(model[0](splits.test.x)))  # dropout off by hand
    assert torch.tensor(m["test_logits"]) == pytest.approx(want, abs=1e-6)
    assert m["test_labels"] == splits.test.y.tolist()
    assert m["member_acc"] == pytest.approx(float((want.argmax(1) == splits.test.y).double().mean()))


def _members(n=6, examples=200, classes=4, seed=0):
    """n noisy copies of one set of logits: members that agree on the easy examples, differ on the rest."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (examples,), generator=g)
    signal = torch.nn.functional.one_hot(labels, classes).float() * 1.0
    return signal + 1.5 * torch.randn(n, examples, classes, generator=g), labels


def test_ensemble_accuracy_is_the_accuracy_of_the_mean_softmax():
    logits, labels = _members()
    for members in [(0,), (1, 4), (0, 2, 3, 5)]:
        p = np.mean([np.exp(logits[i].numpy()) / np.exp(logits[i].numpy()).sum(1, keepdims=True) for i in members],
                    axis=0)
        assert ensemble_accuracy(logits, labels, members) == pytest.approx(float((p.argmax(1) == labels.numpy()).mean()))


def test_groups_are_disjoint_and_subsets_complete_or_sampled():
    assert disjoint_groups(12, 4) == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11)]
    assert disjoint_groups(7, 3) == [(0, 1, 2), (3, 4, 5)]  # the remainder is left out
    assert subsets(6, 2) == list(itertools.combinations(range(6), 2))
    every = list(itertools.combinations(range(20), 5))
    drawn = subsets(20, 5, limit=50)  # 15504 subsets: every 311th
    assert len(drawn) == 50 == len(set(drawn)) and drawn == every[::311]
    assert len(subsets(20, 5, limit=15504)) == 15504 and len(subsets(20, 5, limit=15503)) == 7752


def test_by_size_against_a_hand_computation():
    logits, labels = _members(n=6)
    sizes = by_size(logits, labels, ks=(1, 2, 3, 4))
    assert sorted(sizes) == [1, 2, 3]  # K = 4 leaves one group of 6: nothing to test over
    member = [float((logits[i].argmax(1) == labels).double().mean()) for i in range(6)]
    one = sizes[1]
    assert one["mean_acc"] == pytest.approx(statistics.mean(member))
    assert one["std_acc"] == pytest.approx(statistics.stdev(member))
    assert one["gain"] == 0 and one["gain_p"] == 1.0  # an ensemble of one is its member
    three = sizes[3]
    assert three["subsets"] == math.comb(6, 3) and three["groups"] == [[0, 1, 2], [3, 4, 5]]
    accs = [ensemble_accuracy(logits, labels, s) for s in itertools.combinations(range(6), 3)]
    assert three["mean_acc"] == pytest.approx(statistics.mean(accs))
    assert three["std_acc"] == pytest.approx(statistics.stdev(accs))
    assert three["group_member_means"] == pytest.approx([statistics.mean(member[:3]), statistics.mean(member[3:])])
    two = sizes[2]
    want = stats.ttest_rel(two["group_accs"], two["group_member_means"])
    assert two["gain"] == pytest.approx(statistics.mean(np.subtract(two["group_accs"], two["group_member_means"])))
    assert two["gain_p"] == pytest.approx(want.pvalue)
    # averaging noisy members helps here: the noise is independent, the signal shared
    assert sizes[3]["mean_acc"] > sizes[1]["mean_acc"]


def test_identical_members_make_an_ensemble_that_gains_nothing():
    logits, labels = _members(n=1)
    sizes = by_size(logits.expand(4, -1, -1), labels, ks=(1, 2))
    assert sizes[2]["gain"] == 0 and sizes[2]["std_acc"] == 0 and sizes[2]["mean_acc"] == sizes[1]["mean_acc"]


@pytest.mark.slow
def test_ensembles_lab_quick_run(tmp_path):
    from trainwell.experiments.lab import run_lab

    outcome = run_lab("ensembles", out=tmp_path / "lab", quick=True, seeds=[0, 1, 2, 3], workers=1, quiet=True)
    summary = json.loads((tmp_path / "lab" / "summary.json").read_text())
    assert summary["claim"] and isinstance(summary["held"], bool) and summary["held"] == outcome.held
    assert_consistent("ensembles", summary)  # held follows from the stated statistics
    assert summary["verdict"] == outcome.verdict and "disjoint groups" in summary["verdict"]
    ev = summary["evidence"]
    assert ev["members"] == 4 and ev["largest_k"] == 2 and set(ev["by_k"]) == {"1", "2"}
    assert ev["by_k"]["2"]["subsets"] == 6 and len(ev["by_k"]["2"]["group_accs"]) == 2
    assert ev["by_k"]["1"]["std_acc"] == pytest.approx(ev["member_std"])
    assert (tmp_path / "lab" / "report.html").is_file() and (tmp_path / "lab" / "accuracy_by_size.png").is_file()
