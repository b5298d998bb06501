"""The local trial runner: pool sizes, one GPU per worker (with made-up device lists: no GPU here), and
the backend's flags, which are checked before anything is loaded or written, with or without ray."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from trainwell.cli import main
from trainwell.experiments.trials import Backend, BackendError, gpus_for_workers, pool_size, start_pool, \
    visible_gpus

FAST = ["model.name=mlp", "model.width=16", "model.depth=1", "train.epochs=1", "data.limit=100"]


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


@pytest.mark.parametrize("flags, fragment", [
    (["--backend", "ray", "--cpus-per-trial", "0"], "--cpus-per-trial must be a whole number of cores, at least 1"),
    (["--backend", "ray", "--cpus-per-trial", "-2"], "at least 1 (each run's torch threads), got -2"),
    (["--backend", "ray", "--gpus-per-trial", "-1"], "--gpus-per-trial must be at least 0"),
    (["--cpus-per-trial", "2"], "--cpus-per-trial applies to --backend ray"),
    (["--address", "10.0.0.5:6379", "--gpus-per-trial", "1"], "--address, --gpus-per-trial apply to --backend ray"),
    (["--backend", "ray", "--address", "nonsense"], "--address 'nonsense' must be HOST:PORT"),
    (["--backend", "ray", "--address", "host:99999"], "must be HOST:PORT"),
])
def test_backend_flags_are_one_line_before_anything_is_loaded_or_written(flags, fragment, capsys, tmp_path):
    out = tmp_path / "out"
    assert main(["compare", *FAST, "--vary", "model.activation=relu,tanh", "--seeds", "1", *flags,
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, err
    assert not out.exists()


def test_train_takes_the_backend_flags_for_an_ensemble_only(capsys, tmp_path):
    assert main(["train", *FAST, "--cpus-per-trial", "2", "--out", str(tmp_path / "a")]) == 2
    assert "applies to --backend ray" in capsys.readouterr().err
    assert main(["lab", "activations", "--quick", "--gpus-per-trial", "1", "--out", str(tmp_path / "b")]) == 2
    assert "applies to --backend ray" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_the_backend_is_checked_as_a_value_too():
    with pytest.raises(BackendError, match="unknown backend 'dask'"):
        Backend("dask")
    with pytest.raises(BackendError, match="cpus-per-trial"):
        Backend("ray", cpus_per_trial=1.5)  # type: ignore[arg-type]  # torch threads are whole
    assert Backend("ray").cpus == 1 and Backend("ray").gpus == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_address_where_nothing_listens_is_one_line_without_ray_s_minutes_of_retries(ray_package, capsys, tmp_path):
    """Ray itself retries such an address for minutes; the probe answers at once (Ray is not started here)."""
    out = tmp_path / "out"
    t0 = time.perf_counter()
    assert main(["compare", *FAST, "--vary", "model.activation=relu", "--backend", "ray", "--address",
                 f"127.0.0.1:{free_port()}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no Ray cluster answers there" in err, err
    assert time.perf_counter() - t0 < 30 and not out.exists()


def test_without_ray_the_ray_backend_is_one_line_naming_the_install_command(tmp_path):
    """In a process where ``import ray`` fails: trainwell imports (ray is optional) and says how to get it."""
    blocked = ("import sys; sys.modules['ray'] = None  # import ray now raises ImportError\n"
               "import trainwell, trainwell.experiments.ray_backend\n"
               "from trainwell.cli import main; sys.exit(main(sys.argv[1:]))")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", blocked, "compare", *FAST, "--vary", "model.activation=relu,tanh",
                           "--backend", "ray", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "pip install 'trainwell[ray]'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not out.exists()
