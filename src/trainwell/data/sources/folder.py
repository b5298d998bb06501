"""``folder``: a folder of class sub-folders of image files (PIL), with the decompression-bomb guard."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from trainwell.config import DataConfig
from trainwell.errors import DataError
from trainwell.data.sources.base import ArrayData, _check_image_size, DATASETS, _need_path, one_line


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
