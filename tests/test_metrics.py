"""The metrics people expect (top-k, per-class precision/recall/F1, confusion, NLL, ECE) against scikit-learn;
evaluate's figures and files, test-time augmentation against a hand-computed average, summary.json at the
end of train, and the evaluate command's output."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix, log_loss, precision_recall_fscore_support, top_k_accuracy_score
from test_cli import run_cli

import trainwell
from trainwell.data import TensorSplit, to_float
from trainwell.data.augment import build_augmenter, check_variants, variant_ops
from trainwell.errors import ConfigError, DataError
from trainwell.train.calibration import expected_calibration_error, reliability_bins
from trainwell.train.inference import split_logits
from trainwell.train.metrics import (
    classification_metrics,
    negative_log_likelihood,
    precision_recall_f1,
    summary_fields,
    top_k_accuracy,
)

RUN = {"data.limit": 400, "train.epochs": 2, "train.progress": False, "model.channels": [8, 16],
       "augment": ["translation"]}


def _logits(n=300, k=7, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * scale, torch.randint(0, k, (n,), generator=g)


# ----------------------------------------------------------------------------- the maths, against scikit-learn


def test_per_class_precision_recall_f1_and_support_match_scikit_learn_with_zero_division_0():
    logits, y = _logits()
    logits[:, 6] -= 50  # class 6 is never predicted: precision 0/0 -> 0, as scikit-learn's zero_division=0
    y[y == 5] = 4  # class 5 never occurs: recall 0/0 -> 0, support 0
    pred = logits.argmax(1)
    assert 6 not in pred and 5 not in y
    m = classification_metrics(logits, y)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=range(7), zero_division=0)
    np.testing.assert_allclose(m["precision"], p, rtol=0, atol=1e-12)
    np.testing.assert_allclose(m["recall"], r, rtol=0, atol=1e-12)
    np.testing.assert_allclose(m["f1"], f, rtol=0, atol=1e-12)
    assert m["support"] == s.tolist()
    assert m["precision"][6] == 0.0 and m["recall"][5] == 0.0 and m["support"][5] == 0
    for ours, avg in (("macro_precision", 0), ("macro_recall", 1), ("macro_f1", 2)):
        macro = precision_recall_fscore_support(y, pred, labels=range(7), average="macro", zero_division=0)[avg]
        assert m[ours] == pytest.approx(macro, abs=1e-12)


def test_confusion_matrix_matches_scikit_learn_rows_true_columns_predicted():
    logits, y = _logits(k=5, seed=1)
    m = classification_metrics(logits, y)
    assert m["confusion"] == confusion_matrix(y, logits.argmax(1), labels=range(5)).tolist()
    assert precision_recall_f1(m["confusion"])["support"] == np.bincount(y, minlength=5).tolist()


@pytest.mark.parametrize("k", [1, 2, 3, 5, 6])
def test_top_k_accuracy_matches_scikit_learn(k):
    logits, y = _logits(k=7, seed=2)
    assert top_k_accuracy(logits, y, k) == pytest.approx(
        top_k_accuracy_score(y, logits.numpy(), k=k, labels=range(7)), abs=1e-12)


def test_top_k_is_reported_for_k_below_the_number_of_classes():
    assert set(classification_metrics(*_logits(k=10))["top_k_acc"]) == {1, 3, 5}
    assert set(classification_metrics(*_logits(k=5))["top_k_acc"]) == {1, 3}
    assert set(classification_metrics(*_logits(k=3))["top_k_acc"]) == {1}
    fields = summary_fields(classification_metrics(*_logits(k=5)), "test", list("abcde"))
    assert "test_top3_acc" in fields and "test_top5_acc" not in fields and "test_top1_acc" not in fields


def test_nll_matches_scikit_learns_log_loss_and_ece_is_calibrations():
    logits, y = _logits(k=6, seed=3, scale=1.5)  # no probability near scikit-learn's clipping at float eps
    probs = logits.double().softmax(1)
    m = classification_metrics(logits, y)
    assert m["nll"] == pytest.approx(log_loss(y, probs.numpy(), labels=range(6)), rel=1e-12)
    assert negative_log_likelihood(logits, y) == pytest.approx(m["nll"], rel=1e-12)
    assert m["ece"] == pytest.approx(expected_calibration_error(probs, y), abs=1e-12)
    assert m["reliability"] == reliability_bins(probs, y)
    assert m["acc"] == pytest.approx((logits.argmax(1) == y).double().mean().item(), abs=1e-12)


def test_log_probabilities_are_logits_too():
    logits, y = _logits(seed=4)
    a, b = classification_metrics(logits, y), classification_metrics(F.log_softmax(logits, 1), y)
    assert a["confusion"] == b["confusion"] and a["nll"] == pytest.approx(b["nll"], rel=1e-6)  # (float32 log_softmax)


@pytest.mark.parametrize("logits,labels,match", [
    (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), "non-empty"),
    (torch.zeros(4, 3), torch.zeros(3, dtype=torch.long), "one label per row"),
    (torch.zeros(4, 3), torch.zeros(4), "integer class indices"),
    (torch.zeros(4, 3), torch.tensor([0, 1, 2, 3]), r"\[0, 3\)"),
    (torch.full((2, 3), float("nan")), torch.tensor([0, 1]), "NaN"),
])
def test_bad_inputs_are_one_line(logits, labels, match):
    with pytest.raises(DataError, match=match):
        classification_metrics(logits, labels)


# ----------------------------------------------------------------------------- test-time augmentation


def _shift(x, dy, dx):
    """x moved by (dy, dx) pixels with zero fill, by hand (pad, then slice)."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1))
    return padded[..., 1 - dy: 1 - dy + h, 1 - dx: 1 - dx + w]


