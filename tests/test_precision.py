"""train.precision (autocast, fp16 loss scaling), train.channels_last and train.compile.

References: fp32 runs of the same seed (bf16/fp16 stay within the rounding bound of their
significand, channels_last and compile within float round-off), torch's own GradScaler semantics
(an overflowing step is skipped and the scale halved), and the loop's resume contract (a resumed fp16
run equals an uninterrupted one, bit for bit on the CPU). The ``cuda`` tests run the same on a GPU
(skipped without one), and check that training steps make no host sync.
"""

from __future__ import annotations

import functools
import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import trainwell
from trainwell.data import load_splits
from trainwell.errors import ConfigError
from trainwell.train import precision
from trainwell.train.build import build_classifier
from trainwell.train.checkpoint import Checkpoints, split_tree
from trainwell.train.events import Callback
from trainwell.train.trainer import LoopSettings, build_state, fit, predict_logits

QUICK = {"data.limit": 300, "train.epochs": 3, "train.progress": False, "model.name": "mlp", "model.width": 32}
CNN = {"model.name": "cnn", "model.channels": [8, 16]}
CPU = torch.device("cpu")
HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU")])]
#: Unit roundoff 2^-p of a format with p significand bits (the implicit one included): bf16 p=8, fp16 p=11.
UNIT_ROUNDOFF = {"bf16": 2.0**-8, "fp16": 2.0**-11}
TIMING = ("seconds", "examples_per_second")


def fitted(overrides=None, device="cpu", *, scaler=None, callbacks=()):
    """(state, result) of fit on the quick config; ``scaler`` replaces the state's GradScaler."""
    cfg = trainwell.resolve(dict(QUICK, **{"train.device": device}, **(overrides or {})))
    splits = load_splits(cfg.data)
    state = build_state(build_classifier(cfg, splits), cfg, len(splits.train), torch.device(device))
    if scaler is not None:
        state.scaler = scaler
    result = fit(state, splits.train, splits.val, LoopSettings.from_config(cfg, splits.num_classes),
                 callbacks=callbacks)
    return state, result


def curve(result):
    return np.array([[row["train_loss"], row["val_loss"]] for row in result.history])


def weights(state):
    return {k: v.detach().cpu().clone() for k, v in state.model.state_dict().items()}


def rows(run_dir):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def linear_layers(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)]


# ----------------------------------------------------------------------------- autocast


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_mixed_precision_loss_curves_stay_within_the_rounding_bound_of_fp32(name, device):
    # Each of the L Linear layers rounds its input, its weight and its output to the format
    # (relative error <= u each, fp32 accumulation): to first order the forward's relative error is
    # <= 3 L u, the tolerance on every epoch's train and validation loss.
    state, result = fitted({"train.precision": name}, device)
    layers = len(linear_layers(state.model))
    assert layers == 3  # model.depth=2 hidden layers and the head
    ref = curve(fitted({"train.precision": "fp32"}, device)[1])
    got = curve(result)
    assert np.isfinite(got).all() and not result.diverged
    np.testing.assert_allclose(got, ref, rtol=3 * layers * UNIT_ROUNDOFF[name], atol=0)
    assert not np.array_equal(got, ref)  # the format really changed the arithmetic
    assert (state.scaler is not None) == (name == "fp16")


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_is_active_in_the_training_forward_and_in_evaluation_and_logits_come_back_fp32(device):
    seen: list[tuple[bool, torch.dtype]] = []

    class Hook(Callback):
        def on_fit_start(self, event):
            for layer in linear_layers(event.state.model):
                layer.register_forward_hook(lambda m, i, out: seen.append((m.training, out.dtype)))

    state, _ = fitted({"train.precision": "bf16", "train.epochs": 1}, device, callbacks=[Hook()])
    assert {(True, torch.bfloat16), (False, torch.bfloat16)} == set(seen)  # training steps and validation
    assert all(p.dtype == torch.float32 for p in state.model.parameters())  # the weights stay fp32
    x = torch.zeros(5, 1, 8, 8)
    fmt = precision.ForwardFormat(torch.bfloat16)
    assert predict_logits(state.model, x, torch.device(device), 4, fmt).dtype == torch.float32
    seen.clear()
    fitted({"train.precision": "fp32", "train.epochs": 1}, device, callbacks=[Hook()])
    assert {dtype for _, dtype in seen} == {torch.float32}


