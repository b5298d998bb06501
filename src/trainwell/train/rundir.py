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
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from trainwell.errors import RunDirError
from trainwell.fileio import atomic_write_bytes

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
            f"weights file '{path}' is corrupt or truncated ({str(exc).splitlines()[0][:80]}); "
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


def prepare_out_dir(out: str | Path | None, kind: str, tag: str, overwrite: bool) -> Path:
    """Create the output folder; an existing non-empty one is refused unless ``overwrite``."""
    path = Path(out) if out is not None else default_run_dir(kind, tag)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"output path '{path}' exists and is a file; choose another --out.")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise RunDirError(
                f"output folder '{path}' already exists and is not empty; "
                "choose another --out or pass --overwrite to replace its contents."
            )
        # Stale artefacts of the previous run must not mix with the new ones.
        for name in ("metrics.jsonl", "summary.json"):
            (path / name).unlink(missing_ok=True)
        shutil.rmtree(path / "checkpoints", ignore_errors=True)  # never resume into another run's state
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create output folder '{path}': {exc.strerror}; choose another --out.") from None
    return path


def read_json(path: Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise RunDirError(
            f"'{path.parent}' is not a complete trainwell run directory ({path.name} is missing); "
            "pass a folder written by 'trainwell train'."
        )
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunDirError(f"{what} '{path}' is corrupt (not valid JSON); retrain or restore it.") from None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows
