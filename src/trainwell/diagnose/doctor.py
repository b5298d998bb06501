"""The doctor's entry points: at initialisation, during training, and on a finished run.

Python API::

    from trainwell.diagnose import diagnose_model, DoctorCallback, diagnose_run

    report = diagnose_model(model, x, y, lr=0.05)      # any nn.Module, one forward/backward
    report.render(); report.to_dict()

    doctor = DoctorCallback(model, every=50)           # attach before training
    fit(model, splits, cfg, device, rng, callbacks=[doctor])
    doctor.report, doctor.summary()

    diagnose_run("runs/train-digits-cnn")              # a finished run directory
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainwell.diagnose.recorder import LayerRecord, Recorder, estimator
from trainwell.diagnose.report import SEVERITIES, Finding, InputStats, LayerStats, Report
from trainwell.diagnose.rules import Context, run_rules
from trainwell.diagnose.thresholds import SAMPLE_EVERY
from trainwell.errors import ConfigError, DataError
from trainwell.train.events import Callback, EpochEnd

_RANK = {s: i for i, s in enumerate(SEVERITIES)}
#: Optimisers whose first step :func:`~trainwell.diagnose.stats.estimate_update_ratio` knows.
_OPTIMIZERS = ("sgd", "adam", "adamw")


# ----------------------------------------------------------------------------- records -> stats


def _op(module: nn.Module | None, function: str | None = None) -> str:
    if module is None:  # a functional activation
        return f"{function}()"
    if isinstance(module, nn.Linear):
        return f"Linear({module.in_features}->{module.out_features})"
    if isinstance(module, nn.modules.conv._ConvNd):
        k = "x".join(map(str, module.kernel_size))
        return f"{type(module).__name__}({module.in_channels}->{module.out_channels},{k})"
    return type(module).__name__


def _units(module: nn.Module | None) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels
    return None


def _std(var: Any) -> float:
    return math.sqrt(max(var, 0.0)) if isinstance(var, float) and math.isfinite(var) else math.nan


def layer_stats(records: list[LayerRecord]) -> list[LayerStats]:
    """Turn the recorder's host-side records into the report's per-layer rows (depth = call order)."""
    rows = []
    for depth, r in enumerate(records):
        v = r.values
        weight = r.kind in ("linear", "conv")
        rows.append(LayerStats(
            name=r.key,
            kind=r.kind,
            op=_op(r.module, r.function),
            units=_units(r.module),
            depth=depth,
            activation=r.info.name if r.info is not None else getattr(r.module, "follows", None),
            normalized=r.normalized,
            mean=v.get("mean", math.nan),
            std=_std(v.get("var", math.nan)),
            hist=[float(c) for c in v.get("hist", [])],
            hist_range=r.hist_range,
            dead_fraction=v.get("dead_fraction"),
            saturated_fraction=v.get("saturated_fraction"),
            grad_std=_std(v["grad_var"]) if "grad_var" in v else None,
            weight_norm=v.get("weight_norm") if weight else None,
            grad_norm=v.get("grad_norm") if weight else None,
            update_ratio=v.get("update_ratio") if weight else None,
            update_ratio_max=v.get("update_ratio_max") if weight else None,
            nonfinite=bool(v.get("nonfinite", 0.0) or v.get("grad_nonfinite", 0.0)),
            examples=r.examples,
            samples=r.samples,
        ))
    return rows


def input_stats(values: dict[str, Any] | None) -> InputStats | None:
    """The report's input row from the recorder's per-feature moments."""
    if not values:
        return None
    means = values["feature_mean"] if isinstance(values["feature_mean"], list) else [values["feature_mean"]]
    vars_ = values["feature_var"] if isinstance(values["feature_var"], list) else [values["feature_var"]]
    stds = [_std(v) for v in vars_]
    finite_means = [abs(m) for m in means if math.isfinite(m)]
    finite_stds = [s for s in stds if math.isfinite(s)]
    return InputStats(
        mean=values["mean"],
        std=_std(values["var"]),
        feature_mean_abs_max=max(finite_means, default=math.nan),
        feature_std_min=min(finite_stds, default=math.nan),
        feature_std_max=max(finite_stds, default=math.nan),
        features=len(means),
        examples=int(values.get("examples", 0)),
        nonfinite=bool(values.get("nonfinite", 0.0)),
    )


def build_report(recorder: Recorder | None, history: list[dict[str, Any]] | None = None,
                 loss: float | None = None, context: str = "",
                 previous: tuple[list[LayerStats], InputStats | None] | None = None,
                 peak_lr: float | None = None) -> Report:
    """Read the recorder (if it sampled anything, else reuse ``previous``) and run every rule."""
    layers: list[LayerStats] = []
    inputs: InputStats | None = None
    if recorder is not None and recorder.accs:
        records, raw_input = recorder.read()
        layers, inputs = layer_stats(records), input_stats(raw_input)
    elif previous is not None:
        layers, inputs = previous
    ctx = Context(layers, inputs, list(history or []), loss, context, peak_lr=peak_lr)
    unseen = recorder.unseen if recorder is not None else []
    return Report(run_rules(ctx), layers, inputs, loss, context, unseen)


# ----------------------------------------------------------------------------- (a) at initialisation


def default_loss(output: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy for integer class labels, mean squared error for float targets of the output's shape."""
    if not y.is_floating_point():
        if output.ndim < 2:
            raise DataError("integer labels need logits of shape (N, num_classes); "
                            f"the model output is {tuple(output.shape)}.")
        return F.cross_entropy(output, y)
    if y.shape != output.shape:
        raise DataError(f"float targets of shape {tuple(y.shape)} do not match the model output {tuple(output.shape)}; "
                        "pass integer class labels or targets shaped like the output.")
    return F.mse_loss(output, y)