def test_a_run_is_tested_and_later_evaluated_under_its_own_precision(tmp_path):
    run = trainwell.train(dict(QUICK, **{"train.precision": "bf16", "train.epochs": 1, "train.plots": False}),
                          out=tmp_path / "r", quiet=True)
    assert run.summary["precision"] == "bf16"
    again = trainwell.evaluate(run.dir)  # the run's train.precision: the same arithmetic as its test
    assert again["test_loss"] == run.summary["test_loss"]
    fp32 = trainwell.evaluate(run.dir, ["train.precision=fp32"])
    assert fp32["test_loss"] != again["test_loss"]
    assert fp32["test_loss"] == pytest.approx(again["test_loss"], rel=3 * 3 * UNIT_ROUNDOFF["bf16"])


def test_auto_is_fp32_on_the_cpu_and_a_cpu_run_still_repeats_bit_for_bit():
    assert precision.resolve_precision("auto", CPU) == torch.float32
    a, result_a = fitted({"model.dropout": 0.2, "augment": ["translation"]})
    b, result_b = fitted({"model.dropout": 0.2, "augment": ["translation"]})
    assert a.scaler is None and np.array_equal(curve(result_a), curve(result_b))
    assert all(torch.equal(x, y) for x, y in zip(weights(a).values(), weights(b).values()))


def test_bf16_on_the_cpu_repeats_bit_for_bit_too():
    a, b = (fitted({"train.precision": "bf16", "train.epochs": 1}) for _ in range(2))
    assert all(torch.equal(x, y) for x, y in zip(weights(a[0]).values(), weights(b[0]).values()))


# ----------------------------------------------------------------------------- fp16 loss scaling


def test_fp16_scaler_state_round_trips_through_the_train_state(monkeypatch):
    # growth every 2 good steps: the scale moves (and overflows, then halves) within the run.
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, growth_interval=2))
    fp16 = {"train.precision": "fp16", "train.epochs": 2}
    state, _ = fitted(fp16)
    saved = state.state_dict()["scaler"]
    assert saved["scale"] != 2.0**16 and saved["growth_interval"] == 2
    folder = Checkpoints(None)
    folder.save({"loop": state.state_dict()}, state.step, state.epoch)
    cfg = trainwell.resolve(dict(QUICK, **fp16))
    splits = load_splits(cfg.data)
    fresh = build_state(build_classifier(cfg, splits), cfg, len(splits.train), CPU)
    fresh.load_state_dict(folder.latest().state["loop"])
    assert fresh.scaler.state_dict() == saved
    a, b = split_tree(state.state_dict()), split_tree(fresh.state_dict())
    assert a[0] == b[0] and all(torch.equal(a[1][k], b[1][k]) for k in a[1])


def test_a_resumed_fp16_run_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, growth_interval=2))
    cfg = dict(QUICK, **{"train.precision": "fp16", "train.checkpoint_every": 3, "train.keep_checkpoints": 100,
                         "train.plots": False})

    class Crash(Callback):
        def on_step_end(self, event):
            if event.state.step == 8:
                raise RuntimeError("crash")  # a crash in the middle of epoch 2, after the checkpoint of step 6

    whole = trainwell.train(cfg, out=tmp_path / "whole", quiet=True)
    with pytest.raises(RuntimeError, match="crash"):
        trainwell.train(cfg, out=tmp_path / "cut", quiet=True, callbacks=[Crash()])
    resumed = trainwell.train(resume=tmp_path / "cut", quiet=True)
    w1, w2 = load_file(whole.dir / "model.safetensors"), load_file(resumed.dir / "model.safetensors")
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert rows(whole.dir) == rows(resumed.dir)
    assert resumed.summary["test_loss"] == whole.summary["test_loss"]
    scales = [Checkpoints(run.dir / "checkpoints").latest().state["loop"]["scaler"] for run in (whole, resumed)]
    assert scales[0] == scales[1] and scales[0]["scale"] != 2.0**16


