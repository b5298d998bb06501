"""``idx``: MNIST-format IDX files (raw or .gz).

Every size a header declares is checked against the bytes really there before anything is allocated
(or mapped). Raw files of one-byte values (MNIST's images and labels) are memory-mapped
copy-on-write instead of read: a split of them then reads only its rows (:mod:`trainwell.data.splits`).
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import IO

import numpy as np

from trainwell.config import DataConfig
from trainwell.errors import DataError
from trainwell.data.sources.base import (
    ArrayData,
    DATASETS,
    MAX_DEFLATE_RATIO,
    _need_path,
    _numeric_class_names,
    one_line,
)


# IDX type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"); data are big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

_IDX_ROLES = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def _find_idx(folder: Path, role: str) -> Path | None:
    for name in _IDX_ROLES[role]:
        for suffix in ("", ".gz"):  # uncompressed first: faster to read
            candidate = folder / (name + suffix)
            if candidate.is_file():
                return candidate
    return None


def _read_exact(f: IO[bytes] | gzip.GzipFile, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = f.read(n - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# numpy arrays have at most 64 dimensions; IDX files in use have 1 to 4.
_MAX_IDX_DIMS = 32
# Dimensions whose product (zeros aside) exceeds this describe no real file: (0, 2**31, 2**31)
# holds no data but numpy cannot even shape an empty array that way.
_MAX_IDX_BYTES = 1 << 40


def _idx_data_size(path: Path, header_bytes: int, dims: tuple[int, ...], itemsize: int, where: str) -> int:
    """The data bytes the header promises, checked against the file's size before any allocation.

    A raw file must hold exactly header + data; a .gz file cannot hold more than
    :data:`MAX_DEFLATE_RATIO` times its size (its exact length is only known by decompressing).
    """
    shown = "x".join(map(str, dims))
    need = math.prod(dims) * itemsize
    size = path.stat().st_size
    if path.suffix == ".gz":
        if need > MAX_DEFLATE_RATIO * size + 4096:
            raise DataError(
                f"{where} is truncated: its header promises {shown} values ({need:,} bytes of data) but a "
                f"{size:,}-byte .gz file cannot hold that many; re-download it."
            )
    elif header_bytes + need > size:
        raise DataError(
            f"{where} is truncated: its header promises {shown} values ({need:,} bytes of data) but only "
            f"{size - header_bytes:,} bytes follow; re-download it."
        )
    elif header_bytes + need < size:
        raise DataError(
            f"{where} has bytes beyond the {shown} values its header promises; it is corrupt or not an IDX file: re-download it."
        )
    if math.prod(max(d, 1) for d in dims) * itemsize > _MAX_IDX_BYTES:  # a zero dimension hid the others
        raise DataError(f"{where} declares dimensions {shown}, far beyond any IDX file; it is corrupt: re-download it.")
    return need


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (raw or ``.gz``) into a native-endian array of the header's shape.

    Layout: two zero bytes, a type code, the number of dimensions ``d``, ``d`` big-endian uint32
    sizes, then the data. The file must hold exactly the promised number of bytes, which is
    checked against the file's size before the array is allocated. The data are streamed into a
    preallocated, writable array (no second copy of a large file in memory), except that a raw
    file of one-byte values (no byte order to convert) is memory-mapped copy-on-write (mode "c": the
    array is writable for torch, the file is never modified) once its size has been checked.
    """
    where = f"idx file '{path}'"
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            magic = _read_exact(f, 4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES or magic[3] == 0:
                raise DataError(
                    f"{where} does not start with an IDX header (got bytes {magic.hex() or 'none'}); "
                    "it is not an MNIST-format file or is corrupt: re-download it."
                )
            ndim = magic[3]
            if ndim > _MAX_IDX_DIMS:
                raise DataError(f"{where} declares {ndim} dimensions (at most {_MAX_IDX_DIMS}); it is corrupt: re-download it.")
            dims_raw = _read_exact(f, 4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise DataError(f"{where} is truncated inside its header; re-download it.")
            dims = struct.unpack(f">{ndim}I", dims_raw)
            dtype = np.dtype(_IDX_DTYPES[magic[2]])
            need = _idx_data_size(path, 4 + 4 * ndim, dims, dtype.itemsize, where)
            if path.suffix != ".gz" and dtype.itemsize == 1 and need > 0:
                return np.memmap(path, dtype=dtype.newbyteorder("="), mode="c", offset=4 + 4 * ndim, shape=dims)
            try:
                out = np.empty(need // dtype.itemsize, dtype=dtype)  # pages are only committed as they fill
            except MemoryError:
                raise DataError(f"{where} declares {need:,} bytes of data, more than this machine can hold.") from None
            view = out.view(np.uint8).data
            filled = 0
            while filled < len(view):
                n = f.readinto(view[filled:])
                if not n:
                    break
                filled += n
            if filled < len(view):
                raise DataError(
                    f"{where} is truncated: its header promises {'x'.join(map(str, dims))} values "
                    f"({len(view):,} bytes of data) but only {filled:,} bytes follow; re-download it."
                )
            if f.read(1):
                raise DataError(
                    f"{where} has bytes beyond the {'x'.join(map(str, dims))} values its header promises; "
                    "it is corrupt or not an IDX file: re-download it."
                )
    except DataError:
        raise
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{where} cannot be read ({one_line(exc)}); re-download it.") from None
    return out.reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def _idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(
            f"idx file '{images_path}' holds {images.dtype} values of shape {images.shape}; "
            "expected uint8 images (N, H, W) as in MNIST: is it an image file?"
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(
            f"idx file '{labels_path}' holds {labels.dtype} values of shape {labels.shape}; "
            "expected integer labels (N,): is it a label file?"
        )
    if len(images) != len(labels):
        raise DataError(
            f"idx: '{images_path}' has {len(images)} images but '{labels_path}' has {len(labels)} labels; "
            "the files come from different datasets or one is damaged."
        )
    return images[:, None, :, :], labels.astype(np.int64)


@DATASETS.register("idx", needs_path=True, kind="image")
def load_idx(cfg: DataConfig) -> ArrayData:
    """A folder of MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST), raw or .gz."""
    folder = _need_path(cfg, "idx", "folder")
    found = {role: _find_idx(folder, role) for role in _IDX_ROLES}
    for role in ("train_images", "train_labels"):
        if found[role] is None:
            raise DataError(
                f"idx: no {_IDX_ROLES[role][0]}[.gz] (or {_IDX_ROLES[role][1]}[.gz]) in '{folder}'; "
                "point data.path at the folder holding the MNIST-format files."
            )
    x, y = _idx_pair(found["train_images"], found["train_labels"])  # type: ignore[arg-type]  # found: checked above
    x_test = y_test = None
    if (found["test_images"] is None) != (found["test_labels"] is None):
        have, miss = ("test_images", "test_labels") if found["test_images"] else ("test_labels", "test_images")
        raise DataError(
            f"idx: '{found[have]}' has no matching {_IDX_ROLES[miss][0]}[.gz] in '{folder}'; "
            "add it, or remove the test file to carve the test split from the training files."
        )
    if found["test_images"] is not None:
        x_test, y_test = _idx_pair(found["test_images"], found["test_labels"])  # type: ignore[arg-type]  # found: checked above
    return ArrayData(
        x=x,
        y=y,
        x_test=x_test,
        y_test=y_test,
        classes=_numeric_class_names(y, y_test, where=f"idx: '{folder}'"),
        description=f"idx: MNIST-format images from {folder}",
    )
