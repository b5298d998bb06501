"""experiments.stats: confidence intervals, paired tests, Holm, curve bands (vs scipy and by properties)."""

import math

import numpy as np
import pytest
from scipy import stats as st

from trainwell.experiments.results import holm
from trainwell.experiments.stats import curve_band, first_reaching, mean_ci, paired_test


@pytest.mark.parametrize("n", [2, 3, 5, 20])
def test_mean_ci_matches_scipy_t_interval(n):
    x = np.random.default_rng(n).normal(0.9, 0.02, n)
    ci = mean_ci(x.tolist())
    low, high = st.t.interval(0.95, n - 1, loc=x.mean(), scale=st.sem(x))
    assert ci.mean == pytest.approx(x.mean())
    assert (ci.low, ci.high) == (pytest.approx(low), pytest.approx(high))
    assert ci.std == pytest.approx(x.std(ddof=1)) and ci.n == n


def test_mean_ci_covers_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    trials = 4000
    hits = sum(ci.low <= 1.0 <= ci.high for ci in (mean_ci(rng.normal(1.0, 3.0, 4).tolist()) for _ in range(trials)))
    # Binomial(4000, 0.95): sd 0.34%; +-1.2% is > 3 sd.
    assert 0.938 < hits / trials < 0.962


def test_mean_ci_edge_cases():
    one = mean_ci([0.5])
    assert (one.mean, one.low, one.high, one.n) == (0.5, 0.5, 0.5, 1) and math.isnan(one.std)
    none = mean_ci([])
    assert none.n == 0 and math.isnan(none.mean)
    assert mean_ci([1.0, float("nan"), None, 3.0]).mean == 2.0  # non-finite values are left out


def test_paired_test_matches_scipy_ttest_rel_and_pairs_by_seed():
    rng = np.random.default_rng(1)
    base = rng.normal(0.9, 0.02, 6)
    cell = base + rng.normal(0.01, 0.005, 6)
    t = paired_test(dict(enumerate(cell)), dict(enumerate(base)))
    assert t.p == pytest.approx(st.ttest_rel(cell, base).pvalue)
    assert t.diff.mean == pytest.approx((cell - base).mean()) and t.n == 6
    # Seeds missing on one side are not paired; order of the dicts does not matter.
    shuffled = {s: cell[s] for s in [5, 3, 1, 0, 2, 4, 9] if s < 6} | {9: 0.0}
    t2 = paired_test(shuffled, {s: base[s] for s in range(6)} | {7: 1.0})
    assert t2.p == pytest.approx(t.p) and t2.n == 6


def test_paired_test_significance_and_degenerate_cases():
    base = {0: 0.90, 1: 0.80, 2: 0.85, 3: 0.95}
    assert paired_test({s: v + 0.05 + 0.001 * s for s, v in base.items()}, base).significant
    noise = {0: 0.91, 1: 0.79, 2: 0.86, 3: 0.94}
    assert not paired_test(noise, base).significant
    constant = paired_test({s: v + 0.01 for s, v in base.items()}, base)
    assert constant.p == 0.0 and constant.significant
    same = paired_test(dict(base), base)
    assert same.p == 1.0 and not same.significant
    single = paired_test({0: 1.0}, {0: 0.5})
    assert math.isnan(single.p) and not single.significant and single.n == 1


def test_holm_adjustment_by_hand():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = holm([float("nan"), 0.02, 0.5])
    assert math.isnan(out[0]) and out[1:] == pytest.approx([0.04, 0.5])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_curve_band_is_ragged_safe_and_first_reaching():
    band = curve_band([[1.0, 2.0, 3.0], [3.0, 4.0]])
    assert band["mean"] == pytest.approx([2.0, 3.0, 3.0])
    assert band["low"][2] == band["high"][2] == 3.0  # one curve left: no spread
    assert band["low"][0] < 2.0 < band["high"][0]
    assert first_reaching([0.2, 0.5, 0.9, 0.95], 0.9) == 3
    assert first_reaching([0.2, float("nan"), 0.5], 0.9) is None
    assert first_reaching([], 0.5) is None


def test_a_log_band_is_the_geometric_mean_with_a_t_interval_of_the_logs():
    # Losses over seeds spread over a decade: a raw CI of [0.01, 1.0, 0.05] reaches below 0, which a
    # log axis draws as a block from the floor. In log space the band stays > 0.
    column = [0.01, 1.0, 0.05]
    raw = curve_band([[v] for v in column])
    assert raw["low"][0] < 0
    band = curve_band([[v, w] for v, w in zip(column, (0.5, 0.4, 0.0))], log=True)
    logs = np.log(column)
    low, high = st.t.interval(0.95, 2, loc=logs.mean(), scale=st.sem(logs))
    assert band["mean"][0] == pytest.approx(st.gmean(column))
    assert (band["low"][0], band["high"][0]) == (pytest.approx(np.exp(low)), pytest.approx(np.exp(high)))
    assert band["mean"][1] == pytest.approx(st.gmean([0.5, 0.4]))  # a loss of 0 has no logarithm: left out
    assert all(v > 0 for v in band["low"])


