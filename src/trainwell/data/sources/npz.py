"""``npz``: arrays in a .npz file; stored members are memory-mapped (copy-on-write).

Each member's ``.npy`` header is checked against the zip entry's size before anything is allocated,
and an entry that inflates to more or less than its header declares is refused.
"""

from __future__ import annotations

import copy
import math
import struct
import zipfile
import zlib
from pathlib import Path
from typing import IO, Protocol

import numpy as np

from trainwell.config import DataConfig
from trainwell.errors import DataError
from trainwell.data.sources.base import (
    ArrayData,
    check_float32_range,
    DATASETS,
    decoded_names,
    _encode_labels,
    _integer_labels,
    MAX_DEFLATE_RATIO,
    _need_path,
    _numeric_class_names,
    one_line,
    _shown,
    shown_names,
)


_NPZ_NAMES = {
    "x": ("x", "X"),
    "y": ("y", "Y", "labels"),
    "x_test": ("x_test", "X_test"),
    "y_test": ("y_test", "Y_test", "labels_test"),
}


def _stored_member_offset(f: IO[bytes], info: zipfile.ZipInfo, where: str) -> int:
    """File offset of a stored (uncompressed) zip member's data: after its local file header."""
    f.seek(info.header_offset)
    local = f.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise DataError(f"{where}: the zip entry for '{_shown(info.filename)}' is damaged; re-create the file.")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


class ByteReader(Protocol):
    """What the .npy header reader needs of a stream: ``read(n)`` (an open file, a zip entry, a gzip stream)."""

    def read(self, n: int = -1, /) -> bytes: ...


class _CountingReader:
    """A stream's ``read`` that counts the bytes it returns and their CRC-32 (as a zip entry records it)."""

    def __init__(self, f: ByteReader) -> None:
        self.f, self.count, self.crc = f, 0, 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.count += len(data)
        self.crc = zlib.crc32(data, self.crc)
        return data


