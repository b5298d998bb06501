"""--backend ray on a real Ray instance: the local pool's runs bit for bit, written by the driver, resumable;
failures reported as the local pool reports them; the cluster's mistakes as one line.

One Ray instance serves the module: the ``ray_cluster`` fixture lets trainwell start it (``ray.init`` with
the cores this process may use, 2 on CI) and checks that trainwell shuts it down when the command's block
ends on an interruption. Without ray installed the tests skip, except under CI (``CI`` set), where a
silently skipped check would prove nothing: there they fail (the ``ray_package`` fixture, conftest.py).
"""

from __future__ import annotations

import json
import re
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from trainwell.cli import main
from trainwell.experiments.compare import Plan, execute, grid, prepare_compare_dir, validate
from trainwell.experiments.lab import run_lab
from trainwell.experiments.results import run_plan
from trainwell.experiments.trials import Backend, BackendError

FAST = ["model.width=32", "model.depth=1", "model.channels=8,16", "train.epochs=2", "data.limit=200"]
VARY = ["--vary", "model.name=mlp,cnn", "--seeds", "2"]  # 2 cells x 2 seeds, an MLP and a CNN
TIMING = {"train_seconds", "examples_per_second", "seconds", "wall_seconds"}
RAY = Backend("ray", cpus_per_trial=1)


@pytest.fixture(scope="module")
def ray_cluster(ray_package):
    """Ray started by trainwell for the module; its shutdown checked after an interruption, as on Ctrl-C."""
    from trainwell.experiments.ray_backend import ray_session

    ray = ray_package
    assert not ray.is_initialized(), "another test left Ray running"
    with pytest.raises(KeyboardInterrupt):
        with ray_session(RAY):
            assert ray.is_initialized()
            yield ray
            raise KeyboardInterrupt  # as if Ctrl-C ended the command
    assert not ray.is_initialized(), "trainwell left the Ray instance it started running"


@pytest.fixture(scope="module")
def compared(ray_cluster, tmp_path_factory):
    """The same compare on the local pool (2 workers) and on Ray (1 CPU a run), through the command line."""
    root = tmp_path_factory.mktemp("backends")
    for name, flags in (("local", ["--backend", "local", "--workers", "2"]),
                        ("ray", ["--backend", "ray", "--cpus-per-trial", "1"])):
        assert main(["compare", *FAST, *VARY, *flags, "--quiet", "--out", str(root / name)]) == 0
    return root / "local", root / "ray"


