"""Data layer: sources -> validated train/val/test tensor splits -> fitted preprocessing.

Typical use::

    splits = load_splits(cfg.data)                       # Splits of CPU tensors
    pre = fit_preprocess(cfg.data.preprocess, splits.train.x)
    xb = pre(batch_x)                                    # uint8 or float batch -> float32 inputs

Conventions: images are uint8 (N, C, H, W) with values 0..255; signals (N, C, L) and tabular
data (N, F) are float32; labels are int64 0..K-1.
"""

from trainwell.data.inputs import read_inputs
from trainwell.data.preprocess import PREPROCESSORS, Preprocess, fit_preprocess, load_preprocess
from trainwell.data.sources import DATASETS, ArrayData
from trainwell.data.splits import Splits, TensorSplit, load_splits, make_splits, to_float, validate

__all__ = [
    "DATASETS",
    "PREPROCESSORS",
    "ArrayData",
    "Preprocess",
    "Splits",
    "TensorSplit",
    "fit_preprocess",
    "load_preprocess",
    "load_splits",
    "make_splits",
    "read_inputs",
    "to_float",
    "validate",
]
