"""Checkpoints: a training state saved so that a killed run continues exactly where it was.

A checkpoint is one file, ``RUN_DIR/checkpoints/step-000001234.safetensors``: every tensor of the
state (weights, optimiser moments, generator states, the epoch's permutation, the running sums of
the epoch) as safetensors, and everything else (counters, history, callbacks' state) as JSON in its
header's metadata, with the SHA-256 of the tensors' bytes and of that JSON. No pickle.

It is written atomically (temporary file in the same folder, fsync, ``os.replace``, fsync of the
folder): a checkpoint exists whole or not at all, and it is *good* only when both hashes match.
Loading takes the newest good one; a newer one that is truncated or corrupt, or one whose write a
kill interrupted (its temporary file is left), is skipped with one line saying so. Only the last
``keep`` checkpoints are kept.

The loop only waits for the state to be copied (a few tenths of a millisecond for a small model);
serialising, hashing, writing and fsyncing happen on one background thread, in order, overlapping
the next steps. :meth:`Checkpoints.flush` waits for them; reading a checkpoint and the end of
``fit`` flush first, and an error of a background write (a full disk) is raised there.

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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors

from trainwell.errors import RunDirError, exception_line
from trainwell.fileio import atomic_file

CHECKPOINT_FORMAT = "trainwell-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d{9})\.safetensors$")
_TMP = re.compile(r"^\.step-(\d{9})\.safetensors\..*\.tmp$")
_TENSOR, _INTKEYS, _TUPLE = "__tensor__", "__intkeys__", "__tuple__"


# ----------------------------------------------------------------------------- tree codec


def split_tree(tree: Any, copy: bool = True) -> tuple[Any, dict[str, torch.Tensor]]:
    """(JSON-able tree, tensors by key): tensors replaced by ``{"__tensor__": key}``.

    Dicts with integer keys (an optimiser's ``state``) and tuples are tagged so :func:`join_tree`
    restores them as they were; with ``copy`` tensors are copied to CPU (else they are the live
    ones, detached: :func:`pack_safetensors` copies them itself). The containers are always new.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, torch.Tensor):
            key = path or "root"
            tensors[key] = node.detach().to("cpu", copy=True) if copy else node.detach()
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


#: torch dtype -> safetensors dtype name (the format's little-endian types).
SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                      torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                      torch.uint8: "U8", torch.bool: "BOOL"}


def pack_safetensors(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """(safetensors header entries, the tensors' bytes as new CPU uint8 tensors, one per device).

    Laid out device by device (CPU first), by name within a device: the copy is one ``torch.cat``
    per device (and one device-to-host transfer on a GPU), which runs without holding Python's GIL;
    ``safetensors.torch.save`` builds the same file with a Python call per tensor under the GIL,
    which stalled the training thread when run beside it (docs/benchmarks.md). The file is read back
    with safetensors' own loader.
    """
    header: dict[str, Any] = {}
    groups: dict[str, list[torch.Tensor]] = {}
    offset = 0
    for key in sorted(tensors, key=lambda k: (tensors[k].device.type != "cpu", str(tensors[k].device), k)):
        t = tensors[key]
        if t.dtype not in SAFETENSORS_DTYPES:
            raise TypeError(f"cannot checkpoint tensor '{key}' of dtype {t.dtype}")
        raw = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8, device=t.device)
        header[key] = {"dtype": SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                       "data_offsets": [offset, offset + raw.numel()]}
        groups.setdefault(str(t.device), []).append(raw)
        offset += raw.numel()
    return header, [torch.cat(parts).cpu() for parts in groups.values()]


