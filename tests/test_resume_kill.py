"""Exact resume, proven with real processes: a run SIGKILLed at random points — during an epoch,
right after a checkpoint, halfway through writing one, before its rename — and resumed with
``trainwell train --resume`` ends with the weights, metrics.jsonl rows (timing aside) and test
figures of a run that was never interrupted, bit for bit on CPU. SIGTERM checkpoints and says how
to resume.

The moments inside a checkpoint write are hit on purpose through ``TRAINWELL_FAULT``
(trainwell.train.checkpoint.Fault); the others by a SIGKILL from this process after a random delay.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

#: Everything that draws random numbers or carries state is on: dropout, augmentation, mixup, EMA,
#: gradient accumulation, momentum; checkpoints every 3 optimiser steps as well as at epoch ends.
CONFIG = ["model.name=mlp", "model.width=32", "model.dropout=0.2", "augment=translation,noise", "mix.mixup_alpha=0.2",
          "train.ema=0.9", "train.accumulate=2", "data.limit=320", "train.batch_size=32", "train.epochs=3",
          "train.checkpoint_every=3", "train.progress=false", "train.plots=false"]
TIMING = ("seconds", "examples_per_second")


def trainwell(*args, fault=None, wait=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("TRAINWELL_FAULT", None)
    if fault:
        env["TRAINWELL_FAULT"] = fault
    cmd = [sys.executable, "-m", "trainwell", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def outcome(run_dir: Path):
    weights = load_file(run_dir / "model.safetensors")
    rows = [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    return weights, rows, {k: summary[k] for k in ("test_acc", "test_loss", "best_val_acc", "epochs", "steps")}


def assert_same(reference, run_dir: Path):
    w_ref, rows_ref, summary_ref = reference
    weights, rows, summary = outcome(run_dir)
    assert weights.keys() == w_ref.keys() and all(torch.equal(weights[k], w_ref[k]) for k in w_ref)
    assert rows == rows_ref
    assert summary == summary_ref


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    rc, _, err = trainwell("train", *CONFIG, "--out", str(out), "--quiet")
    assert rc == 0, err
    return outcome(out)


def resume_until_done(run_dir: Path, tries: int = 3) -> str:
    err = ""
    for _ in range(tries):
        rc, _, err = trainwell("train", "--resume", str(run_dir))  # not --quiet: the fallback line is a warning
        if rc == 0:
            return err
    raise AssertionError(f"resume did not finish: {err}")


@pytest.mark.parametrize("fault", ["kill-in-checkpoint:4", "kill-before-rename:3", "kill-after-checkpoint:5"])
def test_killed_inside_or_right_after_a_checkpoint_write_resumes_bit_for_bit(tmp_path, reference, fault):
    run_dir = tmp_path / "run"
    rc, _, err = trainwell("train", *CONFIG, "--out", str(run_dir), "--quiet", fault=fault)
    assert rc == -signal.SIGKILL, err
    assert not (run_dir / "summary.json").exists()
    said = resume_until_done(run_dir)
    if fault.startswith(("kill-in", "kill-before")):
        assert "was being written when the run stopped" in said, said  # and it is not used
    assert_same(reference, run_dir)
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))


def test_killed_at_random_moments_several_times_resumes_bit_for_bit(tmp_path, reference):
    rng = random.Random(20261201)
    run_dir = tmp_path / "run"
    proc = trainwell("train", *CONFIG, "--out", str(run_dir), "--quiet", wait=False)
    kills = 0
    for attempt in range(3):
        # wait until this process has written a checkpoint of its own (it is training), then kill it at a
        # random moment
        before = set((run_dir / "checkpoints").glob("step-*.safetensors")) if (run_dir / "checkpoints").is_dir() \
            else set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            now = set((run_dir / "checkpoints").glob("step-*.safetensors")) if (run_dir / "checkpoints").is_dir() \
                else set()
            if now - before:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait(timeout=60)
        if (run_dir / "summary.json").is_file():
            break
        proc = trainwell("train", "--resume", str(run_dir), "--quiet", wait=False)
    else:
        proc.wait(timeout=300)
    if not (run_dir / "summary.json").is_file():
        resume_until_done(run_dir)
    assert kills >= 1
    assert_same(reference, run_dir)


def test_sigterm_checkpoints_says_how_to_resume_and_the_resumed_run_is_exact(tmp_path, reference):
    run_dir = tmp_path / "run"
    proc = trainwell("train", *CONFIG, "--out", str(run_dir), wait=False)
    deadline = time.monotonic() + 120
    while not list((run_dir / "checkpoints").glob("step-*.safetensors")) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # the step-0 checkpoint is written inside the loop: the signal lands there
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before SIGTERM arrived")  # pragma: no cover - a very fast machine
    assert proc.returncode == 128 + signal.SIGTERM, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("trainwell: interrupted by SIGTERM") and f"trainwell train --resume {run_dir}" in last
    assert "Traceback" not in err
    resume_until_done(run_dir)
    assert_same(reference, run_dir)
