"""Augmentation throughput: trainwell's batched pipeline vs a per-sample loop vs kornia (if installed).

The same seven per-sample random ops in each: translation (0.1), rotation (15 deg), hflip (0.5),
brightness (0.2), contrast (0.8-1.2), Gaussian noise (0.05), crop (padding 4). Every timed call
converts a uint8 batch to float in [0, 1] first, as the trainer does. The three run interleaved
(A B C A B C ...) so machine noise hits all alike; the medians of images/s are printed with ratios.

    python bench/bench_augment.py                  # 28x28x1 and 32x32x3, batch 256, 5 rounds, 1 thread
    python bench/bench_augment.py --rounds 9 --threads 0   # torch's default thread count

(b) is what a per-sample transform does in a DataLoader with num_workers=0: torch ops on one
image at a time (the way torchvision's tensor transforms work), then stacking into a batch.
(c) kornia.augmentation with the closest equivalents: RandomAffine(translate) for translation
(a bilinear warp, where ours moves by whole pixels), RandomBrightness (additive, as ours),
RandomContrast (kornia multiplies x by c; ours scales about the per-sample mean), no clipping.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from trainwell.data import to_float
from trainwell.data.augment import build_augmenter

SPEC = ["translation", "rotation", "hflip", "brightness", "contrast", "noise", "crop"]
SHAPES = {"28x28x1": (1, 28, 28), "32x32x3": (3, 32, 32)}


def trainwell_pipeline(shape: tuple[int, ...]) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    aug = build_augmenter(SPEC, shape)
    return lambda xb, g: aug(to_float(xb), g)


# ----------------------------------------------------------------------------- (b) per-sample loop


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=g).item()


def _randint(g: torch.Generator, low: int, high: int) -> int:
    return int(torch.randint(low, high + 1, (), generator=g).item())


def per_sample_transform(img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The same ops on one (C, H, W) float image, parameters drawn per call."""
    c, h, w = img.shape
    # translation: integer shift with zero fill (pad, slice)
    mh, mw = round(0.1 * h), round(0.1 * w)
    dy, dx = _randint(g, -mh, mh), _randint(g, -mw, mw)
    img = F.pad(img, (mw, mw, mh, mh))[:, mh - dy : mh - dy + h, mw - dx : mw - dx + w]
    # rotation: bilinear via affine_grid/grid_sample on a batch of one (as torchvision's tensor rotate)
    a = math.radians(_uniform(g, -15, 15))
    theta = torch.tensor([[math.cos(a), -math.sin(a) * h / w, 0.0], [math.sin(a) * w / h, math.cos(a), 0.0]])
    grid = F.affine_grid(theta[None], [1, c, h, w], align_corners=False)
    img = F.grid_sample(img[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    if torch.rand((), generator=g).item() < 0.5:
        img = img.flip(-1)
    img = img + _uniform(g, -0.2, 0.2)
    m = img.mean()
    img = (img - m) * _uniform(g, 0.8, 1.2) + m
    img = img + 0.05 * torch.randn(img.shape, generator=g)
    # crop: zero padding 4, random window
    oy, ox = _randint(g, 0, 8), _randint(g, 0, 8)
    return F.pad(img, (4, 4, 4, 4))[:, oy : oy + h, ox : ox + w]


def per_sample_loop(shape: tuple[int, ...]) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    return lambda xb, g: torch.stack([per_sample_transform(to_float(x), g) for x in xb])


# ----------------------------------------------------------------------------- (c) kornia


def kornia_pipeline(shape: tuple[int, ...]) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None:
    try:
        import kornia.augmentation as K
    except ImportError:
        return None
    _, h, w = shape
    seq = torch.nn.Sequential(
        K.RandomAffine(degrees=0.0, translate=(0.1, 0.1), p=1.0),
        K.RandomRotation(degrees=15.0, p=1.0),
        K.RandomHorizontalFlip(p=0.5),
        K.RandomBrightness(brightness=(0.8, 1.2), clip_output=False, p=1.0),
        K.RandomContrast(contrast=(0.8, 1.2), clip_output=False, p=1.0),
        K.RandomGaussianNoise(std=0.05, p=1.0),
        K.RandomCrop((h, w), padding=4, p=1.0),
    )
    return lambda xb, g: seq(to_float(xb))  # kornia draws from torch's global generator


# ----------------------------------------------------------------------------- timing


def images_per_second(fn, xb: torch.Tensor, g: torch.Generator, min_seconds: float) -> float:
    n_images, t0 = 0, time.perf_counter()
    while True:
        fn(xb, g)
        n_images += len(xb)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return n_images / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=0.5, help="minimum time per measurement")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads for all three (0 = torch's default; 1 avoids spinning "
                             "OpenMP threads on a small shared machine)")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import kornia

        kornia_note = f"kornia {kornia.__version__}"
    except ImportError:
        kornia_note = "kornia not installed: (c) skipped (pip install kornia)"
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"rounds {args.rounds}, {kornia_note}")
    print(f"ops: {', '.join(SPEC)} (per-sample random parameters)")
    header = (f"{'shape':<9} {'trainwell img/s':>16} {'loop img/s':>11} {'kornia img/s':>13} "
              f"{'vs loop':>8} {'vs kornia':>10}")
    print(header)
    for key in args.shapes.split(","):
        shape = SHAPES[key]
        xb = torch.randint(0, 256, (args.batch, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        g = torch.Generator().manual_seed(1)
        torch.manual_seed(1)
        methods = {"trainwell": trainwell_pipeline(shape), "loop": per_sample_loop(shape)}
        kornia_fn = kornia_pipeline(shape)
        if kornia_fn is not None:
            methods["kornia"] = kornia_fn
        for fn in methods.values():  # warm up (lazy init, allocator)
            fn(xb, g)
        rates: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(args.rounds):
            for name, fn in methods.items():
                rates[name].append(images_per_second(fn, xb, g, args.seconds))
        med = {name: statistics.median(r) for name, r in rates.items()}
        ours, k = med["trainwell"], med.get("kornia")
        k_rate = f"{k:,.0f}" if k else "-"
        k_ratio = f"{ours / k:.1f}x" if k else "-"
        print(f"{key:<9} {ours:>16,.0f} {med['loop']:>11,.0f} {k_rate:>13} {ours / med['loop']:>7.1f}x {k_ratio:>10}")


if __name__ == "__main__":
    main()
