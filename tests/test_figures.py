"""The rules every figure of the package follows (issue 13 item 7), checked on the drawn figures themselves:
legends outside the data, a log axis for a loss that spans decades, lines that stay distinguishable when
they lie on top of each other, layers named on the doctor's axes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure

from trainwell.diagnose.plots import fractions_figure
from trainwell.experiments.compare import Cell
from trainwell.experiments.results import CellResult
from trainwell.experiments.stats import mean_ci, paired_test
from trainwell.diagnose.report import LayerStats, Report
from trainwell.train.plots import curves_figure, line_style, plt, spans_decades


def overlaps(a: Any, b: Any) -> bool:
    """Whether two display-space boxes share area (touching edges do not count)."""
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def legends_clear_of_every_axes(fig: Figure) -> bool:
    """Every legend of the figure (figure-level or on an axes) lies outside every axes' data area."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert legends, "the figure has no legend to check"
    return not any(overlaps(leg.get_window_extent(renderer), ax.get_window_extent(renderer))
                   for leg in legends for ax in fig.axes)


def history(losses: list[float]) -> list[dict[str, float]]:
    return [{"epoch": e + 1, "train_loss": v, "val_loss": v * 1.2, "train_acc": 0.5, "val_acc": 0.5}
            for e, v in enumerate(losses)]


@pytest.fixture
def close_figures():
    yield
    plt.close("all")


def test_spans_decades_compares_log10_of_the_positive_finite_range():
    assert spans_decades([1.0, 10.0 * (1 + 1e-9)]) and not spans_decades([1.0, 10.0])
    assert not spans_decades([0.5, 0.0, -3.0, math.nan, math.inf, 4.9])  # only 0.5..4.9 count: < 1 decade
    assert spans_decades([2.3, 0.01, math.nan]) and not spans_decades([7.0])
    assert not spans_decades([1.0, 99.0], decades=2) and spans_decades([1.0, 101.0], decades=2)


def test_a_loss_falling_by_decades_is_drawn_on_a_log_axis_and_a_flat_one_is_not(close_figures):
    falling = curves_figure(history([2.3 * 0.5 ** e for e in range(12)]))  # 2.3 .. 1.1e-3 (x1.2 for val)
    assert falling.axes[0].get_yscale() == "log" and "log" in falling.axes[0].get_ylabel()
    flat = curves_figure(history([0.9, 0.7, 0.5, 0.45]))
    assert flat.axes[0].get_yscale() == "linear" and "log" not in flat.axes[0].get_ylabel()
    assert all(ax.get_yscale() == "linear" for ax in (falling.axes[1], flat.axes[1]))  # accuracy stays linear


def test_run_curves_keep_their_legend_outside_the_data(close_figures):
    fig = curves_figure(history([2.3 * 0.5 ** e for e in range(12)]), title="t")
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["train", "val"]
    assert all(ax.get_legend() is None for ax in fig.axes)
    assert legends_clear_of_every_axes(fig)


def test_line_styles_differ_for_every_pair_of_the_first_dozen_lines():
    styles = [(s["ls"], s["marker"]) for s in map(line_style, range(12))]
    assert len(set(styles)) == 12
    assert all(s["mfc"] == "none" for s in map(line_style, range(12)))  # hollow: a marker under another shows


def _layer_reports(dead: list[list[float]]) -> list[Report]:
    """One report per epoch; ``dead[epoch][k]``: the dead fraction of activation layer k."""
    return [Report(layers=[LayerStats(name=f"net.{3 * k + 2}", kind="activation", op="ReLU", depth=k + 1,
                                      dead_fraction=f, saturated_fraction=0.0) for k, f in enumerate(epoch)])
            for epoch in dead]


def test_the_doctors_fractions_name_every_layer_and_keep_identical_lines_apart(close_figures):
    reports = _layer_reports([[0.0] * 7, [0.0] * 6 + [0.3], [0.0] * 6 + [0.5]])  # six layers on top of each other
    fig = fractions_figure(reports)
    names = [f"net.{3 * k + 2}" for k in range(7)]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == names
    for ax in fig.axes:
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == names
        assert len({(line.get_linestyle(), line.get_marker()) for line in lines}) == len(lines)
    dead, saturated = fig.axes[:2]
    assert list(dead.get_lines()[-1].get_ydata()) == [0.0, 30.0, 50.0]  # in percent
    assert all(list(line.get_ydata()) == [0.0] * 3 for line in saturated.get_lines())
    assert legends_clear_of_every_axes(fig)


