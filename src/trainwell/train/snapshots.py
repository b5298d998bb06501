"""Snapshot ensembles: one run's weights saved at the end of each learning-rate cycle, then combined.

With a cyclic (cosine_restarts) schedule each cycle ends in a different minimum, so the snapshots
make an ensemble from one training run (Huang et al. 2017, "Snapshot Ensembles: Train 1, get M for
free"). :class:`SnapshotCallback` saves each snapshot as a loadable run folder; its ``combine``
writes them into an ensemble folder (:func:`trainwell.train.ensemble_dir.write_ensemble`).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainwell.config import Config
from trainwell.fileio import atomic_write_text, write_json
from trainwell.formatting import percent
from trainwell.train.ensemble_dir import write_ensemble
from trainwell.train.events import Callback, EpochEnd
from trainwell.train.rundir import save_weights

if TYPE_CHECKING:
    from rich.console import Console

    from trainwell.data import Splits


class SnapshotCallback(Callback):
    """Trainer callback: at the end of each cosine_restarts cycle, save the weights as a loadable run
    folder ``out/snapshots/NN/`` (config.yaml, model.json, model.safetensors, summary.json)."""

    def __init__(self, out_dir: Path, cfg: Config, card: dict[str, Any], epochs: Sequence[int],
                 fresh: bool = True) -> None:
        self.dir = Path(out_dir) / "snapshots"
        self.config_yaml = cfg.to_yaml()
        self.card = card
        self.epochs = list(epochs)
        self.saved: list[Path] = []
        if fresh:
            shutil.rmtree(self.dir, ignore_errors=True)  # a previous run's snapshots (--overwrite)

    def state_dict(self) -> dict[str, Any]:
        return {"saved": [p.name for p in self.saved]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved = [self.dir / name for name in state["saved"]]

    def on_epoch_end(self, event: EpochEnd) -> None:
        if event.epoch not in self.epochs:
            return
        i = len(self.saved)
        folder = self.dir / f"{i:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "config.yaml", self.config_yaml)
        write_json(folder / "model.json", self.card)
        save_weights(folder / "model.safetensors", event.model.state_dict())
        write_json(folder / "summary.json", {"snapshot": i, "cycle": i + 1, "epoch": event.epoch,
                                             **{k: event.metrics[k] for k in ("train_loss", "train_acc", "val_loss",
                                                                            "val_acc", "lr") if k in event.metrics}})
        self.saved.append(folder)

    def combine(self, out_dir: Path, splits: Splits, console: Console | None = None) -> dict[str, Any]:
        """Build ``out_dir/snapshot-ensemble`` from the snapshots (members not copied); returns the
        block that goes into the run's summary.json."""
        from trainwell.train.load import load_run

        target = Path(out_dir) / "snapshot-ensemble"
        if len(self.saved) < 2:
            return {"skipped": f"{len(self.saved)} snapshot(s) saved (training stopped early); an ensemble needs 2"}
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        runs = [load_run(d) for d in self.saved]
        run = write_ensemble(target, runs, list(self.saved), copy=False, splits=splits,
                             extra={"snapshot_epochs": self.epochs[: len(self.saved)]})
        s = run.summary
        block = {k: s[k] for k in ("n_members", "member_accs", "mean_member_acc", "ensemble_acc", "nll", "ece",
                                   "gain", "mean_member_nll", "mean_member_ece")}
        block.update(epochs=self.epochs[: len(self.saved)], dir=str(target))
        if console is not None:
            console.print(f"snapshot ensemble of {s['n_members']}: acc {percent(s['ensemble_acc'])} vs mean snapshot "
                          f"{percent(s['mean_member_acc'])} -> {target}", highlight=False)
        return block


def snapshot_callback(cfg: Config, out_dir: Path, card: dict[str, Any], n_train: int,
                      fresh: bool = True) -> SnapshotCallback:
    """The callback ``train`` adds when train.snapshots > 0 (the schedule was checked by preflight)."""
    from trainwell.train.optim import snapshot_epochs
    from trainwell.train.trainer import steps_per_epoch

    spe = steps_per_epoch(n_train, cfg.train.batch_size, cfg.train.accumulate)
    return SnapshotCallback(out_dir, cfg, card, snapshot_epochs(cfg, spe), fresh)


__all__ = ["SnapshotCallback", "snapshot_callback"]