# ----------------------------------------------------------------------------- levels, edges, serialised forms


def test_the_confidence_level_reaches_every_interval():
    x = [0.81, 0.84, 0.80, 0.86, 0.83]
    low, high = st.t.interval(0.8, 4, loc=np.mean(x), scale=st.sem(x))
    ci = mean_ci(x, 0.8)
    assert (ci.low, ci.high, ci.level) == (pytest.approx(low), pytest.approx(high), 0.8)
    assert mean_ci([], 0.8).level == mean_ci([0.5], 0.8).level == 0.8
    assert mean_ci(x).level == 0.95
    base = {0: 0.5, 1: 0.6, 2: 0.55}
    cell = {0: 0.52, 1: 0.63, 2: 0.56}
    diffs = [cell[s] - base[s] for s in base]
    assert paired_test(cell, base).diff.level == 0.95
    t = paired_test(cell, base, level=0.8)
    assert (t.diff.low, t.diff.high) == (pytest.approx(mean_ci(diffs, 0.8).low), pytest.approx(mean_ci(diffs, 0.8).high))
    band = curve_band([[0.1, 0.2], [0.3, 0.5], [0.2, 0.2]], 0.8)
    assert band["low"] == pytest.approx([mean_ci([0.1, 0.3, 0.2], 0.8).low, mean_ci([0.2, 0.5, 0.2], 0.8).low])


def test_no_values_give_nan_everywhere_and_no_curves_an_empty_band():
    none = mean_ci([])
    assert all(math.isnan(v) for v in (none.mean, none.low, none.high, none.std))
    assert curve_band([]) == {"mean": [], "low": [], "high": []}


def test_two_pairs_are_enough_for_a_p_value_and_one_pair_is_never_significant():
    two = paired_test({0: 0.6, 1: 0.9}, {0: 0.5, 1: 0.6})
    assert two.p == pytest.approx(st.ttest_rel([0.6, 0.9], [0.5, 0.6]).pvalue) and two.n == 2
    one = paired_test({0: 1.0}, {0: 0.5})
    assert one.significant is False and one.diff.n == 1 and one.diff.mean == 0.5


def test_only_seeds_finite_on_both_sides_are_paired():
    base = {0: 0.5, 1: 0.6, 2: 0.55, 3: 0.7, 4: 0.4}
    cell = {0: 0.52, 1: None, 2: 0.56, 3: float("nan"), 4: 0.45}
    t = paired_test(cell, base)
    kept = [0, 2, 4]
    assert t.n == 3 and t.p == pytest.approx(st.ttest_rel([cell[s] for s in kept], [base[s] for s in kept]).pvalue)
    assert paired_test(base, cell).n == 3


def test_nearly_constant_differences_are_tested_not_called_constant():
    # only differences within 1e-12 of each other (absolute) count as constant; these are not
    for diffs in ([1.0, 1.0 + 5e-7, 1.0 - 5e-7], [1e-10, 2e-10, 3e-10], [0.0, 1e-12, 2e-12]):
        t = paired_test(dict(enumerate(diffs)), dict.fromkeys(range(3), 0.0))
        assert t.p == pytest.approx(st.ttest_1samp(diffs, 0.0).pvalue) and 0 < t.p < 1


def test_results_serialise_with_their_field_names():
    ci = mean_ci([0.5, 0.7])
    assert ci.to_dict() == {"mean": ci.mean, "low": ci.low, "high": ci.high, "std": ci.std, "n": 2, "level": 0.95}
    t = paired_test({0: 0.6, 1: 0.9, 2: 0.8}, {0: 0.5, 1: 0.6, 2: 0.7})
    assert t.to_dict() == {"diff": t.diff.to_dict(), "p": t.p, "n": 3, "significant": t.significant}


def test_float32_values_are_summarised_in_float64():
    x = np.random.default_rng(3).normal(0.9, 0.02, 50).astype(np.float32)
    ci = mean_ci(list(x))  # numpy float32 scalars, e.g. from an array's elements
    exact = x.astype(np.float64)
    assert ci.mean == pytest.approx(exact.mean(), rel=1e-13, abs=0)
    assert ci.std == pytest.approx(exact.std(ddof=1), rel=1e-11, abs=0)
