"""Where one epoch of trainwell's own training loop spends its time, and the FLOP rate it achieves.

Trains ``--warmup`` epochs unprofiled (allocator and kernel caches warm), then profiles the next
epoch with torch.profiler (CPU): its training steps, its validation and the checkpoint before it,
exactly as ``fit`` runs them. Each profiled op's own (self) time goes to one group:

* forward: the model's forward (training mode); loss: the cross-entropy and any L1/L2 penalty;
* backward: autograd's backward (``Tensor.backward`` and autograd's ``evaluate_function`` events);
* optimiser: torch's ``Optimizer.step#...`` / ``Optimizer.zero_grad#...`` events, the LR schedule,
  gradient clipping and the EMA update;
* augmentation: the augmenter, mixup/cutmix;
* data movement: batch indexing, the uint8 -> float conversion, device copies, the shuffle;
* metrics: the loss/accuracy sums and divergence checks the loop keeps on the device;
* evaluation (the epoch's validation) and checkpoint (the epoch-end state copy);
* other ops, and loop/Python: the epoch's wall time in which no profiled op ran.

The labels are torch.profiler.record_function ranges put around trainwell's functions from here
(the model's forward, the augmenter, ...), so the trainer carries no labels: a record_function
costs microseconds per call even with no profiler running, more than 1% of a small step (the
script measures it, interleaved with an empty context manager, and prints what the 8 labels a step
would carry cost against this config's step).
Any op outside a label is grouped by its name. Profiling adds time per op: compare groups with each
other, and take speeds from the unprofiled epochs (their examples/s and GFLOP/s are printed too).

Achieved GFLOP/s = the model's training FLOPs per example (trainwell.nn.summary: matrix products
and convolutions, forward + backward, measured) x examples per second of the training steps.

    python bench/profile_epoch.py                                 # preset=mnist on ../shared MNIST
    python bench/profile_epoch.py --limit 2000                    # a subset: quick
    python bench/profile_epoch.py preset=mnist1d train.batch_size=256 --top 15

Default config: ``preset=mnist data.name=idx data.path=/work/shared/data/mnist-train``; where that
folder is absent, the same preset on bench/synthetic_mnist.py's images (written to a temp folder).
Given key=value overrides replace the default config whole (give data.* too).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from trainwell.config import resolve
from trainwell.data import load_splits
from trainwell.nn.summary import in_units, summarize
from trainwell.train.build import build_augmenter, build_classifier
from trainwell.train.checkpoint import Checkpoints
from trainwell.train.events import Callback, EpochEnd
from trainwell.train.trainer import LoopSettings, build_state, fit, resolve_device

from common import interleaved  # bench/common.py (the script's folder is on sys.path)

trainer = importlib.import_module("trainwell.train.trainer")  # the module ('trainwell.train' is also a function)

MNIST = Path("/work/shared/data/mnist-train")
LABEL = "trainwell:"
GROUPS = ("forward", "loss", "backward", "optimiser", "augmentation", "data movement", "metrics", "evaluation",
          "checkpoint", "other ops", "loop/Python (no op)")
#: Unlabelled ops by name (the ones the loop runs itself, between the labelled calls).
BY_NAME = {
    "data movement": ("aten::index", "aten::index_select", "aten::to", "aten::_to_copy", "aten::copy_",
                      "aten::contiguous", "aten::clone", "aten::split", "aten::slice", "aten::randperm",
                      "aten::select", "aten::unbind"),
    "metrics": ("aten::add_", "aten::add", "aten::argmax", "aten::eq", "aten::sum", "aten::detach",
                "aten::isfinite", "aten::stack", "aten::nonzero", "aten::item", "aten::_local_scalar_dense",
                "aten::logical_not", "aten::bitwise_not", "aten::zero_", "aten::all", "aten::double", "aten::mul"),
}


def labelled(group: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` inside a record_function named for ``group``."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with record_function(LABEL + group):
            return fn(*args, **kwargs)
    return wrapper


def group_of_label(name: str) -> str | None:
    """The group a labelled range stands for: ours, torch's optimiser ranges, autograd's backward."""
    if name.startswith(LABEL):
        return name[len(LABEL):]
    if name.startswith(("Optimizer.step#", "Optimizer.zero_grad#")):
        return "optimiser"
    if name.startswith("autograd::engine::evaluate_function"):
        return "backward"
    return None


def group_times(events: Any) -> tuple[dict[str, float], dict[tuple[str, str], float]]:
    """Self CPU seconds per group (the outermost labelled range around an op decides its group; an
    unlabelled op goes by the name of the outermost op it runs in), and per (group, op name)."""
    groups: dict[str, float] = defaultdict(float)
    ops: dict[tuple[str, str], float] = defaultdict(float)
    for e in events:
        chain, node = [], e
        while node is not None:
            chain.append(node)
            node = node.cpu_parent
        labelled_group = next((g for g in (group_of_label(n.name) for n in reversed(chain)) if g), None)
        root = chain[-1].name
        group = labelled_group or next((g for g, names in BY_NAME.items() if root in names), "other ops")
        seconds = e.self_cpu_time_total / 1e6
        groups[group] += seconds
        ops[(group, e.name)] += seconds
    return groups, ops


class ProfileOneEpoch(Callback):
    """Starts the profiler when epoch ``after`` ends, stops it when the next one ends."""

    def __init__(self, prof: profile, after: int) -> None:
        self.prof, self.after = prof, after
        self.wall = 0.0
        self.t0 = 0.0

    def on_epoch_end(self, event: EpochEnd) -> None:
        if event.epoch == self.after:
            self.prof.start()
            self.t0 = time.perf_counter()
        elif event.epoch == self.after + 1:
            self.wall = time.perf_counter() - self.t0
            self.prof.stop()


@contextlib.contextmanager
def labels(model: torch.nn.Module, state: Any, checkpoints: Checkpoints) -> Iterator[None]:
    """record_function labels around what the loop calls, put in from outside the trainer. A name the
    trainer no longer has is reported and left out (its ops are then grouped by name)."""
    targets: list[tuple[Any, str, str]] = [
        (model, "forward", "forward"), (torch.nn.functional, "cross_entropy", "loss"), (trainer, "penalty", "loss"),
        (torch.Tensor, "backward", "backward"), (torch.nn.utils, "clip_grad_norm_", "optimiser"),
        (state.schedule, "step", "optimiser"), (state.ema, "update_parameters", "optimiser"),
        (trainer, "to_float", "data movement"), (trainer, "sample_mix", "augmentation"),
        (trainer, "apply_mix", "augmentation"), (trainer, "evaluate_split", "evaluation"),
        (checkpoints, "save", "checkpoint"),
    ]
    with contextlib.ExitStack() as stack:
        for obj, name, group in targets:
            if obj is None:  # no EMA
                continue
            if not hasattr(obj, name):
                print(f"note: {getattr(obj, '__name__', type(obj).__name__)}.{name} is gone; its ops are grouped by name")
                continue
            stack.enter_context(mock.patch.object(obj, name, labelled(group, getattr(obj, name))))
        yield


def label_cost(rounds: int = 7, calls: int = 20000) -> tuple[float, float]:
    """Seconds per record_function enter/exit with no profiler running, and per empty context manager."""
    def timed(cm: Callable[[str], Any]) -> Callable[[], float]:
        def once() -> float:
            t0 = time.perf_counter()
            for _ in range(calls):
                with cm("label"):
                    pass
            return (time.perf_counter() - t0) / calls
        return once
    return interleaved(timed(record_function), timed(lambda name: contextlib.nullcontext()), rounds=rounds)


def default_overrides(tmp: Path) -> list[str]:
    if MNIST.is_dir():
        return ["preset=mnist", "data.name=idx", f"data.path={MNIST}"]
    print(f"{MNIST} is absent: synthetic MNIST-format digits (bench/synthetic_mnist.py) instead")
    subprocess.run([sys.executable, str(Path(__file__).with_name("synthetic_mnist.py")), str(tmp / "mnist")],
                   check=True, stdout=subprocess.DEVNULL)
    return ["preset=mnist", "data.name=idx", f"data.path={tmp / 'mnist'}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--limit", type=int, default=0, help="train on at most this many examples (data.limit)")
    parser.add_argument("--warmup", type=int, default=1, help="unprofiled epochs before the profiled one (>= 1)")
    parser.add_argument("--top", type=int, default=10, help="also list the ops with the most self time")
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be >= 1: the profile starts when an epoch ends")
    with tempfile.TemporaryDirectory() as tmp:
        overrides = args.overrides or default_overrides(Path(tmp))
        extra = [f"train.epochs={args.warmup + 1}", "train.progress=false"] + \
            ([f"data.limit={args.limit}"] if args.limit else [])
        cfg = resolve(overrides + extra)
        run(cfg, overrides + extra, args.warmup, args.top)


def run(cfg: Any, overrides: list[str], warmup: int, top: int) -> None:
    device = resolve_device(cfg.train.device)
    splits = load_splits(cfg.data)
    classifier = build_classifier(cfg, splits)
    flops = summarize(classifier, splits.input_shape)
    state = build_state(classifier, cfg, len(splits.train), device)
    settings = LoopSettings.from_config(cfg, splits.num_classes)
    augment = build_augmenter(cfg, splits)
    checkpoints = Checkpoints(None)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{' '.join(overrides)}\n{splits.description}: {len(splits.train)} train / {len(splits.val)} val | "
          f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.1f}")
    print(f"model: {flops.params:,} params, {in_units(flops.forward_flops)} MFLOP forward, "
          f"{in_units(flops.train_flops)} MFLOP train per example"
          + ("" if flops.complete else f" (not counted: {', '.join(flops.not_counted)})"))

    prof = profile(activities=[ProfilerActivity.CPU])
    profiler = ProfileOneEpoch(prof, after=warmup)
    with labels(classifier, state, checkpoints):
        result = fit(state, splits.train, splits.val, settings,
                     augment=labelled("augmentation", augment) if augment is not None else None,
                     callbacks=[profiler], checkpoints=checkpoints)

    for row in result.history:
        kind = "profiled" if row["epoch"] == warmup + 1 else "unprofiled"
        print(f"epoch {row['epoch']} ({kind}): {row['seconds']:.2f} s of training steps, "
              f"{row['examples_per_second']:,.0f} examples/s, "
              f"{flops.train_flops * row['examples_per_second'] / 1e9:,.1f} GFLOP/s achieved")
    groups, ops = group_times(prof.events())
    groups["loop/Python (no op)"] = max(profiler.wall - sum(groups.values()), 0.0)
    print(f"\nprofiled epoch {warmup + 1}: {profiler.wall:.2f} s wall (its steps, its validation on {len(splits.val)} "
          "examples, the checkpoint before it; times inflated by the profiler)")
    print(f"{'group':<22}{'seconds':>10}{'share':>8}")
    for g in GROUPS:
        print(f"{g:<22}{groups.get(g, 0.0):>10.3f}{groups.get(g, 0.0) / profiler.wall:>8.1%}")
    last_unprofiled = result.history[max(warmup - 1, 0)]
    step = last_unprofiled["seconds"] / max(result.steps // len(result.history), 1)
    labelled_cost, empty = label_cost()
    print(f"\nrecord_function with no profiler running: {labelled_cost * 1e6:.1f} us per call (an empty context "
          f"manager {empty * 1e6:.1f} us); 8 labels per step would add {8 * labelled_cost / step:.1%} to this "
          f"config's step ({step * 1e3:.1f} ms, epoch {last_unprofiled['epoch']})")
    if top:
        print(f"\nthe {top} ops with the most self time")
        for (g, name), s in sorted(ops.items(), key=lambda kv: -kv[1])[:top]:
            print(f"  {s:8.3f} s  {g:<14} {name}")


if __name__ == "__main__":
    main()