@pytest.mark.parametrize("clip", [0.0, 0.1])
def test_an_overflowing_fp16_step_is_skipped_and_is_not_a_divergence(clip):
    # Scale 2^100: the scaled loss is finite in fp32 but overflows fp16 in the backward pass, so every
    # gradient is inf: torch's GradScaler skips each step and halves the scale (grad-clip on: the
    # overflowed norm must not count as a divergence either).
    cfg = trainwell.resolve(dict(QUICK, **{"train.precision": "fp16", "train.epochs": 1, "train.grad_clip": clip}))
    splits = load_splits(cfg.data)
    state = build_state(build_classifier(cfg, splits), cfg, len(splits.train), CPU)
    before = [p.detach().clone() for p in state.model.parameters()]
    state.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**100)
    result = fit(state, splits.train, splits.val, LoopSettings.from_config(cfg, splits.num_classes))
    assert not result.diverged and result.divergence is None and result.steps > 0
    assert state.scaler.get_scale() == 2.0 ** (100 - result.steps)  # halved once per skipped step
    assert all(torch.equal(a, p) for a, p in zip(before, state.model.parameters()))  # no step taken
    assert math.isfinite(result.history[0]["train_loss"])


def test_a_non_finite_loss_under_fp16_is_still_a_divergence():
    class Poison(Callback):
        def on_step_end(self, event):
            if event.state.step == 3:
                with torch.no_grad():
                    linear_layers(event.state.model)[0].weight[0, 0] = float("nan")

    _, result = fitted({"train.precision": "fp16", "train.epochs": 2}, callbacks=[Poison()])
    assert result.diverged and result.divergence["step"] == 3


# ----------------------------------------------------------------------------- channels_last


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_lays_conv_weights_and_batches_out_nhwc_with_the_same_results(device, monkeypatch):
    # (on a GPU, cuDNN's fp32 convolutions default to TF32, whose rounding depends on the layout's kernel)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    layouts: list[bool] = []

    class Hook(Callback):
        def on_fit_start(self, event):
            for m in event.state.model.modules():
                if isinstance(m, torch.nn.Conv2d):
                    m.register_forward_pre_hook(
                        lambda m, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last)))

    default, result_default = fitted(dict(CNN, **{"train.epochs": 1}), device)
    state, result = fitted(dict(CNN, **{"train.epochs": 1, "train.channels_last": True}), device, callbacks=[Hook()])
    convs = [p for p in state.model.parameters() if p.dim() == 4]
    assert len(convs) == 2 and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert not all(p.is_contiguous() for p in convs)  # (a real change of layout: 8 and 16 channels)
    assert layouts and all(layouts)  # every conv saw channels_last inputs, in training and validation
    np.testing.assert_allclose(curve(result), curve(result_default), rtol=1e-5)
    for (k, a), b in zip(weights(default).items(), weights(state).values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=k)


def test_channels_last_is_a_no_op_for_inputs_that_are_not_images(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "table.npz"
    np.savez(path, x=rng.normal(size=(240, 12)).astype(np.float32), y=rng.integers(0, 3, 240))
    table = {"data.name": "npz", "data.path": str(path), "train.epochs": 1}
    a, result_a = fitted(table)
    b, result_b = fitted(dict(table, **{"train.channels_last": True}))
    assert np.array_equal(curve(result_a), curve(result_b))
    assert all(torch.equal(x, y) for x, y in zip(weights(a).values(), weights(b).values()))
    conv1d = torch.nn.Conv1d(2, 4, 3)
    assert precision.to_channels_last(conv1d).weight.is_contiguous()
    signal = torch.zeros(2, 2, 9)
    assert precision.ForwardFormat(channels_last=True).batch(signal) is signal


# ----------------------------------------------------------------------------- compile


def test_compile_runs_the_training_and_evaluation_forward_through_dynamo_and_keeps_the_state_layout(monkeypatch):
    # A recording backend (no code generation: fast): each call of a compiled graph, and whether
    # autograd was on (the train step) or off (evaluation, under no_grad).
    calls: list[bool] = []

    def backend(gm, example_inputs):
        def run(*args):
            calls.append(torch.is_grad_enabled())
            return gm.forward(*args)
        return run

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=backend))
    torch._dynamo.reset()
    plain, result_plain = fitted({"train.epochs": 1})
    state, result = fitted({"train.epochs": 1, "train.compile": True})
    torch._dynamo.reset()
    steps = result.steps
    assert calls.count(True) == steps and calls.count(False) > 0  # every train step's forward, and the evaluation's
    assert list(state.model.state_dict()) == list(plain.model.state_dict())
    assert not any("_orig_mod" in k for k in split_tree(state.state_dict())[1])
    np.testing.assert_allclose(curve(result), curve(result_plain), rtol=1e-5)


