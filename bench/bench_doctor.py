"""Training time with the doctor on (default sampling: one step in 50) against without, side by side.

Rounds alternate without / with so machine load hits both alike; the ratio of the medians is
printed (goal: <= 1.10).

    OMP_NUM_THREADS=1 python bench/bench_doctor.py --rounds 7 --epochs 10
"""

from __future__ import annotations

import time

from trainwell.config import resolve
from trainwell.data import load_splits
from trainwell.diagnose import DoctorCallback
from trainwell.train.build import build_classifier
from trainwell.train.trainer import LoopSettings, build_state, fit

from common import interleaved, parse_args  # bench/common.py (the script's folder is on sys.path)

CASES = {
    "digits-cnn": [],
    "mnist1d-cnn": ["preset=mnist1d"],
}


def timed(cfg, splits, device, with_doctor: bool) -> float:
    model = build_classifier(cfg, splits)
    state = build_state(model, cfg, len(splits.train), device)
    callbacks = [DoctorCallback(model)] if with_doctor else []
    # Wall time of the whole fit: the doctor's epoch-end reading and rules count too.
    t0 = time.perf_counter()
    try:
        fit(state, splits.train, splits.val, LoopSettings.from_config(cfg, splits.num_classes), callbacks=callbacks)
    finally:
        for cb in callbacks:
            cb.close()
    return time.perf_counter() - t0


def main() -> None:
    args = parse_args(__doc__, CASES, epochs=5)
    print(f"{'case':<14} {'without s':>10} {'with s':>10} {'ratio':>7}")
    for name in args.cases.split(","):
        cfg = resolve(CASES[name] + [f"train.epochs={args.epochs}", "train.progress=false"])
        splits = load_splits(cfg.data)
        plain, doctored = interleaved(lambda: timed(cfg, splits, args.device, False),
                                      lambda: timed(cfg, splits, args.device, True), rounds=args.rounds)
        print(f"{name:<14} {plain:>10.3f} {doctored:>10.3f} {doctored / plain:>7.3f}")


if __name__ == "__main__":
    main()