def _check_batch(x: Any, y: Any) -> None:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise DataError(f"diagnose_model needs tensors x and y, got {type(x).__name__} and {type(y).__name__}.")
    if x.ndim < 1 or len(x) < 2:
        raise DataError(f"diagnose_model needs a batch of at least 2 examples (batch norm and statistics need 2), "
                        f"got x of shape {tuple(x.shape)}.")
    if len(y) != len(x):
        raise DataError(f"x has {len(x)} examples but y has {len(y)}; pass matching batches.")


def diagnose_model(model: nn.Module, x: Tensor, y: Tensor, lr: float | None = None, *,
                   optimizer: str = "sgd",
                   loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
                   history: list[dict[str, Any]] | None = None, context: str = "init") -> Report:
    """Diagnose ``model`` with one forward/backward pass on the batch ``(x, y)``; the model is left unchanged.

    Works on any ``nn.Module``. ``x`` goes to the model as is (Shape (N, *input_shape), on the
    model's device); ``y`` is integer labels (cross-entropy) or float targets shaped like the output
    (MSE), or give ``loss_fn(output, y) -> scalar``. The pass runs in training mode (batch norm uses
    batch statistics, as in training); gradients, batch-norm running statistics and the RNG state are
    restored afterwards.

    With ``lr``, each weight's update ratio is estimated from its gradient as the first step of
    ``optimizer`` ("sgd", "adam" or "adamw") would be (:func:`~trainwell.diagnose.stats.estimate_update_ratio`).
    ``history``: epoch rows, for the history rules (overfitting, lr-too-high, ...).
    """
    _check_batch(x, y)
    if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be a positive number or None, got {lr!r}.")
    if optimizer not in _OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {', '.join(_OPTIMIZERS)} (it sets how the update ratio "
                          f"is estimated), got {optimizer!r}.")
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("the model has no trainable parameters; there is nothing for the doctor to diagnose.")
    loss_fn = loss_fn or default_loss
    params = [p for p in model.parameters()]
    saved_grads = [p.grad for p in params]
    saved_buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    was_training = model.training
    recorder = Recorder(model, every=1, update_estimate=estimator(float(lr), optimizer) if lr else None)
    try:
        for p in params:
            p.grad = None
        cuda = [x.device.index if x.device.index is not None else torch.cuda.current_device()] \
            if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # dropout draws must not shift the caller's RNG
            model.train()
            with torch.enable_grad():
                out = model(x)
                loss = loss_fn(out, y)
                loss_value = loss.detach()
                loss.backward()
        report = build_report(recorder, history, float(loss_value), context)
    finally:
        recorder.close()
        model.train(was_training)
        for p, g in zip(params, saved_grads):
            p.grad = g
        with torch.no_grad():
            for k, b in model.named_buffers():
                if k in saved_buffers:
                    b.copy_(saved_buffers[k])
    return report


# ----------------------------------------------------------------------------- (b) during training


