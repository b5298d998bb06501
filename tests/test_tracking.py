"""train.log=csv and train.log=mlflow, read back with MLflow's own client (no mocks) from a temporary local
store: params are the resolved config, each metric's history per epoch is metrics.jsonl, the folder is the
artifacts, a resume continues the same MLflow run without logging an epoch twice, a compare logs one child
per run under one parent; without mlflow, or with an unreachable server, one line before any folder.

A new MLflow SQLite store takes seconds to create (its schema migrations): one is made per session and
copied for each test. Each test runs in its own folder (monkeypatch.chdir), where MLflow's defaults point.
"""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import trainwell
from trainwell.cli import main
from trainwell.config import from_dict
from trainwell.experiments.compare import Plan, grid
from trainwell.errors import Interrupted
from trainwell.experiments.results import run_plan
from trainwell.train.events import Callback

try:  # MlflowClient itself: the tests read what MLflow holds
    import mlflow
    from mlflow.tracking import MlflowClient
except ImportError:  # the extra trainwell[mlflow]: skipped without it, except under CI, where it must run
    if os.environ.get("CI"):
        raise
    pytest.skip("the MLflow tests need the mlflow package (pip install -e '.[test]')", allow_module_level=True)

QUICK = {"data.limit": 300, "train.epochs": 2, "train.progress": False, "model.name": "mlp", "model.width": 32}
FAST = ["data.limit=300", "model.name=mlp", "model.width=32", "train.epochs=2"]
TIMING = ("seconds", "examples_per_second")


@pytest.fixture
def uri(mlflow_store) -> str:
    return mlflow_store


def rows_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run_id_of(run_dir: Path) -> str:
    return json.loads((run_dir / "mlflow.json").read_text())["run_id"]


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def assert_epochs_match(client: MlflowClient, run_id: str, rows: list[dict], skip: tuple[str, ...] = ()) -> None:
    """Every key of every row is the metric's one value at step = epoch, and nothing else is logged per epoch."""
    for key in rows[0]:
        if key in skip:
            assert [s for s, _ in history(client, run_id, key)] == [r["epoch"] for r in rows], key
            continue
        assert history(client, run_id, key) == [(r["epoch"], float(r[key])) for r in rows], key


def artifacts(client: MlflowClient, run_id: str) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id)}


