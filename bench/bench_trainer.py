"""trainwell's trainer against a hand-written PyTorch loop: same model, data, batch size, optimiser.

Both run in the same process, interleaved (A B A B ...) so machine noise hits both alike; the
ratio of the medians is printed (goal: <= 1.05). trainwell writes a checkpoint at every epoch end
to a temporary folder, as ``trainwell train`` does; a third column also checkpoints every 50 steps
(``train.checkpoint_every=50``).

    python bench/bench_trainer.py                 # digits MLP and MNIST-1D CNN, 5 rounds each
    python bench/bench_trainer.py --rounds 9 --epochs 5
    python bench/bench_trainer.py --breakdown     # also: checkpoints off, checkpoints in memory
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from trainwell.config import resolve
from trainwell.data import load_splits, to_float
from trainwell.nn.pipeline import Classifier
from trainwell.train.build import build_classifier
from trainwell.train.checkpoint import Checkpoints
from trainwell.train.trainer import LoopSettings, build_state, fit

from common import interleaved, parse_args  # bench/common.py (the script's folder is on sys.path)

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


class NoCheckpoints(Checkpoints):
    """--breakdown: the loop with every checkpoint skipped (what the loop itself costs)."""

    def save(self, tree, step: int, epoch: int) -> None:
        pass


def with_trainwell(cfg, splits, device, seed: int, checkpoint_every: int = 0, where: str = "disk") -> float:
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed, checkpoint_every=checkpoint_every))
    model = make_model(cfg, splits, seed)
    state = build_state(model, cfg, len(splits.train), device)
    with tempfile.TemporaryDirectory() as folder:
        checkpoints = {"disk": Checkpoints(Path(folder)), "memory": Checkpoints(None),
                       "off": NoCheckpoints(Path(folder))}[where]
        sync(device)
        t0 = time.perf_counter()
        fit(state, splits.train, splits.val, LoopSettings.from_config(cfg, splits.num_classes),
            checkpoints=checkpoints)
        sync(device)
        return time.perf_counter() - t0  # the whole fit: epochs and checkpoints (no validation: val is empty)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    import sys

    breakdown = "--breakdown" in sys.argv
    if breakdown:
        sys.argv.remove("--breakdown")
    args = parse_args(__doc__, CASES, epochs=3)
    columns = ["trainwell", "every 50"] + (["ckpt off", "in memory"] if breakdown else [])
    print(f"{'case':<14} {'hand-written s':>15}" + "".join(f" {c + ' s':>12} {'ratio':>6}" for c in columns))
    for name in args.cases.split(","):
        # val_fraction=0: the hand-written loop does no validation either.
        cfg = resolve(CASES[name] + [f"train.epochs={args.epochs}", "data.val_fraction=0", "train.progress=false"])
        splits = load_splits(cfg.data)
        seeds = iter(range(10**6))
        runs = [lambda: hand_written(cfg, splits, args.device, next(seeds)),
                lambda: with_trainwell(cfg, splits, args.device, next(seeds)),
                lambda: with_trainwell(cfg, splits, args.device, next(seeds), 50)]
        if breakdown:
            runs += [lambda: with_trainwell(cfg, splits, args.device, next(seeds), where="off"),
                     lambda: with_trainwell(cfg, splits, args.device, next(seeds), where="memory")]
        hand, *ours = interleaved(*runs, rounds=args.rounds)
        print(f"{name:<14} {hand:>15.3f}" + "".join(f" {t:>12.3f} {t / hand:>6.3f}" for t in ours))


if __name__ == "__main__":
    main()