class DoctorCallback(Callback):
    """Diagnose a model while it trains: ``fit(..., callbacks=[DoctorCallback(model)])``.

    Create it on the model before training (it hooks the model; see
    :class:`~trainwell.diagnose.recorder.Recorder`): statistics are recorded on every ``every``-th
    training step (the first included) and read once per epoch in :meth:`on_epoch_end`, which
    builds that epoch's :class:`Report` from the steps sampled since the previous epoch and the
    metrics history. ``console``: print each finding (warning or worse) the first time it appears.
    ``peak_lr``: the schedule's peak lr (default: the largest ``lr`` in the history), so that small
    updates late in a decaying schedule are not taken for a too-low lr. Call :meth:`close` after
    training to remove the hooks.
    """

    def __init__(self, model: nn.Module, every: int = SAMPLE_EVERY, console: Any = None,
                 peak_lr: float | None = None) -> None:
        # Update ratios span one optimiser step (with train.accumulate=N, N forwards): on_step_end flushes them.
        self.recorder = Recorder(model, every, track_updates=True, flush_on_forward=False)
        self.console = console
        self.peak_lr = peak_lr
        self.history: list[dict[str, Any]] = []
        self.reports: list[Report] = []
        self.first_seen: dict[str, int] = {}
        self.last_seen: dict[str, int] = {}

    @property
    def report(self) -> Report | None:
        """The latest epoch's report (None before the first epoch ends)."""
        return self.reports[-1] if self.reports else None

    def on_fit_start(self, event: Any) -> None:
        self.recorder.run_hooks_eagerly()  # (the loop has compiled its forward by now, if train.compile)

    def on_step_end(self, event: Any) -> None:
        self.recorder.flush_updates()

    def on_epoch_end(self, event: Any) -> None:
        self.history.append(dict(event.metrics))
        epoch = int(event.epoch)
        self.recorder.flush_updates()  # the last sampled step's optimiser step is done
        prev = self.reports[-1] if self.reports else None
        report = build_report(self.recorder, self.history, None, f"epoch {epoch}",
                              previous=(prev.layers, prev.input) if prev is not None else None,
                              peak_lr=self.peak_lr)
        self.recorder.reset()
        self.reports.append(report)
        for f in report.findings:
            if f.severity == "info":
                continue
            if f.code not in self.first_seen:
                self.first_seen[f.code] = epoch
                if self.console is not None:
                    color = "red" if f.severity == "error" else "yellow"
                    self.console.print(f"[{color}]doctor {f.severity}[/] [bold]{f.code}[/] (epoch {epoch}): "
                                       f"{f.message} Fix: {f.fix}.", highlight=False)
            self.last_seen[f.code] = epoch

    def on_fit_end(self, event: Any) -> None:
        # A run stopped by a divergence ends inside an epoch that never finished (its weights were
        # rolled back): the steps sampled in it are the evidence, reported as that epoch's.
        d = event.result.divergence
        if d is not None and d["action"] == "stop" and self.recorder.samples:
            row = {"epoch": d["epoch"], "train_loss": float("nan"), "train_acc": float("nan"),
                   "lr": event.state.schedule.get_last_lr()[0], "diverged_at_step": d["step"]}
            self.on_epoch_end(EpochEnd(d["epoch"], row, event.state.model, event.state))

    def close(self) -> None:
        """Remove the hooks from the model."""
        self.recorder.close()

    def findings(self) -> list[Finding]:
        """Every finding (warning or worse) of any epoch, the latest evidence of each code, worst first."""
        latest: dict[str, Finding] = {}
        for report in self.reports:
            for f in report.findings:
                if f.severity != "info":
                    prev = latest.get(f.code)
                    if prev is None or _RANK[f.severity] >= _RANK[prev.severity]:
                        latest[f.code] = f
        return sorted(latest.values(), key=lambda f: -_RANK[f.severity])

    def summary(self) -> dict[str, Any]:
        """For summary.json: the worst severity and every code with the epochs it was seen in."""
        found = self.findings()
        rows = []
        for f in found:
            row = f.to_dict()
            row["first_epoch"], row["last_epoch"] = self.first_seen.get(f.code), self.last_seen.get(f.code)
            rows.append(row)
        worst = max((f.severity for f in found), key=_RANK.__getitem__, default=None)
        return {"worst": worst, "codes": [f.code for f in found], "findings": rows,
                "sampled_every": self.recorder.every}

    def write(self, out_dir: str | Path, plots: bool = True) -> list[Path]:
        """Write doctor.json (every epoch's findings, the last layer table) and the plots; returns the paths."""
        from trainwell.diagnose.plots import plot_report
        from trainwell.fileio import write_json

        out_dir = Path(out_dir)
        paths = [out_dir / "doctor.json"]
        last = self.report
        write_json(paths[0], {"summary": self.summary(),
                              "epochs": [r.to_dict() | {"layers": None} for r in self.reports[:-1]],
                              "last": last.to_dict() if last is not None else None})
        if plots and last is not None and last.layers:
            paths += plot_report(last, out_dir, prefix="doctor_")
            from trainwell.diagnose.plots import plot_fractions_over_training

            paths.append(plot_fractions_over_training([r for r in self.reports if r.layers],
                                                      out_dir / "doctor_fractions.png"))
        return paths


# ----------------------------------------------------------------------------- (c) runs and configs


