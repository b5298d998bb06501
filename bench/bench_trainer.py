"""trainwell's trainer against a hand-written PyTorch loop: same model, data, batch size, optimiser.

Both run in the same process, interleaved (A B A B ...) so machine noise hits both alike; the
ratio of the medians is printed (goal: <= 1.05).

    python bench/bench_trainer.py                 # digits MLP and MNIST-1D CNN, 5 rounds each
    python bench/bench_trainer.py --rounds 9 --epochs 5
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
import torch.nn.functional as F

from trainwell.config import resolve
from trainwell.data import load_splits, to_float
from trainwell.nn.pipeline import Classifier
from trainwell.train.run import build_classifier
from trainwell.train.trainer import RandomState, fit, resolve_device

CASES = {
    "digits-mlp": ["data.name=digits", "model.name=mlp", "train.batch_size=64"],
    "mnist1d-cnn": ["preset=mnist1d", "train.batch_size=64"],
}


def make_model(cfg, splits, seed: int) -> Classifier:
    return build_classifier(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed)), splits)


def hand_written(cfg, splits, device, seed: int) -> float:
    """What a user would write: float data on the device, shuffle, forward, backward, step."""
    model = make_model(cfg, splits, seed).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                          nesterov=cfg.optim.nesterov, weight_decay=cfg.optim.weight_decay)
    total = cfg.train.epochs * ((len(splits.train) + cfg.train.batch_size - 1) // cfg.train.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    x = to_float(splits.train.x).to(device)
    y = splits.train.y.to(device)
    g = torch.Generator().manual_seed(seed)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(cfg.train.epochs):
        for idx in torch.randperm(len(x), generator=g).to(device).split(cfg.train.batch_size):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    sync(device)
    return time.perf_counter() - t0


def with_trainwell(cfg, splits, device, seed: int) -> float:
    model = make_model(cfg, splits, seed)
    result = fit(model, splits, cfg, device, RandomState.from_seed(seed, device))
    return result.train_seconds  # time inside the epochs, as for the hand-written loop (no validation)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, rounds {args.rounds}")
    print(f"{'case':<14} {'hand-written s':>15} {'trainwell s':>12} {'ratio':>7}")
    for name in args.cases.split(","):
        # val_fraction=0: the hand-written loop does no validation either.
        cfg = resolve(CASES[name] + [f"train.epochs={args.epochs}", "data.val_fraction=0", "train.progress=false"])
        splits = load_splits(cfg.data)
        hand_written(cfg, splits, device, 0)  # warm-up (allocator, kernels)
        hand, ours = [], []
        for r in range(args.rounds):
            hand.append(hand_written(cfg, splits, device, r))
            ours.append(with_trainwell(cfg, splits, device, r))
        h, o = statistics.median(hand), statistics.median(ours)
        print(f"{name:<14} {h:>15.3f} {o:>12.3f} {o / h:>7.3f}")


if __name__ == "__main__":
    main()
