"""Data sources: each turns a :class:`~trainwell.config.DataConfig` into an :class:`ArrayData`.

A source is a function ``load(cfg) -> ArrayData`` registered in :data:`DATASETS` under the name
users give as ``data.name``. Metadata on each entry:

* ``needs_path`` - whether ``data.path`` must be set;
* ``kind`` - ``"image"``, ``"signal"`` or ``"tabular"`` (``"any"`` for ``npz``, whose kind
  depends on the file's array shapes).

Array conventions, shared by every source and by :mod:`trainwell.data.splits`:

* images are ``uint8`` arrays of shape ``(N, C, H, W)`` with values 0..255;
* signals are ``float32`` arrays of shape ``(N, C, L)``;
* tabular data are ``float32`` arrays of shape ``(N, F)``;
* labels are ``int64`` arrays of shape ``(N,)`` with values ``0..K-1``.

Nothing here downloads anything: ``digits`` is bundled with scikit-learn, ``mnist1d`` is
generated locally (and cached), every other source reads files the user already has. Every
problem with a file raises :class:`~trainwell.errors.DataError` with one line naming the file
and the fix.

Files are untrusted. Every size a header declares (IDX dimensions, a ``.npy`` header's shape, a
zip entry's size, a pickled array's shape, an image's width and height) is checked against the
bytes really there before anything is allocated. CIFAR's pickles are read without numpy's object
machinery: the unpickler gets trainwell's stand-ins for the few numpy globals a CIFAR batch names,
which only check and record their arguments; the records become arrays through ``np.frombuffer``
with dtypes built here from a whitelist of plain numeric and byte-string types (see the cifar
section). Nothing is ever unpickled by numpy (``allow_pickle`` stays False).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import csv
import gzip
import hashlib
import io
import json
import math
import os
import pickle
import pickletools
import random
import re
import struct
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from trainwell.config import DataConfig
from trainwell.errors import ConfigError, DataError
from trainwell.fileio import atomic_file
from trainwell.registry import new_registry

DATASETS = new_registry("data", "Data sources (data.name): each loads arrays of examples and labels.")


@dataclass
class ArrayData:
    """A whole dataset as numpy arrays, before splitting.

    Shapes and dtypes (``N`` examples, ``K`` classes):

    * ``x``: ``(N, F)`` float32 tabular, ``(N, C, L)`` float32 signal, or ``(N, C, H, W)`` uint8
      image with values 0..255. May be a copy-on-write ``np.memmap`` (``npz``: writes stay in
      memory and never reach the file).
    * ``y``: ``(N,)`` int64 labels in ``0..K-1``.
    * ``x_test``, ``y_test``: the source's own test split with the same per-example shape and
      dtype, or both ``None`` when the source has none (a test split is then carved out of ``x``).
    * ``classes``: ``K`` class names; ``classes[label]`` names a label.
    * ``description``: one line, e.g. ``"digits: scikit-learn's 8x8 digits"``.
    """

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    classes: list[str]
    description: str

    @property
    def kind(self) -> str:
        """``"image"`` (4-D x), ``"signal"`` (3-D) or ``"tabular"`` (2-D)."""
        return kind_of(tuple(self.x.shape[1:]))


def kind_of(example_shape: tuple[int, ...]) -> str:
    """The kind of data whose examples have shape ``example_shape``: image (C, H, W), signal (C, L) or tabular (F,)."""
    if len(example_shape) == 3:
        return "image"
    if len(example_shape) == 2:
        return "signal"
    return "tabular"


# ----------------------------------------------------------------------------- shared helpers


def _need_path(cfg: DataConfig, source: str, what: str) -> Path:
    """``cfg.path`` as an existing Path, or a DataError/ConfigError saying how to give one.

    ``what`` is ``"folder"``, ``"file"`` or ``"file or folder"``.
    """
    if not cfg.path:
        raise ConfigError(f"data.name={source} reads a {what}; set data.path=PATH to it.")
    path = Path(os.path.expanduser(str(cfg.path)))
    if not path.exists():
        raise DataError(f"{source}: data.path '{path}' does not exist; check the path.")
    if what == "folder" and not path.is_dir():
        raise DataError(f"{source}: data.path '{path}' is a file, not a folder; point data.path at the folder.")
    if what == "file" and not path.is_file():
        raise DataError(f"{source}: data.path '{path}' is a folder, not a file; point data.path at the file.")
    return path


def _shown(value: Any, limit: int = 60) -> str:
    """A short, one-line rendering of untrusted text for an error message."""
    text = value.decode("latin1") if isinstance(value, (bytes, bytearray)) else str(value)
    text = repr(text[: limit + 1])[1:-1]  # escapes newlines and control characters
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown_names(names: list[str], limit: int = 20) -> str:
    """Untrusted names (zip members, columns) as one short comma-separated line."""
    shown = ", ".join(_shown(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def one_line(text: Any, limit: int = 200) -> str:
    """``text`` (often an exception from a parser of untrusted bytes) on one line, at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# More classes than this is not a classification dataset but a damaged label file: a label of
# 10**12 would otherwise make a list of 10**12 class names.
_MAX_CLASSES = 1_000_000


def _numeric_class_names(*label_arrays: np.ndarray | None, where: str) -> list[str]:
    """``["0", ..., "K-1"]`` with ``K = max label + 1`` over the given arrays (at least 1)."""
    top = max((int(y.max()) for y in label_arrays if y is not None and y.size), default=0)
    if top >= _MAX_CLASSES:
        raise DataError(
            f"{where}: a label is {top}, which would make {top + 1:,} classes (at most {_MAX_CLASSES:,}); "
            "labels must be 0..K-1: check the label file or renumber the labels."
        )
    return [str(i) for i in range(max(top + 1, 1))]


_FLOAT32_MAX = float(np.finfo(np.float32).max)
# Scan for out-of-range values in blocks of about this many bytes (a memory map stays mapped).
_SCAN_BYTES = 64 << 20