def without_timing(value):
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def checkpoint_tensors(path: Path) -> str:
    """A checkpoint's tensors' digest (its JSON state also holds the epochs' wall times)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()["tensors_sha256"]


def assert_same_run(a: Path, b: Path) -> None:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()), (a, b)
    for rel in files:
        if rel.name == "summary.json":
            assert without_timing(json.loads((a / rel).read_text())) == without_timing(json.loads((b / rel).read_text()))
        elif rel.name == "metrics.jsonl":
            rows = [[without_timing(json.loads(line)) for line in (d / rel).read_text().splitlines()] for d in (a, b)]
            assert rows[0] == rows[1] and len(rows[0]) == 2
        elif rel.name == "report.html":  # the same page but for its timings and the time it was written
            pages = [re.sub(r"<h2>Timings</h2>.*?</section>|<footer>.*?</footer>", "", (d / rel).read_text(), flags=re.S)
                     for d in (a, b)]
            assert pages[0] == pages[1]
        elif rel.parent.name == "checkpoints":
            assert checkpoint_tensors(a / rel) == checkpoint_tensors(b / rel), rel
        else:  # model.safetensors, config.yaml, model.json: byte for byte
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def run_dirs(out: Path) -> list[Path]:
    return sorted(out.glob("runs/*/seed-*"))


def test_runs_on_ray_are_bit_identical_to_the_local_pools(compared):
    local, on_ray = compared
    assert [d.relative_to(on_ray) for d in run_dirs(on_ray)] == [d.relative_to(local) for d in run_dirs(local)]
    assert len(run_dirs(local)) == 4
    for a, b in zip(run_dirs(local), run_dirs(on_ray)):
        assert_same_run(a, b)
    assert (local / "results.csv").read_bytes() == (on_ray / "results.csv").read_bytes()
    assert not list(on_ray.glob("runs/*/.*")), "a staging folder was left behind"


def test_a_restart_on_ray_skips_finished_runs_and_redoes_an_unfinished_one_from_scratch(compared, tmp_path):
    _, on_ray = compared
    out = tmp_path / "again"
    shutil.copytree(on_ray, out)
    victim = run_dirs(out)[1]
    (victim / "summary.json").unlink()  # interrupted: its checkpoints stay, and a file no run writes
    (victim / "stray.txt").write_text("from the interrupted run")
    staging = victim.with_name(f".{victim.name}.incoming")
    staging.mkdir()  # what a driver killed while unpacking leaves
    (staging / "model.safetensors").write_bytes(b"half")
    assert main(["compare", *FAST, *VARY, "--backend", "ray", "--quiet", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["runs"]["ran"], summary["runs"]["skipped"]) == (1, 3)
    assert not (victim / "stray.txt").exists()  # replaced whole: trained again in an empty folder
    assert_same_run(run_dirs(on_ray)[1], victim)
    assert not list(out.glob("runs/*/.*"))


def test_a_failed_run_is_reported_as_the_local_pool_reports_it(ray_cluster, tmp_path):
    """The data file disappears between the check and the runs: every run fails with the same DataError line."""
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    data = tmp_path / "digits.npz"
    np.savez(data, x=digits.images[:300].astype("float32"), y=digits.target[:300])
    plan = Plan(base=["model.name=mlp", "model.width=16", "train.epochs=1", "data.name=npz", f"data.path={data}"],
                cells=grid([("model.activation", ["relu", "tanh"])]), seeds=[0])
    configs = validate(plan)
    data.unlink()
    failures = {}
    for name, backend in (("local", "local"), ("ray", RAY)):
        out = prepare_compare_dir(tmp_path / name, plan, overwrite=False)
        # --workers 1: on Ray, one task in flight at a time (the cap's path)
        execution = execute(plan, out, workers=1, quiet=True, configs=configs, backend=backend)
        assert execution.ran == 0 and len(execution.failed) == 2
        failures[name] = [(f["cell"], f["seed"], f["error"]) for f in execution.failed]
    assert sorted(failures["ray"]) == sorted(failures["local"])
    assert str(data) in failures["ray"][0][2]
    assert not run_dirs(tmp_path / "ray")  # nothing was placed


def test_any_other_exception_in_a_task_propagates_and_places_nothing(ray_cluster, tmp_path):
    plan = Plan(base=["model.name=mlp", "model.width=16", "train.epochs=1", "data.limit=100"],
                seeds=[0], measure="json:loads")  # called as loads(run, splits): a TypeError, a bug
    with pytest.raises(TypeError):
        run_plan(plan, tmp_path / "out", backend=RAY, quiet=True)
    assert not run_dirs(tmp_path / "out") and not list((tmp_path / "out").glob("runs/*/.*"))
    assert ray_cluster.is_initialized()  # the module's instance: the session that started it still holds it


def test_an_ensemble_trains_its_members_on_ray_as_on_the_local_pool(ray_cluster, tmp_path, monkeypatch):
    import trainwell.experiments.trials as trials

    monkeypatch.setattr(trials, "default_workers", lambda n, configs: 1)  # the local members in this process
    quick = ["model.name=mlp", "model.width=32", "model.depth=1", "train.epochs=2", "data.limit=200",
             "train.ensemble=2", "--quiet"]
    assert main(["train", *quick, "--out", str(tmp_path / "local")]) == 0
    assert main(["train", *quick, "--backend", "ray", "--out", str(tmp_path / "ray")]) == 0
    summaries = [json.loads((tmp_path / name / "summary.json").read_text()) for name in ("local", "ray")]
    for name, summary in zip(("local", "ray"), summaries):  # each points at its own members
        assert [Path(s).relative_to(tmp_path / name).parts[0] for s in summary.pop("sources")] == ["members-runs"] * 2
    assert without_timing(summaries[0]) == without_timing(summaries[1]) and summaries[1]["seeds"] == [0, 1]
    members = [sorted((tmp_path / name).glob("members-runs/runs/*/seed-*")) for name in ("local", "ray")]
    assert len(members[1]) == 2
    for a, b in zip(*members):
        assert_same_run(a, b)


def test_a_quick_lab_runs_on_ray_with_its_measures(ray_cluster, tmp_path):
    outcome = run_lab("activations", out=tmp_path / "lab", seeds=[0], quick=True, quiet=True, backend=RAY)
    runs = run_dirs(tmp_path / "lab" / "compare")
    assert len(runs) == 6 and all((r / "measures.json").is_file() for r in runs)  # measured on the node
    assert json.loads((tmp_path / "lab" / "summary.json").read_text())["runs_ran"] == 6
    assert outcome.verdict


def test_sigterm_while_waiting_on_ray_still_ends_the_command_as_sigterm(ray_cluster):
    """Ray turns what a signal handler raises into a bare KeyboardInterrupt; the CLI's SIGTERM (its own line,
    exit 143) must come through."""
    from trainwell.cli.app import Terminated, terminate_as_interrupt
    from trainwell.experiments.ray_backend import sigterm_kept

    sleeping = ray_cluster.remote(lambda: time.sleep(60)).remote()
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    try:
        with terminate_as_interrupt(), sigterm_kept():
            ray_cluster.wait([sleeping], num_returns=1)
        raised = None
    except BaseException as exc:  # a bare KeyboardInterrupt must fail this test, not stop pytest
        raised = exc
    finally:
        ray_cluster.cancel(sleeping, force=True)
    assert isinstance(raised, Terminated) and raised.signum == signal.SIGTERM, repr(raised)


def test_resources_no_node_has_are_one_line_before_anything_is_written(ray_cluster, capsys, tmp_path):
    base = ["compare", *FAST, "--vary", "model.activation=relu,tanh", "--seeds", "1", "--backend", "ray"]
    assert main([*base, "--gpus-per-trial", "1", "--out", str(tmp_path / "gpu")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--gpus-per-trial 1, but the Ray instance on this machine has no GPU" in err
    assert main([*base, "--cpus-per-trial", "64", "--out", str(tmp_path / "cpu")]) == 2
    assert "--cpus-per-trial 64, but the Ray instance on this machine has" in capsys.readouterr().err
    assert main(["train", *FAST, "--backend", "ray", "--out", str(tmp_path / "one")]) == 2
    assert "train.ensemble=K" in capsys.readouterr().err
    assert main(["train", *FAST, "train.ensemble=2", "--nproc", "2", "--backend", "ray", "--out", str(tmp_path / "n")]) == 2
    assert "--nproc (or torchrun) trains one run" in capsys.readouterr().err
    assert main(["lab", "all", "--quick", "--backend", "ray", "--gpus-per-trial", "1", "--out", str(tmp_path / "all")]) == 2
    assert capsys.readouterr().err.count("\n") == 1  # once for the lecture, not "not run" for every lab
    assert not any(tmp_path.iterdir())


def test_an_address_that_answers_but_is_no_ray_head_is_refused_within_the_time_limit():
    """The dashboard's HTTP port, or a server that never answers: both refused in bounded time."""
    from trainwell.experiments.ray_backend import probe_address

    with socket.socket() as http, socket.socket() as mute:
        for server in (http, mute):
            server.bind(("127.0.0.1", 0))
            server.listen()

        def answer_http() -> None:
            conn, _ = http.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

        threading.Thread(target=answer_http, daemon=True).start()
        with pytest.raises(BackendError, match="answers, but not as a Ray cluster's head"):
            probe_address(f"127.0.0.1:{http.getsockname()[1]}")
        t0 = time.perf_counter()
        with pytest.raises(BackendError, match="not as a Ray cluster's head"):
            probe_address(f"127.0.0.1:{mute.getsockname()[1]}", timeout=0.5)
        assert time.perf_counter() - t0 < 5



