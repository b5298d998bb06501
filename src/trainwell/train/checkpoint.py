"""Checkpoints: a training state saved so that a killed run continues exactly where it was.

A checkpoint is two files in ``RUN_DIR/checkpoints/``:

* ``step-000001234.safetensors`` — every tensor of the state (weights, optimiser moments, generator
  states, the epoch's permutation, the running sums of the epoch), no pickle;
* ``step-000001234.json`` — everything else (counters, history, callbacks' state), with the
  SHA-256 and size of the tensor file and of the JSON state itself.

Both are written atomically (temporary file in the same folder, fsync, ``os.replace``, fsync of the
folder) and the JSON last: a checkpoint exists only once its JSON does, and it is *good* only when
both hashes match. Loading takes the newest good one; a newer checkpoint that is truncated, corrupt
or half-written (a kill during the write) is skipped with one line saying so. Only the last
``keep`` checkpoints are kept.

The state is a nested tree of dicts/lists/scalars/tensors; :func:`split_tree` moves its tensors out
(leaving ``{"__tensor__": key}`` in their place) and :func:`join_tree` puts them back, so any
``state_dict()`` (a module's, an optimiser's with its integer keys, a callback's) round-trips exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from trainwell.errors import RunDirError
from trainwell.fileio import atomic_write_bytes, fsync_dir

CHECKPOINT_FORMAT = "trainwell-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d{9})\.json$")
_TENSOR, _INTKEYS, _TUPLE = "__tensor__", "__intkeys__", "__tuple__"


# ----------------------------------------------------------------------------- tree codec


def split_tree(tree: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """(JSON-able tree, tensors by key): tensors replaced by ``{"__tensor__": key}``.

    Dicts with integer keys (an optimiser's ``state``) and tuples are tagged so :func:`join_tree`
    restores them as they were; tensors are copied to contiguous CPU storage.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, torch.Tensor):
            key = path or "root"
            tensors[key] = node.detach().to("cpu").contiguous().clone()
            return {_TENSOR: key}
        if isinstance(node, dict):
            if node and all(isinstance(k, int) and not isinstance(k, bool) for k in node):
                return {_INTKEYS: {str(k): walk(v, f"{path}.{k}") for k, v in node.items()}}
            if not all(isinstance(k, str) for k in node):
                raise TypeError(f"state keys at '{path}' must be all str or all int")
            return {k: walk(v, f"{path}.{k}" if path else k) for k, v in node.items()}
        if isinstance(node, tuple):
            return {_TUPLE: [walk(v, f"{path}.{i}") for i, v in enumerate(node)]}
        if isinstance(node, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(node)]
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"cannot checkpoint a {type(node).__name__} at '{path}'")

    return walk(tree, ""), tensors