def safetensors_bytes(header: dict[str, Any], metadata: dict[str, str]) -> bytes:
    """The 8-byte length and the JSON header (padded to 8 bytes) that precede the data of a safetensors file."""
    text = json.dumps({"__metadata__": metadata, **header}, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def _sha256(data: Any) -> str:
    return hashlib.sha256(data).hexdigest()  # hashlib releases the GIL on large buffers


def _tensors_sha256(header: dict[str, Any], bodies: list[Any]) -> str:
    """Over the tensor entries (names, dtypes, shapes, offsets) and the data: a flipped dtype fails too."""
    h = hashlib.sha256(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
    for body in bodies:
        h.update(body)
    return h.hexdigest()


def _state_sha256(step: int, epoch: int, state_json: str) -> str:
    return _sha256(f"{step}|{epoch}|{state_json}".encode())


class NewerCheckpointError(RunDirError):
    """A checkpoint written by a newer trainwell: not corrupt, so never skipped as if it were."""


# ----------------------------------------------------------------------------- fault injection


@dataclass(frozen=True)
class Fault:
    """A kill planted by the resume tests (``TRAINWELL_FAULT``), so that the hardest moments of a
    checkpoint write can be hit on purpose, not by luck:

    * ``kill-in-checkpoint:K``: SIGKILL halfway through writing the K-th checkpoint's file;
    * ``kill-before-rename:K``: SIGKILL when the K-th is written and fsynced, before ``os.replace``;
    * ``kill-after-checkpoint:K``: SIGKILL right after the K-th checkpoint is complete.

    K counts the checkpoints this process writes (1 = the first). Unset: nothing happens.
    """

    where: str = ""
    count: int = 0

    @classmethod
    def from_env(cls) -> Fault:
        spec = os.environ.get("TRAINWELL_FAULT", "")
        where, _, count = spec.partition(":")
        if where not in ("kill-in-checkpoint", "kill-before-rename", "kill-after-checkpoint") or not count.isdigit():
            return cls()
        return cls(where, int(count))

    def at(self, where: str, count: int) -> None:
        if self.where == where and self.count == count:
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
        self._writer: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self._interrupted: list[int] = []  # steps whose write a kill interrupted (their .tmp was left)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            for stale in self.folder.glob(".step-*.tmp"):
                if (m := _TMP.match(stale.name)) is not None:
                    self._interrupted.append(int(m.group(1)))
                stale.unlink(missing_ok=True)

    def save(self, tree: Any, step: int, epoch: int) -> None:
        """Save the state as the checkpoint of ``step``: copied now, written in the background."""
        self.written += 1
        if self.folder is None:
            json_tree, tensors = split_tree(tree, copy=True)
            self._memory = Loaded(join_tree(json_tree, tensors), step, epoch, Path("<memory>"))
            return
        json_tree, tensors = split_tree(tree, copy=False)
        header, data = pack_safetensors(tensors)  # the copy: training may go on while it is written
        state_json = json.dumps(json_tree, separators=(",", ":"))
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainwell-checkpoint")
        self._raise_failed()
        self._pending.append(self._writer.submit(self._write, state_json, header, data, step, epoch, self.written))

    def flush(self) -> None:
        """Wait until every checkpoint saved so far is on disk; raise the error of one that failed."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        """Flush, and stop the writer thread (a later save starts it again)."""
        self.flush()
        if self._writer is not None:
            self._writer.shutdown()
            self._writer = None

    def _raise_failed(self) -> None:
        done = [f for f in self._pending if f.done()]
        self._pending = [f for f in self._pending if not f.done()]
        for future in done:
            future.result()

    def _write(self, state_json: str, header: dict[str, Any], data: list[torch.Tensor], step: int, epoch: int,
               count: int) -> Path:
        assert self.folder is not None
        bodies = [d.numpy().data for d in data]
        metadata = {"format": CHECKPOINT_FORMAT, "version": str(CHECKPOINT_VERSION), "step": str(step),
                    "epoch": str(epoch), "tensors_sha256": _tensors_sha256(header, bodies),
                    "state_sha256": _state_sha256(step, epoch, state_json), "state": state_json}
        head = safetensors_bytes(header, metadata)
        path = self.folder / f"step-{step:09d}.safetensors"
        with atomic_file(path, before_replace=lambda: self.fault.at("kill-before-rename", count)) as fh:
            fh.write(head)
            if self.fault.where == "kill-in-checkpoint" and self.fault.count == count:
                fh.write(bodies[0][: len(bodies[0]) // 2])
                fh.flush()
                os.fsync(fh.fileno())
                self.fault.at("kill-in-checkpoint", count)
            for body in bodies:
                fh.write(body)
        self._prune()
        self.fault.at("kill-after-checkpoint", count)
        return path

    def _steps(self) -> list[int]:
        assert self.folder is not None
        return sorted(int(m.group(1)) for p in self.folder.iterdir() if (m := _NAME.match(p.name)))

    def _prune(self) -> None:
        # No fsync: an unlink lost to a power cut only leaves an older checkpoint behind.
        for step in self._steps()[: -self.keep]:
            (self.folder / f"step-{step:09d}.safetensors").unlink(missing_ok=True)  # type: ignore[operator]  # folder is set while saving

    def discard_after(self, step: int) -> None:
        """Delete checkpoints newer than ``step`` (a rollback replays from ``step``)."""
        if self.folder is None:
            return
        self.flush()
        for s in self._steps():
            if s > step:
                (self.folder / f"step-{s:09d}.safetensors").unlink(missing_ok=True)

    def latest(self, warn: Callable[[str], None] | None = None) -> Loaded | None:
        """The newest good checkpoint; each newer bad one is reported through ``warn`` and skipped."""
        if self.folder is None:  # a copy: the caller's state must not alias the saved one
            return None if self._memory is None else Loaded(
                join_tree(*split_tree(self._memory.state, copy=True)), self._memory.step, self._memory.epoch,
                self._memory.path)
        self.flush()
        if not self.folder.is_dir():
            return None
        steps = self._steps()
        newest = steps[-1] if steps else -1
        interrupted = [s for s in self._interrupted if s >= newest]
        if interrupted and warn is not None:
            warn(f"checkpoint step-{max(interrupted):09d} in '{self.folder}' was being written when the run stopped; "
                 + ("using the one before it" if steps else "no complete checkpoint before it"))
        self._interrupted = []
        for step in reversed(steps):
            path = self.folder / f"step-{step:09d}.safetensors"
            try:
                return self._read(path)
            except NewerCheckpointError:
                raise
            except RunDirError as exc:
                if warn is not None:
                    warn(f"{exc}; falling back to the checkpoint before it")
        return None

    def _read(self, path: Path) -> Loaded:
        try:
            data = path.read_bytes()
            size = int.from_bytes(data[:8], "little")
            if not 0 < size <= len(data) - 8:
                raise ValueError("truncated: its header runs past the end of the file")
            meta = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
            if meta.get("format") != CHECKPOINT_FORMAT:
                raise ValueError("not a trainwell checkpoint")
            if int(meta.get("version", 0)) > CHECKPOINT_VERSION:
                raise NewerCheckpointError(f"checkpoint '{path}' was written by a newer trainwell; upgrade trainwell "
                                           "to resume this run")
            if _state_sha256(int(meta["step"]), int(meta["epoch"]), meta["state"]) != meta["state_sha256"]:
                raise ValueError("its state does not match its hash")
            entries = {k: v for k, v in json.loads(data[8 : 8 + size]).items() if k != "__metadata__"}
            if _tensors_sha256(entries, [memoryview(data)[8 + size :]]) != meta["tensors_sha256"]:
                raise ValueError("its tensors do not match their hash (truncated or corrupt)")
            tensors = load_tensors(data)  # safetensors' own reader checks the layout
            return Loaded(join_tree(json.loads(meta["state"]), tensors), int(meta["step"]), int(meta["epoch"]), path)
        except RunDirError:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError, UnicodeDecodeError,
                RecursionError, OverflowError) as exc:
            raise RunDirError(f"checkpoint '{path.name}' in '{path.parent}' is unreadable ({exception_line(exc, 100)})") \
                from None
