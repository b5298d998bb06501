"""trainwell lab all: every lab into one folder, one lecture report, the review questions answered from the verdicts."""

import json
from pathlib import Path

import pytest

from browser import check_page, chromium  # noqa: F401  (fixture)

from trainwell.cli import main
from trainwell.experiments.lab import LabOutcome, get_lab
from trainwell.experiments.lecture import REVIEW_QUESTIONS, LectureEntry, lab_names, review_answers, run_lecture


def entry(name, held=None, error=""):
    lab = get_lab(name)
    outcome = None if held is None else LabOutcome(held, f"{name} verdict with 1.23 measured.", {})
    return LectureEntry(name, lab.claim, lab.question, Path(name), outcome, error)


def test_the_five_review_questions_are_the_labs_q1_to_q5_in_order():
    questions = [get_lab(q.labs[0]).question for q in REVIEW_QUESTIONS]
    assert [q.split(":")[0] for q in questions] == ["Q1", "Q2", "Q3", "Q4", "Q5"]
    numbered = sorted(get_lab(n).question for n in lab_names() if get_lab(n).question.startswith("Q"))
    assert sorted(questions) == numbered  # every lab that asks a numbered question is asked here


def test_review_answers_quote_the_measured_verdicts_and_say_what_was_not_run():
    answers = review_answers([entry("activations", held=True), entry("batchnorm", held=False),
                              entry("init", error="data.name=x: unknown")])
    by_q = {a["question"].split(":")[0]: a for a in answers}
    assert by_q["Q1"]["answer"] == "lab activations (held): activations verdict with 1.23 measured."
    assert by_q["Q1"]["labs"] == ["activations"]  # labs not in this lecture are not named
    assert by_q["Q2"]["answer"] == "lab batchnorm (did not hold): batchnorm verdict with 1.23 measured."
    assert by_q["Q3"]["answer"] == "lab init: not run (data.name=x: unknown)"
    assert by_q["Q4"]["answer"] == by_q["Q5"]["answer"] == "No lab here measures it yet."


@pytest.mark.slow
def test_lab_all_writes_each_lab_and_one_lecture_report(chromium, tmp_path):  # noqa: F811
    out = tmp_path / "lecture"
    entries = run_lecture(["activations", "dropout"], out=out, quick=True, seeds=[0, 1], workers=1, quiet=True)
    summary = json.loads((out / "summary.json").read_text())
    assert [lab["lab"] for lab in summary["labs"]] == ["activations", "dropout"]
    for lab, e in zip(summary["labs"], entries):
        own = json.loads((out / e.name / "summary.json").read_text())
        assert lab["held"] == own["held"] == e.outcome.held and lab["verdict"] == own["verdict"]
        assert "The verdict rests on" in own["verdict"]  # every verdict says how many runs it rests on
    assert summary["held"] == sum(e.outcome.held for e in entries) and summary["ran"] == 2
    q1 = next(a for a in summary["review"] if a["question"].startswith("Q1"))
    assert entries[0].outcome.verdict in q1["answer"]
    html = (out / "report.html").read_text()
    assert entries[1].outcome.verdict.split(".")[0] in html and "Review questions" in html
    page = check_page(out / "report.html", tmp_path / "lecture.png", chromium)
    assert page.broken_images == [] and page.console_errors == [] and page.images >= 4
    assert "Q1" in page.text and "lab dropout" in page.text
    again = run_lecture(["activations", "dropout"], out=out, quick=True, seeds=[0, 1], workers=1, quiet=True)
    assert [e.outcome.verdict for e in again] == [e.outcome.verdict for e in entries]  # resumed: runs kept


def test_lab_all_refuses_a_mistyped_key_before_running_anything(tmp_path, capsys):
    assert main(["lab", "all", "model.depht=3", "--out", str(tmp_path / "l")]) == 2
    assert "model.depth" in capsys.readouterr().err
    assert not (tmp_path / "l").exists()
