"""The trainer and the Python API, in process: reproducibility, run round trips, extension points."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file
from torch import nn

import trainwell
from trainwell.data import ArrayData, load_splits
from trainwell.data.splits import make_splits
from trainwell.errors import ConfigError, RunDirError
from trainwell.train.callbacks import ProgressDisplay
from trainwell.train.trainer import BatchOrder, LoopSettings, build_state, fit, resolve_device, steps_per_epoch

QUICK = {"data.limit": 300, "train.epochs": 2, "train.progress": False, "model.name": "mlp", "model.width": 32}


def test_same_seed_repeats_bit_for_bit_on_cpu(tmp_path):
    cfg = dict(QUICK, **{"model.dropout": 0.2, "mix.mixup_alpha": 0.2, "train.device": "cpu",
                         "augment": ["translation", "noise"]})
    a = trainwell.train(cfg, out=tmp_path / "a", quiet=True)
    b = trainwell.train(cfg, out=tmp_path / "b", quiet=True)
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "examples_per_second")} for r in rows]  # noqa: E731
    ma = [json.loads(line) for line in (a.dir / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(line) for line in (b.dir / "metrics.jsonl").read_text().splitlines()]
    assert strip(ma) == strip(mb)


def test_different_seeds_give_different_weights(tmp_path):
    a = trainwell.train(dict(QUICK, **{"train.seed": 1}), out=tmp_path / "a", quiet=True)
    b = trainwell.train(dict(QUICK, **{"train.seed": 2}), out=tmp_path / "b", quiet=True)
    assert not torch.equal(next(a.model.net.parameters()), next(b.model.net.parameters()))


def test_loaded_run_predicts_exactly_like_the_trained_model(tmp_path):
    run = trainwell.train(QUICK, out=tmp_path / "r", quiet=True)
    loaded = trainwell.load_run(run.dir)
    x = run.splits.test.x[:50]
    from trainwell.data import to_float

    run.model.eval()
    torch.testing.assert_close(loaded.model(to_float(x)), run.model.cpu()(to_float(x)))
    assert loaded.classes == run.classes and loaded.input_shape == run.input_shape
    assert trainwell.evaluate(run.dir)["test_acc"] == pytest.approx(run.summary["test_acc"])


def test_preprocessing_statistics_are_saved_with_the_weights(tmp_path):
    run = trainwell.train(dict(QUICK, **{"data.preprocess": "standardize"}), out=tmp_path / "r", quiet=True)
    weights = load_file(run.dir / "model.safetensors")
    assert any(k.startswith("preprocess.") for k in weights)


def test_custom_module_trains_through_the_api(tmp_path):
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    run = trainwell.train(QUICK, model=net, out=tmp_path / "c", quiet=True)
    assert run.summary["params"] == 64 * 10 + 10
    assert json.loads((run.dir / "model.json").read_text())["custom_model"] is True
    with pytest.raises(RunDirError, match="custom"):
        trainwell.load_run(run.dir)


def test_diverging_run_stops_and_says_so(tmp_path):
    run = trainwell.train(dict(QUICK, **{"optim.lr": 1e12, "train.epochs": 3, "optim.weight_decay": 0.0}),
                          out=tmp_path / "d", quiet=True)
    assert run.summary["diverged"] is True
    d = run.summary["divergence"]
    assert d["action"] == "stop" and d["rollbacks"] == 0 and d["epoch"] == 1 and 0 <= d["step"] < 5
    assert isinstance(d["diagnosis"], str) and d["diagnosis"]
    # the last good weights are kept: those of the checkpoint before the first non-finite step
    assert run.summary["epochs"] == 0 and np.isfinite(run.summary["test_loss"])
    assert all(torch.isfinite(v).all() for v in load_file(run.dir / "model.safetensors").values())


def test_label_smoothing_cutmix_grad_clip_and_l1_l2_all_train(tmp_path):
    cfg = dict(QUICK, **{"model.name": "cnn", "model.channels": [8], "loss.label_smoothing": 0.1,
                         "mix.cutmix_alpha": 1.0, "mix.mixup_alpha": 0.2, "train.grad_clip": 1.0,
                         "reg.l1": 1e-5, "reg.l2": 1e-4, "optim.name": "adamw", "optim.lr": 1e-3,
                         "sched.name": "onecycle"})
    run = trainwell.train(cfg, out=tmp_path / "x", quiet=True)
    assert np.isfinite(run.summary["test_loss"]) and not run.summary["diverged"]


def test_summary_records_param_groups(tmp_path):
    run = trainwell.train(dict(QUICK, **{"model.norm": "batch"}), out=tmp_path / "g", quiet=True)
    groups = run.summary["param_groups"]
    # 3 weights decay; the 2 BN layers (scale, shift) and the head bias do not (layers before BN have no bias)
    assert groups["decay"] == 3 and groups["no_decay"] == 2 * 2 + 1


def test_val_fraction_zero_trains_without_validation(tmp_path):
    run = trainwell.train(dict(QUICK, **{"data.val_fraction": 0.0}), out=tmp_path / "v", quiet=True)
    assert run.summary["n_val"] == 0 and np.isnan(run.summary["best_val_acc"])


def test_live_progress_bar_renders_loss_and_throughput(tmp_path, monkeypatch):
    from trainwell.train import trainer

    monkeypatch.setattr(trainer, "SYNC_SECONDS", 0.0)  # read the device at every step: the bar gets stats
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    from trainwell.train.build import build_classifier

    cfg = trainwell.resolve(QUICK)
    splits = load_splits(cfg.data)
    model = build_classifier(cfg, splits)
    state = build_state(model, cfg, len(splits.train), torch.device("cpu"))
    fit(state, splits.train, splits.val, LoopSettings.from_config(cfg, splits.num_classes),
        callbacks=[ProgressDisplay(console, cfg.train.epochs, live=True)])
    text = buffer.getvalue()
    assert "loss" in text and "ex/s" in text and "epoch 2/2" in text


def test_batches_cover_every_example_once_and_never_leave_a_batch_of_one():
    order = BatchOrder(129, 64)
    batches = order.batches(order.permutation(torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [64, 64]  # the trailing single example is dropped
    assert len(set(torch.cat(batches).tolist())) == 128
    assert steps_per_epoch(129, 64) == 2 and steps_per_epoch(130, 64) == 3 and steps_per_epoch(1, 64) == 1
    assert steps_per_epoch(130, 64, accumulate=2) == 2 and steps_per_epoch(64 * 5, 64, accumulate=2) == 3


def test_device_auto_resolves_and_unavailable_cuda_is_a_config_error():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            resolve_device("cuda")
    with pytest.raises(ConfigError):
        resolve_device("gpu0")


def test_api_accepts_explicit_splits(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(200) % 2
    x = rng.normal(size=(200, 6)).astype(np.float32)
    x[:, 0] += 3 * (2 * y - 1)  # class means 6 standard deviations apart along feature 0
    data = ArrayData(x=x, y=y, x_test=None, y_test=None, classes=["neg", "pos"], description="synthetic")
    cfg = trainwell.resolve(QUICK)
    splits = make_splits(data, cfg.data)
    run = trainwell.train(dict(QUICK, **{"train.epochs": 10}), splits=splits, out=tmp_path / "s", quiet=True)
    assert run.summary["n_train"] + run.summary["n_val"] + run.summary["n_test"] == 200
    assert run.summary["test_acc"] > 0.9


def test_default_digits_run_reaches_98_percent(tmp_path):
    """The README's promise: plain `trainwell train` (digits) reaches >= 98% test accuracy."""
    run = trainwell.train({"train.progress": False}, out=tmp_path / "digits", quiet=True)
    assert run.summary["test_acc"] >= 0.98, run.summary


