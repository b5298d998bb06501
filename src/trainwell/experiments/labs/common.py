"""Pieces shared by the labs: reading cells, formatting figures, measuring a run's model."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, TypeGuard

import torch
import torch.nn.functional as F
from torch import nn

from trainwell.experiments.results import CellResult, CompareResult
from trainwell.seeds import torch_generator
from trainwell.experiments.stats import MeanCI, mean_ci
from trainwell.formatting import MISSING, percent
from trainwell.nn.layers import WEIGHT_LAYERS

if TYPE_CHECKING:
    from trainwell.experiments.stats import PairedTest


def pct(ci: MeanCI) -> str:
    """``97.41% ± 0.62`` (mean ± half-width of the 95% CI, in percentage points)."""
    if not math.isfinite(ci.mean):
        return MISSING
    half = f" ± {100 * ci.half_width:.2f}" if math.isfinite(ci.half_width) else ""
    return percent(ci.mean) + half


def finite(value: float | None) -> TypeGuard[float]:
    """A measured number: not None, not NaN, not infinite (a verdict's clause needs one to hold)."""
    return value is not None and math.isfinite(value)


def points(diff: float | None) -> str:
    """A difference of fractions in percentage points, signed: ``+40.2 points``; :data:`MISSING` without one."""
    return MISSING if not finite(diff) else f"{100 * diff:+.1f} points"


def held_word(ok: bool) -> str:
    """How a verdict's clause reads: ``held`` or ``did NOT hold``."""
    return "held" if ok else "did NOT hold"


def num(value: float | None, digits: int = 3) -> str:
    return MISSING if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def per_seed_lists(cell: CellResult, key: str) -> list[list[float]]:
    """A list-valued measure (e.g. one number per layer) from each seed."""
    return [s[key] for s in cell.summaries.values() if isinstance(s.get(key), list)]


def mean_lists(lists: list[list[float]]) -> list[float]:
    """Element-wise mean of equally long lists (one per seed)."""
    if not lists:
        return []
    n = min(len(x) for x in lists)
    return [mean_ci([x[i] for x in lists]).mean for i in range(n)]


def by_label(result: CompareResult) -> dict[str, CellResult]:
    return {c.label: c for c in result.cells}


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Linear | nn.modules.conv._ConvNd]]:
    """Linear and conv layers in call order (registration order for the built-in models)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)]


def training_batch(splits: Any, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch of the training split (float inputs, labels), the same for every cell of a seed."""
    from trainwell.data import to_float

    gen = torch_generator(seed, "doctor")  # a probe batch: not any stream the runs train from
    idx = torch.randperm(len(splits.train), generator=gen)[:n]
    return to_float(splits.train.x[idx]), splits.train.y[idx]


def rms_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """RMS of dL/dW for each weight layer after one forward/backward in training mode.

    RMS rather than the norm so that layers of different sizes compare: this is the typical size
    of a weight's gradient, the quantity that vanishes through saturating layers.
    """
    model.train()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    rms = []
    for _, m in weight_layers(model):
        grad = m.weight.grad
        assert grad is not None  # every weight took part in the backward pass just run
        rms.append(float(grad.pow(2).mean().sqrt()))
    model.zero_grad(set_to_none=True)
    return rms


def model_at_init(run: Any, splits: Any) -> nn.Module:
    """The run's model as it was before training: the same config and seed rebuild the same weights."""
    from trainwell.train.build import build_classifier

    return build_classifier(run.config, splits)


def epochs_to_target(cell: CellResult, target: float, key: str = "val_acc") -> dict[int, int | None]:
    """Per seed, the first epoch (1-based) whose ``key`` is >= ``target``; None where it never got there."""
    from trainwell.experiments.stats import first_reaching

    return {s: first_reaching(curve, target) for s, curve in cell.curve_of(key).items()}


def reach_summary(epochs: dict[int, int | None]) -> dict[str, Any]:
    """Mean epochs over the seeds that reached the target (NaN if none did), how many reached, of how many."""
    reached = [e for e in epochs.values() if e is not None]
    return {"mean": mean_ci(reached).mean, "reached": len(reached), "n": len(epochs)}


def train_test_gap(run: Any, splits: Any) -> dict[str, Any]:
    """Train and test accuracy/loss in eval mode and the train − test gaps (a lab measure).

    Eval mode for both splits (dropout off, batch norm on its running statistics) and the training
    split as stored (no augmentation): the fit to the training set itself, which the last epoch's
    running accuracy (dropout on, augmented batches) understates.
    """
    from trainwell.train.trainer import evaluate_split

    device = next(run.model.parameters()).device
    batch = run.config.train.eval_batch_size
    train = evaluate_split(run.model, splits.train, device, batch)
    test = evaluate_split(run.model, splits.test, device, batch)
    return {
        "train_acc_eval": train["acc"], "train_loss_eval": train["loss"],
        "test_acc_eval": test["acc"], "test_loss_eval": test["loss"],
        "gap_acc": train["acc"] - test["acc"],  # train − test accuracy: > 0 when the net overfits
        "gap_loss": test["loss"] - train["loss"],  # test − train loss, same sign convention
    }


def paired_measure(cell: CellResult, other: CellResult, key: str, alpha: float = 0.05) -> PairedTest:
    """Paired t-test over seeds of any measured key, ``cell`` against ``other`` (diff = cell − other)."""
    from trainwell.experiments.stats import paired_test

    return paired_test(cell.values_of(key), other.values_of(key), alpha)


def eval_pass(model: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """Forward all of ``x`` through ``model`` in eval mode without gradients, in batches of ``batch_size``
    (for the hooks that record what the layers output); the model's mode is restored."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                model(x[start:start + batch_size].to(device))
    finally:
        model.train(was_training)


def recorded_activations(model: nn.Module, x: torch.Tensor, batch_size: int) -> list[Any]:
    """The doctor's records (:class:`~trainwell.diagnose.recorder.LayerRecord`) of every activation
    site, in depth order, after one eval-mode pass of all of ``x`` (:func:`eval_pass`).

    The :class:`~trainwell.diagnose.recorder.Recorder` samples every batch (``sample_eval``), so its
    statistics cover every example: moments over all outputs (``values["mean"]``, ``values["var"]``)
    and, for units that can die (ReLU), ``values["dead_fraction"]``: the fraction of units never > 0
    on any example. The model's mode is restored and the hooks removed.
    """
    from trainwell.diagnose.recorder import Recorder

    recorder = Recorder(model, every=1, sample_eval=True)
    try:
        eval_pass(model, x, batch_size)
        records, _ = recorder.read()
    finally:
        recorder.close()
    return [r for r in records if r.kind == "activation"]
