"""``digits``: scikit-learn's bundled 8x8 handwritten digits, as uint8 images 0..255."""

from __future__ import annotations

import numpy as np

from trainwell.config import DataConfig
from trainwell.data.sources.base import ArrayData, DATASETS


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
