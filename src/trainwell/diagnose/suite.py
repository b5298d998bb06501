"""The doctor's proof: planted faults that must be flagged and healthy nets that must not be, with the score.

Every case builds a small net on scikit-learn's digits (8x8 images, 1,797 examples) and returns the
doctor's :class:`~trainwell.diagnose.report.Report`: at initialisation (:func:`diagnose_model`), after a
few epochs under a :class:`DoctorCallback`, or from an epoch history. A fault case lists the codes
it ``expects`` (recall counts these) and the codes it ``allows``: true consequences of the same
fault (a net whose units are all dead also passes back no gradient). A healthy case expects and
allows nothing. Only warnings and errors count as "flagged"; info findings never do.

This module holds the cases and the scoring only: tests/test_doctor_faults.py runs every case, and
:mod:`trainwell.docs.doctor` renders the score into docs/doctor.md (``python -m trainwell.docs doctor``).

Everything is seeded and runs on the CPU with one thread, so the figures repeat exactly.
The thresholds were chosen with these cases in view (the numbers in thresholds.py were measured on
the same data), so the score is a regression test of the rules, not a held-out estimate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor, nn

from trainwell.diagnose.doctor import DoctorCallback, diagnose_model
from trainwell.diagnose.report import Report

BATCH = 256


#: The layers the suite's init functions set.
WeightLayer = nn.Linear | nn.Conv2d


# ----------------------------------------------------------------------------- data


@dataclass
class SuiteData:
    """Digits, once: the splits, and a seeded batch of 256 in the shapes the cases need."""

    splits: Any
    y: Tensor  # (256,) int64
    img: Tensor  # (256, 1, 8, 8) standardised with training-split statistics
    flat: Tensor  # (256, 64) the same, flattened
    raw255: Tensor  # (256, 1, 8, 8) raw pixel values 0..255 as float32


@lru_cache(maxsize=1)
def suite_data() -> SuiteData:
    from trainwell.config import resolve
    from trainwell.data import fit_preprocess, load_splits, to_float

    splits = load_splits(resolve([]).data)
    idx = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(0))[:BATCH]
    raw = to_float(splits.train.x[idx])
    pre = fit_preprocess("standardize", to_float(splits.train.x))
    img = pre(raw)
    return SuiteData(splits, splits.train.y[idx], img, img.flatten(1), raw * 255.0)


# ----------------------------------------------------------------------------- nets


def mlp(widths: list[int], act: Callable[[], nn.Module], init: Callable[[nn.Linear], None] | None = None,
        seed: int = 0, bias: float = 0.0) -> nn.Sequential:
    """Linear -> act per hidden width, then Linear(.., 10). ``init(layer)`` sets each hidden weight."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        lin = nn.Linear(a, b)
        if init is not None:
            init(lin)
            nn.init.constant_(lin.bias, bias)
        layers += [lin, act()]
    layers.append(nn.Linear(widths[-1], 10))
    return nn.Sequential(*layers)


def normal(std: float) -> Callable[[WeightLayer], None]:
    def init(m: WeightLayer) -> None:
        nn.init.normal_(m.weight, 0.0, std)

    return init


def kaiming(gain_scale: float = 1.0) -> Callable[[WeightLayer], None]:
    def init(m: WeightLayer) -> None:
        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        with torch.no_grad():
            m.weight.mul_(gain_scale)

    return init


