"""Write MNIST-format IDX files made from scikit-learn's digits, for checking the 28x28 presets offline.

Each 8x8 digit is upscaled to 20x20 (bilinear) and pasted at a random offset into a 28x28 canvas,
as MNIST centres 20x20 digits in 28x28; test images come from digits never used for training.

    python bench/synthetic_mnist.py OUT_DIR [--copies 10]
    trainwell train preset=mnist data.path=OUT_DIR
"""

from __future__ import annotations

import argparse
import gzip
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits


def make_images(images8: np.ndarray, copies: int, rng: np.random.Generator) -> np.ndarray:
    x = torch.from_numpy(images8.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8)
    big = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False)[:, 0].numpy()
    out = np.zeros((len(images8) * copies, 28, 28), np.uint8)
    for c in range(copies):
        offsets = rng.integers(0, 9, size=(len(images8), 2))
        for i, (dy, dx) in enumerate(offsets):
            out[c * len(images8) + i, dy : dy + 20, dx : dx + 20] = np.clip(big[i] * 255, 0, 255).astype(np.uint8)
    return out


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--copies", type=int, default=10, help="shifted copies of each training digit")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    digits = load_digits()
    order = rng.permutation(len(digits.target))
    test_idx, train_idx = order[:360], order[360:]
    args.out.mkdir(parents=True, exist_ok=True)
    for prefix, idx, copies in (("train", train_idx, args.copies), ("t10k", test_idx, 1)):
        images = make_images(digits.images[idx], copies, rng)
        labels = np.tile(digits.target[idx], copies)
        write_idx(args.out / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(args.out / f"{prefix}-labels-idx1-ubyte.gz", labels)
        print(f"{prefix}: {len(labels)} images -> {args.out}")


if __name__ == "__main__":
    main()