def npy_header(f: ByteReader, subject: str, fix: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, header bytes)`` of the .npy stream ``f``, read from its header only.

    Nothing is allocated for the data: callers compare ``header bytes + prod(shape) * itemsize``
    with the real size before reading. A header numpy cannot parse, a format version other than
    1.0/2.0 (3.0 only adds utf-8 field names) or an object dtype (which only a pickle can hold) is
    a DataError "``subject`` is not a readable .npy array (why); ``fix``".
    """
    counter = _CountingReader(f)
    try:
        version = np.lib.format.read_magic(counter)
        if version not in ((1, 0), (2, 0)):
            raise DataError(f"{subject} is not a readable .npy array (format version {version[0]}.{version[1]}); {fix}")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(counter)
    except DataError:
        raise
    except Exception as exc:  # the header is untrusted text parsed by numpy: ValueError, SyntaxError, MemoryError...
        raise DataError(f"{subject} is not a readable .npy array ({one_line(exc)}); {fix}") from None
    if dtype.hasobject:
        raise DataError(f"{subject} is not a readable .npy array: it holds Python objects, which are never loaded (no pickle); {fix}")
    return tuple(shape), bool(fortran), dtype, counter.count


def _declared_nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def _memmap_member(path: Path, info: zipfile.ZipInfo, where: str) -> np.ndarray | None:
    """Memory-map a stored ``.npy`` member in place (copy-on-write), or None to load it normally.

    Copy-on-write (mode "c") gives a writable array, so torch.from_numpy neither warns nor risks a
    write into a read-only mapping, while the file itself can never be modified. The header's
    size must equal the zip entry's, and lie inside the file, before anything is mapped.
    """
    subject = f"{where}: array '{_shown(info.filename)}'"
    with open(path, "rb") as f:
        start = _stored_member_offset(f, info, where)
        f.seek(start)
        shape, fortran, dtype, header = npy_header(f, subject, "re-create the file.")
    nbytes = _declared_nbytes(shape, dtype)
    data_start = start + header
    if header + nbytes != info.file_size or info.compress_size != info.file_size or data_start + nbytes > path.stat().st_size:
        raise DataError(
            f"{subject} is truncated or damaged: its header declares shape {shape} ({nbytes:,} bytes of {dtype}) "
            f"but the zip entry holds {max(info.file_size - header, 0):,} bytes of data; re-create the file."
        )
    if nbytes == 0 or shape == ():
        return None  # nothing worth mapping (and mmap refuses empty ranges)
    return np.memmap(path, dtype=dtype, mode="c", offset=data_start, shape=shape, order="F" if fortran else "C")


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> np.ndarray:
    """A (compressed) ``.npy`` member read into memory, its sizes checked before allocating.

    The header's shape must account for exactly the entry's declared size, and a deflated entry
    cannot declare more than :data:`MAX_DEFLATE_RATIO` times its compressed size. zipfile stops
    at the declared size and checks the CRC there, so an entry that inflates to more would be cut
    silently (or blamed on its CRC): it is opened with room for one byte more than declared and
    without zipfile's CRC check, and the CRC is checked here over exactly the declared bytes.
    """
    subject = f"{where}: array '{_shown(info.filename)}'"
    if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > MAX_DEFLATE_RATIO * info.compress_size + 4096:
        raise DataError(
            f"{subject} declares {info.file_size:,} bytes but holds only {info.compress_size:,} compressed bytes, "
            "more than deflate can expand; the file is damaged: re-create it."
        )
    probe = copy.copy(info)
    probe.file_size = info.file_size + 1
    del probe.CRC  # zipfile checks no CRC for an entry without one
    with zf.open(probe) as f:
        reader = _CountingReader(f)
        shape, fortran, dtype, header = npy_header(reader, subject, "re-create the file.")
        nbytes = _declared_nbytes(shape, dtype)
        if header + nbytes != info.file_size:
            raise DataError(
                f"{subject} is truncated or damaged: its header declares shape {shape} ({nbytes:,} bytes of {dtype}) "
                f"but the zip entry holds {max(info.file_size - header, 0):,} bytes of data; re-create the file."
            )
        try:
            flat = np.empty(nbytes // dtype.itemsize if dtype.itemsize else 0, dtype=dtype)
        except MemoryError:
            raise DataError(f"{subject} declares {nbytes:,} bytes, more than this machine can hold.") from None
        view = flat.view(np.uint8).data if nbytes else memoryview(bytearray())
        filled = 0
        while filled < nbytes:
            chunk = reader.read(min(nbytes - filled, 1 << 20))
            if not chunk:
                break
            view[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
        if filled < nbytes or f.read(1):
            raise DataError(
                f"{subject} decompresses to {'less' if filled < nbytes else 'more'} than the {nbytes:,} bytes "
                "its header declares; the file is damaged: re-create it."
            )
    if reader.crc != info.CRC:
        raise DataError(f"{subject} fails its CRC-32 check; the file is damaged: re-create it.")
    return flat.reshape(shape, order="F" if fortran else "C")


try:  # zipfile decompresses lzma members with the lzma module, whose error is its own type
    from lzma import LZMAError as _LZMAError
except ImportError:  # pragma: no cover - Python built without lzma
    _LZMAError = zlib.error  # type: ignore[misc,assignment]  # a stand-in class for the except clause

# What zipfile and its decompressors raise on a damaged archive (RuntimeError: an encrypted member;
# NotImplementedError: an unsupported compression method; ValueError/struct.error/OverflowError:
# damaged headers).
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    _LZMAError,
    struct.error,
    EOFError,
    OSError,
    ValueError,
    OverflowError,
    RuntimeError,
    NotImplementedError,
)


def read_npz(path: Path, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Arrays of a ``.npz`` file by name (all, or ``names``), never unpickling anything.

    Members stored uncompressed (``np.savez``) are memory-mapped; compressed ones
    (``np.savez_compressed``) are decompressed into memory. Every member's header is checked
    against its zip entry before anything is mapped or allocated.
    """
    where = f"npz file '{path}'"
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            members = {i.filename[: -len(".npy")]: i for i in zf.infolist() if i.filename.endswith(".npy")}
            for name in names if names is not None else list(members):
                info = members[name]
                arr = None
                if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
                    arr = _memmap_member(path, info, where)
                out[name] = arr if arr is not None else _read_member(zf, info, where)
    except DataError:
        raise
    except KeyError as exc:
        raise DataError(f"{where} has no array {_shown(exc)}; re-create the file.") from None
    except _ZIP_ERRORS as exc:
        raise DataError(f"{where} is not a readable .npz archive ({one_line(exc)}); it may be truncated: re-create it.") from None
    return out