def test_tensorboard_events_hold_the_logged_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = trainwell.train(dict(QUICK, **{"train.tensorboard": True}), out=tmp_path / "tb", quiet=True)
    acc = EventAccumulator(str(run.dir / "tensorboard"))
    acc.Reload()
    assert {"train/loss", "val/acc"} <= set(acc.Tags()["scalars"])
    logged = [e.value for e in acc.Scalars("train/loss")]
    history = [json.loads(line)["train_loss"] for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
    assert logged == pytest.approx(history, rel=1e-6)


def test_missing_tensorboard_is_a_config_error_before_any_folder(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ConfigError, match="tensorboard"):
        trainwell.train(dict(QUICK, **{"train.tensorboard": True}), out=tmp_path / "never", quiet=True)
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("preprocess", ["pca", "pca_whiten", "zca"])
def test_whitening_runs_reload_with_the_fitted_shape(preprocess, tmp_path):
    run = trainwell.train(dict(QUICK, **{"data.preprocess": preprocess, "data.pca_components": 0.95}),
                          out=tmp_path / preprocess, quiet=True)
    loaded = trainwell.load_run(run.dir)
    from trainwell.data import to_float

    x = to_float(run.splits.test.x[:20])
    run.model.cpu().eval()
    torch.testing.assert_close(loaded.model(x), run.model(x))
    if preprocess != "zca":  # PCA projects to k < 64 features: the net was built for them
        assert next(loaded.model.net.parameters()).shape[1] < 64


def test_lsuv_runs_end_to_end_and_reload(tmp_path):
    run = trainwell.train(dict(QUICK, **{"init.scheme": "lsuv", "model.activation": "tanh", "model.depth": 4}),
                          out=tmp_path / "lsuv", quiet=True)
    assert np.isfinite(run.summary["test_loss"])
    assert trainwell.evaluate(run.dir)["test_acc"] == pytest.approx(run.summary["test_acc"])
