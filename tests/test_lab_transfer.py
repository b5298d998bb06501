"""Lab transfer: the verdict rule, the compute measures by hand, the pretraining stage, and a smoke run."""

import json
from types import SimpleNamespace

import pytest
from rich.console import Console

from trainwell.config import resolve
from trainwell.errors import ConfigError
from trainwell.experiments.compare import Cell
from trainwell.experiments.lab import PRETRAINED, Lab, get_lab, lab_plan, pretrain_plan, pretrained_runs, \
    run_pretraining
from trainwell.experiments.labs.transfer import cell_cost, decide, measure, reach_cost
from trainwell.experiments.results import CellResult
from trainwell.experiments.stats import mean_ci
from trainwell.fileio import write_json
from labverdicts import assert_consistent

HOLDS = dict(low_gain=0.10, low_p=0.003, low_diverged=0, shrink=0.09, shrink_p=0.01, ft_epochs=6.0,
             scratch_epochs=35.0, ft_reached=5, ft_n=5)


def test_decide_holds_when_all_three_clauses_hold():
    held, text = decide(**HOLDS)
    assert held
    assert "beats scratch by +10.00 pp" in text and "p = 0.003" in text and "significant" in text
    assert "9.00 pp larger" in text and "shrinks significantly" in text
    assert "in 6 epochs" in text and "5 of 5 seeds" in text and "against 35 for scratch: fewer" in text


@pytest.mark.parametrize("change, says", [
    ({"low_gain": -0.02}, "does not beat"),  # fine-tuning worse
    ({"low_p": 0.2}, "not established"),  # better, within seed noise
    ({"low_diverged": 1}, "1 fine-tuned seed(s) diverged"),  # a diverged cell is never called better
    ({"shrink": -0.01}, "no significant shrinkage"),  # the gain grows with labels
    ({"shrink_p": 0.3}, "no significant shrinkage"),
    ({"ft_epochs": 35.0}, "not fewer"),  # as slow as scratch
    ({"ft_reached": 4}, "4 of 5 seeds"),  # one seed never reaches scratch's accuracy
    ({"ft_n": 0, "ft_reached": 0}, "not fewer"),
])
def test_decide_fails_when_any_clause_fails(change, says):
    held, text = decide(**{**HOLDS, **change})
    assert not held and says in text


def _run(tmp_path, source, summary):
    cfg = resolve([f"finetune.source={source}", "train.seed=2"] if source else ["train.seed=2"])
    return SimpleNamespace(config=cfg, summary=summary)


def test_measure_reads_the_steps_and_the_pretraining_run_of_the_same_seed(tmp_path):
    for seed in (1, 2):
        (tmp_path / "pre" / f"seed-{seed}").mkdir(parents=True)
    write_json(tmp_path / "pre" / "seed-2" / "summary.json",
               {"steps": 1120, "train_seconds": 21.5, "epochs": 40, "test_acc": 0.99})
    write_json(tmp_path / "pre" / "seed-1" / "summary.json", {"steps": 1, "train_seconds": 1.0, "epochs": 1})
    got = measure(_run(tmp_path, tmp_path / "pre" / "seed-{seed}", {"steps": 120, "epochs": 40}), None)
    assert got == {"steps_per_epoch": 3.0, "pretrain_steps": 1120, "pretrain_seconds": 21.5, "pretrain_epochs": 40,
                   "pretrain_test_acc": 0.99}
    scratch = measure(_run(tmp_path, None, {"steps": 64, "epochs": 8}), None)
    assert scratch["steps_per_epoch"] == 8.0 and scratch["pretrain_steps"] == 0 and scratch["pretrain_seconds"] == 0


def test_reach_cost_matches_a_hand_computation():
    # seed 1 never reaches the target: it counts as its full 10 epochs
    got = reach_cost({0: 3, 1: None, 2: 5}, {0: 10, 1: 10, 2: 8}, {0: 2.0, 1: 2.0, 2: 4.0}, {0: 100, 1: 100, 2: 40})
    assert got["epochs"] == pytest.approx((3 + 10 + 5) / 3)
    assert got["reached"] == 2 and got["n"] == 3
    assert got["steps"] == pytest.approx((6 + 20 + 20) / 3)
    assert got["steps_with_pretraining"] == pytest.approx((106 + 120 + 60) / 3)


def test_cell_cost_reads_the_curves_and_leaves_diverged_seeds_out():
    histories = {0: [{"val_acc": 0.5}, {"val_acc": 0.8}, {"val_acc": 0.9}],
                 1: [{"val_acc": 0.85}, {"val_acc": 0.7}, {"val_acc": 0.6}],
                 2: [{"val_acc": 0.95}, {"val_acc": float("nan")}, {"val_acc": float("nan")}]}
    summaries = {s: {"steps_per_epoch": 4.0, "pretrain_steps": 50.0} for s in histories}
    cell = CellResult(0, Cell("x", {}), {}, mean_ci([]), None, summaries=summaries, histories=histories, diverged=[2])
    got = cell_cost(cell, 0.8)
    assert got["n"] == 2 and got["reached"] == 2  # seed 2 diverged: not counted
    assert got["epochs"] == pytest.approx((2 + 1) / 2)  # seed 0 reaches 0.8 in epoch 2, seed 1 in epoch 1
    assert got["steps"] == pytest.approx(6.0) and got["steps_with_pretraining"] == pytest.approx(56.0)
    assert cell_cost(cell, 0.95)["epochs"] == pytest.approx(3.0)  # neither reaches it: their full 3 epochs