def npz_array_names(path: Path) -> list[str]:
    """Names of the arrays in a ``.npz`` file (a DataError if it is not a zip archive)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return [i.filename[: -len(".npy")] for i in zf.infolist() if i.filename.endswith(".npy")]
    except _ZIP_ERRORS as exc:
        raise DataError(f"npz file '{path}' is not a readable .npz archive ({one_line(exc)}); it may be truncated: re-create it.") from None


def _npz_features(x: np.ndarray, where: str, what: str) -> np.ndarray:
    """Apply the array conventions to one feature array.

    uint8 (N, C, H, W) stays as is (images 0..255); every other array becomes float32 (a float32
    array, memory-mapped or not, is returned without copying). Channels-last images
    (N, H, W, C) with C in 1, 3, 4 are moved to channels-first.
    """
    if x.dtype.kind not in "biuf":
        raise DataError(f"{where}: '{what}' has dtype {x.dtype}; expected numbers (uint8 images or floats).")
    if x.ndim < 2 or x.ndim > 4:
        raise DataError(
            f"{where}: '{what}' has shape {x.shape}; expected (N, F) tabular, (N, C, L) signals or "
            "(N, C, H, W) images."
        )
    if x.ndim == 4 and x.shape[1] not in (1, 3, 4) and x.shape[3] in (1, 3, 4):
        # Channels-last (N, H, W, C), as saved by most image tools: move channels first (copies).
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if x.ndim == 4 and x.dtype == np.uint8:
        return x
    if x.dtype == np.float32 and x.dtype.isnative:
        return x  # keeps a memory map mapped
    check_float32_range(x, f"{where}: '{what}'")
    return x.astype(np.float32)


def _required_array(chosen: dict[str, str | None], role: str, where: str, present: list[str]) -> str:
    """The name of the array chosen for ``role``, or a DataError when the file has none."""
    name = chosen[role]
    if name is None:
        raise DataError(
            f"{where} has no '{role}' array (arrays: {shown_names(present) or 'none'}); "
            f"save it with np.savez(path, x=..., y=...)."
        )
    return name


@DATASETS.register("npz", needs_path=True, kind="any")
def load_npz(cfg: DataConfig) -> ArrayData:
    """A NumPy .npz with arrays x, y (optionally x_test, y_test, classes); large files memory-mapped."""
    path = _need_path(cfg, "npz", "file")
    where = f"npz file '{path}'"
    present = npz_array_names(path)
    chosen = {role: next((n for n in options if n in present), None) for role, options in _NPZ_NAMES.items()}
    x_name, y_name = (_required_array(chosen, role, where, present) for role in ("x", "y"))
    if (chosen["x_test"] is None) != (chosen["y_test"] is None):
        raise DataError(f"{where} has only one of x_test and y_test; save both or neither.")
    wanted = [n for n in chosen.values() if n is not None] + (["classes"] if "classes" in present else [])
    arrays = read_npz(path, wanted)
    x = _npz_features(arrays[x_name], where, x_name)
    raw_y = arrays[y_name]
    x_test = y_test = None
    raw_y_test = arrays[chosen["y_test"]] if chosen["y_test"] else None
    if chosen["x_test"]:
        x_test = _npz_features(arrays[chosen["x_test"]], where, chosen["x_test"])
    if raw_y.dtype.kind in "US":  # string labels: number their sorted unique values
        joined = decoded_names(raw_y.tolist()) + (decoded_names(raw_y_test.tolist()) if raw_y_test is not None else [])
        codes, classes = _encode_labels(joined, where)
        y = codes[: len(raw_y)]
        y_test = codes[len(raw_y) :] if raw_y_test is not None else None
    else:
        y = _integer_labels(raw_y, where, f"'{y_name}'")
        if raw_y_test is not None:
            y_test = _integer_labels(raw_y_test, where, f"'{chosen['y_test']}'")
        classes = _numeric_class_names(y, y_test, where=where)
        if "classes" in arrays:
            names = arrays["classes"]
            if names.ndim != 1:
                raise DataError(f"{where}: 'classes' must be a 1-D array of names, got shape {names.shape}.")
            classes = [str(v) for v in names.tolist()]
    return ArrayData(x=x, y=y, x_test=x_test, y_test=y_test, classes=classes, description=f"npz: arrays from {path}")
