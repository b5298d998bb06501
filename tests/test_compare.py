"""trainwell compare: grids, seeds, aggregation against the runs' own summaries, resume, errors."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from trainwell.errors import ConfigError, RunDirError
from trainwell.experiments.compare import Cell, Plan, grid, jobs, parse_vary
from trainwell.experiments.results import aggregate, cell_status, run_plan, write_outputs
from trainwell.experiments.stats import MeanCI, PairedTest

FAST = ["model.name=mlp", "model.width=32", "model.depth=1", "train.epochs=2", "data.limit=200"]


def small_plan(**kw):
    return Plan(base=list(FAST), cells=grid([("model.activation", ["relu", "tanh"])]), seeds=[0, 1], **kw)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "out"
    return out, run_plan(small_plan(), out, workers=1, quiet=True)


def test_parse_vary():
    assert parse_vary("model.activation=relu,tanh") == ("model.activation", ["relu", "tanh"])
    assert parse_vary("model.channels=[16,32],[32,64]") == ("model.channels", ["[16,32]", "[32,64]"])
    assert parse_vary(" optim.lr = 0.1 ") == ("optim.lr", ["0.1"])
    for bad in ("model.activation", "=relu", "model.activation=", "a=x,,y", "a=[1,2", "a=x,x"):
        with pytest.raises(ConfigError):
            parse_vary(bad)


def test_grid_is_the_cartesian_product_with_the_baseline_first(tmp_path):
    cells = grid([("optim.lr", ["0.1", "0.01"]), ("model.norm", ["none", "batch"])])
    assert [c.overrides for c in cells] == [
        {"optim.lr": "0.1", "model.norm": "none"}, {"optim.lr": "0.1", "model.norm": "batch"},
        {"optim.lr": "0.01", "model.norm": "none"}, {"optim.lr": "0.01", "model.norm": "batch"}]
    assert cells[0].label == "optim.lr=0.1, model.norm=none"
    with pytest.raises(ConfigError, match="twice"):
        grid([("optim.lr", ["1"]), ("optim.lr", ["2"])])
    plan = Plan(cells=cells, seeds=[3, 4])
    js = jobs(plan, tmp_path)
    assert [(j.seed, j.cell) for j in js[:5]] == [(3, 0), (3, 1), (3, 2), (3, 3), (4, 0)]  # seed-major
    assert len({j.run_dir for j in js}) == 8 and "train.seed=4" in js[-1].overrides
    assert Cell("x", {"model.channels": [16, 32], "train.tensorboard": True}).args() == \
        ["model.channels=[16,32]", "train.tensorboard=true"]


def test_aggregates_exactly_what_the_runs_wrote(finished):
    out, result = finished
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"]["finished"] == 4 and summary["runs"]["ran"] == 4
    for c, row in zip(result.cells, summary["cells"]):
        per_run = [json.loads((out / "runs" / d / f"seed-{s}" / "summary.json").read_text())["test_acc"]
                   for d in [p.name for p in sorted((out / "runs").iterdir())][c.index:c.index + 1] for s in (0, 1)]
        assert [row["values"][str(s)] for s in (0, 1)] == per_run
        assert row["mean"] == pytest.approx(np.mean(per_run))
        # the runs ran the cell's setting
        cfg = (out / "runs" / sorted((out / "runs").iterdir())[c.index].name / "seed-1" / "config.yaml").read_text()
        assert f"activation: {c.cell.overrides['model.activation']}" in cfg and "seed: 1" in cfg
    tanh = summary["cells"][1]
    diffs = [tanh["values"][s] - summary["cells"][0]["values"][s] for s in ("0", "1")]
    assert tanh["diff"] == pytest.approx(np.mean(diffs))
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["model.activation"] for r in rows] == ["relu", "tanh"]
    assert float(rows[1]["mean"]) == pytest.approx(tanh["mean"])
    for name in ("curves.png", "intervals.png", "report.html", "compare.json"):
        assert (out / name).stat().st_size > 0
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "tanh" in html and "model.activation" in html


def test_curves_are_the_per_epoch_mean_of_the_runs(finished):
    out, result = finished
    relu = result.cells[0]
    epoch2 = [h[1]["val_acc"] for h in relu.histories.values()]
    assert relu.curves["val_acc"]["mean"][1] == pytest.approx(np.mean(epoch2))


def _diverge(out, cell_index, seed):
    """Rewrite one finished run's summary as the trainer writes a diverged one (weights broken, chance accuracy)."""
    path = sorted((out / "runs").iterdir())[cell_index] / f"seed-{seed}" / "summary.json"
    summary = json.loads(path.read_text())
    path.write_text(json.dumps({**summary, "diverged": True, "test_acc": 0.1, "stop_reason": "diverged"}))