def test_the_stage_gives_each_fine_tune_cell_its_pretrained_runs_and_the_user_overrides_come_last(tmp_path):
    lab = get_lab("transfer")
    stage = pretrain_plan(lab, ["train.epochs=3"], seeds=[4, 5])
    assert stage.seeds == [4, 5] and stage.base[-1] == "train.epochs=3"
    assert stage.base[:len(lab.base)] == lab.base and "data.classes=0,1,2,3,4" in stage.base
    source = pretrained_runs(tmp_path / "lab")
    assert source == str(tmp_path.resolve() / "lab" / "pretrain" / "runs" / "c00-pretrain" / "seed-{seed}")
    plan = lab_plan(lab, ["train.epochs=3"], seeds=[4, 5], pretrained=source)
    fine = [c for c in plan.cells if "finetune.source" in c.overrides]
    assert len(fine) == len(plan.cells) // 2 and all(c.overrides["finetune.source"] == source for c in fine)
    assert all(c.label.startswith("fine-tune") for c in fine)
    assert lab_plan(lab).cells[1].overrides["finetune.source"] == PRETRAINED  # unresolved without a folder
    assert pretrain_plan(get_lab("activations")) is None


def test_a_diverged_pretraining_stops_the_lab_in_one_line(tmp_path):
    lab = Lab("toy", "A claim.", "Lecture: x", ["data.name=digits", "model.name=mlp", "model.width=16",
                                                "train.epochs=1", "data.limit=100"],
              [Cell("a", {}), Cell("b", {"finetune.source": PRETRAINED})], analyse=lambda r, o: None,
              pretrain=["data.classes=0,1,2,3,4"])
    stage, console = pretrain_plan(lab, seeds=[0, 1]), Console(quiet=True)
    done = run_pretraining(lab, stage, tmp_path, 1, False, console, None)
    assert sorted(done.cells[0].summaries) == [0, 1]
    path = tmp_path / "pretrain" / "runs" / "c00-pretrain" / "seed-1" / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "diverged": True}))  # as the trainer writes one
    with pytest.raises(ConfigError, match=r"lab toy: pretraining in .*: seed 1 diverged; its cells fine-tune"):
        run_pretraining(lab, stage, tmp_path, 1, False, console, None)


@pytest.mark.slow
def test_transfer_lab_quick_run_and_resume(tmp_path):
    from trainwell.experiments.lab import run_lab

    outcome = run_lab("transfer", out=tmp_path / "lab", quick=True, seeds=[0, 1], workers=1, quiet=True)
    summary = json.loads((tmp_path / "lab" / "summary.json").read_text())
    assert isinstance(summary["held"], bool) and summary["held"] == outcome.held
    assert_consistent("transfer", summary)  # held follows from the stated statistics
    assert summary["verdict"] == outcome.verdict and "after 2 pretraining runs" in summary["verdict"]
    ev = summary["evidence"]
    assert ev["per_class"] == [5, 10, 50] and set(ev["cells"]) == {"5", "10", "50"}
    assert set(ev["cells"]["5"]) >= {"fine_tune", "scratch", "gain", "gain_p", "fine_tune_cost", "scratch_cost"}
    assert ev["cells"]["5"]["fine_tune_cost"]["steps_with_pretraining"] > ev["cells"]["5"]["fine_tune_cost"]["steps"]
    assert ev["cells"]["5"]["scratch_cost"]["steps_with_pretraining"] == ev["cells"]["5"]["scratch_cost"]["steps"]
    assert summary["pretrain"]["runs"] == 2 and summary["runs_ran"] == 2 + 12
    pre = tmp_path / "lab" / "pretrain" / "runs" / "c00-pretrain"
    ft = json.loads((tmp_path / "lab" / "compare" / "runs" / "c01-fine-tune_5_class" / "seed-1" / "summary.json")
                    .read_text())
    assert ft["pretrained"] == str((pre / "seed-1").resolve())  # seed 1 fine-tunes the seed-1 pretraining
    for name in ("report.html", "transfer.png", "compare/intervals.png"):
        assert (tmp_path / "lab" / name).is_file()
    run_lab("transfer", out=tmp_path / "lab", quick=True, seeds=[0, 1], workers=1, quiet=True)  # resumes
    again = json.loads((tmp_path / "lab" / "summary.json").read_text())
    assert again["runs_ran"] == 0 and again["runs_skipped"] == 14 and again["evidence"] == ev
