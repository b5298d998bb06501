"""Atomic file writes, the one implementation every artefact goes through.

A reader (or a resumed run) never sees half a file: data goes to a temporary file in the target's
folder, is flushed and fsynced, renamed over the target with ``os.replace`` (atomic on POSIX), and
the folder itself is fsynced so the rename survives a power cut. An error or a kill at any point
leaves the old file (or none) and at worst a ``.NAME.*.tmp`` beside it.

Files get the mode any program's files get, ``0o666`` less the umask (0644 or, for a group that
shares run folders with umask 002, 0664); ``tempfile.mkstemp`` would make every one 0600.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def fsync_dir(folder: Path) -> None:
    """fsync a folder, making the renames inside it durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def _create_temp(path: Path) -> tuple[int, str]:
    """A new ``.NAME.XXXXXXXX.tmp`` beside ``path``, opened for writing, mode 0o666 less the umask.

    Created with ``O_EXCL`` (never an existing file or a planted symlink) and the mode passed to the
    kernel, which applies the umask itself: nothing reads or changes the process's umask.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside '{path}'")  # pragma: no cover


@contextlib.contextmanager
def atomic_file(path: str | Path, sync_dir: bool = True,
                before_replace: Callable[[], None] | None = None) -> Iterator[IO[bytes]]:
    """``with atomic_file(path) as fh: fh.write(...)``: the file appears whole when the block ends, or not at all.

    ``sync_dir=False`` leaves the folder's fsync to a later write in it. ``before_replace`` runs once
    the data is fsynced, before the rename (the resume tests plant a kill there).
    """
    path = Path(path)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes, sync_dir: bool = True) -> None:
    with atomic_file(path, sync_dir) as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    with open(src, "rb") as fin, atomic_file(dst) as fout:
        shutil.copyfileobj(fin, fout)


def json_default(obj: Any) -> Any:
    """JSON for tensors, numpy scalars and paths (everything else is an error)."""
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")