def check_float32_range(x: np.ndarray, subject: str) -> None:
    """A DataError "``subject`` holds values up to ..." when float ``x`` has finite values beyond float32's range.

    Models take float32: a cast would turn such values into inf (with a numpy RuntimeWarning),
    and the NaN/inf check after it would blame values that were finite. NaN/inf themselves are
    left to that check.
    """
    if x.dtype.kind != "f" or x.dtype.itemsize <= 4 or x.size == 0:
        return
    rows = x.reshape(1, -1) if x.ndim == 0 else x
    step = max(1, _SCAN_BYTES // max(1, rows[:1].nbytes))
    worst = x.dtype.type(0)
    for i in range(0, len(rows), step):
        block = rows[i : i + step].reshape(-1)  # a copy only if the block is not contiguous
        magnitude = np.where(np.isfinite(block), np.abs(block), 0)
        j = int(np.argmax(magnitude))
        if magnitude[j] > abs(worst):
            worst = block[j]
    if abs(worst) > _FLOAT32_MAX:
        # float() of a long double beyond float64's range would print inf: numpy formats those.
        shown = f"{float(worst):.3g}" if math.isfinite(float(worst)) else np.format_float_scientific(worst, precision=2)
        raise DataError(f"{subject} holds values up to {shown}, beyond float32's range (±3.4e38); rescale them.")


def _integer_labels(y: np.ndarray, where: str, what: str = "labels") -> np.ndarray:
    """``y`` as int64 ``(N,)``; a DataError if it is not 1-D or holds non-integer values."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{where}: {what} must be a 1-D array (N,), got shape {y.shape}; flatten them.")
    if y.dtype.kind in "iub":
        return y.astype(np.int64, copy=False)
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError(f"{where}: {what} must be whole numbers 0..K-1, found non-integer values; fix the labels.")
        return y.astype(np.int64)
    raise DataError(f"{where}: {what} have dtype {y.dtype}, expected integers 0..K-1; convert them.")


def _encode_labels(values: list[str], where: str) -> tuple[np.ndarray, list[str]]:
    """Map label strings to ``0..K-1`` over their sorted unique values; returns (y int64, classes).

    Integer-looking labels sort numerically (``"2" < "10"``), others as strings.
    """
    try:
        keys: list[Any] = [int(v) for v in values]
    except ValueError:
        keys = list(values)
    unique = sorted(set(keys))
    index = {k: i for i, k in enumerate(unique)}
    y = np.fromiter((index[k] for k in keys), dtype=np.int64, count=len(keys))
    return y, [str(k) for k in unique]


def _check_image_size(cfg: DataConfig) -> tuple[int, int] | None:
    """``cfg.image_size`` as (H, W), or None when empty; a ConfigError for anything else."""
    size = list(cfg.image_size or [])
    if not size:
        return None
    if len(size) != 2 or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in size):
        raise ConfigError(f"data.image_size must be two positive integers H,W (e.g. data.image_size=28,28), got {size}.")
    return int(size[0]), int(size[1])


def cache_dir() -> Path:
    """Where generated datasets are cached: ``$TRAINWELL_CACHE`` or ``~/.cache/trainwell``."""
    env = os.environ.get("TRAINWELL_CACHE")
    return Path(os.path.expanduser(env)) if env else Path.home() / ".cache" / "trainwell"


# ----------------------------------------------------------------------------- digits


@DATASETS.register("digits", needs_path=False, kind="image")
def load_digits(cfg: DataConfig) -> ArrayData:
    """scikit-learn's bundled 8x8 handwritten digits: 1,797 grayscale images, 10 classes."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    # Pixels are counts 0..16 (4x4 blocks of a 32x32 bitmap); rescale to the uint8 image convention.
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    return ArrayData(
        x=images,
        y=bunch.target.astype(np.int64),
        x_test=None,
        y_test=None,
        classes=[str(i) for i in range(10)],
        description="digits: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes)",
    )


# ----------------------------------------------------------------------------- mnist1d

#: mnist1d's ``get_dataset_args()`` defaults (less the download URL, which we never use). Kept
#: here so a cache hit needs no import of mnist1d (which pulls in matplotlib and requests); a test
#: checks they equal the package's defaults.
MNIST1D_ARGS: dict[str, Any] = {
    "num_samples": 5000,
    "train_split": 0.8,
    "template_len": 12,
    "padding": [36, 60],
    "scale_coeff": 0.4,
    "max_translation": 48,
    "corr_noise_scale": 0.25,
    "iid_noise_scale": 2e-2,
    "shear_scale": 0.75,
    "shuffle_seq": False,
    "final_seq_length": 40,
    "seed": 42,
}

# Bump when the cached file's layout changes, so old caches are ignored rather than misread.
_MNIST1D_CACHE_FORMAT = 1


def _mnist1d_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("mnist1d")
    except metadata.PackageNotFoundError:
        return "unknown"


def _mnist1d_cache_file(args: dict[str, Any]) -> Path:
    # The generator's output depends on its arguments and on the package's code: key on both.
    key = json.dumps({"args": args, "mnist1d": _mnist1d_version(), "format": _MNIST1D_CACHE_FORMAT}, sort_keys=True)
    return cache_dir() / f"mnist1d-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def generate_mnist1d(args: dict[str, Any]) -> dict[str, np.ndarray]:
    """Run mnist1d's generator offline: ``{"x", "y", "x_test", "y_test"}``, x float32 (N, 1, L).

    ``make_dataset`` reseeds Python's and numpy's global RNGs; both states are restored so that
    loading data never changes the caller's random stream.
    """
    try:
        from mnist1d.data import make_dataset
    except ImportError as exc:
        raise DataError(f"mnist1d: the 'mnist1d' package cannot be imported ({exc}); install it with 'pip install mnist1d'.") from None

    class _Args:  # make_dataset reads attributes, like mnist1d's own ObjectView
        def __init__(self, d: dict[str, Any]) -> None:
            self.__dict__.update(d)

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        raw = make_dataset(_Args(dict(args)))
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {
        "x": np.ascontiguousarray(raw["x"], dtype=np.float32)[:, None, :],
        "y": np.asarray(raw["y"], dtype=np.int64),
        "x_test": np.ascontiguousarray(raw["x_test"], dtype=np.float32)[:, None, :],
        "y_test": np.asarray(raw["y_test"], dtype=np.int64),
    }


def _read_mnist1d_cache(path: Path, args: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None if the file is absent, unreadable or inconsistent."""
    if not path.is_file():
        return None
    n = args["num_samples"] // 10 * 10
    n_train = int(n * args["train_split"])
    length = args["final_seq_length"]
    expect = {
        "x": ((n_train, 1, length), np.float32),
        "y": ((n_train,), np.int64),
        "x_test": ((n - n_train, 1, length), np.float32),
        "y_test": ((n - n_train,), np.int64),
    }
    try:
        # Open the file ourselves: np.load leaks its handle when the zip is unreadable.
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            arrays = {k: z[k] for k in expect}
    except Exception:  # any failure to read a cache (truncated zip, bad header, missing key) -> regenerate
        return None
    for k, (shape, dtype) in expect.items():
        if arrays[k].shape != shape or arrays[k].dtype != dtype:
            return None
    return arrays


def _write_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Save ``arrays`` as an uncompressed .npz at ``path`` via a temporary file and os.replace.

    Concurrent runs may race to write the same cache: each writes its own temporary file and the
    rename is atomic, so readers never see a half-written file. A cache that cannot be written
    (read-only home, full disk) only costs a regeneration next time, so it warns, never fails.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as f:
            np.savez(f, **arrays)
    except OSError as exc:
        warnings.warn(f"could not cache generated data at '{path}' ({exc}); set TRAINWELL_CACHE to a writable folder.", stacklevel=3)


@DATASETS.register("mnist1d", needs_path=False, kind="signal")
def load_mnist1d(cfg: DataConfig) -> ArrayData:
    """MNIST-1D (Greydanus 2020): 5,000 length-40 signals, 10 classes, 4000/1000 split; generated offline."""
    args = dict(MNIST1D_ARGS)
    path = _mnist1d_cache_file(args)
    arrays = _read_mnist1d_cache(path, args)
    if arrays is None:
        arrays = generate_mnist1d(args)
        _write_atomically(path, arrays)
    return ArrayData(
        x=arrays["x"],
        y=arrays["y"],
        x_test=arrays["x_test"],
        y_test=arrays["y_test"],
        classes=[str(i) for i in range(10)],
        description="mnist1d: MNIST-1D signals of length 40 (Greydanus 2020), generated offline",
    )


# ----------------------------------------------------------------------------- idx (MNIST format)

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


def _read_exact(f: IO[bytes], n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = f.read(n - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# Deflate cannot expand data more than about 1032-fold: a .gz file's header that promises more
# than this many bytes per compressed byte cannot be honest (its data would be truncated).
_MAX_DEFLATE_RATIO = 1100
# numpy arrays have at most 64 dimensions; IDX files in use have 1 to 4.
_MAX_IDX_DIMS = 32
# Dimensions whose product (zeros aside) exceeds this describe no real file: (0, 2**31, 2**31)
# holds no data but numpy cannot even shape an empty array that way.
_MAX_IDX_BYTES = 1 << 40


def _idx_data_size(path: Path, header_bytes: int, dims: tuple[int, ...], itemsize: int, where: str) -> int:
    """The data bytes the header promises, checked against the file's size before any allocation.

    A raw file must hold exactly header + data; a .gz file cannot hold more than
    :data:`_MAX_DEFLATE_RATIO` times its size (its exact length is only known by decompressing).
    """
    shown = "x".join(map(str, dims))
    need = math.prod(dims) * itemsize
    size = path.stat().st_size
    if path.suffix == ".gz":
        if need > _MAX_DEFLATE_RATIO * size + 4096:
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
    preallocated, writable array (no second copy of a large file in memory).
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
            try:
                out = np.empty(need // dtype.itemsize, dtype=dtype)  # pages are only committed as they fill
            except MemoryError:
                raise DataError(f"{where} declares {need:,} bytes of data, more than this machine can hold.") from None
            view = memoryview(out.view(np.uint8))
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
    x, y = _idx_pair(found["train_images"], found["train_labels"])  # type: ignore[arg-type]
    x_test = y_test = None
    if (found["test_images"] is None) != (found["test_labels"] is None):
        have, miss = ("test_images", "test_labels") if found["test_images"] else ("test_labels", "test_images")
        raise DataError(
            f"idx: '{found[have]}' has no matching {_IDX_ROLES[miss][0]}[.gz] in '{folder}'; "
            "add it, or remove the test file to carve the test split from the training files."
        )
    if found["test_images"] is not None:
        x_test, y_test = _idx_pair(found["test_images"], found["test_labels"])  # type: ignore[arg-type]
    return ArrayData(
        x=x,
        y=y,
        x_test=x_test,
        y_test=y_test,
        classes=_numeric_class_names(y, y_test, where=f"idx: '{folder}'"),
        description=f"idx: MNIST-format images from {folder}",
    )


# ----------------------------------------------------------------------------- cifar
#
# CIFAR's "python version" batches are pickles of dicts holding numpy arrays. Unpickling can call
# whatever a file names, and even numpy's own array constructors are unsafe: a crafted dtype state
# (object fields, forged flags) makes an array whose bytes are read as object pointers, which
# crashes the process. So no numpy object machinery ever runs on pickle data: find_class hands the
# unpickler trainwell's own stand-ins, which only check and record their arguments and state; the
# checked records become real arrays through np.frombuffer with a dtype we build ourselves from a
# whitelisted type string. A scan of the opcodes before unpickling refuses the opcodes no CIFAR file
# uses and memo indices no pickler writes (the C unpickler would allocate memory for them).

# A CIFAR-100 train file is 155 MB; a "batch" far larger is not CIFAR, and is not read into memory.
_MAX_CIFAR_FILE_BYTES = 1 << 30
# No CIFAR array comes near this; the bound only keeps absurd shapes (of zero-size arrays, or whose
# size overflows) away from numpy.
_MAX_PICKLED_ARRAY_BYTES = 1 << 36
# A CIFAR batch is a dict of lists: deeper nesting is not CIFAR (and would only cost recursion).
_MAX_PICKLE_DEPTH = 16
# Opcodes that build objects other than through REDUCE/BUILD, fetch external objects or use the
# extension registry: none of them appears in a CIFAR file, so a pickle that uses one is refused.
_REFUSED_OPCODES = frozenset(
    {"PERSID", "BINPERSID", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4", "NEXT_BUFFER", "READONLY_BUFFER"}
)
_MEMO_OPCODES = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"})
# The dtypes a CIFAR pickle may name: bool, integers of 1-8 bytes, floats of 2-8 bytes, byte strings.
_DTYPE_SPEC = re.compile(r"b1|[iu][1248]|f[248]|S[1-9][0-9]{0,8}")


class _Refused(Exception):
    """A pickle construct that no CIFAR batch holds; :func:`safe_unpickle` names the file."""


def _is_int(value: Any, expected: int) -> bool:
    """Whether ``value`` is the plain int ``expected`` (not a bool, float or other look-alike)."""
    return type(value) is int and value == expected


def _text(value: Any) -> str | None:
    """A str, or ASCII bytes (as Python 2 pickles read with encoding="bytes" give), as str; else None."""
    if type(value) is str:
        return value
    if type(value) is bytes and value.isascii():
        return value.decode("ascii")
    return None


def _size_text(n: int) -> str:
    """A byte count for a message: exact unless absurdly long."""
    return f"{n:,}" if n.bit_length() <= 128 else f"about 2**{n.bit_length()}"


class _Stub:
    """Base of every object find_class hands the unpickler: it checks and records, never calls numpy.

    Pickle's BUILD opcode calls ``__setstate__`` and REDUCE calls the object: both refuse here
    unless a subclass allows the one use numpy's own pickles make of it.
    """

    __slots__ = ()
    what = "a numpy global"

    def __call__(self, *args: Any) -> Any:
        raise _Refused(f"calls {self.what}, which no CIFAR batch does")

    def __setstate__(self, state: Any) -> None:
        raise _Refused(f"builds (pickle BUILD) {self.what}, which no CIFAR batch does")


class _DtypeStub(_Stub):
    """A numpy dtype named by the pickle: a whitelisted type string, made a dtype by its canonical state."""

    __slots__ = ("spec", "dtype")
    what = "a numpy dtype"

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.dtype: np.dtype | None = None

    def __setstate__(self, state: Any) -> None:
        if self.dtype is not None:
            raise _Refused(f"builds the numpy dtype '{self.spec}' twice")
        flexible = self.spec[0] == "S"
        elsize, alignment = (int(self.spec[1:]), 1) if flexible else (-1, -1)
        orders = ("|",) if flexible or self.spec[1:] == "1" else ("<", ">", "=")
        # numpy's own state for a plain dtype: (3, byte order, subarray, names, fields, elsize,
        # alignment, flags). Anything else (fields, subarrays, object flags) is refused.
        canonical = (
            type(state) is tuple
            and len(state) == 8
            and _is_int(state[0], 3)
            and _text(state[1]) in orders
            and state[2] is None
            and state[3] is None
            and state[4] is None
            and _is_int(state[5], elsize)
            and _is_int(state[6], alignment)
            and _is_int(state[7], 0)
        )
        if not canonical:
            raise _Refused(
                f"gives the numpy dtype '{self.spec}' a state other than numpy's plain "
                f"(3, byte order, None, None, None, {elsize}, {alignment}, 0): fields, subarrays or object flags"
            )
        order = _text(state[1])
        self.dtype = np.dtype(self.spec if order == "|" else f"{order}{self.spec}")


def _built_dtype(value: Any) -> np.dtype:
    """The dtype of a built :class:`_DtypeStub`; refused for anything else."""
    if type(value) is not _DtypeStub or value.dtype is None:
        raise _Refused("gives a numpy array or scalar something other than a built numpy dtype")
    return value.dtype


def _raw_bytes(value: Any) -> bytes | bytearray:
    """An array's raw data: bytes (bytearray from protocol 5); object arrays' lists are refused."""
    if type(value) not in (bytes, bytearray):
        raise _Refused(f"gives a numpy array data of type {type(value).__name__}, not bytes (object arrays are never loaded)")
    return value


def _array_from_raw(raw: Any, dtype_stub: Any, shape: Any, order: str) -> np.ndarray:
    """A real array over the checked bytes ``raw``: sizes are compared before anything is allocated."""
    dtype = _built_dtype(dtype_stub)
    data = _raw_bytes(raw)
    if type(shape) is not tuple or len(shape) > 32 or any(type(d) is not int or d < 0 for d in shape):
        raise _Refused("gives a numpy array a shape that is not a tuple of at most 32 non-negative integers")
    bound = math.prod(max(d, 1) for d in shape) * dtype.itemsize
    if bound > _MAX_PICKLED_ARRAY_BYTES:
        raise _Refused(f"declares a numpy array of {_size_text(bound)} bytes, beyond any CIFAR array")
    need = math.prod(shape) * dtype.itemsize
    if need != len(data):
        raise _Refused(
            f"declares a numpy array of shape {shape} and dtype {dtype} ({need:,} bytes) but gives it {len(data):,} bytes of data"
        )
    array = np.frombuffer(data, dtype=dtype, count=need // dtype.itemsize).reshape(shape, order=order)  # type: ignore[call-overload]
    return array if array.flags.writeable else array.copy(order="K")  # bytes are read-only: own a copy


class _ArrayStub(_Stub):
    """A numpy array under construction: ``_reconstruct`` makes it empty, BUILD gives its checked state."""

    __slots__ = ("array",)
    what = "a numpy array"

    def __init__(self, array: np.ndarray | None = None) -> None:
        self.array = array

    def __setstate__(self, state: Any) -> None:
        if self.array is not None:
            raise _Refused("builds one numpy array twice")
        # numpy's ndarray state: (version 1, shape, dtype, is_fortran, raw bytes).
        if type(state) is not tuple or len(state) != 5 or not _is_int(state[0], 1) or type(state[3]) not in (bool, int):
            raise _Refused("gives a numpy array a state other than numpy's (1, shape, dtype, is_fortran, rawdata)")
        if state[3] not in (0, 1):
            raise _Refused("gives a numpy array an is_fortran flag that is neither true nor false")
        self.array = _array_from_raw(state[4], state[2], state[1], "F" if state[3] else "C")


class _NdarrayGlobal(_Stub):
    """``numpy.ndarray``: only ever an argument of ``_reconstruct``; calling or building it is refused."""

    __slots__ = ()
    what = "numpy.ndarray"

    def __call__(self, *args: Any) -> Any:
        raise _Refused("calls numpy.ndarray directly, which no CIFAR batch does")


class _ReconstructGlobal(_Stub):
    """``numpy.core.multiarray._reconstruct``: only as numpy pickles it, ``(ndarray, (0,), b'b')``."""

    __slots__ = ()
    what = "numpy's _reconstruct"

    def __call__(self, *args: Any) -> _ArrayStub:
        canonical = (
            len(args) == 3
            and args[0] is _NDARRAY
            and type(args[1]) is tuple
            and len(args[1]) == 1
            and _is_int(args[1][0], 0)
            and type(args[2]) in (bytes, str)
            and args[2] in (b"b", "b")
        )
        if not canonical:
            raise _Refused("calls numpy's _reconstruct with arguments other than numpy's (ndarray, (0,), b'b')")
        return _ArrayStub()


class _DtypeGlobal(_Stub):
    """``numpy.dtype``: only ``(type string, False, True)`` with a whitelisted type string."""

    __slots__ = ()
    what = "numpy.dtype"

    def __call__(self, *args: Any) -> _DtypeStub:
        spec = _text(args[0]) if len(args) == 3 else None
        # numpy passes (spec, align=False, copy=True); Python 2 numpy wrote them as ints 0 and 1.
        flags_ok = len(args) == 3 and type(args[1]) in (bool, int) and type(args[2]) in (bool, int)
        if spec is None or not flags_ok or args[1] != 0 or args[2] not in (0, 1) or not _DTYPE_SPEC.fullmatch(spec):
            shown = f" '{_shown(args[0])}'" if args and type(args[0]) in (str, bytes) else ""
            raise _Refused(
                f"asks for the numpy dtype{shown}; only plain numbers (bool, int, uint, float) and byte strings are loaded"
            )
        return _DtypeStub(spec)


class _ScalarGlobal(_Stub):
    """``numpy.core.multiarray.scalar`` (a pickled ``np.int64``...): becomes a Python number at once."""

    __slots__ = ()
    what = "numpy's scalar"

    def __call__(self, *args: Any) -> Any:
        if len(args) != 2:
            raise _Refused("calls numpy's scalar with arguments other than (dtype, bytes)")
        dtype, raw = _built_dtype(args[0]), _raw_bytes(args[1])
        if len(raw) != dtype.itemsize:
            raise _Refused(f"gives a numpy {dtype} scalar {len(raw)} bytes instead of {dtype.itemsize}")
        return np.frombuffer(raw, dtype=dtype).item()


class _FrombufferGlobal(_Stub):
    """``numpy.core.numeric._frombuffer``, numpy's pickle protocol 5 form ``(buffer, dtype, shape, order)``."""

    __slots__ = ()
    what = "numpy's _frombuffer"

    def __call__(self, *args: Any) -> _ArrayStub:
        order = _text(args[3]) if len(args) == 4 else None
        if order not in ("C", "F"):
            raise _Refused("calls numpy's _frombuffer with arguments other than (buffer, dtype, shape, 'C' or 'F')")
        return _ArrayStub(_array_from_raw(args[0], args[1], args[2], order))


class _EncodeGlobal(_Stub):
    """``_codecs.encode``: how Python 3 writes bytes at pickle protocols 0-2, ``(text, 'latin1')``."""

    __slots__ = ()
    what = "_codecs.encode"

    def __call__(self, *args: Any) -> bytes:
        if len(args) != 2 or type(args[0]) is not str or args[1] not in ("latin1", "latin-1"):
            raise _Refused("calls _codecs.encode with arguments other than (text, 'latin1')")
        return args[0].encode("latin1")


class _BytesGlobal(_Stub):
    """``bytes``: how Python 3 writes an empty bytes object at pickle protocols 0-2, ``bytes()``."""

    __slots__ = ()
    what = "bytes"

    def __call__(self, *args: Any) -> bytes:
        if args:
            raise _Refused("calls bytes with arguments, which Python's pickler never does")
        return b""


_NDARRAY = _NdarrayGlobal()
_GLOBALS: dict[tuple[str, str], _Stub] = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DtypeGlobal(),
    ("_codecs", "encode"): _EncodeGlobal(),
    # Protocols 0-2 name builtins as Python 2 did; protocol 3 and later do not need this at all.
    ("__builtin__", "bytes"): _BytesGlobal(),
    ("builtins", "bytes"): _BytesGlobal(),
    # Python 2 and numpy < 2 wrote numpy.core; numpy >= 2 writes numpy._core.
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _ReconstructGlobal() for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "scalar"): _ScalarGlobal() for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _FrombufferGlobal() for core in ("core", "_core")},
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds dicts, lists, bytes, numbers and plain numpy arrays, and nothing else.

    A pickle can name any importable callable (``os.system``, ...) and have it called while
    loading; :meth:`find_class` is where every such name is resolved, and it resolves only to
    trainwell's stand-ins (:class:`_Stub`), so nothing outside this module ever runs. Its result
    still holds stand-ins: :func:`safe_unpickle` turns them into arrays.
    """

    def __init__(self, file: IO[bytes], where: str) -> None:
        # CIFAR batches were pickled by Python 2: "bytes" keeps its str objects (keys, names) as bytes.
        super().__init__(file, encoding="bytes")
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        stub = _GLOBALS.get((module, name))
        if stub is None:
            raise _Refused(f"asks to load '{_shown(module)}.{_shown(name)}', which no CIFAR batch contains")
        return stub

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("uses pickle persistent ids, which no CIFAR batch contains")


def _scan_opcodes(data: bytes) -> None:
    """Refuse, before unpickling, opcodes no CIFAR file uses and memo indices no pickler writes.

    Picklers number memo entries 0, 1, 2...; the C unpickler sizes its memo table by the largest
    index it is given, so an index in the billions would allocate gigabytes. Every opcode's
    argument is parsed here, so damage shows before anything is built; a text string with an
    invalid escape (a DeprecationWarning in Python's decoder) is damage too, not a printed warning.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for count, (opcode, arg, pos) in enumerate(pickletools.genops(data), start=1):
            if opcode.name in _REFUSED_OPCODES:
                raise _Refused(f"uses the pickle opcode {opcode.name} (at byte {pos}), which no CIFAR batch contains")
            if opcode.name in _MEMO_OPCODES and not 0 <= arg < count:
                raise _Refused(f"uses the pickle memo index {_size_text(arg)} (at byte {pos}), which no pickler writes")


def _plain(root: Any) -> Any:
    """The unpickled ``root`` with each stand-in array replaced by its real array.

    Only dicts, lists, tuples, text, bytes, numbers, None and built arrays are allowed: a bare
    dtype or global, an array never built, a container holding itself or nested deeper than
    :data:`_MAX_PICKLE_DEPTH` is refused. Shared containers are converted once.
    """
    done: dict[int, Any] = {}
    active: set[int] = set()

    def visit(obj: Any, depth: int) -> Any:
        kind = type(obj)
        if kind in (bytes, str, int, float, bool, type(None)):
            return obj
        if kind is bytearray:
            return bytes(obj)
        if kind is _ArrayStub:
            if obj.array is None:
                raise _Refused("uses a numpy array that it never builds (no BUILD after _reconstruct)")
            return obj.array
        if kind not in (dict, list, tuple):
            what = obj.what if isinstance(obj, _Stub) else f"a {kind.__name__}"
            raise _Refused(f"holds {what} as a value, which no CIFAR batch contains")
        key = id(obj)
        if key in done:
            return done[key]
        if key in active:
            raise _Refused("holds a container that contains itself")
        if depth >= _MAX_PICKLE_DEPTH:
            raise _Refused(f"nests containers more than {_MAX_PICKLE_DEPTH} deep")
        active.add(key)
        if kind is dict:
            out: Any = {visit(k, depth + 1): visit(v, depth + 1) for k, v in obj.items()}
        else:
            out = kind(visit(v, depth + 1) for v in obj)
        active.discard(key)
        done[key] = out
        return out

    return visit(root, 0)


def _check_cifar_size(size: int, where: str) -> None:
    """Refuse, before reading it, a "batch" larger than :data:`_MAX_CIFAR_FILE_BYTES`."""
    if size > _MAX_CIFAR_FILE_BYTES:
        raise DataError(
            f"{where} is {size:,} bytes, more than the {_MAX_CIFAR_FILE_BYTES >> 20} MiB of any CIFAR file; "
            "point data.path at the original CIFAR files."
        )


def safe_unpickle(f: IO[bytes], where: str) -> Any:
    """Load one CIFAR pickle from ``f`` without running anything it names; a DataError naming ``where`` otherwise.

    The file is read whole (at most :data:`_MAX_CIFAR_FILE_BYTES`), its opcodes scanned, then
    unpickled with :class:`SafeUnpickler` and its stand-ins made real arrays.
    """
    try:
        data = f.read(_MAX_CIFAR_FILE_BYTES + 1)
        _check_cifar_size(len(data), where)
        _scan_opcodes(data)
        return _plain(SafeUnpickler(io.BytesIO(data), where).load())
    except _Refused as exc:
        raise DataError(
            f"{where} {exc}; refused to unpickle it (corrupt or malicious file): use the original CIFAR files."
        ) from None
    except DataError:
        raise
    except Exception as exc:  # a damaged pickle can fail in many ways (EOFError, UnpicklingError, ValueError, MemoryError...)
        raise DataError(
            f"{where} is not a readable CIFAR pickle ({type(exc).__name__}: {one_line(exc)}); re-download it."
        ) from None


_CIFAR_NAMES = re.compile(r"^(data_batch_\d+|test_batch|batches\.meta|train|test|meta)$")
_CIFAR10_NAMES = re.compile(r"^(data_batch_\d+|test_batch|batches\.meta)$")
_CIFAR100_NAMES = re.compile(r"^(train|test|meta)$")


def _cifar_from_folder(path: Path) -> tuple[dict[str, Any], str]:
    """Unpickled CIFAR files by name, from ``path`` or its cifar-10/100 subfolder."""
    for folder in (path, path / "cifar-10-batches-py", path / "cifar-100-python"):
        if (folder / "data_batch_1").is_file() or (folder / "train").is_file():
            names = _CIFAR10_NAMES if (folder / "data_batch_1").is_file() else _CIFAR100_NAMES
            objs = {}
            for child in sorted(folder.iterdir()):
                if child.is_file() and names.match(child.name):
                    try:
                        _check_cifar_size(child.stat().st_size, f"cifar file '{child}'")
                        with open(child, "rb") as f:
                            objs[child.name] = safe_unpickle(f, f"cifar file '{child}'")
                    except OSError as exc:
                        raise DataError(f"cifar file '{child}' cannot be read ({exc.strerror or exc}); check the file.") from None
            return objs, str(folder)
    raise DataError(
        f"cifar: no CIFAR-10 'data_batch_1' or CIFAR-100 'train' file in '{path}' "
        "(or its cifar-10-batches-py/ or cifar-100-python/ subfolder); point data.path at the extracted "
        "'python version' download or its .tar.gz."
    )


def _cifar_from_tar(path: Path) -> tuple[dict[str, Any], str]:
    """Unpickled CIFAR files by name, streamed from a tar archive (never extracted to disk)."""
    objs: dict[str, Any] = {}
    try:
        # Members are read in archive order: seeking backwards in a .tar.gz would decompress again.
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and _CIFAR_NAMES.match(base) and base not in objs:
                    where = f"cifar member '{_shown(member.name, 200)}' of '{path}'"
                    _check_cifar_size(member.size, where)
                    f = tar.extractfile(member)
                    if f is not None:
                        objs[base] = safe_unpickle(f, where)
    except DataError:
        raise
    except Exception as exc:  # tarfile and its gzip/bz2/lzma decompressors raise many types on damage
        raise DataError(f"cifar: '{path}' is not a readable tar archive ({one_line(exc)}); re-download it.") from None
    if "data_batch_1" not in objs and "train" not in objs:
        raise DataError(
            f"cifar: archive '{path}' holds no CIFAR-10 'data_batch_1' or CIFAR-100 'train' member; "
            "use the 'python version' download (cifar-10-python.tar.gz or cifar-100-python.tar.gz)."
        )
    return objs, str(path)


def _str_keys(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataError(f"{where} holds a {type(obj).__name__}, expected a CIFAR dict; re-download it.")
    if not all(type(k) in (bytes, str) for k in obj):
        raise DataError(f"{where} holds a dict with keys that are not text, unlike a CIFAR batch; re-download it.")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _names(values: Any) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def _cifar_labels(value: Any, where: str, key: str) -> np.ndarray:
    """A batch's labels as int64: a list of ints (as CIFAR stores them) or an integer array."""
    if isinstance(value, (list, tuple)):
        if not all(type(v) is int and -(2**63) <= v < 2**63 for v in value):
            raise DataError(f"{where}: '{key}' must be a list of integer labels, found other values; re-download it.")
        value = np.array(value, dtype=np.int64)
    elif not isinstance(value, np.ndarray):
        raise DataError(f"{where}: '{key}' must be a list of integer labels, got a {type(value).__name__}; re-download it.")
    return _integer_labels(value, where, f"'{key}'")


def _cifar_batch(obj: Any, where: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = _str_keys(obj, where)
    data = d.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        got = f"{data.dtype} array {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{where}: 'data' must be a uint8 array (N, 3072), got {got}; re-download it.")
    if label_key not in d:
        raise DataError(f"{where} has no '{label_key}' entry; re-download it.")
    labels = _cifar_labels(d[label_key], where, label_key)
    if len(labels) != len(data):
        raise DataError(f"{where} has {len(data)} images but {len(labels)} labels; re-download it.")
    # Rows are 1024 red, then 1024 green, then 1024 blue values, each row-major 32x32: (N, C, H, W).
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_class_names(meta: dict[str, Any], key: str, where: str) -> list[str] | None:
    """The class names of a meta file's ``key`` list, or None when it has none."""
    names = meta.get(key)
    if names is None:
        return None
    if not isinstance(names, (list, tuple)) or not all(type(v) in (bytes, str) for v in names):
        raise DataError(f"{where}: '{key}' must be a list of class names; re-download it.")
    return _names(names)


@DATASETS.register("cifar", needs_path=True, kind="image")
def load_cifar(cfg: DataConfig) -> ArrayData:
    """CIFAR-10 or CIFAR-100 'python version' batches: a folder or the .tar.gz download."""
    if cfg.cifar_labels not in ("fine", "coarse"):
        raise ConfigError(f"data.cifar_labels must be 'fine' or 'coarse', got '{cfg.cifar_labels}'.")
    path = _need_path(cfg, "cifar", "file or folder")
    objs, where = _cifar_from_folder(path) if path.is_dir() else _cifar_from_tar(path)
    if "data_batch_1" in objs:
        variant, label_key = "CIFAR-10", "labels"
        train_names = sorted((n for n in objs if n.startswith("data_batch_")), key=lambda n: int(n.rsplit("_", 1)[1]))
        test_name, meta_name, names_key = "test_batch", "batches.meta", "label_names"
    else:
        variant, label_key = f"CIFAR-100 ({cfg.cifar_labels} labels)", f"{cfg.cifar_labels}_labels"
        train_names, test_name, meta_name = ["train"], "test", "meta"
        names_key = f"{cfg.cifar_labels}_label_names"
    parts = [_cifar_batch(objs[n], f"cifar file '{n}' in '{where}'", label_key) for n in train_names]
    x = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    y = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    x_test = y_test = None
    if test_name in objs:
        x_test, y_test = _cifar_batch(objs[test_name], f"cifar file '{test_name}' in '{where}'", label_key)
    classes = None
    if meta_name in objs:
        meta_where = f"cifar file '{meta_name}' in '{where}'"
        classes = _cifar_class_names(_str_keys(objs[meta_name], meta_where), names_key, meta_where)
    return ArrayData(
        x=x,
        y=y,
        x_test=x_test,
        y_test=y_test,
        classes=classes or _numeric_class_names(y, y_test, where=f"cifar: '{where}'"),
        description=f"cifar: {variant} from {where}",
    )


# ----------------------------------------------------------------------------- folder of images

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _is_image_file(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES


# The most pixels an image file may declare: Pillow's own default decompression-bomb limit (about
# 89 megapixels, a 358 MB RGBA image). A header claiming more is refused before decoding.
MAX_IMAGE_PIXELS = 89_478_485


class ImageTooLarge(DataError):
    """An image file whose header declares more than :data:`MAX_IMAGE_PIXELS` pixels."""


def load_image(path: Path, mode: str | None, size: tuple[int, int] | None) -> np.ndarray:
    """One image file as uint8 ``(H, W)`` (grayscale) or ``(H, W, 3)`` (colour).

    ``mode`` forces ``"L"`` or ``"RGB"``; None keeps single-channel images single-channel and
    converts everything else to RGB (alpha is dropped, palettes expanded, animations give their
    first frame). ``size`` = (H, W) resizes bilinearly. A file Pillow cannot decode, a truncated
    one, or one whose header declares more than :data:`MAX_IMAGE_PIXELS` pixels is a DataError;
    the size is checked before anything is decoded. Call it inside :func:`image_bombs_refused`
    so that Pillow's decompression-bomb warning is refused too rather than printed.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageTooLarge(_too_many_pixels(path, width * height, f"{width}x{height}"))
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit grayscale: Pillow's convert("L") clips at 255; keep the top 8 bits instead.
                arr16 = np.clip(np.asarray(img, dtype=np.int64), 0, 65535) >> 8
                img = Image.fromarray(arr16.astype(np.uint8), mode="L")
            target = mode or ("L" if img.mode in ("L", "1", "LA", "F") else "RGB")
            if img.mode != target:
                img = img.convert(target)
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow refuses in Image.open, before the caller sees the size; its message has the count.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise ImageTooLarge(_too_many_pixels(path, int(found.group(1)) if found else None)) from None
    except Exception as exc:  # decoders of damaged files raise many types (OSError, SyntaxError, struct.error...)
        raise DataError(f"image file '{path}' cannot be decoded ({one_line(exc)}); delete or replace it.") from None


def _too_many_pixels(path: Path, pixels: int | None, size: str = "") -> str:
    declared = f"{pixels:,} pixels" + (f" ({size})" if size else "") if pixels is not None else "too many pixels"
    return (
        f"image file '{path}' declares {declared}, above the limit of {MAX_IMAGE_PIXELS:,} "
        "(a damaged file or a decompression bomb); resize or replace it."
    )


@contextlib.contextmanager
def image_bombs_refused() -> Iterator[None]:
    """Make Pillow's DecompressionBombWarning an error while images are decoded (see load_image).

    Pillow warns in ``Image.open`` itself, before the caller sees the size. The filter is set
    once around a whole decoding run, by the calling thread: Pillow's decoding threads then see
    it, and no thread restores the filters under another.
    """
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _load_images(files: list[Path], size: tuple[int, int] | None, grayscale: bool) -> np.ndarray:
    """Decode ``files`` into one uint8 (N, C, H, W) array (C = 1 or 3), in order."""
    workers = min(8, os.cpu_count() or 1, max(1, len(files)))
    with image_bombs_refused(), concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        # Pillow decodes without the GIL.
        arrays = list(pool.map(lambda p: load_image(p, "L" if grayscale else None, size), files))
    first_hw = arrays[0].shape[:2]
    for p, a in zip(files, arrays):
        if a.shape[:2] != first_hw:
            raise DataError(
                f"folder: image '{p}' is {a.shape[0]}x{a.shape[1]} (HxW) but '{files[0]}' is "
                f"{first_hw[0]}x{first_hw[1]}; set data.image_size=H,W to resize all images to one size."
            )
    if all(a.ndim == 2 for a in arrays):
        return np.stack(arrays)[:, None, :, :]
    # Mixed: a grayscale image becomes RGB by repeating its channel, as Pillow's convert("RGB") does.
    rgb = [np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a for a in arrays]
    return np.ascontiguousarray(np.stack(rgb).transpose(0, 3, 1, 2))


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _collect(root: Path, classes: list[str], require_all: bool) -> tuple[list[Path], list[int]]:
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        folder = root / name
        found = sorted(p for p in folder.iterdir() if _is_image_file(p)) if folder.is_dir() else []
        if require_all and not found:
            raise DataError(
                f"folder: class folder '{folder}' has no image files ({', '.join(IMAGE_SUFFIXES)}); "
                "add images or remove the folder."
            )
        files += found
        labels += [label] * len(found)
    return files, labels


@DATASETS.register("folder", needs_path=True, kind="image")
def load_folder(cfg: DataConfig) -> ArrayData:
    """A folder with one sub-folder of images per class (optionally inside train/ and test/)."""
    root = _need_path(cfg, "folder", "folder")
    size = _check_image_size(cfg)
    split = (root / "train").is_dir() and (root / "test").is_dir()
    train_root = root / "train" if split else root
    classes = [p.name for p in _class_folders(train_root)]
    if not classes:
        raise DataError(
            f"folder: '{train_root}' has no class sub-folders; put each class's images in its own "
            "sub-folder (e.g. cats/, dogs/)."
        )
    files, labels = _collect(train_root, classes, require_all=True)
    test_files: list[Path] = []
    test_labels: list[int] = []
    if split:
        extra = sorted({p.name for p in _class_folders(root / "test")} - set(classes))
        if extra:
            raise DataError(
                f"folder: '{root / 'test'}' has class folders missing from '{train_root}': {', '.join(extra)}; "
                "every test class needs training images."
            )
        test_files, test_labels = _collect(root / "test", classes, require_all=False)
        if not test_files:
            raise DataError(f"folder: '{root / 'test'}' holds no images; add some, or remove it to carve a test split.")
    # Decode train and test together so both get the same channel count and size.
    x_all = _load_images(files + test_files, size, cfg.grayscale)
    x, x_test = x_all[: len(files)], (x_all[len(files) :] if split else None)
    return ArrayData(
        x=x,
        y=np.asarray(labels, dtype=np.int64),
        x_test=x_test,
        y_test=np.asarray(test_labels, dtype=np.int64) if split else None,
        classes=classes,
        description=f"folder: {len(classes)} classes of images from {root}",
    )


# ----------------------------------------------------------------------------- npz

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


class _CountingReader:
    """A stream's ``read`` that counts the bytes it returns and their CRC-32 (as a zip entry records it)."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.count, self.crc = f, 0, 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.count += len(data)
        self.crc = zlib.crc32(data, self.crc)
        return data


def npy_header(f: IO[bytes], subject: str, fix: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, header bytes)`` of the .npy stream ``f``, read from its header only.

    Nothing is allocated for the data: callers compare ``header bytes + prod(shape) * itemsize``
    with the real size before reading. A header numpy cannot parse, a format version other than
    1.0/2.0 (3.0 only adds utf-8 field names) or an object dtype (which only a pickle can hold) is
    a DataError "``subject`` is not a readable .npy array (why); ``fix``".
    """
    counter = _CountingReader(f)
    try:
        version = np.lib.format.read_magic(counter)  # type: ignore[arg-type]
        if version not in ((1, 0), (2, 0)):
            raise DataError(f"{subject} is not a readable .npy array (format version {version[0]}.{version[1]}); {fix}")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(counter)  # type: ignore[arg-type]
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
    cannot declare more than :data:`_MAX_DEFLATE_RATIO` times its compressed size. zipfile stops
    at the declared size and checks the CRC there, so an entry that inflates to more would be cut
    silently (or blamed on its CRC): it is opened with room for one byte more than declared and
    without zipfile's CRC check, and the CRC is checked here over exactly the declared bytes.
    """
    subject = f"{where}: array '{_shown(info.filename)}'"
    if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 4096:
        raise DataError(
            f"{subject} declares {info.file_size:,} bytes but holds only {info.compress_size:,} compressed bytes, "
            "more than deflate can expand; the file is damaged: re-create it."
        )
    probe = copy.copy(info)
    probe.file_size = info.file_size + 1
    del probe.CRC  # zipfile checks no CRC for an entry without one
    with zf.open(probe) as f:
        reader = _CountingReader(f)  # type: ignore[arg-type]
        shape, fortran, dtype, header = npy_header(reader, subject, "re-create the file.")  # type: ignore[arg-type]
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
        view = memoryview(flat.view(np.uint8)) if nbytes else memoryview(bytearray())
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
    _LZMAError = zlib.error  # type: ignore[misc,assignment]

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


@DATASETS.register("npz", needs_path=True, kind="any")
def load_npz(cfg: DataConfig) -> ArrayData:
    """A NumPy .npz with arrays x, y (optionally x_test, y_test, classes); large files memory-mapped."""
    path = _need_path(cfg, "npz", "file")
    where = f"npz file '{path}'"
    present = npz_array_names(path)
    chosen = {role: next((n for n in options if n in present), None) for role, options in _NPZ_NAMES.items()}
    for role in ("x", "y"):
        if chosen[role] is None:
            raise DataError(
                f"{where} has no '{role}' array (arrays: {shown_names(present) or 'none'}); "
                f"save it with np.savez(path, x=..., y=...)."
            )
    if (chosen["x_test"] is None) != (chosen["y_test"] is None):
        raise DataError(f"{where} has only one of x_test and y_test; save both or neither.")
    wanted = [n for n in chosen.values() if n is not None] + (["classes"] if "classes" in present else [])
    arrays = read_npz(path, wanted)
    x = _npz_features(arrays[chosen["x"]], where, chosen["x"])  # type: ignore[index]
    raw_y = arrays[chosen["y"]]  # type: ignore[index]
    x_test = y_test = None
    raw_y_test = arrays[chosen["y_test"]] if chosen["y_test"] else None
    if chosen["x_test"]:
        x_test = _npz_features(arrays[chosen["x_test"]], where, chosen["x_test"])
    if raw_y.dtype.kind in "US":  # string labels: number their sorted unique values
        joined = _names(raw_y.tolist()) + (_names(raw_y_test.tolist()) if raw_y_test is not None else [])
        codes, classes = _encode_labels(joined, where)
        y = codes[: len(raw_y)]
        y_test = codes[len(raw_y) :] if raw_y_test is not None else None
    else:
        y = _integer_labels(raw_y, where, f"'{chosen['y']}'")
        if raw_y_test is not None:
            y_test = _integer_labels(raw_y_test, where, f"'{chosen['y_test']}'")
        classes = _numeric_class_names(y, y_test, where=where)
        if "classes" in arrays:
            names = arrays["classes"]
            if names.ndim != 1:
                raise DataError(f"{where}: 'classes' must be a 1-D array of names, got shape {names.shape}.")
            classes = [str(v) for v in names.tolist()]
    return ArrayData(x=x, y=y, x_test=x_test, y_test=y_test, classes=classes, description=f"npz: arrays from {path}")


# ----------------------------------------------------------------------------- csv


def _label_index(header: list[str], label_column: str, where: str) -> int:
    names = [h.strip() for h in header]
    if label_column in names:
        return names.index(label_column)
    text = str(label_column).strip()
    if re.fullmatch(r"-?\d+", text):
        i = int(text)
        if -len(names) <= i < len(names):
            return i % len(names)
        raise ConfigError(f"data.label_column={i} is out of range: {where} has {len(names)} columns (0..{len(names) - 1}).")
    raise ConfigError(
        f"data.label_column '{label_column}' is not a column of {where} (columns: {shown_names(names)}); "
        "give its name or 0-based index."
    )


def _parse_row(row: list[str], columns: list[str], where: str, line: int) -> list[float]:
    """Cells as floats; a DataError naming the first cell that is not a number."""
    values = []
    for col, cell in zip(columns, row):
        try:
            values.append(float(cell))
        except ValueError:
            raise DataError(
                f"{where}: column '{_shown(col)}' at line {line} holds '{_shown(cell.strip())}', not a number; "
                "features must be numeric (encode categories as numbers, or drop the column)."
            ) from None
    return values


_CSV_DELIMITERS = ",;\t|"
_CSV_SAMPLE_CHARS = 65536
_CSV_SAMPLE_LINES = 20


def _guess_delimiter(sample: str, complete: bool) -> str:
    """The delimiter among ``, ; tab |`` that splits the sample's first lines into equal rows, most fields first.

    Rows of one length beat ragged ones, then more header fields win; ``,`` when no candidate
    splits the header. ``complete`` says the sample is the whole file (else its last line may
    be cut and is left out). csv.Sniffer is not used: its regular expressions take minutes on
    64 KB of hostile text (quotes and delimiters repeated), this takes one csv pass per candidate.
    """
    lines = sample.splitlines(keepends=True)
    lines = lines[:_CSV_SAMPLE_LINES] if complete or len(lines) > _CSV_SAMPLE_LINES else lines[:-1] or lines
    best, best_score = ",", (False, 1)
    for delimiter in _CSV_DELIMITERS:
        try:
            rows = [row for row in csv.reader(lines, delimiter=delimiter) if row]
        except csv.Error:
            continue
        if not rows or len(rows[0]) < 2:
            continue
        score = (len({len(row) for row in rows}) == 1, len(rows[0]))
        if score > best_score:
            best, best_score = delimiter, score
    return best


@DATASETS.register("csv", needs_path=True, kind="tabular")
def load_csv(cfg: DataConfig) -> ArrayData:
    """A CSV file with a header row: numeric feature columns and one label column (data.label_column)."""
    path = _need_path(cfg, "csv", "file")
    where = f"csv file '{path}'"
    try:
        # utf-8-sig drops the byte-order mark spreadsheet programs put before the header.
        with open(path, newline="", encoding="utf-8-sig") as f:
            sample = f.read(_CSV_SAMPLE_CHARS)
            f.seek(0)
            reader = csv.reader(f, delimiter=_guess_delimiter(sample, complete=len(sample) < _CSV_SAMPLE_CHARS))
            header = next(reader, None)
            if not header:
                raise DataError(f"{where} is empty; it needs a header row and one row per example.")
            label_at = _label_index(header, cfg.label_column, where)
            features: list[list[str]] = []
            labels: list[str] = []
            lines: list[int] = []
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue  # blank line
                if len(row) != len(header):
                    raise DataError(
                        f"{where}: line {reader.line_num} has {len(row)} fields but the header has {len(header)}; fix that row."
                    )
                labels.append(row[label_at].strip())
                features.append(row[:label_at] + row[label_at + 1 :])
                lines.append(reader.line_num)
    except UnicodeDecodeError as exc:
        raise DataError(f"{where} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8 CSV.") from None
    except csv.Error as exc:
        raise DataError(f"{where} is not valid CSV ({exc}); fix the quoting.") from None
    except OSError as exc:
        raise DataError(f"{where} cannot be read ({exc}).") from None
    columns = [h.strip() for i, h in enumerate(header) if i != label_at]
    if not features:
        raise DataError(f"{where} has a header but no data rows; add one row per example.")
    if not columns:
        raise DataError(f"{where} has only the label column; add feature columns.")
    try:
        x = np.array(features, dtype=np.float64)  # fast path: numpy parses every cell at once
    except ValueError:
        x = np.array([_parse_row(row, columns, where, line) for row, line in zip(features, lines)], dtype=np.float64)
    # Parsed as float64 first: a value beyond float32's range would otherwise silently become inf.
    check_float32_range(x, where)
    x = x.astype(np.float32)
    empty = [i for i, v in enumerate(labels) if not v]
    if empty:
        raise DataError(f"{where}: line {lines[empty[0]]} has an empty label; give every row a label.")
    y, classes = _encode_labels(labels, where)
    return ArrayData(
        x=x, y=y, x_test=None, y_test=None, classes=classes, description=f"csv: {len(columns)} features from {path}"
    )
