"""What every data source shares: the registry, :class:`ArrayData`, label and class-name checks,
the float32 range check, one-line messages and the cache folder."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from trainwell.config import DataConfig
from trainwell.errors import ConfigError, DataError
from trainwell.registry import new_registry



@dataclass(frozen=True)
class DataSourceMeta:
    """What every data source promises."""

    needs_path: bool  # data.path must name a file or folder
    kind: Literal["image", "signal", "tabular", "any"]  # what its examples are


DATASETS = new_registry("data", DataSourceMeta, "Data sources (data.name): each loads arrays of examples and labels.")


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
    * ``columns``: tabular data's F feature names in the order of x's columns (a CSV's header without
      the label column), recorded in model.json so ``predict`` can read rows by name; None = unnamed.
    """

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    classes: list[str]
    description: str
    columns: list[str] | None = None

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


# Deflate cannot expand data more than about 1032-fold: a .gz file's header that promises more
# than this many bytes per compressed byte cannot be honest (its data would be truncated).
MAX_DEFLATE_RATIO = 1100


def decoded_names(values: Any) -> list[str]:
    """Names as text: CIFAR's Python-2 pickles (and byte-string arrays) hold bytes."""
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]
