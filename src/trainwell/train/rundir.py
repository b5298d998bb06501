"""Run directories: every artefact written atomically, nothing overwritten silently.

A run directory holds everything needed to evaluate, predict, resume or fine-tune:

=================== ===========================================================
``config.yaml``     the resolved config
``model.json``      input shape, classes and format version (rebuild without pickle)
``model.safetensors`` weights, preprocessing statistics included
``metrics.jsonl``   one line per epoch
``summary.json``    final figures (written last: its presence marks a finished run)
``curves.png``      loss and accuracy per epoch
``checkpoints/``    the newest training states (trainwell.train.checkpoint): ``--resume`` continues from them
=================== ===========================================================
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from trainwell.errors import RunDirError, exception_line
from trainwell.fileio import atomic_write_bytes, fsync_dir

FORMAT = "trainwell-run"
FORMAT_VERSION = 1


def save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Save a state dict as safetensors, atomically (tensors copied to contiguous CPU storage)."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    atomic_write_bytes(path, save(tensors, metadata={"format": FORMAT}))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Load safetensors weights; a missing, truncated or corrupt file is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"weights file '{path}' is missing; the run did not finish or the folder is incomplete.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise RunDirError(
            f"weights file '{path}' is corrupt or truncated ({exception_line(exc, 80)}); "
            "retrain or restore it from a backup."
        ) from None


def default_run_dir(kind: str, tag: str, root: Path = Path("runs")) -> Path:
    """A fresh folder name under ``runs/``: ``20261129-191500-train-digits-mlp`` (suffixed if taken)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = root / f"{stamp}-{kind}-{tag}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = Path(f"{base}-{i}")
    return path


#: Files one of which every folder trainwell writes holds: --overwrite only ever empties such a folder.
MARKERS = ("config.yaml", "model.json", "summary.json", "ensemble.json")
#: Written last by every command: its presence marks a finished run (or ensemble, evaluation, ...).
SUMMARY = "summary.json"


def is_inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies somewhere below it (both resolved: links and ``..`` followed)."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def check_out_dir(path: Path, overwrite: bool) -> None:
    """Refuse an output path that is a file, or a non-empty folder without ``overwrite``; no side effect.

    Called before a command does its work, so a refusal never comes after minutes of it. With
    ``overwrite`` only a trainwell folder is accepted: replacing it deletes everything in it, and
    ``--out ~ --overwrite`` must not delete a home folder.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"output path '{path}' exists and is a file; choose another --out.")
    if not path.is_dir() or not any(path.iterdir()):
        return
    if not overwrite:
        raise RunDirError(f"output folder '{path}' already exists and is not empty; "
                          "choose another --out or pass --overwrite to replace its contents.")
    if not any((path / name).exists() for name in MARKERS):
        raise RunDirError(f"output folder '{path}' is not a trainwell folder (none of {', '.join(MARKERS)}), and "
                          "--overwrite deletes everything in it; choose another --out or empty it yourself.")


def _clear_folder(path: Path) -> None:
    """Delete everything inside ``path`` (not ``path`` itself)."""
    for child in path.iterdir():
        try:
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        except OSError as exc:
            raise RunDirError(f"--overwrite cannot remove '{child}': {exc.strerror}; remove it yourself or choose "
                              "another --out.") from None


def prepare_out_dir(out: str | Path | None, kind: str, tag: str, overwrite: bool,
                    say: Callable[[str], None] | None = None) -> Path:
    """Create the output folder of a run that writes into it as it goes (train, train.ensemble=K).

    An existing non-empty folder is refused unless ``overwrite``; with it, its previous contents are
    removed entirely (and ``say`` is told), so the folder only ever holds one run: nothing of an old
    run (weights, doctor plots) survives beside the new one, even if the new one is killed.
    """
    path = Path(out) if out is not None else default_run_dir(kind, tag)
    check_out_dir(path, overwrite)
    if path.is_dir() and any(path.iterdir()):
        _clear_folder(path)
        if say is not None:
            say(f"--overwrite: removed the previous contents of {path}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create output folder '{path}': {exc.strerror}; choose another --out.") from None
    return path


# ----------------------------------------------------------------------------- staged output folders


def _sibling(path: Path, kind: str, pid: int | None = None) -> Path:
    """``.NAME.tmp-PID`` (being built) or ``.NAME.old-PID`` (being replaced), beside ``path``."""
    return path.parent / f".{path.name}.{kind}-{os.getpid() if pid is None else pid}"


def final_path(folder: Path) -> Path:
    """The folder a staged one (``.NAME.tmp-PID``, :class:`StagedDir`) becomes when it is swapped in;
    any other folder itself. What a run being built names itself by: in its messages, its MLflow run."""
    match = re.fullmatch(r"\.(.+)\.tmp-\d+", folder.name)
    return folder.parent / match.group(1) if match else folder


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return True


def _remove_stale_siblings(path: Path) -> None:
    """Clean up after a staged command that was killed: its ``.tmp-PID`` is deleted; an ``.old-PID``
    (killed between its two renames) is put back when ``path`` itself is missing, else deleted."""
    if not path.parent.is_dir():
        return
    prefix = f".{path.name}."
    for sibling in path.parent.iterdir():
        kind, _, pid = sibling.name[len(prefix):].partition("-")
        if not sibling.name.startswith(prefix) or kind not in ("tmp", "old") or not pid.isdigit():
            continue
        if int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue  # another command is building this folder right now
        if kind == "old" and not path.exists():
            os.rename(sibling, path)
        else:
            shutil.rmtree(sibling, ignore_errors=True)


class StagedDir:
    """An output folder built as a hidden sibling and swapped in whole: ``with staged as tmp: write into tmp``.

    Made by :func:`staged_out_dir`, which has already refused a non-empty ``--out`` (before the work).
    Entering creates ``.NAME.tmp-PID`` in the same parent; leaving normally renames the old folder
    aside, the new one into place, and deletes the old one; leaving by an exception deletes the new
    one. A kill at any moment leaves the old folder intact (or restorable) and at worst a hidden
    sibling, which the next command writing ``path`` cleans up.
    """

    def __init__(self, path: Path, overwrite: bool) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.tmp = _sibling(self.path, "tmp")

    def __enter__(self) -> Path:
        check_out_dir(self.path, self.overwrite)  # again: the folder may have appeared during the work
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_siblings(self.path)
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp.mkdir()
        except OSError as exc:
            raise RunDirError(f"cannot create output folder '{self.path}': {exc.strerror}; choose another --out.") \
                from None
        return self.tmp

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        old = _sibling(self.path, "old")
        try:
            if self.path.exists() or self.path.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
                os.rename(self.path, old)
            os.rename(self.tmp, self.path)
        except OSError as exc:
            raise RunDirError(f"cannot move the new output into '{self.path}': {exc.strerror}; its contents are in "
                              f"'{self.tmp}'.") from None
        fsync_dir(self.path.parent)
        shutil.rmtree(old, ignore_errors=True)
        return False


def staged_out_dir(out: str | Path | None, kind: str, tag: str, overwrite: bool) -> StagedDir:
    """The output folder of a command whose outputs are small (evaluate, predict, doctor, lr-find,
    ensemble, finetune): checked now, before the command's work, and written staged (:class:`StagedDir`)."""
    path = Path(out) if out is not None else default_run_dir(kind, tag)
    check_out_dir(path, overwrite)
    return StagedDir(path, overwrite)


