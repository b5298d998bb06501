"""The lab framework: registry, run_lab's outputs, the CLI, and the docs generator."""

import json

import pytest

from trainwell.cli import main
from trainwell.experiments.lab import LABS, get_lab, lab_plan, run_lab
from trainwell.docs.markdown import markdown_table
from labverdicts import assert_consistent

EXPECTED = {"activations", "batchnorm", "init", "dropout", "mixup", "preprocessing", "regularization",
            "dying_relu", "selu", "orthogonal", "augmentation", "ensembles", "transfer", "schedules"}


def test_every_lecture_lab_is_registered_with_a_claim_and_a_quick_mode():
    get_lab("activations")  # imports the labs package
    assert set(LABS.names()) == EXPECTED
    for name in EXPECTED:
        lab = get_lab(name)
        assert lab.claim.endswith(".") and len(lab.question) > 10
        assert (len(lab.cells) >= 2 or lab.seeds >= 4) and lab.seeds >= 3 and lab.quick  # one cell: seeds compared
        assert any(o.startswith(("data.name=", "preset=")) for o in lab.base)  # real data by default
        assert len({c.label for c in lab.cells}) == len(lab.cells)


def test_user_overrides_come_after_the_lab_defaults():
    plan = lab_plan(get_lab("activations"), ["data.name=mnist1d", "train.epochs=3"], seeds=[4, 5])
    assert plan.base[-2:] == ["data.name=mnist1d", "train.epochs=3"] and plan.seeds == [4, 5]
    assert "data.name=digits" in plan.base  # the default is still there, and loses


@pytest.mark.slow
def test_run_lab_writes_summary_and_report(tmp_path):
    outcome = run_lab("activations", out=tmp_path / "lab", quick=True, seeds=[0, 1], workers=1, quiet=True)
    summary = json.loads((tmp_path / "lab" / "summary.json").read_text())
    assert summary["lab"] == "activations" and isinstance(summary["held"], bool)
    assert_consistent("activations", summary)  # held follows from the stated statistics
    assert summary["held"] == outcome.held and summary["verdict"] == outcome.verdict
    assert set(summary["evidence"]) >= {"relu", "sigmoid", "ranking"} and summary["runs"] == 12
    html = (tmp_path / "lab" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # the lab's figure, bars and curves
    assert ("did not hold" in html) == (not outcome.held)
    assert (tmp_path / "lab" / "compare" / "summary.json").is_file()


def test_cli_lab_list_and_errors(capsys):
    assert main(["lab", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in EXPECTED)
    assert main(["lab", "activatons"]) == 2
    assert "did you mean 'activations'" in capsys.readouterr().err.lower()
    assert main(["lab", "activations", "model.depht=3"]) == 2
    assert "model.depth" in capsys.readouterr().err


def test_markdown_table_escapes_pipes():
    text = markdown_table(["a", "b"], [["x|y", 1.5]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | 1.5 |"]


@pytest.mark.slow
def test_labdocs_writes_the_page_from_the_labs_outcomes(tmp_path):
    from trainwell.docs.__main__ import main as docs

    assert docs(["labs", "--labs", "activations", "--quick", "--workers", "1", "--runs", str(tmp_path / "runs"),
                 "--out", str(tmp_path / "docs")]) == 0
    page = (tmp_path / "docs" / "labs.md").read_text()
    summary = json.loads((tmp_path / "runs" / "activations" / "summary.json").read_text())
    assert summary["verdict"] in page and ("Verdict: held." in page) == summary["held"]
    for image in ("activations-gradients_by_layer.png", "activations-intervals.png"):
        assert (tmp_path / "docs" / "labs" / image).stat().st_size > 0 and f"labs/{image}" in page


def test_the_labs_shared_number_words():
    from trainwell.experiments.labs.common import finite, held_word, points

    assert [finite(v) for v in (0.0, -2.5, None, float("nan"), float("inf"))] == [True, True, False, False, False]
    assert points(0.402) == "+40.2 points" and points(-0.0057) == "-0.6 points" and points(None) == "–"
    assert held_word(True) == "held" and held_word(False) == "did NOT hold"
