"""Time to accuracy on real MNIST: ``trainwell train preset=mnist`` against the official PyTorch example.

The reference is the recipe a user would otherwise copy, pytorch/examples ``mnist/main.py``: conv 3x3 32 ->
conv 3x3 64 -> max-pool 2 -> dropout 0.25 -> fc 128 -> dropout 0.5 -> fc 10, log-softmax + NLL,
Adadelta at lr 1.0, batch 64, inputs scaled to [0, 1] and normalised with (0.1307, 0.3081), StepLR
gamma 0.7 after each epoch (so its first epoch runs at lr 1.0). It is written here in plain PyTorch
over tensors in memory: no DataLoader and no per-example transforms, which only makes the reference
faster than the example as published (a flattering budget for it, a strict one for trainwell).

Both train on the same examples: trainwell's own split of the training files with
``data.test_fraction=0.1 data.val_fraction=0``, so 54,000 train and 6,000 held back, which are the
"validation" accuracy printed for both (the official test set is kept elsewhere). Order: official,
trainwell (per seed), official again — the two official times show how the machine's load moved.
Times are training time: the official's first epoch (its steps only) and trainwell's
``train_seconds`` (its epochs' steps: no validation, no checkpoint writes); the wall time of the whole
``train()`` call (data loading, checkpoints, test evaluation included) is printed too.

    python bench/time_to_accuracy.py                         # ../shared/data/mnist-train, seed 0
    python bench/time_to_accuracy.py --seeds 0,1,2 --data DIR
    python bench/time_to_accuracy.py --preset-args model.channels=16,32 train.epochs=3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trainwell.config import resolve
from trainwell.data import load_splits, to_float
from trainwell.nn.summary import train_flops
from trainwell.runs.train import train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mnist-train"
SPLIT = ["data.name=idx", "data.test_fraction=0.1", "data.val_fraction=0"]


class OfficialNet(nn.Module):
    """pytorch/examples mnist/main.py's Net: ~1.2 M parameters, ~24 MFLOP forward per example."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, 1), nn.Conv2d(32, 64, 3, 1)
        self.dropout1, self.dropout2 = nn.Dropout(0.25), nn.Dropout(0.5)
        self.fc1, self.fc2 = nn.Linear(9216, 128), nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = self.dropout2(F.relu(self.fc1(torch.flatten(self.dropout1(x), 1))))
        return F.log_softmax(self.fc2(x), dim=1)


def official_epoch(x: torch.Tensor, y: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
                   seed: int) -> tuple[float, float]:
    """(seconds of the first epoch's steps, held-back accuracy after it) of the official recipe."""
    torch.manual_seed(seed)
    model = OfficialNet()
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    normalise = lambda t: (to_float(t) - 0.1307) / 0.3081  # noqa: E731
    x, x_val = normalise(x), normalise(x_val)
    model.train()
    start = time.perf_counter()
    for idx in torch.randperm(len(x)).split(64):
        optimizer.zero_grad()
        F.nll_loss(model(x[idx]), y[idx]).backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x_val[i : i + 1000]).argmax(1) == y_val[i : i + 1000]).sum())
                      for i in range(0, len(x_val), 1000))
    return seconds, correct / len(x_val)


def trainwell_run(data: Path, seed: int, extra: list[str]) -> dict[str, float]:
    args = ["preset=mnist", *SPLIT, f"data.path={data}", f"train.seed={seed}", "train.plots=false", *extra]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = train(args, out=Path(tmp) / "run", quiet=True)
        wall = time.perf_counter() - start
    s = run.summary
    return {"seconds": s["train_seconds"], "acc": s["test_acc"], "wall": wall, "epochs": s["epochs"],
            "gflops": (s["train_flops_per_example"] or float("nan")) * s["examples_per_second"] / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of MNIST's training IDX files")
    parser.add_argument("--seeds", default="0", help="trainwell seeds, comma-separated")
    parser.add_argument("--preset-args", nargs="*", default=[], help="extra key=value overrides for trainwell")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    splits = load_splits(resolve([*SPLIT, f"data.path={args.data}"]).data)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(splits.train)} train, "
          f"{len(splits.test)} held back; trainwell overrides: {' '.join(args.preset_args) or 'none'}", flush=True)

    official_rate = (train_flops(OfficialNet(), (1, 28, 28)) or float("nan")) * len(splits.train) / 1e9
    reference = [official_epoch(splits.train.x, splits.train.y, splits.test.x, splits.test.y, seed=0)]
    print(f"official, epoch 1: {reference[0][0]:.1f} s ({official_rate / reference[0][0]:.1f} GFLOP/s), held-back "
          f"accuracy {reference[0][1]:.2%}", flush=True)
    runs = []
    for seed in seeds:
        runs.append(trainwell_run(args.data, seed, args.preset_args))
        r = runs[-1]
        print(f"trainwell preset=mnist seed {seed}: {r['seconds']:.1f} s training ({r['epochs']} epochs, "
              f"{r['wall']:.1f} s wall in all; {r['gflops']:.1f} GFLOP/s), held-back accuracy {r['acc']:.2%}", flush=True)
    reference.append(official_epoch(splits.train.x, splits.train.y, splits.test.x, splits.test.y, seed=1))
    print(f"official, epoch 1 again: {reference[1][0]:.1f} s ({official_rate / reference[1][0]:.1f} GFLOP/s), "
          f"held-back accuracy {reference[1][1]:.2%}", flush=True)

    budget = statistics.mean(t for t, _ in reference)
    mean_seconds = statistics.mean(r["seconds"] for r in runs)
    mean_acc = statistics.mean(r["acc"] for r in runs)
    print(f"\nratio trainwell training time / official first epoch: {mean_seconds / budget:.3f} (goal <= 1.0); "
          f"wall ratio {statistics.mean(r['wall'] for r in runs) / budget:.3f}")
    print(f"held-back accuracy: trainwell {mean_acc:.2%} (mean of {len(runs)}, min "
          f"{min(r['acc'] for r in runs):.2%}; goal >= 99.5%), official after its first epoch "
          f"{statistics.mean(a for _, a in reference):.2%}")


if __name__ == "__main__":
    main()
