"""Shared by the bench scripts: the command line and the interleaved A/B measurement."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch

from trainwell.train.trainer import resolve_device


def parse_args(doc: str, cases: dict, epochs: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cases", default=",".join(cases))
    args = parser.parse_args()
    args.device = resolve_device(args.device)
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, rounds {args.rounds}")
    return args


def interleaved(*runs: Callable[[], float], rounds: int) -> tuple[float, ...]:
    """Medians of ``rounds`` alternating runs A, B, (C,) A, B ... (after one warm-up of A), so machine
    load hits all alike."""
    runs[0]()
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds):
        for run, bucket in zip(runs, times):
            bucket.append(run())
    return tuple(statistics.median(t) for t in times)
