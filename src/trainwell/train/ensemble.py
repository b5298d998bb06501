"""Ensembles: several trained classifiers combined into one prediction.

Averaging independently trained networks is the most reliable way to buy accuracy and calibration
with compute (Lakshminarayanan et al. 2017, "Simple and Scalable Predictive Uncertainty Estimation
using Deep Ensembles"); snapshot ensembles get several members from one run with a cyclic learning
rate (Huang et al. 2017, "Snapshot Ensembles: Train 1, get M for free").

Python API::

    from trainwell.train.ensemble import build_ensemble, evaluate_ensemble, load_ensemble
    run = build_ensemble(["runs/a", "runs/b", "runs/c"], "runs/ens")   # writes runs/ens/
    run.summary["ensemble_acc"], run.summary["mean_member_acc"]
    trainwell.evaluate("runs/ens")        # an ensemble folder works wherever a run folder does

An ensemble folder holds ``ensemble.json`` (format, method, member folders relative to it, classes,
input shape), ``summary.json`` (each member's and each method's accuracy, NLL and ECE),
``reliability.png`` and, when the members were copied, ``members/NN/`` (self-contained).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

from trainwell.config import Config
from trainwell.errors import ConfigError, DataError, RunDirError, unknown_name_message
from trainwell.fileio import atomic_copy, atomic_write_text, write_json
from trainwell.train.rundir import check_out_dir, read_json, read_summary, save_weights, staged_out_dir
from trainwell.train.events import Callback, EpochEnd
from trainwell.train.trainer import predict_logits, resolve_device

if TYPE_CHECKING:
    from trainwell.data import Splits, TensorSplit
    from trainwell.train.load import Run

ENSEMBLE_FILE = "ensemble.json"
ENSEMBLE_FORMAT = "trainwell-ensemble"
ENSEMBLE_FORMAT_VERSION = 1
METHODS = ("mean_prob", "mean_logit", "vote")
"""How members' outputs are combined: mean of softmax probabilities (default), mean of logits, majority vote."""
MEMBER_FILES = ("config.yaml", "model.json", "model.safetensors", "summary.json")
"""What a copied member keeps (summary.json only when the member has one)."""
MEMBERS_RUNS = "members-runs"
"""train.ensemble=K: the folder (inside the ensemble) where the K member runs are trained."""


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(unknown_name_message("ensemble method", method, METHODS))
    return method


# ----------------------------------------------------------------------------- combining


def combine(logits: torch.Tensor, method: str = "mean_prob") -> torch.Tensor:
    """Members' logits (M, N, K) -> log-probabilities (N, K) of the combined prediction.

    * mean_prob: log of the mean of the members' softmax probabilities;
    * mean_logit: log_softmax of the mean logit;
    * vote: log of the vote shares smoothed by one pseudo-vote spread as the mean probability,
      (votes_k + mean_prob_k) / (M + 1): the majority class wins, a tie goes to the class with the
      highest mean probability (a pseudo-vote is worth less than a real one), and no class gets 0.

    Log-probabilities are valid logits (log_softmax leaves them unchanged), so cross-entropy,
    softmax and argmax treat an ensemble exactly like a single classifier.
    """
    _check_method(method)
    if logits.ndim != 3:
        raise DataError(f"combine expects members' logits of shape (M, N, K), got {tuple(logits.shape)}.")
    if method == "mean_logit":
        return F.log_softmax(logits.mean(0), dim=-1)
    mean = logits.softmax(-1).mean(0)  # (N, K)
    if method == "vote":
        m, k = logits.shape[0], logits.shape[-1]
        votes = F.one_hot(logits.argmax(-1), k).sum(0).to(mean.dtype)  # (N, K) members voting for each class
        mean = (votes + mean) / (m + 1)
    return mean.clamp_min(torch.finfo(mean.dtype).tiny).log()


