"""Calibration metrics: ECE against a naive per-bin loop, known values, edges, errors and the plot."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainwell.errors import DataError
from trainwell.train.calibration import (
    brier_score,
    calibration_summary,
    expected_calibration_error,
    negative_log_likelihood,
    plot_reliability,
    reliability_bins,
)


def naive_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """Guo et al. 2017 written out: a Python loop over bins (b/n, (b+1)/n], numpy only."""
    probs = probs.astype(np.float64)
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.sum() > 0:
            total += in_bin.sum() / len(conf) * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return total


def dirichlet(seed: int, n: int, k: int, alpha: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(k, alpha), size=n), rng.integers(0, k, size=n)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_bins", [1, 7, 15, 40])
@pytest.mark.parametrize("k", [2, 10])
def test_ece_matches_naive_reference(seed, n_bins, k):
    probs, labels = dirichlet(seed, 500, k)
    ece = expected_calibration_error(torch.from_numpy(probs), torch.from_numpy(labels), n_bins)
    assert isinstance(ece, float)
    assert ece == pytest.approx(naive_ece(probs, labels, n_bins), abs=1e-6)


def test_ece_matches_naive_reference_on_float32():
    probs, labels = dirichlet(3, 300, 5)
    probs32 = probs.astype(np.float32)
    ece = expected_calibration_error(torch.from_numpy(probs32), torch.from_numpy(labels), 10)
    assert ece == pytest.approx(naive_ece(probs32, labels, 10), abs=1e-6)


def test_reliability_bins_match_the_ece_and_the_reference():
    probs, labels = dirichlet(4, 400, 3, alpha=1.0)
    bins = reliability_bins(torch.from_numpy(probs), torch.from_numpy(labels), 10)
    assert len(bins["edges"]) == 11 and all(len(bins[k]) == 10 for k in ("confidence", "accuracy", "count"))
    np.testing.assert_allclose(bins["edges"], np.linspace(0, 1, 11), atol=1e-15)
    assert sum(bins["count"]) == 400
    ece = sum(n / 400 * abs(a - c) for n, a, c in zip(bins["count"], bins["accuracy"], bins["confidence"]) if n)
    assert ece == pytest.approx(naive_ece(probs, labels, 10), abs=1e-9)
    conf = probs.max(1)
    for b, (lo, hi) in enumerate(zip(bins["edges"][:-1], bins["edges"][1:])):
        in_bin = (conf > lo) & (conf <= hi)
        assert bins["count"][b] == in_bin.sum()
        if in_bin.any():
            assert lo < bins["confidence"][b] <= hi
            assert bins["confidence"][b] == pytest.approx(conf[in_bin].mean(), abs=1e-12)
        else:
            assert bins["confidence"][b] is None and bins["accuracy"][b] is None


def test_perfectly_calibrated_model_has_small_ece():
    gen = torch.Generator().manual_seed(0)
    probs = torch.distributions.Dirichlet(torch.full((5,), 0.7)).sample((100_000,))
    labels = torch.multinomial(probs, 1, generator=gen).squeeze(1)  # labels drawn from the prediction itself
    assert expected_calibration_error(probs, labels) < 0.02
    # The same probabilities with labels of a different model are far from calibrated.
    assert expected_calibration_error(probs, torch.randint(0, 5, (100_000,), generator=gen)) > 0.2


def test_always_confident_model_right_half_the_time_has_ece_one_half():
    probs = torch.zeros(1000, 3)
    probs[:, 0] = 1.0  # confidence 1.0 on class 0
    labels = torch.tensor([0, 1] * 500)  # right on half
    assert expected_calibration_error(probs, labels) == 0.5
    bins = reliability_bins(probs, labels)
    assert bins["count"][-1] == 1000 and bins["accuracy"][-1] == 0.5 and bins["confidence"][-1] == 1.0


def test_ece_is_invariant_to_permuting_examples():
    probs, labels = dirichlet(5, 1000, 4)
    probs, labels = torch.from_numpy(probs), torch.from_numpy(labels)
    perm = torch.randperm(1000, generator=torch.Generator().manual_seed(5))
    assert expected_calibration_error(probs[perm], labels[perm]) == pytest.approx(
        expected_calibration_error(probs, labels), abs=1e-12
    )


@pytest.mark.parametrize("seed", range(5))
def test_ece_is_in_unit_interval(seed):
    probs, labels = dirichlet(seed, 200, 6, alpha=0.05)  # very confident rows
    for lab in (labels, probs.argmax(1), (probs.argmax(1) + 1) % 6):  # random, always right, always wrong
        ece = expected_calibration_error(torch.from_numpy(probs), torch.from_numpy(lab))
        assert 0.0 <= ece <= 1.0


def test_confidence_one_falls_in_the_last_bin():
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.4]])
    for n_bins in (1, 2, 15):
        bins = reliability_bins(probs, torch.tensor([0, 1, 0]), n_bins)
        assert bins["count"][-1] == 2 + (n_bins <= 2)
        assert sum(bins["count"]) == 3


def test_confidence_rounded_above_one_still_falls_in_the_last_bin():
    # Rows may sum to 1 within 1e-3, so float rounding can push the max probability just past 1.
    probs = torch.tensor([[1.0005, 0.0], [0.0, 1 + 1e-7]], dtype=torch.float64)
    bins = reliability_bins(probs, torch.tensor([0, 0]), 10)
    assert bins["count"] == [0] * 9 + [2]
    assert expected_calibration_error(probs, torch.tensor([0, 0]), 10) == pytest.approx((1.0005 + 1 + 1e-7) / 2 - 0.5)


@pytest.mark.parametrize("k", [2, 3, 4, 5, 10])
def test_uniform_rows_confidence_one_over_k_land_below_their_edge(k):
    # Confidence exactly 1/K; with n_bins = 3K the bin (.., 1/K] is bin 2 (zero-based), never bin 3.
    probs = torch.full((6, k), 1.0, dtype=torch.float64) / k
    labels = torch.tensor([0, 1, 0, 1, 0, 1]) % k
    bins = reliability_bins(probs, labels, 3 * k)
    assert bins["count"][2] == 6 and sum(bins["count"]) == 6
    assert bins["edges"][3] == 1 / k
    # Ties go to the first class, so prediction = 0.
    assert bins["accuracy"][2] == pytest.approx(float((labels == 0).double().mean()))
    assert expected_calibration_error(probs, labels, 3 * k) == pytest.approx(
        abs(float((labels == 0).double().mean()) - 1 / k), abs=1e-12
    )


@pytest.mark.parametrize("n_bins", [1, 3, 15, 100])
def test_bin_counts_sum_to_n(n_bins):
    probs, labels = dirichlet(6, 777, 7, alpha=0.3)
    assert sum(reliability_bins(torch.from_numpy(probs), torch.from_numpy(labels), n_bins)["count"]) == 777


def test_nll_equals_cross_entropy_on_log_probs():
    probs, labels = dirichlet(7, 300, 5, alpha=1.0)
    probs, labels = torch.from_numpy(probs), torch.from_numpy(labels)
    expected = F.cross_entropy(probs.log(), labels).item()
    assert negative_log_likelihood(probs, labels) == pytest.approx(expected, rel=1e-10)
    assert negative_log_likelihood(probs, labels) == pytest.approx(F.nll_loss(probs.log(), labels).item(), rel=1e-10)


def test_nll_clamps_a_zero_probability():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    nll = negative_log_likelihood(probs, torch.tensor([1, 0]), eps=1e-12)
    assert nll == pytest.approx((-np.log(1e-12) - np.log(0.5)) / 2)


def test_brier_score_hand_example():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4]])
    labels = torch.tensor([0, 2])
    # Row 1: 0.3^2 + 0.2^2 + 0.1^2 = 0.14; row 2: 0.1^2 + 0.5^2 + 0.6^2 = 0.62; mean 0.38.
    assert brier_score(probs, labels) == pytest.approx(0.38, abs=1e-7)
    assert brier_score(F.one_hot(labels, 3).float(), labels) == 0.0
    assert brier_score(torch.tensor([[1.0, 0.0]]), torch.tensor([1])) == 2.0


def test_summary_agrees_with_the_single_metrics_and_is_json_ready():
    import json

    probs, labels = dirichlet(8, 250, 4, alpha=1.0)
    probs, labels = torch.from_numpy(probs).float(), torch.from_numpy(labels)
    s = calibration_summary(probs, labels, n_bins=10)
    json.dumps(s)  # only floats, ints, lists, None
    assert s["n"] == 250
    assert s["acc"] == pytest.approx((probs.argmax(1) == labels).float().mean().item())
    assert s["ece"] == expected_calibration_error(probs, labels, 10)
    assert s["nll"] == negative_log_likelihood(probs, labels)
    assert s["brier"] == brier_score(probs, labels)
    assert s["bins"] == reliability_bins(probs, labels, 10)


@pytest.mark.parametrize(
    "probs, labels, match",
    [
        (torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), "softmax probabilities, not logits"),
        (torch.full((4, 3), 2.0), torch.tensor([0, 1, 2, 0]), "rows must sum to 1.*not logits"),
        (torch.full((4, 3), 1 / 3), torch.tensor([0, 1, 3, 0]), r"labels must be in \[0, 3\)"),
        (torch.full((4, 3), 1 / 3), torch.tensor([0, -1, 2, 0]), r"labels must be in \[0, 3\)"),
        (torch.full((4, 3), 1 / 3), torch.tensor([0, 1, 2]), "one label per row.*N=4"),
        (torch.tensor([[0.5, 0.5], [float("nan"), 0.5]]), torch.tensor([0, 1]), "NaN"),
        (torch.tensor([[0.5, 0.5], [float("inf"), 0.5]]), torch.tensor([0, 1]), "inf"),
        (torch.full((4,), 0.25), torch.tensor([0, 1, 2, 0]), r"2-D \(N, K\)"),
        (torch.full((4, 3), 1 / 3), torch.tensor([0.0, 1.0, 2.0, 0.0]), "integer class indices"),
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), "non-empty"),
    ],
)
def test_bad_inputs_raise_data_error(probs, labels, match):
    for fn in (expected_calibration_error, reliability_bins, negative_log_likelihood, brier_score, calibration_summary):
        with pytest.raises(DataError, match=match):
            fn(probs, labels)


def test_softmax_output_passes_validation():
    logits = torch.randn(64, 10) * 5
    labels = torch.randint(0, 10, (64,))
    with pytest.raises(DataError, match="not logits"):
        expected_calibration_error(logits, labels)
    assert 0 <= expected_calibration_error(logits.softmax(1), labels) <= 1


@pytest.mark.parametrize("n_bins", [0, -3, 2.5, True])
def test_bad_n_bins_raise_data_error(n_bins):
    probs, labels = torch.full((2, 2), 0.5), torch.tensor([0, 1])
    for fn in (expected_calibration_error, reliability_bins, calibration_summary):
        with pytest.raises(DataError, match="n_bins must be an integer >= 1"):
            fn(probs, labels, n_bins)


def test_plot_reliability_writes_png_and_no_temp_files(tmp_path):
    probs, labels = dirichlet(9, 500, 10, alpha=0.2)
    probs, labels = torch.from_numpy(probs), torch.from_numpy(labels)
    bins = reliability_bins(probs, labels, 15)
    assert None in bins["accuracy"]  # empty bins must plot too
    curves = {
        "plain": bins,
        "with ece": {**bins, "ece": expected_calibration_error(probs, labels)},
        "summary": calibration_summary(probs, labels, n_bins=5),
    }
    out = plot_reliability(curves, tmp_path / "reliability.png", title="test")
    assert out == tmp_path / "reliability.png"
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["reliability.png"]


def test_plot_reliability_rejects_empty_or_wrong_curves(tmp_path):
    with pytest.raises(DataError, match="at least one curve"):
        plot_reliability({}, tmp_path / "r.png")
    with pytest.raises(DataError, match="curve 'x' lacks"):
        plot_reliability({"x": {"acc": 0.5}}, tmp_path / "r.png")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- edges the mutation run found


def test_the_default_is_fifteen_bins():
    # labels drawn from the probabilities: bins over- and under-confident, so the binning matters
    # (a model wrong in every bin has the same ECE for any number of bins)
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.full(5, 0.3), size=300)
    labels = np.array([rng.choice(5, p=row) for row in probs])
    probs, labels = torch.from_numpy(probs), torch.from_numpy(labels)
    assert expected_calibration_error(probs, labels, 15) != pytest.approx(expected_calibration_error(probs, labels, 16))
    assert len(reliability_bins(probs, labels)["count"]) == 15
    assert expected_calibration_error(probs, labels) == pytest.approx(naive_ece(probs.numpy(), labels.numpy(), 15))
    assert calibration_summary(probs, labels)["bins"] == reliability_bins(probs, labels, 15)


def test_a_bin_holding_one_example_reports_that_example():
    probs = torch.tensor([[0.95, 0.05], [0.65, 0.35], [0.15, 0.85]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1])
    bins = reliability_bins(probs, labels, 10)
    assert bins["count"] == [0, 0, 0, 0, 0, 0, 1, 0, 1, 1]
    assert bins["confidence"][6] == pytest.approx(0.65) and bins["accuracy"][6] == 0.0
    assert bins["confidence"][8] == pytest.approx(0.85) and bins["accuracy"][8] == 1.0
    assert bins["confidence"][9] == pytest.approx(0.95) and bins["accuracy"][9] == 1.0


def test_a_single_class_is_a_valid_if_trivial_input():
    probs, labels = torch.ones(4, 1), torch.zeros(4, dtype=torch.long)
    assert expected_calibration_error(probs, labels) == 0.0 and brier_score(probs, labels) == 0.0


def test_boolean_labels_and_complex_probabilities_are_refused_with_their_reason():
    with pytest.raises(DataError, match="labels must be integer class indices, got dtype torch.bool"):
        expected_calibration_error(torch.full((2, 2), 0.5), torch.tensor([True, False]))
    with pytest.raises(DataError, match="probs must be real softmax probabilities, got dtype torch.complex64"):
        expected_calibration_error(torch.full((2, 2), 0.5, dtype=torch.complex64), torch.tensor([0, 1]))
