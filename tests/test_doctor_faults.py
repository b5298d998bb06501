"""Planted faults must be flagged with the right code, healthy nets with nothing; docs/doctor.md holds the score.

The cases live in trainwell.diagnose.suite; trainwell.docs.doctor renders the page (``python -m trainwell.docs
doctor`` regenerates it).
"""

from __future__ import annotations

import pytest

from trainwell.diagnose.suite import CASES, run_case, score
from trainwell.docs.doctor import render_doctor

_RESULTS: dict = {}


def result(name: str):
    """Each case runs once per test process, whichever test asks first."""
    if name not in _RESULTS:
        _RESULTS[name] = run_case(next(c for c in CASES if c.name == name))
    return _RESULTS[name]


def test_the_suite_has_at_least_12_faults_6_healthy_nets_and_covers_every_code():
    from trainwell.diagnose import RULES

    faults = [c for c in CASES if not c.healthy]
    assert len(faults) >= 12 and len(CASES) - len(faults) >= 6
    assert set(RULES.names()) <= set().union(*(c.expects for c in faults))
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name", [c.name for c in CASES if not c.healthy])
def test_planted_fault_is_flagged_with_the_right_code(name):
    r = result(name)
    assert not r.missed, f"{name}: expected {sorted(r.case.expects)}, flagged {r.flagged}"
    assert not r.unexpected, f"{name}: false alarms {sorted(r.unexpected)} (flagged {r.flagged})"


@pytest.mark.parametrize("name", [c.name for c in CASES if c.healthy])
def test_healthy_net_gets_no_warning_or_error(name):
    r = result(name)
    details = [(f.code, f.message) for f in r.report.findings if f.severity != "info"]
    assert not r.flagged, f"{name}: {details}"


def test_docs_doctor_md_is_up_to_date(repo_docs, fix_suite_results):
    results = [result(c.name) for c in CASES]
    s = score(results)
    assert s.recall == 1.0 and s.precision == 1.0 and s.healthy_clean == s.healthy
    assert (repo_docs / "doctor.md").read_text() == render_doctor(results, fix_suite_results), \
        "docs/doctor.md is stale: run python -m trainwell.docs doctor"
