"""The loop's standard callbacks: what a run folder logs and what the config turns on.

* :class:`MetricsFile` — ``metrics.jsonl``, one row per epoch (rewritten from the state after a
  resume or a rollback, so it always matches the weights: :class:`RowsFile`);
* :class:`ProgressDisplay` — the rich bar and one line per epoch;
* :class:`CsvFile` — ``train.log=csv``: ``metrics.csv``, the same rows for spreadsheets;
* :class:`TensorBoardLog` — ``train.tensorboard=true``;
* :class:`MlflowLog` — ``train.log=mlflow``: each epoch's row into an MLflow run once a checkpoint holds it;
* :class:`EarlyStopping` — ``train.early_stopping=PATIENCE`` on val_acc;
* :class:`KeepBest` — ``train.keep=best``: the weights of the best validation epoch are the ones kept.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console

from trainwell.fileio import atomic_write_text, json_default
from trainwell.train.events import Callback, EpochEnd, FitEnd, FitStart, Restore, StepEnd
from trainwell.train.progress import TrainProgress, format_epoch

if TYPE_CHECKING:  # (the tracking module imports mlflow only when a run logs to it)
    from trainwell.train.tracking import RunLog


class RowsFile(Callback):
    """A file of the run's metrics rows that always matches the weights: rewritten from the state's
    history at the fit's start (a resumed run: exactly the rows of its checkpoint) and after a
    rollback, then one row appended per epoch, flushed, so a crash loses at most the current epoch.
    Subclasses say how rows are written (:meth:`rewrite`, :meth:`append`)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def rewrite(self, rows: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def append(self, row: dict[str, Any], history: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def on_fit_start(self, event: FitStart) -> None:
        self.rewrite(event.state.history)

    def on_restore(self, event: Restore) -> None:
        self.rewrite(event.state.history)

    def on_epoch_end(self, event: EpochEnd) -> None:
        self.append(event.metrics, event.state.history if event.state is not None else [event.metrics])


class MetricsFile(RowsFile):
    """``metrics.jsonl``: one JSON object per epoch."""

    def rewrite(self, rows: list[dict[str, Any]]) -> None:
        atomic_write_text(self.path, "".join(json.dumps(r, default=json_default) + "\n" for r in rows))

    def append(self, row: dict[str, Any], history: list[dict[str, Any]]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(row, default=json_default) + "\n")
            fh.flush()


class CsvFile(RowsFile):
    """``metrics.csv``: the rows of metrics.jsonl as a table, header from their keys (in the rows' order);
    a row with a key the header lacks rewrites the file with the wider header. A missing value is an
    empty cell."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.columns: list[str] = []

    @staticmethod
    def _line(row: dict[str, Any], columns: list[str]) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(["" if row.get(k) is None else row[k] for k in columns])
        return buf.getvalue()

    def rewrite(self, rows: list[dict[str, Any]]) -> None:
        self.columns = list(dict.fromkeys(k for row in rows for k in row))
        text = "".join(self._line(r, self.columns) for r in rows)
        atomic_write_text(self.path, (self._line({k: k for k in self.columns}, self.columns) + text) if rows else "")

    def append(self, row: dict[str, Any], history: list[dict[str, Any]]) -> None:
        if not self.columns or any(k not in self.columns for k in row):
            self.rewrite(history)
            return
        with self.path.open("a", newline="") as fh:
            fh.write(self._line(row, self.columns))
            fh.flush()


class ProgressDisplay(Callback):
    """A live bar on a terminal (``live``), one line per epoch everywhere."""

    def __init__(self, console: Console, epochs: int, live: bool) -> None:
        self.epochs = epochs
        self.bar = TrainProgress(console, live=live) if live else None
        self.console = console

    def on_fit_start(self, event: FitStart) -> None:
        if self.bar is not None:
            self.bar.start(event.total_steps, event.batch_size, done=event.state.step)

    def on_step_end(self, event: StepEnd) -> None:
        if self.bar is not None:
            self.bar.advance(1, event.stats)

    def on_epoch_end(self, event: EpochEnd) -> None:
        self.console.print(format_epoch(event.metrics, self.epochs), highlight=False)

    def on_fit_end(self, event: FitEnd) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class TensorBoardLog(Callback):
    """Every metric of every epoch as a TensorBoard scalar (``train/loss``, ``val/acc``, ...)."""

    def __init__(self, folder: Path, writer_class: Any) -> None:
        self.folder, self.writer_class = folder, writer_class
        self.writer: Any = None  # a writer_class instance while a fit runs

    def _open(self, epochs_done: int) -> None:
        # purge_step drops the events logged after the state the run (re)starts from: those of a killed
        # run after its checkpoint, those of a diverged attempt after a rollback.
        self.close()
        self.writer = self.writer_class(str(self.folder), purge_step=epochs_done + 1)

    def on_fit_start(self, event: FitStart) -> None:
        self._open(event.state.epoch)

    def on_restore(self, event: Restore) -> None:
        self._open(event.state.epoch)

    def on_epoch_end(self, event: EpochEnd) -> None:
        for key, value in event.metrics.items():
            if key != "epoch":
                self.writer.add_scalar(key.replace("_", "/", 1), value, event.epoch)

    def on_fit_end(self, event: FitEnd) -> None:
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class MlflowLog(Callback):
    """Every epoch's metrics row into an MLflow run (:mod:`trainwell.train.tracking`), step = the epoch.

    A row is logged once the checkpoint that holds it is written: at the next optimiser step (the
    epoch-end checkpoint comes before it), or at the fit's start and end and after a rollback (the state
    is a checkpoint's then). A killed run or a rollback resumes from a checkpoint, never before a
    logged epoch: no epoch is logged twice, and what MLflow holds equals metrics.jsonl.
    """

    def __init__(self, log: RunLog) -> None:
        self.log = log
        self.logged = log.logged_epochs()  # a resumed MLflow run's epochs are not logged again

    def _flush(self, history: list[dict[str, Any]]) -> None:
        rows = [r for r in history if int(r["epoch"]) > self.logged]
        if rows:
            self.log.log_epochs(rows)
            self.logged = max(int(r["epoch"]) for r in rows)

    def on_fit_start(self, event: FitStart) -> None:
        self._flush(event.state.history)

    def on_step_end(self, event: StepEnd) -> None:
        if event.state.epoch > self.logged:  # the first step after an epoch's end (and its checkpoint)
            self._flush(event.state.history)

    def on_restore(self, event: Restore) -> None:
        self._flush(event.state.history)

    def on_fit_end(self, event: FitEnd) -> None:
        self._flush(event.state.history)


class EarlyStopping(Callback):
    """Stop when val_acc has not risen for ``patience`` epochs (Prechelt 1998's simplest criterion)."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best = -math.inf
        self.waited = 0
        self.stopped_epoch: int | None = None

    def on_epoch_end(self, event: EpochEnd) -> None:
        acc = event.metrics.get("val_acc", math.nan)
        if acc > self.best:
            self.best, self.waited = acc, 0
        else:
            self.waited += 1
        if self.waited >= self.patience and event.state is not None:
            self.stopped_epoch = event.epoch
            event.state.stop_reason = "early_stopping"

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "waited": self.waited, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.waited, self.stopped_epoch = float(state["best"]), int(state["waited"]), state["stopped_epoch"]


class KeepBest(Callback):
    """Remember the validated weights of the epoch with the highest val_acc; put them back at the end."""

    def __init__(self) -> None:
        self.best = -math.inf
        self.epoch = 0
        self.weights: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, event: EpochEnd) -> None:
        acc = event.metrics.get("val_acc", math.nan)
        if acc > self.best:
            self.best, self.epoch = acc, event.epoch
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in event.model.state_dict().items()}

    def on_fit_end(self, event: FitEnd) -> None:
        if self.weights is not None:
            event.state.eval_model.load_state_dict(self.weights)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "epoch": self.epoch, "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.epoch, self.weights = float(state["best"]), int(state["epoch"]), state["weights"]