def test_a_diverged_run_is_counted_shown_and_never_averaged(finished, tmp_path):
    import shutil

    src, first = finished
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    _diverge(out, 1, 0)
    result = aggregate(small_plan(), out)
    tanh = result.cells[1]
    assert tanh.diverged == [0] and list(tanh.values) == [1]
    assert tanh.ci.n == 1 and tanh.ci.mean == first.cells[1].values[1]  # the other seed alone
    assert tanh.test.n == 1  # paired only where both counted
    assert list(tanh.values_of("test_acc")) == [1] and list(tanh.curve_of("val_acc")) == [1]
    assert tanh.curves["val_acc"]["mean"] == pytest.approx([r["val_acc"] for r in tanh.histories[1]])
    assert tanh.left_out == "1 diverged (seed 0)"
    data = write_outputs(result)
    row = data["cells"][1]
    assert (row["diverged"], row["n"], data["runs"]["diverged"], data["runs"]["counted"]) == ([0], 1, 1, 3)
    html = (out / "report.html").read_text()
    assert "rests on 3 of 4 runs; left out of every mean, interval and test: " \
           "model.activation=tanh: 1 diverged (seed 0)" in html
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert (rows[0]["diverged"], rows[1]["diverged"]) == ("", "0")


def test_a_metric_that_is_not_a_number_counts_as_diverged(finished, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(finished[0], out)
    path = sorted((out / "runs").iterdir())[0] / "seed-1" / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "test_acc": None}))
    assert aggregate(small_plan(), out).cells[0].diverged == [1]


def _cell_with(diff: float, p: float, diverged: list[int]):
    from trainwell.experiments.results import CellResult

    test = PairedTest(MeanCI(diff, diff - 0.01, diff + 0.01, 0.01, 3), p, 3, p < 0.05)
    return CellResult(1, Cell("x", {}), {}, MeanCI(0.9, 0.89, 0.91, 0.01, 3), test, diverged=diverged)


def test_a_cell_with_diverged_seeds_is_never_called_better():
    assert cell_status(_cell_with(0.05, 0.001, [])) == "better"
    assert cell_status(_cell_with(0.05, 0.001, [2])) == "diverged"
    assert cell_status(_cell_with(-0.05, 0.001, [2])) == "worse"  # diverging does not excuse being worse
    assert cell_status(_cell_with(0.05, 0.2, [])) == "same"
    assert cell_status(_cell_with(0.05, 0.001, []), higher_is_better=False) == "worse"
    assert cell_status(_cell_with(-0.05, 0.001, [2]), higher_is_better=False) == "diverged"


def test_restart_skips_finished_runs_and_reruns_only_the_missing_one(finished, tmp_path):
    import shutil

    src, first = finished
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    victim = sorted((out / "runs").iterdir())[1] / "seed-0"
    (victim / "summary.json").unlink()  # as if interrupted mid-run
    again = run_plan(small_plan(), out, workers=1, quiet=True)
    assert (again.execution.ran, again.execution.skipped) == (1, 3)
    assert again.cells[1].values == first.cells[1].values  # CPU runs are bit-for-bit reproducible
    nothing = run_plan(small_plan(), out, workers=1, quiet=True)
    assert (nothing.execution.ran, nothing.execution.skipped) == (0, 4)


def test_refuses_a_folder_holding_something_else(finished, tmp_path):
    out, _ = finished
    other = Plan(base=list(FAST), cells=grid([("model.activation", ["relu", "elu"])]), seeds=[0, 1])
    with pytest.raises(RunDirError, match="different compare"):
        run_plan(other, out, workers=1, quiet=True)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    with pytest.raises(RunDirError, match="other files"):
        run_plan(small_plan(), stranger, workers=1, quiet=True)
    assert (stranger / "notes.txt").read_text() == "keep me"


def test_a_bad_cell_fails_before_anything_runs(tmp_path):
    plan = Plan(base=list(FAST), cells=grid([("model.activation", ["relu", "sigmod"])]), seeds=[0])
    with pytest.raises(ConfigError, match="cell 'model.activation=sigmod'.*sigmoid"):
        run_plan(plan, tmp_path / "out", workers=1, quiet=True)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="unknown config key"):
        run_plan(Plan(base=list(FAST), cells=grid([("model.widht", ["8"])]), seeds=[0]), tmp_path / "o2",
                 workers=1, quiet=True)


@pytest.mark.slow
def test_process_pool_gives_the_same_numbers_as_in_process(finished, tmp_path):
    _, serial = finished
    pooled = run_plan(small_plan(), tmp_path / "pool", workers=2, quiet=True)
    assert pooled.execution.ran == 4
    assert [c.values for c in pooled.cells] == [c.values for c in serial.cells]