class Ensemble(nn.Module):
    """Members combined by ``method``; ``forward(x)`` returns log-probabilities (N, K).

    Shape: x (N, *input_shape) float, as a Classifier takes it -> (N, num_classes).
    """

    def __init__(self, members: Sequence[nn.Module], method: str = "mean_prob") -> None:
        super().__init__()
        if not members:
            raise ConfigError("an ensemble needs at least one member.")
        self.members = nn.ModuleList(members)
        self.method = _check_method(method)

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's logits, stacked: (M, N, K)."""
        return torch.stack([m(x) for m in self.members]).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return combine(self.member_logits(x), self.method)

    def extra_repr(self) -> str:
        return f"method={self.method!r}"


# ----------------------------------------------------------------------------- evaluation


def _members_of(members: Sequence[nn.Module] | Ensemble) -> list[nn.Module]:
    return list(members.members) if isinstance(members, Ensemble) else list(members)


def stacked_logits(members: Sequence[nn.Module] | Ensemble, x: torch.Tensor, device: torch.device | str,
                   batch: int = 1024) -> torch.Tensor:
    """Members' logits for stored-dtype inputs x (N, ...) -> (M, N, K) float32 on the device."""
    device = torch.device(device) if isinstance(device, str) else device
    mods = _members_of(members)
    for m in mods:
        m.to(device)
    return torch.stack([predict_logits(m, x, device, batch) for m in mods])


def _score(logits: torch.Tensor, y: torch.Tensor, method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary, reliability bins by curve name) from members' logits (M, N, K) and labels (N,)."""
    from trainwell.train.calibration import calibration_summary

    y = y.to(logits.device)
    m = logits.shape[0]
    member_accs, member_nlls, member_cal = [], [], []
    for i in range(m):  # a loop over members, not examples; the same arithmetic as evaluate_split
        member_accs.append((logits[i].argmax(1) == y).float().mean().item())
        member_nlls.append(F.cross_entropy(logits[i], y).item())
        member_cal.append(calibration_summary(logits[i].softmax(1), y))
    best = max(range(m), key=lambda i: (member_accs[i], -member_nlls[i]))
    methods: dict[str, dict[str, float]] = {}
    bins: dict[str, Any] = {}
    for name in METHODS:
        logp = combine(logits, name)
        cal = calibration_summary(logp.exp(), y)
        methods[name] = {"acc": (logp.argmax(1) == y).float().mean().item(), "nll": cal["nll"],
                         "ece": cal["ece"], "brier": cal["brier"]}
        bins[name] = {"bins": cal["bins"], "ece": cal["ece"]}
    bins["best_member"] = {"bins": member_cal[best]["bins"], "ece": member_cal[best]["ece"]}
    chosen = methods[method]
    mean_acc = sum(member_accs) / m
    summary = {
        "method": method,
        "n": int(y.shape[0]),
        "n_members": m,
        "member_accs": member_accs,
        "member_nlls": member_nlls,
        "member_eces": [c["ece"] for c in member_cal],
        "mean_member_acc": mean_acc,
        "mean_member_nll": sum(member_nlls) / m,
        "mean_member_ece": sum(c["ece"] for c in member_cal) / m,
        "best_member": best,
        "best_member_acc": member_accs[best],
        "ensemble_acc": chosen["acc"],
        "nll": chosen["nll"],
        "ece": chosen["ece"],
        "gain": chosen["acc"] - mean_acc,
        "methods": methods,
    }
    return summary, bins