def cnn(act: Callable[[], nn.Module], init: Callable[[WeightLayer], None], seed: int = 0) -> nn.Sequential:
    """conv3x3(16) -> act -> pool -> conv3x3(32) -> act -> pool -> flatten -> Linear(10), for (N, 1, 8, 8)."""
    torch.manual_seed(seed)
    convs = [nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)]
    for c in convs:
        init(c)
        if c.bias is not None:  # built with one; the check is for the type checker
            nn.init.zeros_(c.bias)
    return nn.Sequential(convs[0], act(), nn.MaxPool2d(2), convs[1], act(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(32 * 2 * 2, 10))


#: The suite's cases start from no normalisation (the default is batch norm), so a planted fault is
#: not undone by it; cases that want batch norm say model.norm=batch.
UNNORMALISED = ["model.norm=none"]


def trainwell_model(overrides: list[str]) -> nn.Module:
    """The model ``trainwell train`` would build for these overrides (preprocessing included)."""
    from trainwell.config import resolve
    from trainwell.train.build import build_classifier

    return build_classifier(resolve(UNNORMALISED + overrides), suite_data().splits)


def train_report(overrides: list[str], epochs: int, every: int = 5) -> Report:
    """Train a trainwell model ``epochs`` epochs under a DoctorCallback; the merged findings of all epochs."""
    import dataclasses

    from trainwell.config import resolve
    from trainwell.train.build import build_classifier
    from trainwell.train.trainer import LoopSettings, build_state, fit

    cfg = resolve(UNNORMALISED + overrides + ["train.progress=false"])
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=epochs))
    model = build_classifier(cfg, suite_data().splits)
    lr = cfg.optim.lr if isinstance(cfg.optim.lr, float) else None
    doctor = DoctorCallback(model, every=every, peak_lr=lr)
    splits = suite_data().splits
    state = build_state(model, cfg, len(splits.train), torch.device("cpu"))
    try:
        fit(state, splits.train, splits.val, LoopSettings.from_config(cfg, splits.num_classes), callbacks=[doctor])
    finally:
        doctor.close()
    last = doctor.report
    assert last is not None, "the doctor sampled no step"  # every=5 samples step 0
    return Report(doctor.findings(), last.layers, last.input, None, f"{epochs} epochs")


def at_init(model: nn.Module, x: Tensor | None = None, **kwargs: Any) -> Report:
    d = suite_data()
    return diagnose_model(model, d.flat if x is None else x, d.y, **kwargs)


def _feature_scale(feature: int, scale: float) -> Tensor:
    """(64,) ones with ``scale`` at ``feature``: one column left in other units (e.g. grams, not kg)."""
    out = torch.ones(64)
    out[feature] = scale
    return out


def history(train: list[float], val: list[float]) -> list[dict[str, float]]:
    return [{"epoch": i + 1, "train_loss": t, "val_loss": v} for i, (t, v) in enumerate(zip(train, val))]


