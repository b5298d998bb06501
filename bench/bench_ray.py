"""Trials on Ray against the local process pool: the wall time of N tiny runs on each, the difference per
run, and Ray's start-up and shutdown; the same runs one after another in this process, for reference.

    nice -n 10 python bench/bench_ray.py                    # 8 runs of 1 epoch of a digits MLP, 3 rounds

Each round runs the same N runs (seeds 0..N-1) into fresh folders with ``execute`` (the runner alone: no
report, no plots), alternating the local pool, Ray and this process alone (``--workers 1``, no worker
processes: the runs' own time) so the machine's load hits all alike. The local pool starts
its worker processes anew for every compare, as it does in a command; Ray starts once per command
(``lab all`` runs many compares on one instance), so its first round is shown apart (its workers start
then) and the start-up is timed on its own. The runs are the same bit for bit on both (tests/test_ray_backend.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from trainwell.experiments.compare import Plan, execute, prepare_compare_dir, validate
from trainwell.experiments.trials import Backend, available_cores, default_workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    import ray

    from trainwell.experiments.ray_backend import ray_session

    plan = Plan(base=["model.name=mlp", "model.width=64", "model.depth=2", f"train.epochs={args.epochs}",
                      "train.device=cpu"], seeds=list(range(args.runs)), title="bench")
    configs = validate(plan)
    cores = available_cores()
    workers = default_workers(args.runs, configs)
    backend = Backend("ray", cpus_per_trial=max(1, cores // workers))
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"{platform.machine()}, {cores} cores for this process, torch {torch.__version__}, ray {ray.__version__}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}")
    print(f"load before: {load}")
    print(f"{args.runs} runs of {args.epochs} epoch(s): digits, MLP 64x2, 1 cell x seeds 0..{args.runs - 1}; "
          f"local pool of {workers} workers ({max(1, cores // workers)} thread(s) each) vs Ray with "
          f"--cpus-per-trial {backend.cpus}\n")

    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        def timed(name: str, round_: int, on: Backend | None) -> float:
            out = prepare_compare_dir(Path(tmp) / f"{name}-{round_}", plan, overwrite=False)
            t0 = time.perf_counter()
            execution = execute(plan, out, quiet=True, configs=configs, backend=on,
                                workers=workers if on is None else None)
            seconds = time.perf_counter() - t0
            assert execution.ran == args.runs and not execution.failed, execution
            return seconds

        def in_process(round_: int) -> float:
            out = prepare_compare_dir(Path(tmp) / f"serial-{round_}", plan, overwrite=False)
            t0 = time.perf_counter()
            execute(plan, out, quiet=True, configs=configs, workers=1)
            return time.perf_counter() - t0

        local, on_ray, serial = [], [], []
        t0 = time.perf_counter()
        with ray_session(backend):
            start_up = time.perf_counter() - t0
            for round_ in range(args.rounds + 1):
                local.append(timed("local", round_, None))
                on_ray.append(timed("ray", round_, backend))
                serial.append(in_process(round_))
            t0 = time.perf_counter()
        shutdown = time.perf_counter() - t0

    def row(label: str, a: float, b: float, c: float) -> str:
        return f"{label:<34}{a:>10.2f} s{b:>10.2f} s{(b - a) / args.runs * 1000:>+17.0f} ms{c:>14.2f} s"

    print(f"{'':<34}{'local pool':>12}{'ray':>12}{'ray - local, per run':>25}{'in process':>16}")
    print(row("first round (Ray workers start)", local[0], on_ray[0], serial[0]))
    print(row(f"median of the next {args.rounds}", *(statistics.median(t[1:]) for t in (local, on_ray, serial))))
    print(f"\nRay start-up (ray.init, a local instance of {cores} CPUs): {start_up:.2f} s; shutdown: {shutdown:.2f} s")
    first_command = start_up + on_ray[0] + shutdown
    print(f"one command's compare: local {local[0]:.2f} s, Ray {first_command:.2f} s with start-up and shutdown "
          f"({(first_command - local[0]) / args.runs * 1000:+.0f} ms per run)")
    print(f"load after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