def _batch(split: Any, n: int, seed: int) -> tuple[Tensor, Tensor]:
    from trainwell.data import to_float

    if n < 2:
        raise ConfigError(f"the doctor's batch size must be >= 2, got {n}.")
    if len(split) < 2:
        raise DataError(f"the training split has {len(split)} example(s); the doctor needs at least 2.")
    from trainwell.seeds import torch_generator

    idx = torch.randperm(len(split), generator=torch_generator(seed, "doctor"))[:n]
    return to_float(split.x[idx]), split.y[idx]


def diagnose_run(run_dir: str | Path, overrides: list[str] | dict[str, Any] | None = None, *,
                 batch_size: int = 256, device: str = "cpu") -> Report:
    """Diagnose a finished run: its trained model on a batch of its training data, and its metrics history.

    ``overrides`` (``data.*`` keys) point at other data. Update ratios are not estimated (at the end of a
    schedule small steps are expected); the history gives the lr, overfitting and divergence findings.
    """
    from trainwell.config import resolve
    from trainwell.data import load_splits
    from trainwell.train.load import load_run
    from trainwell.train.rundir import read_metrics

    run = load_run(run_dir, device)
    cfg = resolve(overrides, base=run.config) if overrides else run.config
    splits = load_splits(cfg.data)
    if tuple(splits.input_shape) != tuple(run.input_shape):
        raise DataError(f"data '{splits.description}' has examples of shape {tuple(splits.input_shape)} but the run "
                        f"expects {tuple(run.input_shape)}; diagnose on data like the training data.")
    x, y = _batch(splits.train, batch_size, cfg.train.seed)
    dev = next(run.model.parameters()).device
    metrics = Path(run_dir) / "metrics.jsonl"
    history = read_metrics(metrics) if metrics.is_file() else []
    return diagnose_model(run.model, x.to(dev), y.to(dev), history=history, context=f"run {run_dir}")


def diagnose_config(config: Any = None, *, batch_size: int = 256, epochs: int = 0,
                    every: int = SAMPLE_EVERY, splits: Any = None, console: Any = None,
                    model: nn.Module | None = None) -> Report:
    """Diagnose the model a config would train, at initialisation; with ``epochs``, also train it that many
    epochs under a :class:`DoctorCallback` (no run directory is written) and merge both verdicts.

    ``config``: a Config, a mapping of dotted keys or a list of ``key=value`` strings. The model is
    :func:`trainwell.train.build.build_classifier`'s, the one ``trainwell train`` starts from: the
    registry's model of ``model.*``, or ``model`` (any nn.Module, as ``trainwell.train(model=...)`` takes)
    behind the configured preprocessing. The update ratio at init is estimated for ``optim.name`` at
    ``optim.lr`` (skipped for ``optim.lr=auto``).
    """
    from trainwell.config import Config, resolve
    from trainwell.data import load_splits
    from trainwell.train.build import build_classifier, check_names, resolve_model_name

    cfg = config if isinstance(config, Config) else resolve(config)
    check_names(cfg)
    if splits is None:
        splits = load_splits(cfg.data)
    if model is None:
        cfg = resolve_model_name(cfg, splits)  # model.name=auto: the model the data's kind picks
    classifier = build_classifier(cfg, splits, model)
    x, y = _batch(splits.train, batch_size, cfg.train.seed)
    lr = cfg.optim.lr if isinstance(cfg.optim.lr, (int, float)) else None
    init = diagnose_model(classifier, x, y, lr, optimizer=cfg.optim.name, context="init")
    if epochs <= 0:
        return init
    from trainwell.train.build import with_lr
    from trainwell.train.lr_find import lr_range_test
    from trainwell.train.trainer import LoopSettings, build_state, fit, resolve_device

    device = resolve_device(cfg.train.device)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=epochs))
    if lr is None:  # optim.lr=auto: resolved before the optimiser or the doctor sees it
        lr = lr_range_test(classifier, splits, cfg, device).suggested_lr
        cfg = with_lr(cfg, lr)
    state = build_state(classifier, cfg, len(splits.train), device)
    doctor = DoctorCallback(classifier, every=every, console=console, peak_lr=lr)
    try:
        fit(state, splits.train, splits.val, LoopSettings.from_config(cfg, splits.num_classes), callbacks=[doctor])
    finally:
        doctor.close()
    return merge_reports(init, doctor)


def merge_reports(init: Report, doctor: DoctorCallback) -> Report:
    """The training findings (every epoch's, :meth:`DoctorCallback.findings`) plus init findings of other codes."""
    found = doctor.findings()
    codes = {f.code for f in found}
    found += [f for f in init.findings if f.code not in codes]
    last = doctor.report
    return Report(found, last.layers if last is not None else init.layers,
                  last.input if last is not None else init.input, init.loss,
                  f"init + {len(doctor.reports)} epochs", init.unseen)
