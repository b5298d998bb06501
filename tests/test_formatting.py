"""trainwell.formatting: a fraction as a percentage, the one missing marker, and the labs' pct(ci) built on it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainwell.experiments.labs.common import pct
from trainwell.experiments.stats import MeanCI
from trainwell.formatting import MISSING, percent


@pytest.mark.parametrize("fraction, text", [
    (0.97412, "97.41%"), (1.0, "100.00%"), (0.0, "0.00%"), (0.00005, "0.01%"), (-0.125, "-12.50%"),
    (np.float32(0.5), "50.00%"), (3, "300.00%"),
])
def test_percent_is_a_hundred_times_with_two_decimals(fraction, text):
    assert percent(fraction) == text


def test_percent_digits():
    assert percent(0.97412, 0) == "97%" and percent(0.97412, 1) == "97.4%" and percent(0.97412, 3) == "97.412%"


@pytest.mark.parametrize("missing", [None, math.nan, math.inf, -math.inf, np.float64("nan")])
def test_no_finite_value_is_the_missing_marker(missing):
    assert percent(missing) == MISSING == "–"


def test_pct_of_a_ci_is_percent_of_its_mean_and_the_half_width_in_points():
    assert pct(MeanCI(0.9741, 0.9679, 0.9803, 0.01, 5)) == "97.41% ± 0.62"  # half-width (high - low) / 2
    assert pct(MeanCI(0.5, math.nan, math.nan, math.nan, 1))  # one seed: no interval == "50.00%"
    assert pct(MeanCI(math.nan, math.nan, math.nan, math.nan, 0)) == MISSING
