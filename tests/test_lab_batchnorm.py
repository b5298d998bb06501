"""Lab batchnorm: the 'trains' rule, the verdict, epochs to a target accuracy, and a smoke run."""

import json
import math

import numpy as np
import pytest

from trainwell.experiments.compare import Cell
from trainwell.experiments.labs.batchnorm import TRAINS_FRACTION, decide, trainable_lrs
from trainwell.experiments.labs.common import epochs_to_target, reach_summary
from trainwell.experiments.results import CellResult
from trainwell.experiments.stats import mean_ci
from labverdicts import assert_consistent

NAN = math.nan


def _epochs(norm_lrs):
    return {lr: (2.0, 3, 3) for lr in norm_lrs}


def test_decide_holds_when_batch_norm_trains_at_a_higher_lr():
    acc = {"none": {0.01: 0.95, 0.1: 0.96, 0.3: 0.10, 1.0: 0.10},
           "batch": {0.01: 0.96, 0.1: 0.97, 0.3: 0.97, 1.0: 0.95}}
    div = {"none": {0.01: 0, 0.1: 0, 0.3: 3, 1.0: 3}, "batch": {0.01: 0, 0.1: 0, 0.3: 0, 1.0: 0}}
    epochs = {"none": {0.01: (3.0, 3, 3), 0.1: (5.0, 2, 3), 0.3: (NAN, 0, 3), 1.0: (NAN, 0, 3)},
              "batch": {0.01: (2.0, 3, 3), 0.1: (1.0, 3, 3), 0.3: (3.0, 3, 3), 1.0: (7.0, 3, 3)}}
    held, text = decide(acc, div, epochs, target=0.88)
    assert held
    assert "lr 1 with batch norm and lr 0.1 without" in text
    assert "diverged at lr 0.3, 1" in text
    assert "97.00%" in text and "87.30%" in text  # best cell and the 90% threshold
    assert "with batch norm fastest 1 epoch at lr 0.1" in text
    assert "without fastest 3 epochs at lr 0.01" in text  # lr 0.1 had only 2/3 seeds reach it
    assert "(2/3 seeds reached it)" in text


def test_decide_does_not_hold_when_batch_norm_fails_at_the_same_lrs():
    acc = {"none": {0.01: 0.95, 0.1: 0.96, 1.0: 0.10}, "batch": {0.01: 0.96, 0.1: 0.97, 1.0: 0.30}}
    div = {"none": {0.01: 0, 0.1: 0, 1.0: 3}, "batch": {0.01: 0, 0.1: 0, 1.0: 0}}
    held, text = decide(acc, div, {"none": _epochs([0.01, 0.1]), "batch": _epochs([0.01, 0.1])}, target=0.9)
    assert not held and "(the same)" in text
    # batch norm trains only at lower rates than plain SGD
    acc = {"none": {0.01: 0.95, 0.1: 0.96}, "batch": {0.01: 0.96, 0.1: 0.2}}
    held, text = decide(acc, {"none": {}, "batch": {}}, {"none": {}, "batch": {}}, target=0.9)
    assert not held and "lr 0.01 with batch norm and lr 0.1 without (not higher" in text
    # nothing trains with batch norm
    acc = {"none": {0.01: 0.95}, "batch": {0.01: 0.1}}
    assert not decide(acc, {"none": {}, "batch": {}}, {}, target=0.9)[0]


def test_a_diverged_seed_means_the_cell_does_not_train():
    acc = {0.01: 0.95, 0.1: 0.96, 0.3: 0.95}
    assert trainable_lrs(acc, {0.3: 1}, threshold=0.9) == [0.01, 0.1]
    assert trainable_lrs(acc, {}, threshold=0.955) == [0.1]
    assert trainable_lrs({0.1: NAN}, {}, threshold=0.0) == []
    # without batch norm nothing trains, with it something does: held
    acc2 = {"none": {0.1: 0.96}, "batch": {0.1: 0.96, 1.0: 0.97}}
    held, text = decide(acc2, {"none": {0.1: 1}, "batch": {}}, {}, target=0.9)
    assert held and "none of the tried LRs without" in text
    assert TRAINS_FRACTION == 0.9


def _cell(val_curves):
    histories = {s: [{"epoch": i + 1, "val_acc": v} for i, v in enumerate(c)] for s, c in val_curves.items()}
    return CellResult(0, Cell("x", {}), {}, mean_ci([]), None, {}, {s: {} for s in val_curves}, histories)


def test_epochs_to_target_matches_a_hand_computation():
    curves = {0: [0.5, 0.8, 0.91, 0.95], 1: [0.92, 0.5, 0.99, 0.99], 2: [0.1, NAN, 0.2, 0.3], 3: [0.3, 0.9, 0.95]}
    target = 0.9
    got = epochs_to_target(_cell(curves), target)

    def by_numpy(c):
        hit = np.flatnonzero(np.nan_to_num(np.asarray(c), nan=-1.0) >= target)
        return int(hit[0]) + 1 if hit.size else None

    assert got == {s: by_numpy(c) for s, c in curves.items()} == {0: 3, 1: 1, 2: None, 3: 2}
    summary = reach_summary(got)
    assert summary == {"mean": pytest.approx((3 + 1 + 2) / 3), "reached": 3, "n": 4}
    assert math.isnan(reach_summary({0: None})["mean"])


@pytest.mark.slow
def test_lab_runs_end_to_end(tmp_path):
    from trainwell.experiments.lab import run_lab

    outcome = run_lab("batchnorm", out=tmp_path, quick=True, seeds=[0, 1], workers=1, quiet=True)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["claim"] and isinstance(summary["held"], bool) and summary["verdict"] == outcome.verdict
    assert_consistent("batchnorm", summary)  # held follows from the stated statistics
    ev = summary["evidence"]
    assert {"highest_trainable_lr", "accuracy_threshold", "target_val_acc", "cells", "trains_rule"} <= set(ev)
    assert set(ev["highest_trainable_lr"]) == {"none", "batch"}
    cell = ev["cells"]["batch lr=1"]
    assert {"test_acc", "test_acc_ci", "diverged_seeds", "trains", "epochs_to_target", "reached_target"} <= set(cell)
    assert len(ev["cells"]) == 12
    assert (tmp_path / "report.html").is_file() and (tmp_path / "accuracy_vs_lr.png").is_file()