def test_tta_variants_are_identity_flip_and_one_pixel_shifts_on_digits():
    aug = check_variants(build_augmenter("hflip,translation", (1, 8, 8)))  # 8 px * 0.1 -> k = 1
    x = torch.rand(3, 1, 8, 8)
    got = dict(aug.variants(x))
    expected = {"identity": x, "hflip": x.flip(-1), "translation y+1px": _shift(x, 1, 0),
                "translation y-1px": _shift(x, -1, 0), "translation x+1px": _shift(x, 0, 1),
                "translation x-1px": _shift(x, 0, -1)}
    assert list(got) == list(expected) == aug.variant_names()
    for label, view in expected.items():
        assert torch.equal(got[label], view), label


def test_an_op_without_deterministic_variants_is_refused_naming_those_with():
    with pytest.raises(ConfigError, match="'rotation' has no deterministic variants.*hflip, vflip, translation, crop"):
        check_variants(build_augmenter("rotation", (1, 8, 8)))
    with pytest.raises(ConfigError, match="none does for tabular"):
        check_variants(build_augmenter("noise", (4,)))
    assert variant_ops(1) == ["hflip", "translation", "crop"]


def test_split_logits_with_tta_is_the_log_of_the_mean_softmax_of_the_variants():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5))
    split = TensorSplit(torch.randint(0, 256, (37, 1, 8, 8), dtype=torch.uint8), torch.randint(0, 5, (37,)))
    aug = check_variants(build_augmenter("hflip,translation", (1, 8, 8)))
    logits, plain = split_logits(model, split, torch.device("cpu"), 16, tta=aug)  # 3 chunks
    x = to_float(split.x)
    views = [x, x.flip(-1), _shift(x, 1, 0), _shift(x, -1, 0), _shift(x, 0, 1), _shift(x, 0, -1)]
    with torch.no_grad():
        expected = torch.stack([model(v).softmax(1) for v in views]).mean(0)
        torch.testing.assert_close(plain, model(x))
    torch.testing.assert_close(logits.exp(), expected)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trainwell.train(RUN, out=tmp_path_factory.mktemp("m") / "r", quiet=True)


@pytest.mark.slow
def test_evaluate_with_tta_equals_a_hand_computed_average_and_reports_the_gain(run):
    ev = trainwell.evaluate(run.dir, tta=["hflip", "translation"])
    model = trainwell.load_run(run.dir).model.eval()
    x, y = to_float(run.splits.test.x), run.splits.test.y
    views = [x, x.flip(-1), _shift(x, 1, 0), _shift(x, -1, 0), _shift(x, 0, 1), _shift(x, 0, -1)]
    with torch.no_grad():
        probs = torch.stack([model(v).softmax(1) for v in views]).mean(0)
    assert ev["test_acc"] == pytest.approx((probs.argmax(1) == y).float().mean().item(), abs=1e-9)
    assert ev["test_nll"] == pytest.approx(F.nll_loss(probs.log(), y).item(), rel=1e-5)
    assert ev["tta"]["variants"] == ["identity", "hflip", "translation y+1px", "translation y-1px",
                                     "translation x+1px", "translation x-1px"]
    assert ev["tta"]["test_acc_without"] == run.summary["test_acc"]  # the identity view: the plain run
    with pytest.raises(ConfigError, match="'cutout' has no deterministic variants"):
        trainwell.evaluate(run.dir, tta="cutout")


# ----------------------------------------------------------------------------- train's summary and files


@pytest.mark.slow
def test_train_writes_the_metrics_into_summary_json_and_the_figures_beside_it(run):
    s = json.loads((run.dir / "summary.json").read_text())
    for key in ("test_acc", "test_loss", "best_val_acc", "params", "train_seconds", "param_groups"):  # kept
        assert key in s
    for key in ("test_top3_acc", "test_top5_acc", "test_nll", "test_ece", "test_macro_precision",
                "test_macro_recall", "test_macro_f1", "per_class", "confusion", "reliability"):
        assert key in s, key
    assert set(s["per_class"]) == set(run.splits.classes)
    assert sum(map(sum, s["confusion"])) == s["n_test"] == sum(r["support"] for r in s["per_class"].values())
    assert s["test_nll"] == pytest.approx(s["test_loss"], rel=1e-5)
    for name in ("confusion.png", "reliability.png", "report.html"):
        assert (run.dir / name).stat().st_size > 1000, name
    ev = trainwell.evaluate(run.dir)
    for key in ("test_acc", "test_top3_acc", "test_top5_acc", "test_macro_f1", "confusion", "per_class"):
        assert ev[key] == s[key], key


@pytest.mark.slow
def test_evaluate_command_prints_the_figures_the_table_and_where_the_files_went(run, tmp_path):
    out = tmp_path / "ev"
    proc = run_cli("evaluate", str(run.dir), "--out", str(out), "--tta", "translation")
    text = proc.stdout
    for part in ("test acc", "top-3", "top-5", "NLL", "ECE", "macro F1", "per class", "precision", "recall",
                 "support", "macro mean", "test-time augmentation (5 views"):
        assert part in text, part
    assert f"confusion matrix: {out / 'confusion.png'}" in text
    assert f"reliability diagram: {out / 'reliability.png'}" in text
    assert (out / "confusion.png").is_file() and (out / "reliability.png").is_file()
    as_json = json.loads(run_cli("evaluate", str(run.dir), "--out", str(tmp_path / "j"), "--json").stdout)
    assert as_json["files"]["confusion"] == str(tmp_path / "j" / "confusion.png")
    bad = run_cli("evaluate", str(run.dir), "--out", str(tmp_path / "b"), "--tta", "rotation", check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "hflip" in bad.stderr
    assert not (tmp_path / "b").exists()
