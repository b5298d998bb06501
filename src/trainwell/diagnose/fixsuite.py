"""``doctor --fix``'s proof by training: planted faults that train badly, the doctor's fix, trained again.

Each case is a config with a planted fault (an lr 100x too high, biases at -2, saturating sigmoids, raw
0..255 inputs, N(0, 0.01) weights in a deep net, ...) on scikit-learn's digits, and the healthy config
it should be measured against. For each case :func:`run_fix_case` runs what a user would:

    trainwell doctor --fix --apply fixed.yaml FAULTY...      # fix_loop over diagnose_config, at init
    trainwell train -c fixed.yaml train.seed=S               # the --apply'd file, read back

and trains the faulty, the fixed and the healthy config over :data:`SEEDS`, recording mean test
accuracy. A case holds when the fault is real (faulty < healthy - FAULT_MARGIN) and the fix works
(fixed >= healthy - FIX_TOLERANCE). The nets are small (an MLP of width 64, 3 epochs) so the whole
suite trains in seconds; everything is seeded and runs on one CPU thread, so the figures repeat exactly.

This module holds the cases and the scoring only: tests/test_doctor_fix_suite.py runs them, and
:mod:`trainwell.docs.doctor` renders the figures into docs/doctor.md (``python -m trainwell.docs doctor``).
"""

from __future__ import annotations

import io
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainwell.config import Config, DataConfig, resolve
from trainwell.diagnose.fix import FixOutcome, fix_loop

#: The small net every case starts from (no batch norm: it would hide most planted faults).
BASE = ("model.name=mlp", "model.norm=none", "model.width=64", "train.epochs=3")
SEEDS = (0, 1, 2)
#: The faulty config must train this far below the healthy one (mean test accuracy), or the fault is not one.
FAULT_MARGIN = 0.10
#: ... and the fixed config to within this of it: "a few points".
FIX_TOLERANCE = 0.03
#: The examples the doctor diagnoses per round (trainwell doctor's --batch-size default).
DOCTOR_BATCH = 256
#: A placeholder in a case's overrides for the file :func:`digits_x255` writes.
DIGITS_X255 = "{digits_x255}"
DIGITS_X255_NAME = "digits_x255.npz"


def digits_x255(folder: Path) -> Path:
    """Write digits as 64 float features of 0..255 (not uint8, so nothing rescales them) to an .npz in ``folder``."""
    from trainwell.data import load_splits, to_float
    from trainwell.fileio import atomic_write_bytes

    splits = load_splits(resolve([]).data)
    parts = [splits.train, splits.val, splits.test]
    x = torch.cat([to_float(p.x).flatten(1) for p in parts]) * 255.0
    buffer = io.BytesIO()
    np.savez(buffer, x=x.numpy().astype(np.float32), y=torch.cat([p.y for p in parts]).numpy())
    path = folder / DIGITS_X255_NAME
    atomic_write_bytes(path, buffer.getvalue())
    return path


@dataclass(frozen=True)
class FixCase:
    """A planted fault (``faulty`` overrides on :data:`BASE`) and the ``healthy`` config it is measured against."""

    name: str
    description: str
    faulty: tuple[str, ...]
    healthy: tuple[str, ...] = ()


CASES: list[FixCase] = [
    FixCase("lr-too-high", "SGD at lr 5 (100x the default 0.05)", ("optim.lr=5",)),
    FixCase("lr-too-low", "SGD at lr 1e-4 (500x below the default)", ("optim.lr=1e-4",)),
    FixCase("dead-relu-bias", "every hidden bias at -2: the ReLUs never fire", ("init.bias=-2",)),
    FixCase("saturating-sigmoid", "sigmoid hidden units, N(0, 1) weights: pre-activations ~8x too large",
            ("model.activation=sigmoid", "init.scheme=normal", "init.std=1.0")),
    FixCase("saturating-tanh", "tanh hidden units, N(0, 1) weights",
            ("model.activation=tanh", "init.scheme=normal", "init.std=1.0")),
    FixCase("raw-x255-input", "64 features of 0..255 (digits' pixels as floats), data.preprocess=none",
            ("data.name=npz", f"data.path={DIGITS_X255}", "data.preprocess=none"),
            ("data.name=npz", f"data.path={DIGITS_X255}")),
    FixCase("raw-input-and-lr-too-high", "both faults: the 0..255 features unprocessed and SGD at lr 5",
            ("data.name=npz", f"data.path={DIGITS_X255}", "data.preprocess=none", "optim.lr=5"),
            ("data.name=npz", f"data.path={DIGITS_X255}")),
    FixCase("vanishing-deep", "6 ReLU layers with N(0, 0.01) weights: the signal vanishes with depth",
            ("model.depth=6", "init.scheme=normal", "init.std=0.01"), ("model.depth=6",)),
]