def evaluate_ensemble(members: Sequence[nn.Module] | Ensemble, split: TensorSplit,
                      device: torch.device | str = "cpu", batch: int = 1024, *,
                      method: str = "mean_prob") -> dict[str, Any]:
    """Each member and each combination method on a split, from one pass of every member.

    Returns ``member_accs``/``member_nlls``/``member_eces`` (each member's accuracy equals its own
    ``evaluate``), ``mean_member_acc``, ``methods`` ({method: acc, nll, ece, brier}; vote's NLL/ECE
    are those of its smoothed vote shares) and, for ``method`` (mean_prob unless given), the
    top-level ``ensemble_acc``, ``nll``, ``ece`` and ``gain`` = ensemble_acc - mean_member_acc.
    Vectorised: the members' outputs are stacked (M, N, K); no Python loop over examples.
    """
    _check_method(method)
    if len(split) == 0:
        raise DataError("evaluate_ensemble needs a non-empty split (data.val_fraction=0 leaves val empty).")
    return _score(stacked_logits(members, split.x, device, batch), split.y, method)[0]


# ----------------------------------------------------------------------------- building


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _load_members(run_dirs: Sequence[str | Path]) -> list[Run]:
    """load_run each folder and check that they predict the same classes from the same inputs."""
    from trainwell.train.load import load_run

    dirs = [Path(d) for d in run_dirs]
    if len(dirs) < 2:
        raise ConfigError(f"an ensemble needs at least 2 runs, got {len(dirs)}; pass more RUN_DIRs.")
    seen: dict[Path, Path] = {}
    for d in dirs:
        key = d.resolve()
        if key in seen:
            raise ConfigError(f"run '{d}' is given twice (also as '{seen[key]}'); list each member once.")
        seen[key] = d
        if (d / ENSEMBLE_FILE).is_file():
            raise ConfigError(f"'{d}' is an ensemble, not a run; pass the runs it was built from.")
    runs = [load_run(d) for d in dirs]
    first = runs[0]
    for d, run in zip(dirs[1:], runs[1:]):
        if run.input_shape != first.input_shape:
            raise DataError(
                f"run '{d}' takes inputs of shape {run.input_shape} but '{dirs[0]}' takes {first.input_shape}; "
                "ensemble runs trained on the same kind of data."
            )
        if run.classes != first.classes:
            raise DataError(
                f"run '{d}' predicts classes {_short(run.classes)} but '{dirs[0]}' predicts {_short(first.classes)}; "
                "ensemble runs trained on the same classes, in the same order."
            )
    return runs


def _short(classes: list[str], n: int = 6) -> str:
    return "[" + ", ".join(classes[:n]) + (f", ... ({len(classes)} in all)" if len(classes) > n else "") + "]"


def build_ensemble(
    run_dirs: Sequence[str | Path],
    out: str | Path | None = None,
    *,
    method: str = "mean_prob",
    copy: bool = True,
    overwrite: bool = False,
    split: str = "test",
) -> Run:
    """Combine trained runs into an ensemble folder and evaluate it; returns the ensemble as a Run.

    The runs must take the same input shape and predict the same classes in the same order. With
    ``copy`` each member's config.yaml, model.json, model.safetensors and summary.json go to
    ``out/members/NN/`` (a self-contained folder); without, ``ensemble.json`` points at the runs
    (paths relative to ``out``). The ensemble is evaluated on ``split`` of the first member's data:
    ``summary.json`` and ``reliability.png`` (the ensemble against its best member).

    The folder is built beside ``out`` and swapped in when complete (:func:`staged_out_dir`): an error
    (a member's data gone) or a kill leaves no half-written ensemble, and an existing one intact.
    """
    _check_method(method)
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split '{split}' is not one of train, val, test.")
    dirs = [Path(d) for d in run_dirs]
    out_path = Path(out) if out is not None else None
    if out_path is not None:  # before loading anything
        for d in dirs:
            if _inside(out_path, d):
                raise RunDirError(f"output folder '{out_path}' is (inside) the member run '{d}'; choose another --out.")
            if _inside(d, out_path):
                raise RunDirError(f"member run '{d}' lies inside the output folder '{out_path}', which the ensemble "
                                  "replaces; choose another --out.")
        check_out_dir(out_path, overwrite)
    runs = _load_members(run_dirs)
    cfg = runs[0].config
    staged = staged_out_dir(out_path, "ensemble", f"{cfg.data.name}-{len(runs)}x{cfg.model.name}", overwrite)
    with staged as tmp:
        run = write_ensemble(tmp, runs, dirs, method=method, copy=copy, split=split)
    run.dir = staged.path
    return run