@pytest.mark.slow
def test_compile_with_inductor_gives_the_same_training_and_the_same_saved_model(tmp_path):
    # Tiny on purpose (inductor compiles C++ kernels): one graph (equal batches, no validation), one epoch.
    cfg = dict(QUICK, **{"train.epochs": 1, "train.batch_size": 60, "train.plots": False, "data.val_fraction": 0,
                         "model.depth": 1})
    plain = trainwell.train(cfg, out=tmp_path / "plain", quiet=True)
    torch._dynamo.reset()
    fast = trainwell.train(dict(cfg, **{"train.compile": True}), out=tmp_path / "compiled", quiet=True)
    torch._dynamo.reset()
    a, b = load_file(plain.dir / "model.safetensors"), load_file(fast.dir / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6)
    assert fast.summary["test_loss"] == pytest.approx(plain.summary["test_loss"], rel=1e-4)


# ----------------------------------------------------------------------------- refused settings


def test_bad_values_and_what_the_device_cannot_do_are_config_errors(tmp_path, monkeypatch):
    for bad, message in [("train.precision=fp8", "expects one of 'auto', 'fp32', 'bf16', 'fp16'"),
                         ("train.channels_last=maybe", "train.channels_last"),
                         ("train.compile=2", "train.compile")]:
        with pytest.raises(ConfigError, match=message):
            trainwell.resolve([bad])
    monkeypatch.setattr(precision, "autocast_available", lambda device, dtype: False)
    with pytest.raises(ConfigError, match="train.precision=bf16: .* cannot autocast to bf16 on cpu"):
        trainwell.train(dict(QUICK, **{"train.precision": "bf16"}), out=tmp_path / "a", quiet=True)
    monkeypatch.undo()
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="train.compile=true on the CPU needs a C\\+\\+ compiler"):
        trainwell.train(dict(QUICK, **{"train.compile": True}), out=tmp_path / "b", quiet=True)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before any folder


def test_the_real_autocast_check_refuses_a_dtype_torch_disables():
    # torch.autocast on the CPU disables a dtype it does not support (with a warning) instead of raising.
    assert precision.autocast_available(CPU, torch.bfloat16)
    assert not precision.autocast_available(CPU, torch.float64)


def test_a_state_and_settings_of_other_precisions_are_refused():
    cfg = trainwell.resolve(QUICK)
    splits = load_splits(cfg.data)
    state = build_state(build_classifier(cfg, splits), cfg, len(splits.train), CPU)
    settings = LoopSettings.from_config(trainwell.resolve(dict(QUICK, **{"train.precision": "fp16"})), 10)
    with pytest.raises(ConfigError, match="train.precision=fp16 needs a loss scaler"):
        fit(state, splits.train, splits.val, settings)
    fp16 = trainwell.resolve(dict(QUICK, **{"train.precision": "fp16"}))
    other = build_state(build_classifier(fp16, splits), fp16, len(splits.train), CPU)
    with pytest.raises(ConfigError, match="disagree on train.precision"):
        other.load_state_dict(state.state_dict())


# ----------------------------------------------------------------------------- CUDA only


@pytest.mark.parametrize("name", ["fp32", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU")
def test_cuda_training_steps_make_no_host_sync(name, channels_last, monkeypatch):
    # torch raises on any implicit device->host sync (.item(), bool(tensor), nonzero, D2H copies)
    # between the callback that turns the check on (after step 2) and the one that turns it off.
    from trainwell.train import trainer

    monkeypatch.setattr(trainer, "SYNC_SECONDS", 1e9)  # the periodic progress read: not a per-step sync

    class SyncCheck(Callback):
        def on_step_end(self, event):
            if event.state.step == 2:
                torch.cuda.set_sync_debug_mode("error")
            elif event.state.step == 4:
                torch.cuda.set_sync_debug_mode("default")

    try:
        _, result = fitted(dict(CNN, **{"train.precision": name, "train.channels_last": channels_last,
                                        "train.epochs": 1}), "cuda", callbacks=[SyncCheck()])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert result.steps > 4 and not result.diverged


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU")
def test_cuda_auto_precision_and_fp16_scaler_train():
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert precision.resolve_precision("auto", torch.device("cuda")) == expected
    state, result = fitted({"train.precision": "fp16"}, "cuda")
    scale = state.scaler.get_scale()
    assert scale > 0 and math.log2(scale).is_integer() and not result.diverged
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
