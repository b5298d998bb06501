"""``mnist1d``: MNIST-1D (Greydanus 2020), generated locally with the package's own code, cached atomically."""

from __future__ import annotations

import hashlib
import json
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from trainwell.config import DataConfig
from trainwell.errors import DataError
from trainwell.fileio import atomic_file
from trainwell.data.sources.base import ArrayData, cache_dir, DATASETS


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
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub lets **kwds bind allow_pickle: bool
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