def write_ensemble(
    out_dir: Path,
    runs: list[Run],
    run_dirs: list[Path],
    *,
    method: str = "mean_prob",
    copy: bool = True,
    split: str = "test",
    splits: Splits | None = None,
    extra: dict[str, Any] | None = None,
) -> Run:
    """Evaluate the ensemble, then write members/ (when ``copy``), ensemble.json, reliability.png and,
    last, summary.json (its presence marks a finished ensemble).

    Everything that can fail on the input (the data, its shape and labels, the device) is checked and
    computed before the first file is written. ``out_dir`` exists and is empty or being rewritten
    (:func:`build_ensemble` stages it; train.ensemble=K writes its own folder). ``splits``: the data
    already loaded (else the first member's data config is loaded). Without ``copy``, members are
    recorded relative to ``out_dir`` (a staged folder has the same parent as its target: same paths).
    """
    from trainwell.version import __version__
    from trainwell.data import load_splits
    from trainwell.train.calibration import plot_reliability
    from trainwell.train.load import Run

    first = runs[0]
    cfg = first.config
    splits = splits if splits is not None else load_splits(cfg.data)
    if tuple(splits.input_shape) != first.input_shape:
        raise DataError(f"data '{splits.description}' has examples of shape {tuple(splits.input_shape)} but the "
                        f"members expect {first.input_shape}; evaluate on data like the training data.")
    part = getattr(splits, split)
    if len(part) == 0:
        raise DataError(f"the {split} split of '{splits.description}' is empty; evaluate on another split.")
    if int(part.y.max()) >= len(first.classes):
        raise DataError(f"labels out of range: the data has label {int(part.y.max())} but the members know "
                        f"{len(first.classes)} classes.")
    device = resolve_device(cfg.train.device)
    ensemble = Ensemble([r.model for r in runs], method)
    logits = stacked_logits(ensemble, part.x, device, cfg.train.eval_batch_size)
    scores, bins = _score(logits, part.y, method)
    rel = [f"members/{i:02d}" for i in range(len(run_dirs))] if copy else \
        [Path(os.path.relpath(d.resolve(), out_dir.resolve())).as_posix() for d in run_dirs]
    summary = {
        "kind": "ensemble",
        **scores,
        f"{split}_acc": scores["ensemble_acc"],
        f"{split}_loss": scores["nll"],
        "members": rel,
        "sources": [str(d) for d in run_dirs],
        "split": split,
        "data": splits.description,
        "diverged": any(bool(r.summary.get("diverged")) for r in runs),
        **(extra or {}),
    }

    if copy:
        for d, folder in zip(run_dirs, rel):
            dest = out_dir / folder
            dest.mkdir(parents=True)
            for name in MEMBER_FILES:
                if (d / name).is_file():
                    atomic_copy(d / name, dest / name)
    write_json(out_dir / ENSEMBLE_FILE, {
        "format": ENSEMBLE_FORMAT,
        "format_version": ENSEMBLE_FORMAT_VERSION,
        "trainwell_version": __version__,
        "method": method,
        "members": rel,
        "classes": list(first.classes),
        "input_shape": list(first.input_shape),
    })
    best = scores["best_member"]
    plot_reliability({f"ensemble of {len(runs)} ({method})": bins[method],
                      f"best member ({Path(run_dirs[best]).name})": bins["best_member"]},
                     out_dir / "reliability.png", title=f"{cfg.data.name}, {split} split: ensemble vs best member")
    write_json(out_dir / "summary.json", summary)  # last: its presence marks a finished ensemble
    ensemble.to("cpu").eval()
    return Run(out_dir, cfg, ensemble, summary, list(first.classes), first.input_shape, splits)


