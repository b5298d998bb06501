"""Experiment tracking in MLflow: ``train.log=mlflow`` (the optional extra ``trainwell[mlflow]``).

What a run logs (:class:`RunLog`, driven by :class:`trainwell.train.callbacks.MlflowLog`):

* **params**: the resolved config, one param per dotted key (``optim.lr``), each value in the value
  grammar's normal text (docs/values.md), so the params resolve back to the same config;
* **metrics**: every key of every metrics.jsonl row, step = the epoch; at the end, summary.json's numbers
  (``test_acc``, ``best_val_acc`` ...; not ``lr`` and ``examples_per_second``, which are per-epoch
  metrics already) at step = the epochs trained;
* **artifacts**: the run folder (config.yaml, summary.json, metrics.jsonl, curves.png, model.json,
  model.safetensors ...), never ``checkpoints/``.

Where: ``train.mlflow_uri``, unset = MLflow's own default (``$MLFLOW_TRACKING_URI``, else
``./mlflow.db`` in the current folder on MLflow >= 3.7, ``./mlruns`` before): where ``mlflow ui`` started
in the same folder looks. The artifacts go where the experiment keeps them (an experiment made in a new
local store: ``./mlruns`` beside ``./mlflow.db``). The run folder's ``mlflow.json`` remembers the store and
the run's id, so ``--resume`` continues the same MLflow run from any folder. ``train.log`` is a list
(``train.log=csv,mlflow``): a run may want metrics.csv and MLflow at once.

One value per epoch, equal to metrics.jsonl: an epoch's row is logged once the checkpoint that holds
it is written (at the next optimiser step, or when the fit ends), never before. A kill or a divergence
rollback can only return to a written checkpoint, so no logged epoch is ever trained again, and MLflow
(which keeps every value logged at a step) never holds two values for one epoch. The epochs already in
the MLflow run (its ``epoch`` metric) are not logged again, whatever the checkpoint a resume starts from.

A compare (a lab, an ensemble) logs each finished run as a child of one parent run (:class:`CompareLog`),
from the run's folder, in the process that drives the compare: the runs themselves do not log (their
``train.log`` loses ``mlflow``), so a run on a Ray worker or in a pool process needs neither mlflow nor
a way to reach the store.

``import mlflow`` costs seconds: it is imported only when a config asks for it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import urlparse

from trainwell.config import Config, Spec, flatten, render
from trainwell.errors import ConfigError, RunDirError, exception_line
from trainwell.fileio import write_json
from trainwell.train.rundir import final_path
from trainwell.version import __version__

RUN_FILE = "mlflow.json"
INSTALL = "pip install 'trainwell[mlflow]'"
#: Seconds a tracking server gets to accept a connection before train.mlflow_uri is reported unreachable.
CONNECT_SECONDS = 5.0
#: Files and folders of a run folder that are not artifacts.
NOT_ARTIFACTS = ("checkpoints", RUN_FILE)
#: summary.json numbers that are per-epoch metrics already (another value at the last step would be a duplicate).
EPOCH_KEYS_IN_SUMMARY = ("lr", "examples_per_second")
_BATCH = 100  # MLflow's limit of params (and tags) per log_batch call

Warn = Callable[[str], None]


def wants_mlflow(cfg: Config) -> bool:
    return "mlflow" in cfg.train.log


def without_mlflow(cfg: Config) -> list[str]:
    """The override that takes mlflow out of a config's train.log (a compare's run: the driver logs it)."""
    return [f"train.log={render([name for name in cfg.train.log if name != 'mlflow'])}"]


def mlflow_module() -> Any:
    """``import mlflow``, or one line saying how to install it."""
    try:
        return importlib.import_module("mlflow")
    except ImportError:
        raise ConfigError(f"train.log=mlflow needs the mlflow package; {INSTALL}.") from None


def _entities() -> Any:
    return importlib.import_module("mlflow.entities")


# ----------------------------------------------------------------------------- the store


@dataclass
class Store:
    """An open tracking store and the experiment runs go to."""

    uri: str
    experiment_id: str
    client: Any  # mlflow.tracking.MlflowClient

    def fail(self, exc: BaseException, doing: str) -> ConfigError:
        return ConfigError(f"MLflow at {self.uri}: {doing} failed: {exception_line(exc, 300)}")


def probe(uri: str, seconds: float = CONNECT_SECONDS) -> None:
    """A tracking server (http, https) must accept a connection within ``seconds``: MLflow's own client
    retries an unreachable one with back-off for minutes."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError:
        raise ConfigError(f"train.mlflow_uri={uri} has no valid port; e.g. http://localhost:5000.") from None
    if not parsed.hostname:
        raise ConfigError(f"train.mlflow_uri={uri} names no host; e.g. http://localhost:5000.")
    try:
        with socket.create_connection((parsed.hostname, port), timeout=seconds):
            pass
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else exception_line(exc, 120)
        raise ConfigError(f"train.mlflow_uri={uri}: no MLflow tracking server answers there ({reason} within "
                          f"{seconds:g} s); start it (mlflow server --port {port}) or fix the address.") from None