def test_a_run_logs_params_epochs_summary_and_folder_to_mlflows_default_store(uri, tmp_path):
    run = trainwell.train(dict(QUICK, **{"train.log": ["csv", "mlflow"]}), out=tmp_path / "run", quiet=True)
    known = json.loads((run.dir / "mlflow.json").read_text())
    assert known["tracking_uri"] == mlflow.get_tracking_uri()  # unset train.mlflow_uri: MLflow's own default
    assert known["tracking_uri"].endswith(f"{tmp_path}/mlflow.db")  # (MLflow >= 3.7: ./mlflow.db)
    client = MlflowClient(uri)
    logged = client.get_run(known["run_id"])
    assert logged.info.status == "FINISHED" and logged.info.run_name == "run"
    assert client.get_experiment(logged.info.experiment_id).name == "trainwell"
    # The params are the resolved config: read back through the value grammar, the same Config.
    assert from_dict(dict(logged.data.params)) == run.config
    assert logged.data.params["optim.lr"] == "0.05" and logged.data.params["train.log"] == "[csv,mlflow]"
    rows = rows_of(run.dir)
    assert len(rows) == 2
    assert_epochs_match(client, known["run_id"], rows)
    for key in ("test_acc", "best_val_acc", "params", "steps"):  # summary.json's numbers, at the last epoch
        assert history(client, known["run_id"], key) == [(2, float(run.summary[key]))]
    # The run folder but its checkpoints (and mlflow.json, the link itself): whatever the run writes.
    from trainwell.train.tracking import NOT_ARTIFACTS

    logged_files = artifacts(client, known["run_id"])
    assert logged_files == {p.name for p in run.dir.iterdir() if p.name not in NOT_ARTIFACTS}
    assert {"config.yaml", "summary.json", "metrics.jsonl", "metrics.csv", "curves.png", "model.json",
            "model.safetensors", "report.html"} <= logged_files
    # metrics.csv: the rows of metrics.jsonl, for a spreadsheet
    with (run.dir / "metrics.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == list(rows[0])
    assert [{k: float(v) for k, v in r.items()} for r in table] == [{k: float(v) for k, v in r.items()} for r in rows]


class Poison(Callback):
    """At the end of epoch ``epoch``, once, a NaN into the weights: the epoch-end checkpoint refuses them
    and the run rolls back to the previous epoch's end (its row already in the callbacks' hands)."""

    def __init__(self, epoch: int) -> None:
        self.epoch, self.done = epoch, False

    def on_epoch_end(self, event):
        if event.epoch == self.epoch and not self.done:
            self.done = True
            with torch.no_grad():
                next(event.model.parameters()).fill_(math.nan)


def test_a_rollback_leaves_one_value_per_epoch_the_retrained_one(uri, tmp_path):
    """The diverged attempt's epoch 2 was seen by every callback; MLflow never got it (a row is logged once
    a checkpoint holds it), so each epoch has one value, and it is metrics.jsonl's."""
    cfg = dict(QUICK, **{"train.epochs": 3, "train.log": ["csv", "mlflow"], "train.mlflow_uri": uri,
                         "train.on_divergence": "rollback"})
    run = trainwell.train(cfg, out=tmp_path / "rb", quiet=True, callbacks=[Poison(2)])
    assert run.summary["divergence"]["rollbacks"] == 1 and not run.summary["diverged"]
    rows = rows_of(run.dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    client = MlflowClient(uri)
    assert_epochs_match(client, run_id_of(run.dir), rows)
    with (run.dir / "metrics.csv").open() as fh:  # rewritten from the restored state, as metrics.jsonl
        assert [float(r["train_loss"]) for r in csv.DictReader(fh)] == [r["train_loss"] for r in rows]


class Stop(Callback):
    """Interrupts the run at optimiser step ``step`` (as Ctrl-C would, without the checkpoint it saves)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, event):
        if event.state.step == self.step:
            raise Interrupted(2, event.state.epoch, event.state.step)


def test_resume_continues_the_same_mlflow_run_and_logs_no_epoch_twice(uri, tmp_path):
    cfg = dict(QUICK, **{"train.epochs": 3, "train.log": ["mlflow"], "train.mlflow_uri": uri})
    out = tmp_path / "killed"
    with pytest.raises(Interrupted):  # in epoch 3 (5 steps an epoch): epochs 1 and 2 logged
        trainwell.train(cfg, out=out, quiet=True, callbacks=[Stop(12)])
    run_id = run_id_of(out)
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "KILLED"
    assert [s for s, _ in history(client, run_id, "train_loss")] == [1, 2]
    # The newest checkpoint lost: the resume starts after epoch 1 and trains epoch 2 again. MLflow has
    # it already: it is not logged twice (the values are the first attempt's: bit-identical on the CPU,
    # but for the wall times).
    newest = sorted((out / "checkpoints").glob("step-*.safetensors"))[-1]
    newest.unlink()
    resumed = trainwell.train(resume=out, quiet=True)
    assert run_id_of(out) == run_id and len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
    assert client.get_run(run_id).info.status == "FINISHED"
    assert_epochs_match(client, run_id, rows_of(resumed.dir), skip=TIMING)
    # A finished run trained further: the same MLflow run; its param keeps the start's value, a tag the new one.
    trainwell.train(resume=out, overrides={"train.epochs": 4}, quiet=True)
    logged = client.get_run(run_id)
    assert logged.data.params["train.epochs"] == "3" and logged.data.tags["train.epochs"] == "4"
    assert [s for s, _ in history(client, run_id, "val_acc")] == [1, 2, 3, 4]
    assert history(client, run_id, "epochs") == [(3, 3.0), (4, 4.0)]  # each finished state's summary


def test_a_compare_logs_each_run_once_as_a_child_of_one_parent(uri, tmp_path):
    plan = Plan(base=[*FAST, "train.log=[csv,mlflow]", f"train.mlflow_uri={uri}"],
                cells=grid([("model.activation", ["relu", "tanh"])]), seeds=[0], title="acts")
    out = tmp_path / "cmp"
    run_plan(plan, out, workers=1, quiet=True)
    client = MlflowClient(uri)
    parent = json.loads((out / "mlflow.json").read_text())["run_id"]
    logged = client.get_run(parent)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "acts"
    assert {"summary.json", "results.csv", "report.html"} <= artifacts(client, parent)
    assert "runs" not in artifacts(client, parent)
    assert logged.data.metrics["c01.test_acc.mean"] == pytest.approx(
        json.loads((out / "summary.json").read_text())["cells"][1]["mean"])

    def children():
        return client.search_runs([logged.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")

    kids = {k.info.run_name: k for k in children()}
    assert set(kids) == {"c00-model.activation=relu/seed-0", "c01-model.activation=tanh/seed-0"}
    for name, kid in kids.items():
        run_dir = out / "runs" / name
        assert kid.info.status == "FINISHED"
        # its params are its own config.yaml (train.log without mlflow: the compare logged it, not the run)
        assert from_dict(dict(kid.data.params)) == trainwell.load_run(run_dir).config
        assert kid.data.params["model.activation"] == name.split("=")[1].split("/")[0]
        assert kid.data.params["train.log"] == "[csv]"
        assert_epochs_match(client, kid.info.run_id, rows_of(run_dir))
        assert "metrics.csv" in artifacts(client, kid.info.run_id) and "checkpoints" not in artifacts(client, kid.info.run_id)
    # The same compare again: every run finished and logged; the same parent, no new child.
    run_plan(plan, out, workers=1, quiet=True)
    assert json.loads((out / "mlflow.json").read_text())["run_id"] == parent
    assert len(children()) == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_tracking_server_is_one_line_at_once_before_any_folder(tmp_path, capsys):
    out = tmp_path / "never"
    t0 = time.perf_counter()
    code = main(["train", *FAST, "train.log=mlflow", f"train.mlflow_uri=http://127.0.0.1:{free_port()}",
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no MLflow tracking server answers there" in err, err
    assert time.perf_counter() - t0 < 15 and not out.exists()


def test_a_server_that_answers_with_errors_is_one_line_after_one_try(tmp_path, capsys):
    """MLflow retries a failing server with back-off for minutes; trainwell's first request tries once."""
    import http.server
    import threading

    class Failing(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_error(503, "down for maintenance")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "never"
    t0 = time.perf_counter()
    try:
        code = main(["train", *FAST, "train.log=mlflow", f"train.mlflow_uri=http://127.0.0.1:{server.server_port}",
                     "--out", str(out)])
    finally:
        server.shutdown()
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cannot be used" in err, err
    assert time.perf_counter() - t0 < 15 and not out.exists()
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # set for that request only


def test_import_trainwell_leaves_mlflow_alone_and_without_it_train_log_mlflow_is_one_line(tmp_path):
    """In one process: importing trainwell (its tracking code included) imports no mlflow; then, with
    ``import mlflow`` failing, train.log=mlflow is one line naming the extra, exit 2, no folder made."""
    code = ("import sys, trainwell, trainwell.train.tracking, trainwell.experiments.results, "
            "trainwell.experiments.ensembles, trainwell.runs.train\n"
            "assert not [m for m in sys.modules if m.split('.')[0] == 'mlflow'], 'import trainwell imported mlflow'\n"
            "sys.modules['mlflow'] = None  # import mlflow now raises ImportError\n"
            "from trainwell.cli import main; sys.exit(main(sys.argv[1:]))")
    out = tmp_path / "never"
    done = subprocess.run([sys.executable, "-c", code, "train", *FAST, "train.log=csv,mlflow", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "pip install 'trainwell[mlflow]'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


def test_a_fine_tune_is_logged_under_its_folders_name_not_the_one_it_is_built_in(uri, tmp_path):
    # A fine-tune is built in a hidden sibling (.NAME.tmp-PID) and swapped in at the end.
    from trainwell.runs.finetune import finetune

    pretrained = trainwell.train(QUICK, out=tmp_path / "pre", quiet=True)
    tuned = finetune(pretrained.dir, ["train.epochs=1", "train.log=mlflow"], out=tmp_path / "tuned", quiet=True)
    logged = MlflowClient(uri).get_run(run_id_of(tuned.dir))
    assert logged.info.run_name == "tuned" and logged.info.status == "FINISHED"
    assert logged.data.tags["trainwell.run_dir"] == str((tmp_path / "tuned").resolve())