# ----------------------------------------------------------------------------- loading

#: The most members an ensemble folder may list.
MAX_MEMBERS = 1000


def _bad_file(path: Path, what: str) -> RunDirError:
    return RunDirError(f"ensemble file '{path}' is invalid ({what}); rebuild it with 'trainwell ensemble RUN_DIR...'.")


def require_finished_ensemble(path: Path) -> None:
    """An ensemble folder must hold summary.json, written last by both ``trainwell ensemble`` and
    train.ensemble=K; the second resumes (its members train in members-runs/), the first is rebuilt."""
    if (path / "summary.json").is_file():
        return
    what = f"ensemble '{path}' did not finish (summary.json, which is written last, is missing)"
    if (path / MEMBERS_RUNS).is_dir():
        raise RunDirError(f"{what}; resume it with: trainwell train --resume {path}")
    raise RunDirError(f"{what}; build it again: trainwell ensemble RUN_DIR... --out {path} --overwrite.")


def _check_ensemble_info(info: Any, file: Path) -> tuple[str, list[str], list[str], list[int]]:
    """ensemble.json's fields and types: (method, members, classes, input_shape), one line per problem."""
    if not isinstance(info, dict) or info.get("format") != ENSEMBLE_FORMAT:
        raise _bad_file(file, f"no \"format\": \"{ENSEMBLE_FORMAT}\"")
    version = info.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _bad_file(file, "field 'format_version' must be an integer >= 1")
    if version > ENSEMBLE_FORMAT_VERSION:
        raise RunDirError(f"ensemble '{file.parent}' was written by a newer trainwell; upgrade trainwell to load it.")
    method, members, classes, shape = (info.get(k) for k in ("method", "members", "classes", "input_shape"))
    if not isinstance(method, str) or method not in METHODS:
        raise _bad_file(file, f"field 'method' {method!r:.40} is not one of {', '.join(METHODS)}")
    if not isinstance(members, list) or not 1 <= len(members) <= MAX_MEMBERS or \
            not all(isinstance(m, str) and m for m in members):
        raise _bad_file(file, f"field 'members' must be a list of 1 to {MAX_MEMBERS} folders")
    if len(set(members)) != len(members):
        raise _bad_file(file, "field 'members' lists a folder twice")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise _bad_file(file, "field 'classes' must be a list of class names (strings)")
    if not isinstance(shape, list) or not shape or \
            not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
        raise _bad_file(file, "field 'input_shape' must be a list of positive integers")
    return method, members, classes, shape


