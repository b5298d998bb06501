"""doctor --fix, proven by training: each planted fault trains badly, and the --apply'd config trains well.

The cases live in trainwell.diagnose.fixsuite (the ``fix_suite_results`` fixture trains them once per
process, ~12 s: 8 faults x faulty and fixed + 3 healthy configs, 3 seeds, 3 epochs of a width-64 MLP);
docs/doctor.md shows the same figures (tests/test_doctor_faults.py checks the page).
"""

from __future__ import annotations

import pytest

from trainwell.diagnose.fixsuite import CASES, FAULT_MARGIN, FIX_TOLERANCE, SEEDS

REQUIRED = {"lr-too-high", "dead-relu-bias", "saturating-sigmoid", "raw-x255-input", "vanishing-deep"}


def figures(r) -> str:
    return (f"{r.case.name}: faulty {r.faulty} fixed {r.fixed} healthy {r.healthy}; "
            f"{r.outcome.line()}")


def by_name(results, name):
    return next(r for r in results if r.case.name == name)


def test_the_suite_plants_the_required_faults_over_three_seeds():
    assert REQUIRED <= {c.name for c in CASES} and len({c.name for c in CASES}) == len(CASES)
    assert len(SEEDS) >= 3
    assert FAULT_MARGIN >= 0.05 and FIX_TOLERANCE <= 0.05  # a real fault; "within a few points"


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_the_fault_trains_badly_and_the_fixed_config_trains_within_a_few_points(name, fix_suite_results):
    r = by_name(fix_suite_results, name)
    assert len(r.faulty) == len(r.fixed) == len(r.healthy) == len(SEEDS)
    assert r.outcome.clean, figures(r)
    assert r.faulty_mean < r.healthy_mean - FAULT_MARGIN, "the planted fault does not hurt: " + figures(r)
    assert r.fixed_mean >= r.healthy_mean - FIX_TOLERANCE, "the fix does not train: " + figures(r)
    assert r.ok


def test_each_fix_answers_its_cause(fix_suite_results):
    changes = {r.case.name: r.outcome.changes() for r in fix_suite_results}
    assert changes["dead-relu-bias"] == {"init.bias": 0.0}  # the bias, not the activation
    assert changes["saturating-tanh"] == {"init.scheme": "xavier_normal"}  # tanh kept, its init matched
    assert changes["saturating-sigmoid"] == {"model.activation": "relu", "init.scheme": "kaiming_normal"}
    assert changes["raw-x255-input"] == {"data.preprocess": "standardize"}
    assert changes["vanishing-deep"] == {"init.scheme": "kaiming_normal"}
    # The lr from the measured ratio lands in the band in one round (a fixed 10x needs two: 5 -> 0.5 -> 0.05).
    high = by_name(fix_suite_results, "lr-too-high").outcome
    assert set(changes["lr-too-high"]) == {"optim.lr"} and len(high.rounds) == 1


def test_two_faults_take_two_rounds_input_first_then_the_lr_measured_again(fix_suite_results):
    r = by_name(fix_suite_results, "raw-input-and-lr-too-high")
    assert [[c.key for c in rnd.changes] for rnd in r.outcome.rounds] == [["data.preprocess"], ["optim.lr"]]
    # Measured on the raw input, the update ratio would have asked for another lr.
    first = r.outcome.rounds[0].before.findings
    assert "update-ratio-high" in [f.code for f in first]
