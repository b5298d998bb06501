"""The local trial runner: pool sizes, one GPU per worker (with made-up device lists: no GPU here)."""

from __future__ import annotations

import os
import time

from trainwell.experiments.trials import gpus_for_workers, pool_size, start_pool, visible_gpus


def test_visible_gpus_hand_out_an_existing_cuda_visible_devices_list_in_its_order():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "3, 5"}) == ["3", "5"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-8f2a,GPU-11c0"}) == ["GPU-8f2a", "GPU-11c0"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, device_count=lambda: 4) == []  # hidden on purpose
    assert visible_gpus({}, device_count=lambda: 2) == ["0", "1"]
    assert visible_gpus({}, device_count=lambda: 0) == []


def test_each_worker_gets_its_own_gpu_while_there_are_enough():
    assert gpus_for_workers(2, ["3", "5"]) == ["3", "5"]
    assert gpus_for_workers(1, ["3", "5"]) == ["3"]
    assert gpus_for_workers(3, ["3", "5"]) == ["3", "5", "3"]  # more workers than GPUs: shared in turn
    assert gpus_for_workers(2, []) == []


def test_pool_size_is_one_per_core_on_cpu_one_per_gpu_on_cuda_else_one():
    assert pool_size(8, ["cpu", "cpu"], cores=2, gpus=[]) == 2
    assert pool_size(1, ["cpu"], cores=16, gpus=[]) == 1
    assert pool_size(8, ["cuda", "cuda"], cores=16, gpus=["0", "1", "2"]) == 3
    assert pool_size(2, ["cuda"], cores=16, gpus=["0", "1", "2"]) == 2
    assert pool_size(8, ["cuda", "cuda:1"], cores=16, gpus=["0", "1"]) == 1  # cuda:1 names a GPU: no hand-out
    assert pool_size(8, ["cuda", "cpu"], cores=16, gpus=["0", "1"]) == 1
    assert pool_size(8, ["mps"], cores=16, gpus=[]) == 1
    assert pool_size(8, ["cuda"], cores=16, gpus=[]) == 1


def report_devices(seconds: float) -> tuple[int, str | None]:
    """Run in a pool worker: its process id and the CUDA_VISIBLE_DEVICES it was given."""
    time.sleep(seconds)  # long enough that both workers take tasks
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


def test_spawned_workers_each_see_their_own_cuda_visible_devices():
    with start_pool(2, ["3", "5"]) as pool:
        seen = dict(pool.map(report_devices, [0.3] * 6))
    assert len(seen) == 2 and sorted(seen.values()) == ["3", "5"]
