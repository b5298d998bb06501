"""The CPU levers of issue 14 (goal 4), each measured side by side through trainwell's own fit.

``preset=mnist`` (the 3-block CNN) on real MNIST, a subset of ``--examples`` training images
(``data.path=--data``; without that folder, synthetic MNIST from bench/synthetic_mnist.py). Each
lever is a pair A (the default) / B, run interleaved A B A B ... (bench/common.py ``interleaved``,
after a warm-up of A), every run a fresh model of its own seed. Printed: the training throughput
(examples/s over the epochs after the first, medians), the ratio B/A (> 1: B is faster), and the
ratio of the first epochs (where torch.compile pays its compilation).

    threads      torch.set_num_threads(2) vs 1
    interop      torch.set_num_interop_threads 2 vs 1 (fixed per process: each run is a child process)
    channels     train.channels_last=false vs true
    bf16         train.precision=fp32 vs bf16 (autocast on the CPU)
    compile      train.compile=false vs true
    float_cache  uint8 converted once to a float copy on the device (placement.FLOAT_CACHE_BYTES) vs
                 converted per batch
    eval_batch   evaluation of the held-out split (evaluate_split) at train.eval_batch_size 1024 vs
                 256 and vs 4096: examples/s of evaluation, not training

    python bench/bench_levers.py                                  # every lever, 3 rounds, 10,000 images
    python bench/bench_levers.py --rounds 1 --examples 512 --epochs 2 --cases threads,bf16  # a quick check
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from trainwell.config import Config, resolve
from trainwell.data import Splits, load_splits
from trainwell.train import placement
from trainwell.train.build import build_classifier
from trainwell.train.checkpoint import Checkpoints
from trainwell.train.trainer import LoopSettings, build_state, evaluate_split, fit

from common import interleaved  # bench/common.py (the script's folder is on sys.path)

MNIST = "/work/shared/data/mnist-train"
HERE = Path(__file__).resolve().parent
LEVERS = ("threads", "interop", "channels", "bf16", "compile", "float_cache", "eval_batch")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="per run; throughput is read from epochs 2.. (>= 2)")
    parser.add_argument("--examples", type=int, default=10_000, help="training images (data.limit)")
    parser.add_argument("--data", default=MNIST, help="a folder of MNIST IDX files")
    parser.add_argument("--cases", default=",".join(LEVERS))
    parser.add_argument("--child-interop", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args()


def data_folder(path: str, scratch: Path) -> str:
    """The MNIST folder, or synthetic MNIST written to ``scratch`` when it is absent."""
    if Path(path).is_dir():
        return path
    print(f"{path} not found: synthetic MNIST (bench/synthetic_mnist.py) instead", flush=True)
    subprocess.run([sys.executable, str(HERE / "synthetic_mnist.py"), str(scratch)], check=True)
    return str(scratch)


def config(folder: str, args: argparse.Namespace, *extra: str) -> Config:
    # val_fraction=0: the training levers time training only (eval_batch times evaluation on the test split).
    return resolve(["preset=mnist", "data.name=idx", f"data.path={folder}", f"data.limit={args.examples}",
                    "data.val_fraction=0", f"train.epochs={args.epochs}", "train.progress=false",
                    "train.device=cpu", *extra])


def fit_throughput(cfg: Config, splits: Splits, seed: int) -> tuple[float, float]:
    """(examples/s of the epochs after the first, examples/s of the first) of one fresh run."""
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))
    device = torch.device("cpu")
    state = build_state(build_classifier(cfg, splits), cfg, len(splits.train), device)
    torch._dynamo.reset()  # train.compile: every run compiles its own model
    result = fit(state, splits.train, splits.val, LoopSettings.from_config(cfg, splits.num_classes),
                 checkpoints=Checkpoints(None))
    rows = result.history
    later = rows[1:] or rows
    steady = sum(r["examples_per_second"] * r["seconds"] for r in later) / sum(r["seconds"] for r in later)
    return steady, rows[0]["examples_per_second"]


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def float_cache(on: bool) -> Iterator[None]:
    before = placement.FLOAT_CACHE_BYTES
    placement.FLOAT_CACHE_BYTES = before if on else 0
    try:
        yield
    finally:
        placement.FLOAT_CACHE_BYTES = before


def child_run(interop: int, args: argparse.Namespace, folder: str, seed: int) -> tuple[float, float]:
    """One run in a fresh process with ``interop`` inter-op threads (settable once per process only)."""
    cmd = [sys.executable, __file__, "--child-interop", str(interop), "--examples", str(args.examples),
           "--epochs", str(args.epochs), "--data", folder, "--seed", str(seed)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    figures = json.loads(out.strip().splitlines()[-1])
    return figures["steady"], figures["first"]


class Pair:
    """Lever runs A and B: interleaved() reads seconds per example; the first epochs are kept aside."""

    def __init__(self, a: Callable[[int], tuple[float, float]], b: Callable[[int], tuple[float, float]]) -> None:
        self.runs = (a, b)
        self.first: tuple[list[float], list[float]] = ([], [])
        self.seeds = iter(range(10**6))

    def timed(self, which: int) -> Callable[[], float]:
        def run() -> float:
            steady, first = self.runs[which](next(self.seeds))
            self.first[which].append(first)
            return 1.0 / steady
        return run

    def measure(self, rounds: int) -> tuple[float, float, float]:
        """(A examples/s, B examples/s, B/A of the first epochs), medians."""
        per_a, per_b = interleaved(self.timed(0), self.timed(1), rounds=rounds)
        first_a, first_b = (statistics.median(f[1:] if which == 0 else f)  # A's warm-up left out
                            for which, f in enumerate(self.first))
        return 1.0 / per_a, 1.0 / per_b, first_b / first_a


def eval_throughput(model: torch.nn.Module, splits: Splits, batch: int) -> float:
    t0 = time.perf_counter()
    evaluate_split(model, splits.test, torch.device("cpu"), batch)
    return (time.perf_counter() - t0) / len(splits.test)


def main() -> None:
    args = parse()
    if args.child_interop:
        torch.set_num_interop_threads(args.child_interop)  # before any parallel work
        cfg = config(args.data, args)
        steady, first = fit_throughput(cfg, load_splits(cfg.data), args.seed)
        print(json.dumps({"steady": steady, "first": first}))
        return
    if args.epochs < 2:
        raise SystemExit("--epochs must be >= 2: the throughput is read from the epochs after the first")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, interop {torch.get_num_interop_threads()}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, rounds {args.rounds}, "
          f"{args.examples} examples x {args.epochs} epochs per run", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        folder = data_folder(args.data, Path(scratch))
        base = config(folder, args)
        splits = load_splits(base.data)
        print(f"{splits.description}: {len(splits.train)} train, {len(splits.test)} test", flush=True)
        threads_now = torch.get_num_threads()

        def plain(*extra: str) -> Callable[[int], tuple[float, float]]:
            cfg = config(folder, args, *extra)
            return lambda seed: fit_throughput(cfg, splits, seed)

        def within(context: Callable[[], contextlib.AbstractContextManager[None]],
                   run: Callable[[int], tuple[float, float]]) -> Callable[[int], tuple[float, float]]:
            def wrapped(seed: int) -> tuple[float, float]:
                with context():
                    return run(seed)
            return wrapped

        pairs: dict[str, tuple[str, str, Callable[[], Pair]]] = {
            "threads": ("2 threads", "1 thread", lambda: Pair(within(lambda: threads(2), plain()),
                                                             within(lambda: threads(1), plain()))),
            "interop": ("interop 2", "interop 1", lambda: Pair(lambda s: child_run(2, args, folder, s),
                                                               lambda s: child_run(1, args, folder, s))),
            "channels": ("NCHW", "channels_last", lambda: Pair(plain(), plain("train.channels_last=true"))),
            "bf16": ("fp32", "bf16 autocast", lambda: Pair(plain(), plain("train.precision=bf16"))),
            "compile": ("eager", "torch.compile", lambda: Pair(plain(), plain("train.compile=true"))),
            "float_cache": ("float cache", "uint8/batch", lambda: Pair(plain(),
                                                                       within(lambda: float_cache(False), plain()))),
        }
        print(f"{'lever':<12} {'A':<14} {'B':<14} {'A ex/s':>9} {'B ex/s':>9} {'B/A':>6} {'1st ep B/A':>10}", flush=True)
        for name in args.cases.split(","):
            if name == "eval_batch":
                model = build_classifier(base, splits)
                sizes = (1024, 256, 4096)
                per = interleaved(*(lambda b=b: eval_throughput(model, splits, b) for b in sizes), rounds=args.rounds)
                for size, seconds in zip(sizes[1:], per[1:]):
                    print(f"{'eval_batch':<12} {'batch 1024':<14} {f'batch {size}':<14} {1 / per[0]:>9.0f} "
                          f"{1 / seconds:>9.0f} {per[0] / seconds:>6.3f} {'':>10}", flush=True)
                continue
            if name not in pairs:
                raise SystemExit(f"unknown lever '{name}'; choose from {', '.join(LEVERS)}")
            label_a, label_b, make = pairs[name]
            a, b, first = make().measure(args.rounds)
            print(f"{name:<12} {label_a:<14} {label_b:<14} {a:>9.0f} {b:>9.0f} {b / a:>6.3f} {first:>10.3f}", flush=True)
        torch.set_num_threads(threads_now)


if __name__ == "__main__":
    main()