def test_a_compare_on_ray_logs_each_run_to_mlflow_from_the_driver(ray_cluster, mlflow_store, tmp_path):
    """The runs train on Ray workers without train.log=mlflow; the driver logs each finished folder as a
    child of the compare's parent run (the workers need neither mlflow nor a way to the store)."""
    from mlflow.tracking import MlflowClient

    from trainwell.config import from_dict
    from trainwell.train.load import read_config

    out = tmp_path / "tracked"
    assert main(["compare", *FAST, "train.log=mlflow", f"train.mlflow_uri={mlflow_store}", "--vary", "model.name=mlp",
                 "--seeds", "2", "--backend", "ray", "--cpus-per-trial", "1", "--quiet", "--out", str(out)]) == 0
    client = MlflowClient(mlflow_store)
    parent = client.get_run(json.loads((out / "mlflow.json").read_text())["run_id"])
    assert parent.info.status == "FINISHED"
    kids = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(k.info.run_name for k in kids) == ["c00-model.name=mlp/seed-0", "c00-model.name=mlp/seed-1"]
    for kid in kids:
        run_dir = out / "runs" / kid.info.run_name
        assert from_dict(dict(kid.data.params)) == read_config(run_dir)  # its own config.yaml
        assert kid.data.params["train.seed"] == kid.info.run_name[-1] and kid.data.params["train.log"] == "[]"
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert sorted((m.step, m.value) for m in client.get_metric_history(kid.info.run_id, "val_acc")) == \
            [(r["epoch"], r["val_acc"]) for r in rows]
