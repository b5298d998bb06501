"""Data-parallel training on this machine's CPU cores: ``--nproc 1`` against ``--nproc N``, same config,
global batch and seed, run as a user runs them (the command line), interleaved 1, N, N, 1, ... so load
hits both alike.

Prints, per round and as medians: the wall time of the whole command (start-up of the ranks
included), the training time the run records (``summary.json``'s ``train_seconds``: its epochs, the
reductions and validation included), examples/s, the speed-up of N processes (1-process time / N-process
time) and the final test accuracy of both (the same up to floating-point order: tests/test_distributed.py).

    python bench/bench_ddp.py                              # preset=mnist1d, 5 epochs, 2 processes, 3 rounds
    python bench/bench_ddp.py --nproc 2 --rounds 3 -- preset=mnist1d train.epochs=5
    python bench/bench_ddp.py -- model.name=mlp model.width=512 train.epochs=10

On 2 cores one process already uses both (torch's intra-op threads); N processes get cores // N
threads each, so the comparison is "one process, all cores" against "N processes sharing them".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trainwell.experiments.trials import available_cores


def run(args: list[str], nproc: int, out: Path) -> dict:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)  # one process: torch's default threads; --nproc sets cores // N
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "trainwell", "train", *args, "--nproc", str(nproc), "--out", str(out),
                    "--quiet", "--overwrite", "train.progress=false", "train.plots=false"], check=True, env=env)
    wall = time.perf_counter() - t0
    summary = json.loads((out / "summary.json").read_text())
    return {"wall": wall, "train": summary["train_seconds"], "ex_s": summary["examples_per_second"],
            "test_acc": summary["test_acc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("overrides", nargs="*", default=["preset=mnist1d", "train.epochs=5"])
    args = parser.parse_args()
    cores = available_cores()
    print(f"config: {' '.join(args.overrides)} | {cores} cores | 1 vs {args.nproc} processes | "
          f"{args.rounds} rounds | load {os.getloadavg()[0]:.2f}")
    results: dict[int, list[dict]] = {1: [], args.nproc: []}
    with tempfile.TemporaryDirectory() as tmp:
        order = [1, args.nproc]
        for r in range(args.rounds):
            for n in (order if r % 2 == 0 else order[::-1]):
                got = run(args.overrides, n, Path(tmp) / f"n{n}")
                results[n].append(got)
                print(f"round {r + 1}  nproc {n}: wall {got['wall']:.1f} s, train {got['train']:.1f} s, "
                      f"{got['ex_s']:,.0f} ex/s, test acc {got['test_acc']:.4f}", flush=True)
    med = {n: {k: statistics.median(g[k] for g in rs) for k in ("wall", "train", "ex_s")} for n, rs in results.items()}
    one, many = med[1], med[args.nproc]
    print(f"median  nproc 1: wall {one['wall']:.1f} s, train {one['train']:.1f} s, {one['ex_s']:,.0f} ex/s")
    print(f"median  nproc {args.nproc}: wall {many['wall']:.1f} s, train {many['train']:.1f} s, {many['ex_s']:,.0f} ex/s")
    print(f"speed-up of {args.nproc} processes: training {one['train'] / many['train']:.2f}x, "
          f"whole command {one['wall'] / many['wall']:.2f}x (> 1: faster) | load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
