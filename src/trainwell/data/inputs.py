"""Reading the examples given to ``trainwell predict``: arrays (.npz, .npy), image files and CSV rows."""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np

from trainwell.data.sources import (
    ImageTooLarge,
    check_float32_range,
    image_bombs_refused,
    kind_of,
    load_image,
    npy_header,
    npz_array_names,
    one_line,
    read_feature_rows,
    read_npz,
    shown_names,
)
from trainwell.errors import DataError


def _read_npy(path: Path) -> np.ndarray:
    """The array of a .npy file; its header's size must match the file's before anything is allocated."""
    subject, fix = f"input file '{path}'", "save it with np.save."
    try:
        with open(path, "rb") as f:
            shape, fortran, dtype, header = npy_header(f, subject, fix)
            nbytes = math.prod(shape) * dtype.itemsize
            size = os.fstat(f.fileno()).st_size
            if header + nbytes != size:
                how = "truncated" if header + nbytes > size else "followed by extra bytes"
                raise DataError(
                    f"{subject} is not a readable .npy array (its header declares shape {shape}, {nbytes:,} bytes of "
                    f"{dtype}, but {max(size - header, 0):,} bytes follow: {how}); {fix}"
                )
            f.seek(0)
            return np.lib.format.read_array(f, allow_pickle=False)
    except DataError:
        raise
    except (ValueError, OSError, EOFError, MemoryError) as exc:
        raise DataError(f"{subject} is not a readable .npy array ({one_line(exc)}); {fix}") from None


def _read_array(path: Path) -> np.ndarray:
    """The array of a .npy file, or of a .npz file (its ``x``/``X`` array, or its only array)."""
    if path.suffix.lower() == ".npz" or zipfile.is_zipfile(path):
        names = npz_array_names(path)
        name = next((n for n in ("x", "X") if n in names), names[0] if len(names) == 1 else None)
        if name is None:
            raise DataError(
                f"input file '{path}' holds arrays {shown_names(names) or '(none)'}; save the examples as 'x' "
                "(np.savez(path, x=...)) or as the file's only array."
            )
        return np.asarray(read_npz(path, [name])[name])
    return _read_npy(path)


def _fit_array(arr: np.ndarray, path: Path, input_shape: tuple[int, ...], image: bool) -> np.ndarray:
    """``arr`` as a batch (N, *input_shape) of the run's dtype: uint8 when ``image`` else float32."""
    if arr.shape == input_shape:
        arr = arr[None]
    elif arr.shape[1:] != input_shape:
        batch = ", ".join(["N", *map(str, input_shape)])
        raise DataError(
            f"input file '{path}' holds an array of shape {arr.shape}; the model expects {input_shape} "
            f"(one example) or ({batch}) (a batch)."
        )
    if len(arr) == 0:
        raise DataError(f"input file '{path}' holds no examples (shape {arr.shape}).")
    if arr.dtype.kind not in "biuf":
        raise DataError(f"input file '{path}' holds {arr.dtype} values; expected numbers.")
    if not image:
        check_float32_range(arr, f"input file '{path}'")
        arr = arr.astype(np.float32)
        if not np.all(np.isfinite(arr)):
            raise DataError(f"input file '{path}' holds NaN/inf values; the model needs finite inputs.")
        return arr
    if arr.dtype == np.uint8:
        return arr
    # Other dtypes are accepted only when they hold exact pixel values: floats in [0, 1] (a common
    # slip) would otherwise be read as near-black images and give confident nonsense.
    if np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)) and arr.min() >= 0 and arr.max() <= 255:
        return arr.astype(np.uint8)
    raise DataError(
        f"input file '{path}' holds {arr.dtype} values in [{arr.min():.3g}, {arr.max():.3g}]; this model takes "
        "uint8 pixel values 0..255 like its training images (multiply [0, 1] images by 255 and round)."
    )


def read_inputs(paths: list[str], input_shape: tuple[int, ...], image: bool, *, columns: list[str] | None = None,
                label_column: str | None = None) -> np.ndarray:
    """Read examples from files into one batch of shape (N, *input_shape).

    Each path is a ``.npy`` or ``.npz`` file (for ``.npz``: the array ``x``, or the only array),
    holding one example ``input_shape`` or a batch ``(n, *input_shape)``; or, when ``image``, an
    image file that Pillow reads, converted to the run's channel count (1: grayscale ``L``,
    3: ``RGB``) and resized bilinearly to (H, W); or, for tabular inputs (F,), a ``.csv`` file with a
    header, one example per row: the training ``columns`` by name in any order (a ``label_column`` is
    ignored, any other column refused), or without names every column but ``label_column`` in order.
    Returns uint8 (N, C, H, W) pixels 0..255 when ``image``, else float32, in the order of ``paths``.
    Nothing is unpickled.
    """
    input_shape = tuple(int(s) for s in input_shape)
    if not paths:
        raise DataError("no input files given; pass one or more .npz, .npy or image files.")
    parts = []
    for raw in paths:
        path = Path(os.path.expanduser(str(raw)))
        if not path.exists():
            raise DataError(f"input file '{path}' does not exist; check the path.")
        if not path.is_file():
            raise DataError(f"input '{path}' is a folder; pass the files in it (e.g. '{path}/*.png').")
        if path.suffix.lower() in (".npy", ".npz"):
            parts.append(_fit_array(_read_array(path), path, input_shape, image))
            continue
        if path.suffix.lower() == ".csv" and len(input_shape) == 1:
            rows = read_feature_rows(path, input_shape[0], columns, label_column)
            parts.append(_fit_array(rows, path, input_shape, image))
            continue
        if not image:
            also = " or a .csv file with the training columns" if len(input_shape) == 1 else ""
            raise DataError(
                f"input file '{path}' is not a .npy/.npz array{also}; this model takes {kind_of(input_shape)} inputs "
                f"of shape {input_shape}, so save them with np.save."
            )
        if len(input_shape) != 3:
            raise DataError(f"input file '{path}' is an image, but the model takes inputs of shape {input_shape}; use .npy.")
        channels, height, width = input_shape
        if channels not in (1, 3):
            raise DataError(f"input file '{path}': the model takes {channels}-channel images, which image files cannot hold; use .npy.")
        try:
            with image_bombs_refused():
                pixels = load_image(path, "L" if channels == 1 else "RGB", (height, width))
        except ImageTooLarge:
            raise
        except DataError:
            raise DataError(
                f"input file '{path}' is neither a .npy/.npz array nor an image Pillow can read; "
                "check the file (png, jpg, bmp, gif, webp...)."
            ) from None
        parts.append(pixels[None, None] if channels == 1 else pixels.transpose(2, 0, 1)[None])
    return np.ascontiguousarray(np.concatenate(parts))