@contextlib.contextmanager
def bounded_requests(seconds: float = 2 * CONNECT_SECONDS) -> Iterator[None]:
    """MLflow's HTTP requests inside the block: no retries, ``seconds`` at most each (where the user has not
    set MLFLOW_HTTP_REQUEST_MAX_RETRIES / _TIMEOUT); MLflow reads both at every request."""
    bounded = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(seconds))}
    added = [k for k in bounded if k not in os.environ]
    os.environ.update({k: bounded[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def open_store(uri: str | None, experiment: str) -> Store:
    """The store at ``uri`` (None: MLflow's default) and the id of ``experiment`` in it (created if missing);
    a store that cannot be used is one line (an unreachable server within :data:`CONNECT_SECONDS`)."""
    mlflow = mlflow_module()
    resolved = uri or mlflow.get_tracking_uri()  # MLflow's default resolved to an absolute path
    probe(resolved)
    try:
        client = importlib.import_module("mlflow.tracking").MlflowClient(tracking_uri=resolved)
        with bounded_requests():  # a server that answers, but with errors: one try, not minutes of retries
            found = client.get_experiment_by_name(experiment)
        if found is None:
            try:
                experiment_id = client.create_experiment(experiment)
            except Exception:  # another process created it meanwhile
                found = client.get_experiment_by_name(experiment)
                if found is None:
                    raise
                experiment_id = found.experiment_id
        else:
            experiment_id = found.experiment_id
    except Exception as exc:  # the store's own error (sqlalchemy, REST, a refused file store ...), as one line
        raise ConfigError(f"train.log=mlflow: the MLflow tracking store {resolved} cannot be used: "
                          f"{exception_line(exc, 300)}") from None
    if found is not None and found.lifecycle_stage == "deleted":
        raise ConfigError(f"MLflow experiment '{experiment}' at {resolved} is deleted; restore it (mlflow "
                          "experiments restore) or choose another train.mlflow_experiment.")
    return Store(resolved, str(experiment_id), client)


# ----------------------------------------------------------------------------- what is logged


def param_text(value: Any) -> str:
    """A config value as a param: strings as they are, the rest in the value grammar's normal text."""
    return value if isinstance(value, str) and not isinstance(value, Spec) else render(value)


def config_params(cfg: Config) -> dict[str, str]:
    """The resolved config as params, one per dotted key."""
    return {key: param_text(value) for key, value in flatten(cfg.to_dict()).items()}


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def row_metrics(row: dict[str, Any], step: int, now: int) -> list[Any]:
    """A metrics.jsonl row as MLflow metrics at ``step`` (numbers only)."""
    Metric = _entities().Metric
    return [Metric(key, float(value), now, step) for key, value in row.items() if is_number(value)]


def summary_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """summary.json's numbers (and a compare run's measures) that are not per-epoch metrics."""
    return {key: float(value) for key, value in summary.items()
            if is_number(value) and key not in EPOCH_KEYS_IN_SUMMARY}


def artifact_entries(folder: Path, skip: Sequence[str] = NOT_ARTIFACTS) -> list[Path]:
    """The files and folders of ``folder`` that are logged as artifacts (no hidden staging folders)."""
    return sorted(p for p in folder.iterdir() if p.name not in skip and not p.name.startswith("."))


def _now() -> int:
    return int(time.time() * 1000)


def read_run_file(folder: Path) -> dict[str, Any] | None:
    path = folder / RUN_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("run_id"), str) else None


class RunLog:
    """One MLflow run: created or continued, its epochs, summary and artifacts logged, then ended.

    A failure of the store after the run started (a server going away) is one warning, and the run
    trains on without MLflow: the run folder holds everything, and a resume logs the missing epochs.
    """

    def __init__(self, store: Store, run_id: str, warn: Warn | None = None) -> None:
        self.store, self.run_id, self.warn = store, run_id, warn
        self.broken = False
        self.ended = False

    @property
    def client(self) -> Any:
        return self.store.client

    # -- creating or reopening

    @classmethod
    def create(cls, store: Store, name: str, tags: dict[str, str], warn: Warn | None = None) -> RunLog:
        try:
            run = store.client.create_run(store.experiment_id, run_name=name, tags=tags)
        except Exception as exc:
            raise store.fail(exc, "creating a run") from None
        return cls(store, run.info.run_id, warn)

    @classmethod
    def for_run_folder(cls, cfg: Config, folder: Path, store: Store | None, warn: Warn) -> RunLog:
        """The MLflow run of ``folder``: the one its mlflow.json names (a resumed run), else a new one
        named after the folder (recorded in mlflow.json at once)."""
        known = read_run_file(folder)
        if known is not None:
            reopened = cls.reopen(known, warn)
            if reopened is not None:
                reopened.note_changes(cfg)
                return reopened
        if store is None:
            store = open_store(cfg.train.mlflow_uri, cfg.train.mlflow_experiment)
        named = final_path(folder)  # (a fine-tune is built in a hidden sibling of its folder)
        log = cls.create(store, named.name, {"trainwell.run_dir": str(named.resolve()),
                                              "trainwell.version": __version__}, warn)
        log.write_run_file(folder)
        log.log_params(config_params(cfg))
        return log

    @classmethod
    def reopen(cls, known: dict[str, Any], warn: Warn) -> RunLog | None:
        """The run ``known`` (an mlflow.json) names, set running again; None (and a warning) when it is gone."""
        store = open_store(str(known.get("tracking_uri") or "") or None, str(known.get("experiment") or "trainwell"))
        try:
            run = store.client.get_run(known["run_id"])
            gone = run.info.lifecycle_stage == "deleted"
        except Exception:
            gone = True
        if gone:
            warn(f"MLflow run {known['run_id']} at {store.uri} is gone (deleted?); logging to a new run")
            return None
        try:
            store.client.update_run(known["run_id"], status="RUNNING")
        except Exception as exc:
            raise store.fail(exc, "reopening the run") from None
        return cls(store, known["run_id"], warn)

    def note_changes(self, cfg: Config) -> None:
        """Params cannot change in MLflow: a resumed run's config key that did (train.epochs, extending a
        finished run) becomes a tag of the same name, holding its new value."""
        try:
            logged = self.client.get_run(self.run_id).data.params
        except Exception as exc:
            raise self.store.fail(exc, "reading the run's params") from None
        params = config_params(cfg)
        changed = {k: v for k, v in params.items() if k in logged and logged[k] != v}
        if changed:
            self.set_tags(changed)
        new = {k: v for k, v in params.items() if k not in logged}
        if new:  # keys this trainwell has and the one that started the run did not
            self.log_params(new)

    def write_run_file(self, folder: Path, **extra: Any) -> None:
        experiment = self.client.get_experiment(self.store.experiment_id).name
        write_json(folder / RUN_FILE, {"tracking_uri": self.store.uri, "experiment": experiment,
                                       "experiment_id": self.store.experiment_id, "run_id": self.run_id, **extra})

    # -- logging

    def _guard(self, doing: str, action: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if self.broken:
            return
        try:
            action(*args, **kwargs)
        except Exception as exc:
            self.broken = True
            message = f"MLflow at {self.store.uri}: {doing} failed ({exception_line(exc, 200)}); the run goes on " \
                      "without MLflow (the run folder has everything)"
            if self.warn is None:
                raise ConfigError(message) from None
            self.warn(message)

    def log_params(self, params: dict[str, str]) -> None:
        Param = _entities().Param
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), _BATCH):
            self._guard("logging the config", self.client.log_batch, self.run_id, params=items[i:i + _BATCH])

    def set_tags(self, tags: dict[str, str]) -> None:
        RunTag = _entities().RunTag
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        self._guard("setting tags", self.client.log_batch, self.run_id, tags=items)

    def logged_epochs(self) -> int:
        """The last epoch already in the run (its ``epoch`` metric); 0 for a new run."""
        try:
            history = self.client.get_metric_history(self.run_id, "epoch")
        except Exception as exc:
            raise self.store.fail(exc, "reading the run's epochs") from None
        return max((int(m.step) for m in history), default=0)

    def log_epochs(self, rows: Sequence[dict[str, Any]]) -> None:
        now = _now()
        metrics = [m for row in rows for m in row_metrics(row, int(row["epoch"]), now)]
        for i in range(0, len(metrics), 1000):  # MLflow's limit of metrics per log_batch call
            self._guard("logging the epochs' metrics", self.client.log_batch, self.run_id,
                        metrics=metrics[i:i + 1000])

    def log_summary(self, summary: dict[str, Any], step: int) -> None:
        Metric = _entities().Metric
        now = _now()
        metrics = [Metric(k, v, now, step) for k, v in summary_metrics(summary).items()]
        self._guard("logging the summary", self.client.log_batch, self.run_id, metrics=metrics)

    def log_folder(self, folder: Path, skip: Sequence[str] = NOT_ARTIFACTS) -> None:
        for entry in artifact_entries(folder, skip):
            if entry.is_dir():
                self._guard(f"uploading {entry.name}/", self.client.log_artifacts, self.run_id, str(entry),
                            artifact_path=entry.name)
            else:
                self._guard(f"uploading {entry.name}", self.client.log_artifact, self.run_id, str(entry))

    def end(self, status: str) -> None:
        """FINISHED, FAILED or KILLED (a killed or failed run continues with --resume)."""
        if self.ended:
            return
        self.ended = True
        if not self.broken:
            try:
                self.client.set_terminated(self.run_id, status)
            except Exception as exc:
                if self.warn is not None:
                    self.warn(f"MLflow at {self.store.uri}: ending the run failed ({exception_line(exc, 200)})")

    def finish(self, folder: Path, summary: dict[str, Any], extended: dict[str, str] | None = None) -> None:
        """A finished run: its summary, tags and folder; FAILED when its loss diverged."""
        self.log_summary(summary, int(summary.get("epochs") or 0))
        tags = {"trainwell.stopped": str(summary.get("stopped")),
                "trainwell.diverged": str(bool(summary.get("diverged")))}
        self.set_tags({**tags, **(extended or {})})
        self.log_folder(folder)
        self.end("FAILED" if summary.get("diverged") else "FINISHED")


# ----------------------------------------------------------------------------- a compare


def compare_store(configs: Sequence[Config]) -> Store | None:
    """The store a compare's runs go to, opened (one line when it cannot be): None when no run asks for
    MLflow; every cell that does must name the same store and experiment."""
    wanting = [c for c in configs if wants_mlflow(c)]
    if not wanting:
        return None
    places = {(c.train.mlflow_uri, c.train.mlflow_experiment) for c in wanting}
    if len(places) > 1:
        raise ConfigError("the cells of a compare log to one MLflow store and experiment; do not vary "
                          "train.mlflow_uri or train.mlflow_experiment.")
    uri, experiment = places.pop()
    return open_store(uri, experiment)


class CompareLog:
    """A compare's parent run in MLflow and, under it, each finished run, logged from its folder.

    The parent's id is kept in ``home/mlflow.json`` (a compare run again continues it); each child's in its
    run folder's ``mlflow.json`` with ``"parent_run_id"`` and ``"complete"``, so a run is logged once: a
    restarted compare logs the runs finished before it that are not logged yet, and replaces a child whose
    logging was cut short.
    """

    def __init__(self, parent: RunLog, warn: Warn) -> None:
        self.parent, self.warn = parent, warn

    @classmethod
    def start(cls, store: Store, home: Path, name: str, params: dict[str, str], warn: Warn,
              fresh: bool = False) -> CompareLog:
        known = None if fresh else read_run_file(home)
        parent = RunLog.reopen(known, warn) if known is not None and known.get("tracking_uri") == store.uri \
            else None
        if parent is None:
            parent = RunLog.create(store, name, {"trainwell.compare_dir": str(home.resolve()),
                                                 "trainwell.version": __version__}, warn)
            parent.log_params(params)
            parent.write_run_file(home)
        parent.warn = warn
        return cls(parent, warn)

    @property
    def run_id(self) -> str:
        return self.parent.run_id

    def log_run(self, folder: Path, name: str, tags: dict[str, str]) -> None:
        """A finished run of the compare, from its folder, as a child of the parent (once)."""
        from trainwell.train.load import read_config
        from trainwell.train.rundir import read_json, read_metrics

        known = read_run_file(folder)
        if known is not None and known.get("parent_run_id") == self.run_id:
            if known.get("complete"):
                return
            try:  # cut short (a killed compare): replaced whole
                self.parent.client.delete_run(known["run_id"])
            except Exception:
                pass
        try:
            cfg = read_config(folder)
            summary = read_json(folder / "summary.json", "summary")
            measures = folder / "measures.json"
            if measures.is_file():
                summary = {**summary, **read_json(measures, "measures")}
            rows = read_metrics(folder / "metrics.jsonl") if (folder / "metrics.jsonl").is_file() else []
        except (RunDirError, ConfigError) as exc:
            self.warn(f"MLflow: run '{folder}' not logged: {exc}")
            return
        try:  # a store gone away mid-compare: a warning, and the compare goes on (a rerun logs the run)
            child = RunLog.create(self.parent.store, name, {"mlflow.parentRunId": self.run_id,
                                                            "trainwell.run_dir": str(folder.resolve()), **tags},
                                  self.warn)
            child.write_run_file(folder, parent_run_id=self.run_id, complete=False)
        except Exception as exc:
            self.warn(f"MLflow: run '{folder}' not logged ({exception_line(exc, 200)}); run the compare again to "
                      "log it")
            return
        child.log_params(config_params(cfg))
        child.log_epochs(rows)
        child.finish(folder, summary)
        if not child.broken:
            child.write_run_file(folder, parent_run_id=self.run_id, complete=True)

    def finish(self, home: Path, metrics: dict[str, float], failed: bool,
               skip: Sequence[str] = (*NOT_ARTIFACTS, "runs")) -> None:
        """The compare's own results (its table's numbers, its report and plots), then the parent ends."""
        Metric = _entities().Metric
        now = _now()
        batch = [Metric(k, v, now, 0) for k, v in metrics.items() if math.isfinite(v)]
        self.parent._guard("logging the compare's results", self.parent.client.log_batch, self.run_id, metrics=batch)
        self.parent.log_folder(home, skip)
        self.parent.end("FAILED" if failed else "FINISHED")

    def end(self, status: str) -> None:
        self.parent.end(status)
