"""Data-parallel training on real process groups (gloo, CPU): ``trainwell train --nproc 2`` trains as one
process would at the same global batch and seed, synchronised batch norm normalises over the global
batch, a DDP run killed by SIGTERM resumes to the weights of one never interrupted, and a bad setup
(batch not divisible, port in use, a rank that dies) is one clear line, without a hang.

The pieces (a rank's share of a batch, per-rank random streams, the checkpoint's per-rank state,
the synchronised batch norm against ``torch.nn.BatchNorm`` on the whole batch) are tested on their own
first, the last one in two real processes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from trainwell.errors import ConfigError, RunDirError
from trainwell.seeds import STREAMS, stream_seed
from trainwell.train.distributed import SINGLE, World, check_batch, local_state, pack_rank_states
from trainwell.train.trainer import BatchOrder, steps_per_epoch

TIMING = ("seconds", "examples_per_second")


# ----------------------------------------------------------------------------- the pieces


@pytest.mark.parametrize("size", [2, 3, 4])
@pytest.mark.parametrize("n", [0, 1, 5, 13, 64])
def test_the_ranks_parts_cover_a_batch_once_in_order_and_agree_with_part_range(size, n):
    idx = torch.randperm(max(n, 1))[:n]
    parts = [World(r, size).part(idx) for r in range(size)]
    assert torch.equal(torch.cat(parts), idx)  # every example once, in the batch's order
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    for r, part in enumerate(parts):
        start, stop = World(r, size).part_range(n)
        assert torch.equal(idx[start:stop], part)
    assert torch.equal(SINGLE.part(idx), idx)


@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize("batch", [4, 6, 64])
def test_steps_per_epoch_counts_the_batches_the_order_keeps_on_every_rank(size, batch):
    world = World(0, size)
    for n in range(1, 3 * batch + 2):
        kept = BatchOrder(n, batch, world.min_batch()).batches(torch.arange(n))
        assert steps_per_epoch(n, batch, 1, world.min_batch()) == len(kept)
        if len(kept) > 1:  # a trailing partial batch too small for every rank's batch norm is dropped
            assert len(kept[-1]) >= min(world.min_batch(), batch)
        assert sum(map(len, kept)) > n - min(world.min_batch(), batch)  # and nothing else


def test_one_process_keeps_the_single_process_batches():
    # min_batch 2 drops exactly a trailing batch of one, as before data-parallel training existed
    assert [len(b) for b in BatchOrder(9, 4).batches(torch.arange(9))] == [4, 4]
    assert [len(b) for b in BatchOrder(10, 4).batches(torch.arange(10))] == [4, 4, 2]
    assert [len(b) for b in BatchOrder(10, 4, 6).batches(torch.arange(10))] == [4, 4]


def test_each_rank_has_its_own_streams_and_rank_zero_the_plain_ones():
    assert World(0, 4).stream("augment") == "augment"
    seeds = {stream_seed(3, World(r, 4).stream(name)) for r in range(4) for name in STREAMS}
    assert len(seeds) == 4 * len(STREAMS)  # no two (rank, stream) pairs share a seed
    import numpy as np

    # rank R's stream is the R-th spawned child of the stream (NumPy's SeedSequence.spawn)
    parent = np.random.SeedSequence(3, spawn_key=(STREAMS.index("mix"),))
    child = parent.spawn(3)[2]
    assert np.array_equal(child.generate_state(2), np.random.SeedSequence(3, spawn_key=(STREAMS.index("mix"), 2))
                          .generate_state(2))
    with pytest.raises(ValueError, match="unknown random stream"):
        stream_seed(0, "mix@rank0")


def test_a_checkpoint_gives_each_rank_its_own_generators_and_the_sums_to_rank_zero_only():
    loop = {"rng": {"who": 0}, "loss_sum": torch.tensor(5.0), "correct": torch.tensor(7), "epoch": 1}
    packed = {**loop, "world_size": 3, "rank_rng": [{"who": 1}, {"who": 2}]}
    assert local_state(World(0, 3), packed) is packed
    rank2 = local_state(World(2, 3), packed)
    assert rank2["rng"] == {"who": 2} and rank2["loss_sum"].item() == 0 and rank2["correct"].item() == 0
    assert rank2["epoch"] == 1
    assert pack_rank_states(SINGLE, loop) is loop  # one process: the plain checkpoint
    with pytest.raises(RunDirError, match="on 3 process.*has 2; resume it --nproc 3"):
        local_state(World(0, 2), packed)
    with pytest.raises(RunDirError, match="on 1 process.*has 2; resume it without --nproc"):
        local_state(World(1, 2), loop)


def test_the_global_batch_must_divide_over_the_processes():
    check_batch(64, 2)
    check_batch(63, 1)
    with pytest.raises(ConfigError, match="train.batch_size=63 is the global batch.*multiple of 2"):
        check_batch(63, 2)


# ----------------------------------------------------------------------------- synchronised batch norm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sync_bn_rank(rank: int, port: int, x: torch.Tensor, w: torch.Tensor, state: dict, out: str) -> None:
    import torch.distributed as dist

    from trainwell.nn.sync_batchnorm import convert_sync_batchnorm

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model = nn.Sequential(nn.Conv1d(3, 4, 3), nn.BatchNorm1d(4))
        model.load_state_dict(state)
        model = convert_sync_batchnorm(model, torch.device("cpu"))
        part = x.tensor_split(2)[rank].clone().requires_grad_(True)
        y = model(part)
        # the loss of the whole batch: this rank's share of a weighted sum, weighted as the loop does
        ((y * w.tensor_split(2)[rank]).sum() * 2 / len(x)).backward()
        for p in model.parameters():  # what DDP does to the parameters' gradients
            dist.all_reduce(p.grad)
            p.grad /= 2
        torch.save({"y": y.detach(), "x_grad": part.grad, "grads": [p.grad for p in model.parameters()],
                    "buffers": {k: v for k, v in model.state_dict().items() if "running" in k}}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_synchronised_batch_norm_on_two_processes_is_batch_norm_on_the_whole_batch(tmp_path):
    import torch.multiprocessing as mp

    torch.manual_seed(0)
    x = torch.randn(7, 3, 6) * 3 + 1  # 7 examples: parts of 4 and 3
    model = nn.Sequential(nn.Conv1d(3, 4, 3), nn.BatchNorm1d(4))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2)
        model[1].bias.uniform_(-1, 1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    w = torch.randn(7, 4, 4)  # (N, C, L) of the output: a loss whose input gradient is not ~0
    mp.spawn(_sync_bn_rank, args=(_free_port(), x, w, state, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]

    whole = x.clone().requires_grad_(True)
    y = model(whole)
    ((y * w).sum() / len(x)).backward()
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach(), rtol=1e-5, atol=1e-5)
    # Each rank's backward is of the sum of both ranks' losses (the statistics' all-reduce sums their
    # gradients), 2x the whole batch's; DDP's average halves what reaches the parameters.
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in ranks]) / 2, whole.grad, rtol=1e-4, atol=1e-6)
    for r in ranks:
        for got, want in zip(r["grads"], [p.grad for p in model.parameters()]):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
        for k, v in r["buffers"].items():  # running mean and the unbiased running variance
            torch.testing.assert_close(v, model.state_dict()[k], rtol=1e-5, atol=1e-6)


def test_synchronised_batch_norm_outside_a_process_group_is_batch_norm():
    from trainwell.nn.sync_batchnorm import GlobalBatchNorm, convert_sync_batchnorm

    torch.manual_seed(1)
    plain = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4))
    synced = convert_sync_batchnorm(nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4)), torch.device("cpu"))
    synced.load_state_dict(plain.state_dict())  # the same names: a saved model loads either way
    assert isinstance(synced[1], GlobalBatchNorm)
    x = torch.randn(8, 5)
    torch.testing.assert_close(synced(x), plain(x))
    torch.testing.assert_close(synced[1].running_var, plain[1].running_var)


# ----------------------------------------------------------------------------- the loop on two processes


#: No randomness but the shared shuffle (a class-balanced draw from it); accumulation (grad_sync), a
#: checkpoint every 2 steps (the ranks' packed generators, in memory), 213 training examples at batch 32
#: (parts of 11 and 10 at the end), and class weights (a batch mean of w·CE: the ranks' weighted parts
#: add up to one process's loss; a mean divided by each part's weight sum would not).
LOOP = {"model.name": "mlp", "model.norm": "none", "model.width": 32, "model.dropout": 0.0, "data.limit": 300,
        "train.batch_size": 32, "train.accumulate": 2, "train.epochs": 3, "train.checkpoint_every": 2,
        "train.progress": False, "data.sampler": "balanced", "loss.class_weights": "balanced"}
DIVERGES = dict(LOOP, **{"optim.lr": 1e4, "train.on_divergence": "stop"})


def _fit(overrides: dict, world: World) -> dict:
    import trainwell
    from trainwell.data import load_splits
    from trainwell.train.build import build_classifier
    from trainwell.train.trainer import LoopSettings, build_state, fit

    cfg = trainwell.resolve(overrides)
    splits = load_splits(cfg.data)
    state = build_state(build_classifier(cfg, splits), cfg, len(splits.train), torch.device("cpu"), world=world)
    result = fit(state, splits.train, splits.val, LoopSettings.from_config(cfg, splits.num_classes), world=world)
    return {"history": result.history, "steps": result.steps, "diverged": result.diverged,
            "divergence": result.divergence, "weights": {k: v.clone() for k, v in state.model.state_dict().items()}}


def _fit_rank(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from trainwell.train.distributed import current_world

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        world = current_world()
        torch.save({"plain": _fit(LOOP, world), "diverges": _fit(DIVERGES, world)}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_fit_on_two_processes_takes_the_steps_of_one_and_both_stop_at_one_divergence(tmp_path):
    import torch.multiprocessing as mp

    torch.set_num_threads(1)
    one = _fit(LOOP, SINGLE)
    mp.spawn(_fit_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"{r}.pt", weights_only=False) for r in range(2)]
    for got in ranks:  # every rank reports the whole run's figures
        two = got["plain"]
        assert two["steps"] == one["steps"] and len(two["history"]) == 3
        for a, b in zip(one["history"], two["history"]):
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
            assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
            assert b["train_acc"] == pytest.approx(a["train_acc"], abs=1e-9)
            assert b["val_acc"] == pytest.approx(a["val_acc"], abs=1e-6)  # (float32 vs float64 means)
        for k, w in one["weights"].items():
            torch.testing.assert_close(two["weights"][k], w, rtol=1e-4, atol=1e-5)
    assert all(torch.equal(ranks[0]["plain"]["weights"][k], ranks[1]["plain"]["weights"][k]) for k in one["weights"])
    # A loss that blows up: both ranks find the same first bad step and stop together, as one process does.
    alone = _fit(DIVERGES, SINGLE)
    assert alone["diverged"]
    for got in ranks:
        assert got["diverges"]["diverged"] and got["diverges"]["divergence"] == alone["divergence"]
        assert got["diverges"]["steps"] == alone["steps"]


# ----------------------------------------------------------------------------- real runs


def trainwell(*args, wait=True):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("OMP_NUM_THREADS", None)  # --nproc sets one thread per process on 2 cores
    proc = subprocess.Popen([sys.executable, "-m", "trainwell", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=240)
    return proc.returncode, out, err


def rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


#: No randomness but the shared shuffle: two processes must take the steps one process takes.
#: digits' 1,293 training examples at batch 64 end with a batch of 13: parts of 7 and 6 (the weighting).
PLAIN = ["model.name=mlp", "model.norm=none", "model.depth=2", "model.width=64", "train.epochs=3",
         "train.batch_size=64", "train.progress=false", "train.plots=false"]


def assert_trains_as_one_process(one: Path, two: Path) -> None:
    a, b = rows(one), rows(two)
    assert len(a) == len(b) == 3  # one metrics.jsonl, one row per epoch
    for ra, rb in zip(a, b):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-4)
        assert rb["val_loss"] == pytest.approx(ra["val_loss"], rel=1e-4)
        assert rb["train_acc"] == pytest.approx(ra["train_acc"], abs=1e-9)
    sa, sb = summary(one), summary(two)
    assert sb["test_acc"] == pytest.approx(sa["test_acc"], abs=1e-6)  # (float32 vs float64 means)
    assert sb["test_loss"] == pytest.approx(sa["test_loss"], rel=1e-4)
    assert (sa["processes"], sb["processes"]) == (1, 2)
    assert sb["steps"] == sa["steps"]
    # rank 0's metrics of the whole test split (eval mode, no collective) and its report
    assert sum(map(sum, sb["confusion"])) == sb["n_test"] == sum(r["support"] for r in sb["per_class"].values())
    assert sb["test_macro_f1"] == pytest.approx(sa["test_macro_f1"], abs=0.02)
    assert (two / "report.html").is_file() and (one / "report.html").is_file()


@pytest.mark.slow
def test_two_processes_train_an_mlp_as_one_process_does(tmp_path):
    rc, _, err = trainwell("train", *PLAIN, "--out", str(tmp_path / "one"), "--quiet")
    assert rc == 0, err
    rc, out, err = trainwell("train", *PLAIN, "--nproc", "2", "--out", str(tmp_path / "two"))
    assert rc == 0, err
    assert_trains_as_one_process(tmp_path / "one", tmp_path / "two")
    # rank 0 alone prints and writes: one line per epoch, one folder
    assert err.count("epoch 1/3") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]


@pytest.mark.slow
def test_with_sync_bn_two_processes_train_a_batch_norm_net_as_one_process_does(tmp_path):
    cfg = [c for c in PLAIN if c != "model.norm=none"] + ["model.norm=batch", "train.sync_bn=true"]
    rc, _, err = trainwell("train", *cfg, "--out", str(tmp_path / "one"), "--quiet")
    assert rc == 0, err
    rc, _, err = trainwell("train", *cfg, "--nproc", "2", "--out", str(tmp_path / "two"), "--quiet")
    assert rc == 0, err
    assert_trains_as_one_process(tmp_path / "one", tmp_path / "two")


@pytest.mark.slow
def test_without_sync_bn_the_ranks_validate_the_batch_norm_statistics_rank_zero_saves(tmp_path):
    # Between steps each rank holds the running statistics of its own last batch (DDP copies rank 0's
    # at the next forward); scored as they are, the val figures would be no model's, and a resumed run
    # (every rank starting from rank 0's) would log other ones than the uninterrupted run.
    cfg = [c for c in PLAIN if c != "model.norm=none"] + ["model.norm=batch", "train.epochs=2"]
    rc, _, err = trainwell("train", *cfg, "--nproc", "2", "--out", str(tmp_path / "two"), "--quiet")
    assert rc == 0, err
    rc, out, err = trainwell("evaluate", str(tmp_path / "two"), "--split", "val", "--json",
                             "--out", str(tmp_path / "eval"))
    assert rc == 0, err
    saved = json.loads(out)
    logged = rows(tmp_path / "two")[-1]
    assert saved["val_acc"] == pytest.approx(logged["val_acc"], abs=1e-9)
    assert saved["val_loss"] == pytest.approx(logged["val_loss"], rel=1e-5)


#: Everything random and stateful on: per-rank dropout, augmentation and mixing streams, EMA,
#: accumulation; a checkpoint every 3 steps.
RANDOM = ["model.name=mlp", "model.width=32", "model.dropout=0.2", "augment=noise", "mix.mixup_alpha=0.2",
          "train.ema=0.9", "train.accumulate=2", "data.limit=400", "train.batch_size=32", "train.epochs=4",
          "train.checkpoint_every=3", "train.progress=false", "train.plots=false"]


def wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not any((run_dir / "checkpoints").glob("step-*.safetensors")):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_data_parallel_run_stopped_by_sigterm_resumes_to_the_uninterrupted_weights(tmp_path):
    rc, _, err = trainwell("train", *RANDOM, "--nproc", "2", "--out", str(tmp_path / "whole"), "--quiet")
    assert rc == 0, err
    run = tmp_path / "cut"
    proc = trainwell("train", *RANDOM, "--nproc", "2", "--out", str(run), wait=False)
    wait_for_checkpoint(run, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM" in err and "Traceback" not in err
    assert not (run / "summary.json").exists()

    rc, _, err = trainwell("train", "--resume", str(run), "--nproc", "1")
    assert rc == 2 and "written by a run on 2 process(es), this one has 1; resume it --nproc 2" in err, err
    rc, _, err = trainwell("train", "--resume", str(run), "--nproc", "2", "--quiet")
    assert rc == 0, err
    whole, cut = load_file(tmp_path / "whole" / "model.safetensors"), load_file(run / "model.safetensors")
    assert all(torch.equal(whole[k], cut[k]) for k in whole)  # every rank's generators resumed exactly
    assert [{k: v for k, v in r.items() if k not in ("train_loss", "train_acc")} for r in rows(run)] == \
        [{k: v for k, v in r.items() if k not in ("train_loss", "train_acc")} for r in rows(tmp_path / "whole")]
    for a, b in zip(rows(run), rows(tmp_path / "whole")):  # summed in another order around the stop
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["train_acc"] == pytest.approx(b["train_acc"], abs=1e-9)


def test_a_global_batch_that_does_not_divide_is_one_line_before_any_process_starts(tmp_path):
    t0 = time.time()
    rc, out, err = trainwell("train", "train.batch_size=63", "--nproc", "2", "--out", str(tmp_path / "r"))
    assert rc == 2
    assert err.strip().count("\n") == 0 and "train.batch_size=63 is the global batch" in err
    assert not (tmp_path / "r").exists() and time.time() - t0 < 60


def test_a_port_in_use_is_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc, _, err = trainwell("train", "--nproc", "2", "--master-port", str(port), "--out", str(tmp_path / "r"))
    assert rc == 2 and err.strip().count("\n") == 0 and f"--master-port {port} is in use" in err
    assert not (tmp_path / "r").exists()


def _rank_pids(run_dir: Path) -> dict[int, int]:
    """Rank -> pid of the processes training into ``run_dir`` (from /proc: their command line and environment)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            env = dict(kv.split(b"=", 1) for kv in (entry / "environ").read_bytes().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        if str(run_dir).encode() in cmd and b"RANK" in env:
            found[int(env[b"RANK"])] = int(entry.name)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks through /proc")
def test_a_rank_that_dies_ends_the_run_with_one_line_and_no_hang(tmp_path):
    run = tmp_path / "r"
    proc = trainwell("train", *RANDOM, "train.epochs=200", "--nproc", "2", "--out", str(run), wait=False)
    wait_for_checkpoint(run, proc)
    pids = _rank_pids(run)
    assert set(pids) == {0, 1}
    os.kill(pids[1], signal.SIGKILL)
    t0 = time.time()
    _, err = proc.communicate(timeout=90)
    assert time.time() - t0 < 60  # the agent stops the others: no wait for the process group's timeout
    assert proc.returncode == 1
    lines = [line for line in err.splitlines() if line.startswith("trainwell:")]
    assert "Traceback" not in err and "[rank" not in err and "W1" not in err, err  # no rank's or agent's noise
    assert len(lines) == 1 and "process 1 of 2 was killed by SIGKILL" in lines[0], err
    assert f"trainwell train --resume {run} --nproc 2" in lines[0]


def test_features_a_data_parallel_run_cannot_do_are_refused_before_it_starts(tmp_path):
    for setting in ("doctor=true", "train.ensemble=2", "train.snapshots=2"):
        rc, _, err = trainwell("train", setting, "--nproc", "2", "--out", str(tmp_path / "r"))
        assert rc == 2 and "not supported in a data-parallel run (--nproc 2)" in err, (setting, err)
        assert not (tmp_path / "r").exists()
