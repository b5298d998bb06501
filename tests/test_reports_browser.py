"""Every kind of report.html opened in headless Chromium: it renders, every image loads, no console errors."""

import pytest
from browser import check_page, chromium  # noqa: F401  (fixture)

from trainwell.experiments.compare import Plan, grid
from trainwell.experiments.lab import run_lab
from trainwell.experiments.results import run_plan

FAST = ["model.name=mlp", "model.width=32", "model.depth=1", "train.epochs=2", "data.limit=200"]


def _assert_renders(html, shot, images):
    page = check_page(html, shot)
    assert page.images == images
    assert page.broken_images == []
    assert page.console_errors == []
    assert shot.stat().st_size > 10_000
    return page


@pytest.mark.slow
def test_compare_report_renders_in_a_browser(chromium, tmp_path):  # noqa: F811
    plan = Plan(base=FAST, cells=grid([("model.activation", ["relu", "tanh"])]), seeds=[0, 1])
    run_plan(plan, tmp_path / "c", workers=1, quiet=True)
    page = _assert_renders(tmp_path / "c" / "report.html", tmp_path / "compare.png", 2)
    assert "tanh" in page.text and "baseline" in page.text


@pytest.mark.slow
def test_lab_report_renders_in_a_browser(chromium, tmp_path):  # noqa: F811
    run_lab("activations", out=tmp_path / "lab", quick=True, seeds=[0, 1], workers=1, quiet=True)
    page = _assert_renders(tmp_path / "lab" / "report.html", tmp_path / "lab.png", 3)
    assert "Verdict" in page.text and "sigmoid" in page.text


@pytest.mark.slow
def test_run_report_renders_in_a_browser(chromium, tmp_path):  # noqa: F811
    import trainwell

    run = trainwell.train(FAST + ["doctor=true", "data.limit=300"], out=tmp_path / "r", quiet=True)
    doctor_figures = len(list(run.dir.glob("doctor_*.png")))
    # curves, confusion matrix, reliability diagram and the doctor's figures, all embedded
    page = _assert_renders(run.dir / "report.html", tmp_path / "run.png", 3 + doctor_figures)
    for part in ("Per class", "Confusion matrix", "Calibration", "Doctor", "Parameter groups", "Timings", "Config",
                 "macro mean", "examples per second"):
        assert part in page.text, part
