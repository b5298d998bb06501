"""Lab augmentation: the verdict rule (both clauses, Holm over the augmentations), the eval-mode
train/test measurement, and a smoke run."""

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from trainwell.data.splits import TensorSplit
from trainwell.experiments.labs.augmentation import AUGMENTS, decide
from trainwell.experiments.labs.common import train_test_gap
from labverdicts import assert_consistent


def _row(label, gap_diff, gap_p, acc_diff, acc_p):
    return {"label": label, "gap_diff": gap_diff, "gap_p": gap_p, "acc_diff": acc_diff, "acc_p": acc_p}


def test_decide_holds_when_one_augmentation_narrows_the_gap_and_raises_accuracy():
    held, text = decide([_row("translation", -0.30, 0.001, 0.12, 0.002), _row("crop", -0.02, 0.5, 0.01, 0.6)])
    assert held
    assert "Augmentation (translation) both narrows" in text
    # Holm over two: the smaller p doubles, the larger one is max(its own, the first's adjusted)
    assert "gap −30 pp (Holm p = 0.002, significantly smaller)" in text
    assert "test accuracy +12 pp (Holm p = 0.004, significantly higher)" in text
    assert "crop: gap −2 pp (Holm p = 0.5, not significantly smaller)" in text
    assert "alpha = 0.05" in text and "over 2 augmentations" in text


@pytest.mark.parametrize("row, why", [
    (_row("t", 0.05, 0.001, 0.12, 0.002), "the gap grows"),
    (_row("t", -0.30, 0.2, 0.12, 0.002), "the gap shrinks within seed noise"),
    (_row("t", -0.30, 0.001, -0.05, 0.001), "test accuracy falls"),
    (_row("t", -0.30, 0.001, 0.02, 0.3), "test accuracy rises within seed noise"),
])
def test_decide_fails_when_either_clause_fails(row, why):
    held, text = decide([row])
    assert not held, why
    assert text.startswith("No augmentation both narrows")


def test_decide_needs_both_clauses_from_the_same_augmentation_and_corrects_for_several():
    # one narrows the gap, another raises accuracy: no single augmentation shows the claim
    assert not decide([_row("a", -0.3, 0.001, 0.01, 0.6), _row("b", -0.01, 0.7, 0.1, 0.001)])[0]
    # p = 0.03 for both clauses is significant alone ...
    assert decide([_row("a", -0.3, 0.03, 0.1, 0.03)])[0]
    # ... but not after Holm's correction over two augmentations with the same p-values (0.06)
    held, text = decide([_row("a", -0.3, 0.03, 0.1, 0.03), _row("b", -0.3, 0.03, 0.1, 0.03)])
    assert not held and "Holm p = 0.06" in text
    assert decide([]) == (False, "No augmentation ran: nothing to compare with no augmentation.")


def _split(n: int, seed: int) -> TensorSplit:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return TensorSplit(x, (x[:, 0] + 0.5 * x[:, 1] > 0).long())


def test_measure_is_the_eval_mode_fit_on_the_stored_splits():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 2))
    run = SimpleNamespace(model=model, config=SimpleNamespace(train=SimpleNamespace(eval_batch_size=9)))
    splits = SimpleNamespace(train=_split(60, 1), test=_split(45, 2))
    with torch.no_grad():  # a few training-mode passes, so the running statistics differ from a batch's
        for _ in range(3):
            model(torch.randn(20, 6) * 3 + 1)
    model.train()
    running = model[1].running_mean.clone()
    m = train_test_gap(run, splits)
    assert model.training and torch.equal(model[1].running_mean, running)  # mode restored, statistics untouched
    # by hand: batch norm on its running statistics, layer by layer
    bn = model[1]

    def forward(x):
        h = model[0](x)
        h = (h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        return model[3](torch.relu(h))

    with torch.no_grad():
        out = {}
        for name, split in (("train", splits.train), ("test", splits.test)):
            logits = forward(split.x)
            out[name] = ((logits.argmax(1) == split.y).double().mean().item(),
                         nn.functional.log_softmax(logits, 1).gather(1, split.y[:, None]).neg().mean().item())
    assert m["train_acc_eval"] == pytest.approx(out["train"][0])
    assert m["test_acc_eval"] == pytest.approx(out["test"][0])
    assert m["gap_acc"] == pytest.approx(out["train"][0] - out["test"][0])
    assert m["train_loss_eval"] == pytest.approx(out["train"][1], rel=1e-5)
    assert m["gap_loss"] == pytest.approx(out["test"][1] - out["train"][1], rel=1e-4, abs=1e-6)


@pytest.mark.slow
def test_augmentation_lab_quick_run(tmp_path):
    from trainwell.experiments.lab import run_lab

    outcome = run_lab("augmentation", out=tmp_path / "lab", quick=True, seeds=[0, 1], workers=1, quiet=True)
    summary = json.loads((tmp_path / "lab" / "summary.json").read_text())
    assert summary["claim"] and isinstance(summary["held"], bool) and summary["held"] == outcome.held
    assert_consistent("augmentation", summary)  # held follows from the stated statistics
    assert summary["verdict"] == outcome.verdict and "Holm" in summary["verdict"]
    ev = summary["evidence"]
    labels = [label for label, _ in AUGMENTS]
    assert set(ev) >= {*labels, "baseline", "alpha"}
    assert ev["baseline"] == "none" and ev["none"]["gap_p"] is None
    for label in labels[1:]:
        assert set(ev[label]) >= {"train_acc_eval", "test_acc", "gap_acc", "gap_p_holm", "acc_p_holm"}
    assert (tmp_path / "lab" / "report.html").is_file()
    assert (tmp_path / "lab" / "fit_by_augmentation.png").is_file()