def _cell(index: int, label: str, values: dict[int, float], baseline: dict[int, float] | None,
          diverged: list[int] | None = None) -> CellResult:
    band = {"mean": [2.0, 0.2, 0.02], "low": [1.5, 0.1, 0.01], "high": [2.5, 0.3, 0.03]}
    return CellResult(index, Cell(label, {}), values, mean_ci(list(values.values())),
                      None if baseline is None else paired_test(values, baseline),
                      curves={"train_loss": band, "val_acc": {"mean": [0.5, 0.9, 0.95], "low": [0.4, 0.8, 0.9],
                                                              "high": [0.6, 1.0, 1.0]}},
                      diverged=diverged or [])


def test_compare_figures_keep_their_legends_outside_the_data(monkeypatch, tmp_path: Path, close_figures):
    from trainwell.experiments import plots

    drawn: list[Figure] = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: drawn.append(fig) or path)
    base = {0: 0.90, 1: 0.91, 2: 0.92}
    cells = [_cell(0, "a", base, None), _cell(1, "b", {0: 0.97, 1: 0.99, 2: 0.999}, base),
             _cell(2, "c", {0: 0.5, 1: 0.9}, base, diverged=[2])]
    plots.plot_cell_intervals(cells, "test_acc", tmp_path / "i.png")
    every_seed_diverged = _cell(3, "d", {}, base, diverged=[0, 1, 2])
    plots.plot_cell_intervals([cells[0], every_seed_diverged], "test_acc", tmp_path / "j.png")
    labels = [t.get_text() for t in drawn.pop().legends[0].get_texts()]
    assert labels == ["baseline", "diverged seed (left out of the mean)"]  # no colour that no dot has
    plots.plot_cell_curves(cells, [("train_loss", "loss", 1.0, True), ("val_acc", "acc", 100.0, False)],
                           tmp_path / "c.png")
    intervals, curves = drawn
    assert [t.get_text() for t in intervals.legends[0].get_texts()] == \
        ["baseline", "significantly better", "has diverged seeds (never called better)",
         "diverged seed (left out of the mean)"]
    assert legends_clear_of_every_axes(intervals) and legends_clear_of_every_axes(curves)
    assert curves.axes[0].get_yscale() == "log"
    lines = curves.axes[0].get_lines()
    assert len({(line.get_linestyle(), line.get_marker()) for line in lines}) == len(lines) == 3


def test_bench_run_curves_draws_the_runs_it_is_given(tmp_path: Path):
    """bench/run_curves.py (docs/presets.md's recurrent figure) reads each folder's metrics.jsonl; a bad
    argument is one usage line."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    runs = []
    for k in range(2):
        folder = tmp_path / f"r{k}"
        folder.mkdir()
        rows = [{"epoch": e + 1, "train_loss": 2.3 * 0.5 ** (e + k), "val_acc": 0.1 + 0.02 * e} for e in range(8)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        runs.append(f"run {k}={folder}")
    out = tmp_path / "f.png"
    proc = subprocess.run([sys.executable, str(root / "bench" / "run_curves.py"), "--out", str(out), *runs],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run([sys.executable, str(root / "bench" / "run_curves.py"), "--out", str(out), "no-label"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "is not LABEL=RUN_DIR" in bad.stderr


def test_dodge_spreads_series_evenly_and_symmetrically_within_the_width():
    from trainwell.train.plots import dodge

    assert dodge(0, 1) == 0.0
    for n in (2, 3, 6):
        offsets = [dodge(i, n, width=0.3) for i in range(n)]
        assert offsets == sorted(offsets) and len(set(offsets)) == n  # distinct, in order
        assert offsets[0] == pytest.approx(-0.15) and offsets[-1] == pytest.approx(0.15)
        gaps = [b - a for a, b in zip(offsets, offsets[1:])]
        assert gaps == pytest.approx([0.3 / (n - 1)] * (n - 1))  # even spacing