class LogOfRelu(nn.Module):
    """A model bug: log of a ReLU output, -inf wherever the unit is off."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(64, 32), nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.log(torch.relu(self.fc1(x))))


# ----------------------------------------------------------------------------- cases


@dataclass
class Case:
    """A planted fault (``expects`` codes) or a healthy net (expects nothing)."""

    name: str
    description: str
    build: Callable[[], Report]
    expects: frozenset[str] = frozenset()
    allows: frozenset[str] = frozenset()

    @property
    def healthy(self) -> bool:
        return not self.expects


def _case(name: str, description: str, build: Callable[[], Report], expects: tuple[str, ...] = (),
          allows: tuple[str, ...] = ()) -> Case:
    return Case(name, description, build, frozenset(expects), frozenset(allows))


DEEP = [64] + [64] * 8

CASES: list[Case] = [
    # ------------------------------------------------------------------ faults at initialisation
    _case("deep-sigmoid", "8 sigmoid layers, PyTorch's default init (Glorot & Bengio 2010's setting)",
          lambda: at_init(mlp(DEEP, nn.Sigmoid)),
          expects=("vanishing-gradients",), allows=("saturation", "vanishing-activations")),
    _case("tiny-init-relu", "6 ReLU layers with N(0, 0.01) weights (the CS231n lecture figure)",
          lambda: at_init(mlp([64] * 7, nn.ReLU, normal(0.01))),
          expects=("vanishing-activations",), allows=("vanishing-gradients",)),
    _case("tiny-init-cnn", "2-block ReLU CNN with N(0, 0.01) filters",
          lambda: at_init(cnn(nn.ReLU, normal(0.01)), suite_data().img),
          expects=("vanishing-activations",), allows=("vanishing-gradients",)),
    _case("huge-init-tanh", "4 tanh layers with N(0, 1) weights (pre-activations ~8x too large)",
          lambda: at_init(mlp([64] * 5, nn.Tanh, normal(1.0))),
          expects=("saturation",), allows=("vanishing-gradients", "exploding-activations")),
    _case("dead-relu-bias", "ReLU MLP, Kaiming weights but every hidden bias at -3",
          lambda: at_init(mlp([64] * 4, nn.ReLU, kaiming(), bias=-3.0)),
          expects=("dead-units",), allows=("vanishing-activations", "vanishing-gradients")),
    _case("large-init-relu", "8 ReLU layers, Kaiming weights x3, no normalisation",
          lambda: at_init(mlp(DEEP, nn.ReLU, kaiming(3.0))),
          expects=("exploding-activations", "exploding-gradients")),
    _case("raw-pixels", "ReLU CNN fed raw 0..255 pixels, no preprocessing",
          lambda: at_init(cnn(nn.ReLU, kaiming()), suite_data().raw255),
          expects=("unnormalized-input",)),
    _case("unscaled-feature", "MLP on standardised features except one left in thousands",
          lambda: at_init(mlp([64, 64, 64], nn.ReLU, kaiming()),
                          suite_data().flat * _feature_scale(27, 1000.0)),
          expects=("unnormalized-input",)),
    _case("log-of-zero", "a model computing log(relu(.)): -inf activations, NaN loss",
          lambda: at_init(LogOfRelu()),
          expects=("divergence",)),
    _case("huge-lr-init", "healthy Kaiming MLP, SGD at lr=10 (first-step estimate)",
          lambda: at_init(mlp([64, 64, 64], nn.ReLU, kaiming()), lr=10.0),
          expects=("update-ratio-high",)),
    _case("tiny-lr-init", "healthy Kaiming MLP, SGD at lr=1e-4 (first-step estimate)",
          lambda: at_init(mlp([64, 64, 64], nn.ReLU, kaiming()), lr=1e-4),
          expects=("update-ratio-low",)),
    # ------------------------------------------------------------------ faults during training
    _case("huge-lr-training", "trainwell mlp, SGD lr=2 (40x the default), 4 epochs",
          lambda: train_report(["model.name=mlp", "optim.lr=2"], 4),
          expects=("update-ratio-high", "lr-too-high"), allows=("exploding-activations", "dead-units")),
    _case("tiny-lr-training", "trainwell mlp, SGD lr=1e-5, 3 epochs",
          lambda: train_report(["model.name=mlp", "optim.lr=1e-5"], 3),
          expects=("update-ratio-low", "lr-too-low")),
    _case("nan-training", "trainwell mlp, SGD lr=1000: the loss overflows to NaN",
          lambda: train_report(["model.name=mlp", "optim.lr=1000", "model.width=64"], 2),
          expects=("divergence", "lr-too-high"),
          allows=("update-ratio-high", "exploding-activations", "exploding-gradients", "dead-units")),
    _case("dying-relu-training", "trainwell cnn, SGD lr=0.2 (4x the default): conv filters die",
          lambda: train_report(["model.name=cnn", "optim.lr=0.2"], 3),
          expects=("dead-units",), allows=("update-ratio-high", "exploding-activations", "lr-too-high")),
    # ------------------------------------------------------------------ faults in the history
    _case("overfitting-history", "val loss 0.30 -> 0.45 after epoch 4 while train loss falls to 0.01",
          lambda: at_init(mlp([64, 64, 64], nn.ReLU, kaiming()),
                          history=history([1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01],
                                          [0.9, 0.5, 0.35, 0.30, 0.32, 0.36, 0.41, 0.45]), context="run"),
          expects=("overfitting",)),
    _case("oscillating-history", "train loss 2.0, 1.2, 1.6, 1.1, 1.7, 1.3: the steps overshoot",
          lambda: at_init(mlp([64, 64, 64], nn.ReLU, kaiming()),
                          history=history([2.0, 1.2, 1.6, 1.1, 1.7, 1.3], [1.9, 1.3, 1.5, 1.2, 1.6, 1.4]),
                          context="run"),
          expects=("lr-too-high",)),
    # ------------------------------------------------------------------ healthy
    _case("kaiming-mlp", "trainwell mlp (depth 2, width 256, Kaiming), standardised input, lr 0.05",
          lambda: at_init(trainwell_model(["model.name=mlp"]), suite_data().raw255 / 255.0, lr=0.05)),
    _case("kaiming-cnn", "trainwell cnn (Kaiming), standardised input, lr 0.05",
          lambda: at_init(trainwell_model(["model.name=cnn"]), suite_data().raw255 / 255.0, lr=0.05)),
    _case("deep-kaiming-mlp", "8 ReLU layers, Kaiming weights",
          lambda: at_init(mlp(DEEP, nn.ReLU, kaiming()), lr=0.05)),
    _case("selu-lecun", "trainwell mlp, 8 SELU layers, lecun_normal (self-normalising)",
          lambda: at_init(trainwell_model(["model.name=mlp", "model.depth=8", "model.activation=selu",
                                           "init.scheme=lecun_normal"]), suite_data().raw255 / 255.0, lr=0.05)),
    _case("tanh-xavier", "trainwell mlp, 4 tanh layers, xavier_normal (Glorot, gain 1)",
          lambda: at_init(trainwell_model(["model.name=mlp", "model.depth=4", "model.activation=tanh",
                                           "init.scheme=xavier_normal"]), suite_data().raw255 / 255.0, lr=0.05)),
    _case("bn-resnet", "trainwell resnet (width 8), batch norm",
          lambda: at_init(trainwell_model(["model.name=resnet", "model.width=8", "model.depth=1",
                                           "model.norm=batch"]), suite_data().raw255 / 255.0, lr=0.05)),
    _case("bare-default-init", "a plain nn.Sequential MLP with PyTorch's default init, Adam lr 1e-3",
          lambda: at_init(mlp([64, 128], nn.ReLU), lr=1e-3, optimizer="adam")),
    _case("bn-cnn-training", "trainwell cnn with batch norm, SGD lr 0.05, 4 epochs",
          lambda: train_report(["model.name=cnn", "model.norm=batch"], 4)),
    _case("adam-mlp-training", "trainwell mlp, Adam lr 1e-3, 4 epochs",
          lambda: train_report(["model.name=mlp", "optim.name=adam", "optim.lr=0.001"], 4)),
    _case("leaky-cnn-training", "trainwell cnn with leaky_relu, SGD lr 0.02, 3 epochs",
          lambda: train_report(["model.name=cnn", "model.activation=leaky_relu", "optim.lr=0.02"], 3)),
]


# ----------------------------------------------------------------------------- scoring


@dataclass
class CaseResult:
    case: Case
    flagged: list[str]  # warning and error codes, report order
    seconds: float
    report: Report | None = None

    @property
    def missed(self) -> set[str]:
        return set(self.case.expects) - set(self.flagged)

    @property
    def unexpected(self) -> set[str]:
        return set(self.flagged) - self.case.expects - self.case.allows

    @property
    def ok(self) -> bool:
        return not self.missed and not self.unexpected


def run_case(case: Case) -> CaseResult:
    """Build the case with one intra-op thread (the figures repeat exactly) and record what it flags."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        report = case.build()
    finally:
        torch.set_num_threads(threads)
    return CaseResult(case, list(dict.fromkeys(report.codes("warning"))), time.perf_counter() - t0, report)