def load_ensemble(ensemble_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """Load a finished ensemble folder as a Run whose model is an :class:`Ensemble` (config: the first member's)."""
    from trainwell.errors import TrainwellError
    from trainwell.train.load import Run, load_run

    path = Path(ensemble_dir)
    file = path / ENSEMBLE_FILE
    if not path.is_dir():
        raise RunDirError(f"ensemble folder '{path}' does not exist; pass a folder written by 'trainwell ensemble'.")
    dev = resolve_device(device, what="device") if isinstance(device, str) else device
    require_finished_ensemble(path)
    if not file.is_file():
        raise RunDirError(f"'{path}' is not an ensemble folder ({ENSEMBLE_FILE} is missing); "
                          "pass a folder written by 'trainwell ensemble' or 'trainwell train train.ensemble=K'.")
    method, members, classes, shape = _check_ensemble_info(read_json(file, "ensemble file"), file)
    summary = read_summary(path)
    runs = []
    for rel in members:
        member = path / rel
        if not member.is_dir():
            raise RunDirError(f"ensemble '{path}' lists member '{rel}' but '{member}' does not exist; "
                              "restore the member or rebuild the ensemble.")
        if (member / ENSEMBLE_FILE).is_file() or (member / MEMBERS_RUNS).is_dir():
            raise _bad_file(file, f"member '{rel}' is itself an ensemble")
        try:
            run = load_run(member, dev)
        except TrainwellError as exc:
            raise RunDirError(f"ensemble '{path}', member '{rel}': {exc}") from None
        if run.classes != classes or list(run.input_shape) != shape:
            raise RunDirError(f"ensemble '{path}': member '{rel}' does not match {ENSEMBLE_FILE} (classes or input "
                              "shape differ); the folder mixes files of different ensembles — rebuild it.")
        runs.append(run)
    model = Ensemble([r.model for r in runs], method).to(dev).eval()
    return Run(path, runs[0].config, model, summary, list(runs[0].classes), runs[0].input_shape)


# ----------------------------------------------------------------------------- train.ensemble=K


def check_ensemble_keys(cfg: Config, *, custom_model: bool = False, custom_data: bool = False) -> None:
    """train.ensemble and train.snapshots against what ``train`` was given."""
    k = cfg.train.ensemble
    if k > 1 and (custom_model or custom_data):
        raise ConfigError("train.ensemble > 1 trains the members from the config in worker processes, without a "
                          "custom model=, splits= or prepare=; train the members one by one and use build_ensemble.")
    if cfg.train.snapshots and custom_model:
        raise ConfigError("train.snapshots saves loadable run folders, which a custom nn.Module cannot be rebuilt "
                          "from; use a registry model (trainwell list model) or train.snapshots=0.")


# ----------------------------------------------------------------------------- snapshot ensembles


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
            console.print(f"snapshot ensemble of {s['n_members']}: acc {100 * s['ensemble_acc']:.2f}% vs mean snapshot "
                          f"{100 * s['mean_member_acc']:.2f}% -> {target}", highlight=False)
        return block


def snapshot_callback(cfg: Config, out_dir: Path, card: dict[str, Any], n_train: int,
                      fresh: bool = True) -> SnapshotCallback:
    """The callback ``train`` adds when train.snapshots > 0 (the schedule was checked by preflight)."""
    from trainwell.train.optim import snapshot_epochs
    from trainwell.train.trainer import steps_per_epoch

    spe = steps_per_epoch(n_train, cfg.train.batch_size, cfg.train.accumulate)
    return SnapshotCallback(out_dir, cfg, card, snapshot_epochs(cfg, spe), fresh)


# ----------------------------------------------------------------------------- display


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def ensemble_table(summary: dict[str, Any]) -> Table:
    """Each member's accuracy, NLL and ECE, the members' mean, and each method's (the chosen one marked)."""
    names = [Path(s).name for s in summary.get("sources", [])] or [f"{i:02d}" for i in range(summary["n_members"])]
    table = Table(title=f"ensemble of {summary['n_members']} on {summary.get('split', 'test')} "
                        f"({summary.get('data', '')}, n={summary['n']})", title_justify="left")
    table.add_column("")
    for col in ("acc %", "NLL", "ECE %"):
        table.add_column(col, justify="right")
    for i, name in enumerate(names):
        table.add_row(f"member {i:02d} {name}", _pct(summary["member_accs"][i]), f"{summary['member_nlls'][i]:.4f}",
                      _pct(summary["member_eces"][i]), style="bold" if i == summary.get("best_member") else None)
    table.add_row("mean of members", _pct(summary["mean_member_acc"]), f"{summary['mean_member_nll']:.4f}",
                  _pct(summary["mean_member_ece"]), end_section=True)
    for name, m in summary["methods"].items():
        chosen = name == summary["method"]
        table.add_row(f"ensemble {name}{' *' if chosen else ''}", _pct(m["acc"]), f"{m['nll']:.4f}", _pct(m["ece"]),
                      style="green" if chosen else None)
    return table


__all__ = ["Ensemble", "METHODS", "build_ensemble", "combine", "evaluate_ensemble", "load_ensemble",
           "SnapshotCallback", "ensemble_table"]