def test_measure_hook_results_become_metrics(tmp_path):
    plan = Plan(base=list(FAST) + ["model.depth=3"], cells=grid([("model.activation", ["relu", "sigmoid"])]),
                seeds=[0, 1], measure="trainwell.experiments.labs.activations:measure", metric="grad_rms_first")
    result = run_plan(plan, tmp_path / "m", workers=1, quiet=True)
    relu, sigmoid = result.cells
    assert len(relu.values) == 2 and all(v > 0 for v in relu.values.values())
    assert (tmp_path / "m" / "runs" / "c00-model.activation=relu" / "seed-0" / "measures.json").is_file()
    assert sigmoid.ci.mean < relu.ci.mean  # sigmoid's derivative <= 1/4 shrinks what reaches layer 1


@pytest.mark.slow
def test_cli_compare_end_to_end_and_errors(tmp_path):
    cmd = [sys.executable, "-m", "trainwell.cli", "compare", *FAST, "--vary", "model.activation=relu,tanh",
           "--seeds", "2", "--workers", "1", "--out", str(tmp_path / "c")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "2 cells" not in done.stderr and "report.html" in done.stdout
    assert "model.activation" in done.stdout and "tanh" in done.stdout  # the table


def test_cli_compare_errors_are_one_line(capsys, tmp_path):
    from trainwell.cli import main

    assert main(["compare", "--vary", "model.activation"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "KEY=a,b,c" in err
    assert main(["compare", *FAST]) == 2 and "--vary" in capsys.readouterr().err
    assert main(["compare", "--vary", "model.activation=relu,sigmod", "--out", str(tmp_path / "x")]) == 2
    assert "did you mean 'sigmoid'" in capsys.readouterr().err.lower() and not (tmp_path / "x").exists()
    assert main(["compare", "--vary", "model.activation=relu", "--seeds", "0"]) == 2
    assert "--seeds" in capsys.readouterr().err


def test_a_resumed_compare_is_keyed_by_the_config_files_content_not_its_path(tmp_path):
    """Editing -c FILE between two calls must not mix 1-epoch and 2-epoch runs in one table."""
    import shutil

    from trainwell.experiments.compare import prepare_compare_dir

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: {name: mlp, width: 8, depth: 1}\ndata: {limit: 100}\ntrain: {epochs: 1}\n")
    plan = Plan(cells=grid([("model.activation", ["relu"])]), seeds=[0], config_file=str(cfg))
    out = prepare_compare_dir(tmp_path / "out", plan, overwrite=False)
    (out / "runs" / "x").mkdir(parents=True)  # as if a run had finished
    assert prepare_compare_dir(out, plan, overwrite=False) == out  # unchanged file: the same compare
    moved = tmp_path / "moved.yaml"
    shutil.copy(cfg, moved)
    assert prepare_compare_dir(out, Plan(cells=plan.cells, seeds=[0], config_file=str(moved)), False) == out
    cfg.write_text(cfg.read_text().replace("epochs: 1", "epochs: 2"))
    with pytest.raises(RunDirError, match="different compare"):
        prepare_compare_dir(out, plan, overwrite=False)
    assert (out / "runs" / "x").is_dir()  # nothing removed


def test_finetune_source_pairs_each_seed_with_its_own_pretrained_run(tmp_path):
    """A compare cell with finetune.source=.../seed-{seed} fine-tunes, at seed s, the pretrained run of seed s;
    a missing source of any seed fails before anything runs, in one line naming the cell."""
    pre = run_plan(Plan(base=[*FAST, "data.classes=0,1,2,3,4"], seeds=[0, 1]), tmp_path / "pre", workers=1, quiet=True)
    source = str(tmp_path / "pre" / "runs" / "c00-baseline" / "seed-{seed}")
    new = [*FAST, "data.classes=5,6,7,8,9", "data.per_class=10"]
    plan = Plan(base=new, cells=[Cell("scratch", {}), Cell("fine-tuned", {"finetune.source": source})], seeds=[0, 1])
    result = run_plan(plan, tmp_path / "ft", workers=1, quiet=True)
    for seed in (0, 1):
        assert result.cells[1].summaries[seed]["pretrained"] == source.replace("{seed}", str(seed))
        assert "pretrained" not in result.cells[0].summaries[seed]
    assert pre.cells[0].summaries[0]["test_acc"] != result.cells[1].summaries[0]["test_acc"]
    again = run_plan(plan, tmp_path / "ft", workers=1, quiet=True)  # resumes: nothing runs again
    assert again.execution.ran == 0 and again.execution.skipped == 4
    with pytest.raises(ConfigError, match="cell 'fine-tuned': pretrained '.*seed-2' is neither"):
        run_plan(Plan(base=new, cells=plan.cells, seeds=[0, 2]), tmp_path / "bad", workers=1, quiet=True)
    assert not (tmp_path / "bad").exists()