def run_suite(cases: list[Case] | None = None) -> list[CaseResult]:
    return [run_case(c) for c in (CASES if cases is None else cases)]


@dataclass
class Score:
    expected: int = 0
    detected: int = 0  # expected codes flagged (true positives)
    flagged: int = 0
    secondary: int = 0  # allowed consequences flagged
    false: int = 0  # flagged codes neither expected nor allowed
    healthy: int = 0
    healthy_clean: int = 0
    faults: int = 0
    faults_caught: int = 0  # every expected code flagged
    per_code: dict[str, list[int]] = field(default_factory=dict)  # code -> [expected, detected]

    @property
    def recall(self) -> float:
        return self.detected / self.expected if self.expected else math.nan

    @property
    def precision(self) -> float:
        """Flagged codes that are true: expected or an allowed consequence of the planted fault."""
        return (self.detected + self.secondary) / self.flagged if self.flagged else math.nan

    @property
    def strict_precision(self) -> float:
        """Flagged codes that are the planted fault's expected codes."""
        return self.detected / self.flagged if self.flagged else math.nan


def score(results: list[CaseResult]) -> Score:
    s = Score()
    for r in results:
        flagged = set(r.flagged)
        s.expected += len(r.case.expects)
        s.detected += len(flagged & r.case.expects)
        s.flagged += len(flagged)
        s.secondary += len((flagged & r.case.allows) - r.case.expects)
        s.false += len(r.unexpected)
        if r.case.healthy:
            s.healthy += 1
            s.healthy_clean += not flagged
        else:
            s.faults += 1
            s.faults_caught += not r.missed
        for code in r.case.expects:
            row = s.per_code.setdefault(code, [0, 0])
            row[0] += 1
            row[1] += code in flagged
    return s