def join_tree(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`split_tree`."""
    if isinstance(tree, dict):
        if set(tree) == {_TENSOR}:
            return tensors[tree[_TENSOR]]
        if set(tree) == {_INTKEYS}:
            return {int(k): join_tree(v, tensors) for k, v in tree[_INTKEYS].items()}
        if set(tree) == {_TUPLE}:
            return tuple(join_tree(v, tensors) for v in tree[_TUPLE])
        return {k: join_tree(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [join_tree(v, tensors) for v in tree]
    return tree


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(tree: Any) -> bytes:
    return json.dumps(tree, sort_keys=True, separators=(",", ":")).encode()


# ----------------------------------------------------------------------------- fault injection


@dataclass(frozen=True)
class Fault:
    """A kill planted by the resume tests (``TRAINWELL_FAULT``), so that the hardest moments — in the
    middle of writing a checkpoint, right after one — can be hit on purpose, not by luck:

    * ``kill-in-checkpoint:K``: SIGKILL halfway through writing the K-th checkpoint's tensor file;
    * ``kill-before-manifest:K``: SIGKILL after the K-th tensor file is in place, before its JSON;
    * ``kill-after-checkpoint:K``: SIGKILL right after the K-th checkpoint is complete.

    K counts the checkpoints this process writes (1 = the first). Unset: nothing happens.
    """

    where: str = ""
    count: int = 0

    @classmethod
    def from_env(cls) -> Fault:
        spec = os.environ.get("TRAINWELL_FAULT", "")
        where, _, count = spec.partition(":")
        if where not in ("kill-in-checkpoint", "kill-before-manifest", "kill-after-checkpoint") or not count.isdigit():
            return cls()
        return cls(where, int(count))

    def at(self, where: str, count: int, before: Callable[[], None] | None = None) -> None:
        if self.where == where and self.count == count:
            if before is not None:
                before()
            os.kill(os.getpid(), signal.SIGKILL)


# ----------------------------------------------------------------------------- the folder


@dataclass
class Loaded:
    """A checkpoint read back: its state tree, step, epoch and file."""

    state: Any
    step: int
    epoch: int
    path: Path


class Checkpoints:
    """The checkpoints of one run folder; ``folder=None`` keeps the last one in memory only
    (the loop's divergence rollback works the same without a run folder)."""

    def __init__(self, folder: Path | None, keep: int = 2) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.keep = max(1, int(keep))
        self.written = 0
        self.fault = Fault.from_env()
        self._memory: Loaded | None = None
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            for stale in self.folder.glob(".*.tmp"):  # a write killed half-way
                stale.unlink(missing_ok=True)

    def save(self, tree: Any, step: int, epoch: int) -> Path | None:
        """Write the state as the checkpoint of ``step``; returns its JSON file (None in memory)."""
        json_tree, tensors = split_tree(tree)
        self.written += 1
        if self.folder is None:
            self._memory = Loaded(join_tree(json_tree, tensors), step, epoch, Path("<memory>"))
            return None
        stem = f"step-{step:09d}"
        data = save_tensors(tensors, metadata={"format": CHECKPOINT_FORMAT})
        tensor_path = self.folder / f"{stem}.safetensors"
        manifest_path = self.folder / f"{stem}.json"
        manifest_path.unlink(missing_ok=True)  # an older checkpoint of this step (before a rollback) is void now
        self.fault.at("kill-in-checkpoint", self.written, before=lambda: self._half_write(tensor_path, data))
        atomic_write_bytes(tensor_path, data)
        self.fault.at("kill-before-manifest", self.written)
        manifest = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "step": step,
            "epoch": epoch,
            "tensors": tensor_path.name,
            "tensors_bytes": len(data),
            "tensors_sha256": _sha256(data),
            "state_sha256": _sha256(_canonical(json_tree)),
            "state": json_tree,
        }
        atomic_write_bytes(manifest_path, json.dumps(manifest).encode())
        self._prune()
        self.fault.at("kill-after-checkpoint", self.written)
        return manifest_path

    def _half_write(self, path: Path, data: bytes) -> None:
        tmp = path.parent / f".{path.name}.fault.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            os.fsync(fh.fileno())

    def _steps(self) -> list[int]:
        assert self.folder is not None
        return sorted(int(m.group(1)) for p in self.folder.iterdir() if (m := _NAME.match(p.name)))

    def _prune(self) -> None:
        steps = self._steps()
        for step in steps[: -self.keep]:
            stem = self.folder / f"step-{step:09d}"  # type: ignore[operator]
            Path(f"{stem}.json").unlink(missing_ok=True)  # the manifest first: never a manifest without tensors
            Path(f"{stem}.safetensors").unlink(missing_ok=True)
        # tensor files without a manifest (a kill before it was written) are never loaded; drop them
        for orphan in self.folder.glob("step-*.safetensors"):  # type: ignore[union-attr]
            if not orphan.with_suffix(".json").is_file():
                orphan.unlink(missing_ok=True)
        fsync_dir(self.folder)  # type: ignore[arg-type]

    def discard_after(self, step: int) -> None:
        """Delete checkpoints newer than ``step`` (a rollback replays from ``step``)."""
        if self.folder is None:
            return
        for s in self._steps():
            if s > step:
                Path(self.folder / f"step-{s:09d}.json").unlink(missing_ok=True)
                Path(self.folder / f"step-{s:09d}.safetensors").unlink(missing_ok=True)

    def latest(self, warn: Callable[[str], None] | None = None) -> Loaded | None:
        """The newest good checkpoint; each newer bad one is reported through ``warn`` and skipped."""
        if self.folder is None:
            return self._memory
        if not self.folder.is_dir():
            return None
        steps = self._steps()
        orphans = sorted(int(p.name[5:14]) for p in self.folder.glob("step-*.safetensors")
                         if not p.with_suffix(".json").is_file() and p.name[5:14].isdigit())
        if orphans and warn is not None and (not steps or orphans[-1] > steps[-1]):
            warn(f"checkpoint step-{orphans[-1]:09d} in '{self.folder}' was being written when the run stopped "
                 "(its manifest is missing); using the one before it")
        for step in reversed(steps):
            path = self.folder / f"step-{step:09d}.json"
            try:
                return self._read(path)
            except RunDirError as exc:
                if warn is not None:
                    warn(f"{exc}; falling back to the checkpoint before it")
        return None

    def _read(self, path: Path) -> Loaded:
        try:
            manifest = json.loads(path.read_bytes())
            if manifest.get("format") != CHECKPOINT_FORMAT:
                raise ValueError("not a trainwell checkpoint")
            if int(manifest.get("version", 0)) > CHECKPOINT_VERSION:
                raise RunDirError(f"checkpoint '{path}' was written by a newer trainwell; upgrade trainwell")
            json_tree = manifest["state"]
            if _sha256(_canonical(json_tree)) != manifest["state_sha256"]:
                raise ValueError("its state does not match its hash")
            data = (path.parent / manifest["tensors"]).read_bytes()
            if len(data) != manifest["tensors_bytes"] or _sha256(data) != manifest["tensors_sha256"]:
                raise ValueError(f"{manifest['tensors']} does not match its hash (truncated or corrupt)")
            tensors = load_tensors(data)
            return Loaded(join_tree(json_tree, tensors), int(manifest["step"]), int(manifest["epoch"]), path)
        except RunDirError:
            raise
        except (OSError, ValueError, KeyError, TypeError, SafetensorError, UnicodeDecodeError) as exc:
            reason = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
            raise RunDirError(f"checkpoint '{path.name}' in '{path.parent}' is unreadable ({reason})") from None