def require_finished(folder: Path, resumable: bool = True) -> None:
    """A run folder must hold summary.json, which training writes last; say what to do when it does not.

    A run killed (or still training) after it wrote its weights would otherwise be evaluated, fine-tuned
    or ensembled as if it had finished.
    """
    folder = Path(folder)
    if (folder / SUMMARY).is_file():
        return
    what = f"run '{folder}' did not finish ({SUMMARY}, which training writes last, is missing)"
    if not any((folder / "checkpoints").glob("step-*.safetensors")):
        raise RunDirError(f"{what} and has no checkpoint to resume from; train it again (--out {folder} --overwrite).")
    if not resumable:
        raise RunDirError(f"{what}; a fine-tuned run cannot be resumed: run the finetune command again "
                          f"(--out {folder} --overwrite).")
    raise RunDirError(f"{what}; resume it with: trainwell train --resume {folder}")


def read_json(path: Path, what: str) -> Any:
    """A JSON file of a run folder; missing, unreadable or not JSON is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(
            f"'{path.parent}' is not a complete trainwell run directory ({path.name} is missing); "
            "pass a folder written by 'trainwell train'."
        )
    try:
        return json.loads(path.read_text())
    except (ValueError, RecursionError, OSError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RunDirError(f"{what} '{path}' is corrupt (not valid JSON); retrain or restore it.") from None


def read_summary(folder: Path) -> dict[str, Any]:
    """A finished folder's summary.json: a JSON object (what every reader of it indexes)."""
    path = Path(folder) / SUMMARY
    summary = read_json(path, "summary")
    if not isinstance(summary, dict):
        raise RunDirError(f"summary '{path}' is invalid (not a JSON object but a {type(summary).__name__}); "
                          "retrain or restore it.")
    return summary


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl: one JSON object per line; a damaged line is one clear error naming it."""
    path = Path(path)
    rows = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, ValueError):
        raise RunDirError(f"metrics file '{path}' is unreadable (not UTF-8 text); restore it or delete it.") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            row = None
        if not isinstance(row, dict):
            raise RunDirError(f"metrics file '{path}' line {number} is not a JSON object; restore the file or delete "
                              "it.")
        rows.append(row)
    return rows