@dataclass
class FixCaseResult:
    """A case's fix outcome and the test accuracy of its faulty, fixed and healthy configs, one per seed."""

    case: FixCase
    outcome: FixOutcome
    seeds: tuple[int, ...]
    faulty: list[float]
    fixed: list[float]
    healthy: list[float]
    seconds: float

    @property
    def faulty_mean(self) -> float:
        return statistics.fmean(self.faulty)

    @property
    def fixed_mean(self) -> float:
        return statistics.fmean(self.fixed)

    @property
    def healthy_mean(self) -> float:
        return statistics.fmean(self.healthy)

    @property
    def fault_is_real(self) -> bool:
        return self.faulty_mean < self.healthy_mean - FAULT_MARGIN

    @property
    def fix_works(self) -> bool:
        return self.fixed_mean >= self.healthy_mean - FIX_TOLERANCE

    @property
    def ok(self) -> bool:
        return self.fault_is_real and self.fix_works and self.outcome.clean


def case_config(overrides: tuple[str, ...], folder: Path) -> Config:
    """:data:`BASE` plus ``overrides``, the placeholder for the x255 file pointing into ``folder``."""
    where = str(folder / DIGITS_X255_NAME)
    return resolve([*BASE, *(o.replace(DIGITS_X255, where) for o in overrides), "train.progress=false"])


#: The splits of a data config, loaded once per suite run (every case but one trains on the same digits).
SplitsOf = Callable[[DataConfig], Any]


def splits_cache() -> SplitsOf:
    """A loader that keeps each data config's splits (data configs are not hashable: keyed by their repr)."""
    from trainwell.data import load_splits

    loaded: dict[str, Any] = {}

    def splits_of(data: DataConfig) -> Any:
        if repr(data) not in loaded:
            loaded[repr(data)] = load_splits(data)
        return loaded[repr(data)]

    return splits_of


def trained_accuracy(cfg: Config, seed: int, splits_of: SplitsOf) -> float:
    """Train ``cfg`` with ``train.seed=seed`` (no run folder) and return its test accuracy."""
    from trainwell.train.build import build_classifier
    from trainwell.train.trainer import LoopSettings, build_state, evaluate_split, fit

    cfg = resolve([f"train.seed={seed}"], base=cfg)
    splits = splits_of(cfg.data)
    model = build_classifier(cfg, splits)
    device = torch.device("cpu")
    state = build_state(model, cfg, len(splits.train), device)
    fit(state, splits.train, splits.val, LoopSettings.from_config(cfg, splits.num_classes))
    return float(evaluate_split(model, splits.test, device, cfg.train.eval_batch_size)["acc"])


def doctor_fix(cfg: Config, splits_of: SplitsOf) -> FixOutcome:
    """What ``trainwell doctor --fix`` does with its defaults: fix -> diagnose at initialisation, in rounds."""
    from trainwell.diagnose.doctor import diagnose_config

    return fix_loop(cfg, lambda c: diagnose_config(c, batch_size=DOCTOR_BATCH, splits=splits_of(c.data)))


def applied(outcome: FixOutcome, folder: Path) -> Config:
    """The fixed config as ``--apply FILE`` writes it and ``trainwell train -c FILE`` reads it back."""
    path = folder / "fixed.yaml"
    path.write_text(outcome.config.to_yaml())
    return resolve([], config_file=path)


def run_fix_case(case: FixCase, folder: Path, seeds: tuple[int, ...] = SEEDS,
                 healthy: dict[tuple[str, ...], list[float]] | None = None,
                 splits_of: SplitsOf | None = None) -> FixCaseResult:
    """Fix the case's faulty config and train all three configs over ``seeds`` (``healthy``: a cache of the
    healthy configs' accuracies, shared by cases with the same one)."""
    t0 = time.perf_counter()
    splits_of = splits_of or splits_cache()
    faulty_cfg = case_config(case.faulty, folder)
    outcome = doctor_fix(faulty_cfg, splits_of)
    fixed_cfg = applied(outcome, folder)
    cache = {} if healthy is None else healthy
    if case.healthy not in cache:
        cache[case.healthy] = [trained_accuracy(case_config(case.healthy, folder), s, splits_of) for s in seeds]
    return FixCaseResult(case, outcome, seeds, [trained_accuracy(faulty_cfg, s, splits_of) for s in seeds],
                         [trained_accuracy(fixed_cfg, s, splits_of) for s in seeds], cache[case.healthy],
                         time.perf_counter() - t0)


def run_fix_suite(cases: list[FixCase] | None = None, seeds: tuple[int, ...] = SEEDS) -> list[FixCaseResult]:
    """Every case, on one intra-op thread (the figures repeat exactly), its data written to a temporary folder."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    healthy: dict[tuple[str, ...], list[float]] = {}
    splits_of = splits_cache()
    try:
        with tempfile.TemporaryDirectory(prefix="trainwell-fix-suite-") as tmp:
            folder = Path(tmp)
            digits_x255(folder)
            return [run_fix_case(c, folder, seeds, healthy, splits_of) for c in (CASES if cases is None else cases)]
    finally:
        torch.set_num_threads(threads)


def shown(overrides: tuple[str, ...] | list[str]) -> str:
    """Overrides as a command line shows them (the x255 file by its name)."""
    return " ".join(o.replace(DIGITS_X255, DIGITS_X255_NAME) for o in overrides)
