"""Ensemble folders: trained runs combined into a folder that loads like a run (build, write, load).

Python API::

    from trainwell.train.ensemble_dir import build_ensemble, load_ensemble
    run = build_ensemble(["runs/a", "runs/b", "runs/c"], "runs/ens")   # writes runs/ens/
    run.summary["ensemble_acc"], run.summary["mean_member_acc"]
    trainwell.evaluate("runs/ens")        # an ensemble folder works wherever a run folder does

An ensemble folder holds ``ensemble.json`` (format, method, member folders relative to it, classes,
input shape), ``summary.json`` (each member's and each method's accuracy, NLL and ECE),
``reliability.png`` and, when the members were copied, ``members/NN/`` (self-contained). The
combination and scoring are :mod:`trainwell.train.ensemble`'s.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainwell.errors import ConfigError, DataError, RunDirError
from trainwell.fileio import atomic_copy, write_json
from trainwell.train.ensemble import METHODS, Ensemble, check_method, score_logits, stacked_logits
from trainwell.train.rundir import check_out_dir, is_inside, read_json, read_summary, staged_out_dir
from trainwell.train.trainer import resolve_device

if TYPE_CHECKING:
    from trainwell.data import Splits
    from trainwell.train.load import Run

ENSEMBLE_FILE = "ensemble.json"
ENSEMBLE_FORMAT = "trainwell-ensemble"
ENSEMBLE_FORMAT_VERSION = 1
MEMBER_FILES = ("config.yaml", "model.json", "model.safetensors", "summary.json")
"""What a copied member keeps (summary.json only when the member has one)."""
MEMBERS_RUNS = "members-runs"
"""train.ensemble=K: the folder (inside the ensemble) where the K member runs are trained."""


# ----------------------------------------------------------------------------- building


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
    check_method(method)
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split '{split}' is not one of train, val, test.")
    dirs = [Path(d) for d in run_dirs]
    out_path = Path(out) if out is not None else None
    if out_path is not None:  # before loading anything
        for d in dirs:
            if is_inside(out_path, d):
                raise RunDirError(f"output folder '{out_path}' is (inside) the member run '{d}'; choose another --out.")
            if is_inside(d, out_path):
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
    scores, bins = score_logits(logits, part.y, method)
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


__all__ = ["ENSEMBLE_FILE", "MEMBERS_RUNS", "build_ensemble", "load_ensemble", "require_finished_ensemble",
           "write_ensemble"]
