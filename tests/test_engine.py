"""The engine: explicit state, typed callbacks, checkpoints, resume, divergence, early stopping, EMA, accumulation."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import trainwell
from trainwell.data import load_splits
from trainwell.data.splits import TensorSplit, to_float
from trainwell.errors import ConfigError, RunDirError
from trainwell.seeds import STREAMS, stream_seed, torch_generator
from trainwell.train.build import build_classifier
from trainwell.train.checkpoint import Checkpoints, join_tree, split_tree
from trainwell.train.events import Callback, StepEnd
from trainwell.train.trainer import LoopSettings, build_state, fit

QUICK = {"data.limit": 300, "train.epochs": 2, "train.progress": False, "model.name": "mlp", "model.width": 32}
TIMING = ("seconds", "examples_per_second")
CPU = torch.device("cpu")


def rows(run_dir):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def same_weights(a, b):
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def state_for(overrides=None):
    cfg = trainwell.resolve(dict(QUICK, **(overrides or {})))
    splits = load_splits(cfg.data)
    model = build_classifier(cfg, splits)
    return cfg, splits, build_state(model, cfg, len(splits.train), CPU)


# ----------------------------------------------------------------------------- state and checkpoints


def test_tree_codec_round_trips_int_keys_tuples_and_tensors():
    tree = {"a": {0: {"m": torch.arange(3.0)}, 7: {"m": torch.ones(2, 2)}}, "b": (1, 2.5, "x"), "c": [None, True],
            "d": {"x": torch.tensor(3, dtype=torch.long)}, "e": {}}
    flat, tensors = split_tree(tree)
    json.dumps(flat)  # the rest is plain JSON
    back = join_tree(json.loads(json.dumps(flat)), tensors)
    assert set(back["a"]) == {0, 7} and isinstance(back["b"], tuple) and back["b"] == (1, 2.5, "x")
    assert torch.equal(back["a"][7]["m"], torch.ones(2, 2)) and back["d"]["x"].dtype == torch.long
    assert back["c"] == [None, True] and back["e"] == {}


def test_train_state_round_trips_exactly_through_a_checkpoint(tmp_path):
    overrides = {"model.dropout": 0.2, "mix.mixup_alpha": 0.2, "train.ema": 0.9, "optim.name": "adamw",
                 "optim.lr": 1e-3, "train.epochs": 1}
    cfg, splits, state = state_for(overrides)
    fit(state, splits.train, splits.val, LoopSettings.from_config(cfg, splits.num_classes))
    folder = Checkpoints(tmp_path / "ck")
    folder.save({"loop": state.state_dict()}, state.step, state.epoch)
    _, _, fresh = state_for(overrides)
    fresh.load_state_dict(folder.latest().state["loop"])
    a, b = split_tree(state.state_dict()), split_tree(fresh.state_dict())
    assert a[0] == b[0]  # every counter, the history, optimiser hyper-parameters, generator states (numpy)
    assert a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])
    assert any(k.startswith("optimizer.state") for k in a[1]) and any(k.startswith("ema.") for k in a[1])
    assert fresh.rng.mix.random() == state.rng.mix.random()  # the generators go on identically
    assert torch.equal(torch.rand(3, generator=fresh.rng.shuffle), torch.rand(3, generator=state.rng.shuffle))


def test_corrupt_truncated_or_half_written_newest_checkpoint_falls_back_with_one_line(tmp_path):
    folder = Checkpoints(tmp_path, keep=3)
    for step in (1, 2, 3):
        folder.save({"w": torch.full((4,), float(step)), "step": step}, step, 0)
    folder.flush()  # written in the background
    data = tmp_path / "step-000000003.safetensors"
    blob = bytearray(data.read_bytes())
    blob[-1] ^= 0xFF  # one bit of a weight
    data.write_bytes(bytes(blob))
    said = []
    loaded = folder.latest(said.append)
    assert loaded.step == 2 and torch.equal(loaded.state["w"], torch.full((4,), 2.0))
    assert len(said) == 1 and "step-000000003" in said[0] and "hash" in said[0] and "falling back" in said[0]
    two = tmp_path / "step-000000002.safetensors"
    two.write_bytes(two.read_bytes()[:-7])  # truncated
    said.clear()
    assert folder.latest(said.append).step == 1 and len(said) == 2
    one = tmp_path / "step-000000001.safetensors"
    original = one.read_bytes()
    one.write_bytes(original.replace(b'"dtype":"F32"', b'"dtype":"I32"', 1))  # same size, same data, other meaning
    said.clear()
    assert folder.latest(said.append) is None and "hash" in said[0]
    one.write_bytes(b"\x10" + bytes(7) + b"{not json}......")
    assert folder.latest(lambda m: None) is None


def test_in_memory_checkpoints_are_not_changed_by_the_state_they_were_restored_into():
    folder = Checkpoints(None)
    folder.save({"w": torch.ones(3)}, 1, 0)
    folder.latest().state["w"].add_(1)  # a replay after a rollback updates the restored tensors in place
    assert torch.equal(folder.latest().state["w"], torch.ones(3))


def test_a_checkpoint_is_never_saved_with_non_finite_weights(tmp_path):
    # The last step of epoch 1 leaves a NaN weight with a finite loss: the epoch-end checkpoint must see it.
    class Poison(Callback):
        def on_step_end(self, event):
            if event.state.step == spe:
                with torch.no_grad():
                    next(event.state.model.net.parameters())[0, 0] = float("nan")

    spe = math.ceil(300 / 64)  # data.limit=300 training examples
    run = trainwell.train(dict(QUICK, **{"train.epochs": 3}), out=tmp_path / "r", quiet=True, callbacks=[Poison()])
    assert run.summary["diverged"] and run.summary["divergence"]["step"] == spe - 1
    assert all(torch.isfinite(v).all() for v in load_file(run.dir / "model.safetensors").values())


def test_only_the_newest_checkpoints_are_kept_and_an_interrupted_write_is_reported(tmp_path):
    folder = Checkpoints(tmp_path, keep=2)
    for step in range(5):
        folder.save({"x": torch.zeros(1)}, step, 0)
    folder.flush()
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-000000003.safetensors", "step-000000004.safetensors"]
    (tmp_path / ".step-000000009.safetensors.x1y2.tmp").write_bytes(b"half")  # a write killed half-way
    said = []
    reopened = Checkpoints(tmp_path, keep=2)
    assert reopened.latest(said.append).step == 4 and "step-000000009" in said[0] and "being written" in said[0]
    assert not list(tmp_path.glob(".*.tmp"))


def test_misspelt_hook_fails_when_the_class_is_defined():
    with pytest.raises(TypeError, match="on_epoch_ends is not a hook.*did you mean 'on_epoch_end'"):
        class Typo(Callback):  # noqa: F841
            def on_epoch_ends(self, event):
                pass


def test_a_callback_that_is_not_a_callback_is_refused():
    class Duck:
        def on_epoch_end(self, event):
            pass

    cfg, splits, state = state_for()
    with pytest.raises(TypeError, match="not a trainwell.train.Callback"):
        fit(state, splits.train, splits.val, LoopSettings.from_config(cfg, splits.num_classes), callbacks=[Duck()])


def test_hooks_are_called_in_order_with_their_events():
    calls = []

    class Spy(Callback):
        def on_fit_start(self, event):
            calls.append(("start", event.total_steps, event.state.step))

        def on_step_end(self, event: StepEnd):
            calls.append(("step", event.state.step))

        def on_epoch_end(self, event):
            calls.append(("epoch", event.epoch, event.state.step))

        def on_fit_end(self, event):
            calls.append(("end", event.result.steps))

    cfg, splits, state = state_for()
    fit(state, splits.train, splits.val, LoopSettings.from_config(cfg, splits.num_classes), callbacks=[Spy()])
    spe = math.ceil(len(splits.train) / cfg.train.batch_size)
    assert calls[0] == ("start", 2 * spe, 0) and calls[-1] == ("end", 2 * spe)
    assert [c for c in calls if c[0] == "epoch"] == [("epoch", 1, spe), ("epoch", 2, 2 * spe)]
    assert [c[1] for c in calls if c[0] == "step"] == list(range(1, 2 * spe + 1))


# ----------------------------------------------------------------------------- resume (in process)


def test_extending_a_finished_run_equals_training_longer(tmp_path):
    cfg = dict(QUICK, **{"sched.name": "constant", "model.dropout": 0.2, "augment": ["translation"]})
    long = trainwell.train(dict(cfg, **{"train.epochs": 4}), out=tmp_path / "long", quiet=True)
    short = trainwell.train(dict(cfg, **{"train.epochs": 2}), out=tmp_path / "short", quiet=True)
    with pytest.raises(RunDirError, match="finished .*train.epochs=N"):
        trainwell.train(resume=short.dir, quiet=True)
    extended = trainwell.train(resume=short.dir, overrides=["train.epochs=4"], quiet=True)
    assert same_weights(long.dir, extended.dir) and rows(long.dir) == rows(extended.dir)
    assert extended.summary["test_acc"] == long.summary["test_acc"]
    assert extended.summary["test_loss"] == long.summary["test_loss"]
    assert trainwell.load_run(extended.dir).config.train.epochs == 4


def test_resume_refuses_other_overrides_and_folders_without_checkpoints(tmp_path):
    run = trainwell.train(QUICK, out=tmp_path / "r", quiet=True)
    with pytest.raises(ConfigError, match="only train.epochs can change.*optim.lr"):
        trainwell.train(resume=run.dir, overrides=["optim.lr=0.1"], quiet=True)
    for p in (run.dir / "checkpoints").iterdir():
        p.unlink()
    (run.dir / "summary.json").unlink()
    with pytest.raises(RunDirError, match="no checkpoint to resume from"):
        trainwell.train(resume=run.dir, quiet=True)
    with pytest.raises(RunDirError, match="does not exist"):
        trainwell.train(resume=tmp_path / "nowhere", quiet=True)


def test_checkpoints_are_written_at_epoch_ends_and_every_n_steps(tmp_path):
    run = trainwell.train(dict(QUICK, **{"train.checkpoint_every": 2, "train.keep_checkpoints": 100}),
                          out=tmp_path / "r", quiet=True)
    spe = math.ceil(run.summary["n_train"] / 64)
    steps = sorted(int(p.stem[5:]) for p in (run.dir / "checkpoints").glob("step-*.safetensors"))
    assert steps == sorted({0, *range(2, 2 * spe + 1, 2), spe, 2 * spe})
    assert run.summary["steps"] == 2 * spe


# ----------------------------------------------------------------------------- divergence


def test_rollback_restarts_from_the_last_good_checkpoint_with_a_lower_lr(tmp_path):
    # lr 1e12 overflows to NaN within the first steps; one rollback to the step-0 checkpoint at lr x1e-13 (0.1) trains.
    cfg = dict(QUICK, **{"optim.lr": 1e12, "optim.weight_decay": 0.0, "train.on_divergence": "rollback",
                         "train.rollback_lr_factor": 1e-13, "train.max_rollbacks": 2, "sched.name": "constant"})
    run = trainwell.train(cfg, out=tmp_path / "r", quiet=True)
    d = run.summary["divergence"]
    assert d["action"] == "rollback" and d["rollbacks"] == 1 and not run.summary["diverged"]
    assert run.summary["epochs"] == 2 and np.isfinite(run.summary["test_loss"])
    assert [r["lr"] for r in rows(run.dir)] == pytest.approx([0.1] * 2)
    assert run.summary["test_acc"] > 0.5
    assert len(rows(run.dir)) == 2  # metrics.jsonl rewritten: no row of the diverged attempt


def test_rollbacks_are_bounded_then_the_run_stops(tmp_path):
    cfg = dict(QUICK, **{"optim.lr": 1e12, "optim.weight_decay": 0.0, "train.on_divergence": "rollback",
                         "train.rollback_lr_factor": 0.5, "train.max_rollbacks": 2})
    run = trainwell.train(cfg, out=tmp_path / "r", quiet=True)
    assert run.summary["diverged"] and run.summary["divergence"]["action"] == "stop"
    assert run.summary["divergence"]["rollbacks"] == 2


def test_divergence_is_caught_without_a_host_read_per_step(tmp_path, monkeypatch):
    # The flag lives on the device; with no sync before the epoch end, the step is still exact.
    from trainwell.train import trainer

    monkeypatch.setattr(trainer, "SYNC_SECONDS", 1e9)
    cfg = dict(QUICK, **{"optim.lr": 1e12, "optim.weight_decay": 0.0, "train.epochs": 1})
    first = trainwell.train(cfg, out=tmp_path / "a", quiet=True).summary["divergence"]
    monkeypatch.setattr(trainer, "SYNC_SECONDS", 0.0)
    every_step = trainwell.train(cfg, out=tmp_path / "b", quiet=True).summary["divergence"]
    assert first["step"] == every_step["step"] and first["epoch"] == every_step["epoch"] == 1


# ----------------------------------------------------------------------------- features on the events


def test_early_stopping_stops_after_patience_epochs_without_a_better_val_acc(tmp_path):
    run = trainwell.train(dict(QUICK, **{"train.epochs": 40, "train.early_stopping": 2, "sched.name": "constant"}),
                          out=tmp_path / "r", quiet=True)
    accs = [r["val_acc"] for r in rows(run.dir)]
    n = run.summary["epochs"]
    assert run.summary["stopped"] == "early_stopping" and n < 40
    best = max(range(n), key=lambda i: (accs[i], -i))
    assert n - 1 - accs.index(max(accs)) == 2 and best == accs.index(max(accs))
    with pytest.raises(ConfigError, match="need a validation split"):
        trainwell.train(dict(QUICK, **{"train.early_stopping": 2, "data.val_fraction": 0.0}), quiet=True,
                        out=tmp_path / "x")


def test_keep_best_saves_and_tests_the_best_validation_epoch(tmp_path):
    run = trainwell.train(dict(QUICK, **{"train.epochs": 6, "train.keep": "best", "optim.lr": 0.5}),
                          out=tmp_path / "r", quiet=True)
    accs = [r["val_acc"] for r in rows(run.dir)]
    assert run.summary["kept_epoch"] == accs.index(max(accs)) + 1 == run.summary["best_epoch"]
    assert trainwell.evaluate(run.dir, split="val")["val_acc"] == pytest.approx(max(accs), abs=1e-9)


def test_ema_weights_follow_the_formula_and_are_what_is_saved(tmp_path):
    decay, seen = 0.8, []

    class Record(Callback):
        def on_step_end(self, event):
            seen.append({k: v.detach().clone() for k, v in event.state.model.named_parameters()})

    run = trainwell.train(dict(QUICK, **{"train.ema": decay, "train.epochs": 1, "model.norm": "none"}),
                          out=tmp_path / "r", quiet=True, callbacks=[Record()])
    ema = dict(seen[0])  # the first update copies the weights (torch.optim.swa_utils.AveragedModel)
    for weights in seen[1:]:
        ema = {k: decay * ema[k] + (1 - decay) * weights[k] for k in ema}
    saved = load_file(run.dir / "model.safetensors")
    for k, v in ema.items():
        torch.testing.assert_close(saved[k], v, rtol=1e-5, atol=1e-6)
    assert not torch.equal(saved["net.1.weight"], seen[-1]["net.1.weight"])  # not the raw weights


def test_gradient_accumulation_equals_one_batch_of_the_same_size(tmp_path):
    base = dict(QUICK, **{"data.limit": 256, "data.val_fraction": 0.0, "model.norm": "none", "optim.momentum": 0.0,
                          "optim.weight_decay": 0.0})
    big = trainwell.train(dict(base, **{"train.batch_size": 64}), out=tmp_path / "a", quiet=True)
    acc = trainwell.train(dict(base, **{"train.batch_size": 32, "train.accumulate": 2}), out=tmp_path / "b", quiet=True)
    assert acc.summary["steps"] == big.summary["steps"] == 2 * 4
    wa, wb = load_file(big.dir / "model.safetensors"), load_file(acc.dir / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)
    assert [r["train_loss"] for r in rows(acc.dir)] == pytest.approx([r["train_loss"] for r in rows(big.dir)], rel=1e-4)


def test_config_ranges_are_checked_where_the_keys_live():
    for bad, message in [("train.accumulate=0", "train.accumulate must be >= 1"),
                         ("train.ema=1", r"train.ema must be in \[0, 1\)"),
                         ("train.rollback_lr_factor=1", "rollback_lr_factor must be in"),
                         ("train.on_divergence=retry", "expects one of 'stop', 'rollback'"),
                         ("train.keep=first", "expects one of 'last', 'best'")]:
        with pytest.raises(ConfigError, match=message):
            trainwell.resolve([bad])


# ----------------------------------------------------------------------------- seeds


def test_every_named_stream_of_every_seed_is_distinct():
    values = {(seed, s): stream_seed(seed, s) for seed in range(8) for s in STREAMS}
    assert len(set(values.values())) == len(values)
    # member 1 of an ensemble (seed+1) never initialises from member 0's shuffle generator
    for seed in range(4):
        assert not torch.equal(torch.rand(5, generator=torch_generator(seed + 1, "init")),
                               torch.rand(5, generator=torch_generator(seed, "shuffle")))
    assert stream_seed(3, "mix") == stream_seed(3, "mix")
    with pytest.raises(ValueError, match="unknown random stream"):
        stream_seed(0, "dropuot")


def test_ensemble_members_draw_from_distinct_streams(tmp_path):
    run = trainwell.train(dict(QUICK, **{"train.ensemble": 2, "train.epochs": 1}), out=tmp_path / "e", quiet=True)
    members = sorted((tmp_path / "e" / "members-runs" / "runs").glob("*/seed-*"))
    assert len(members) == 2 and run.summary["n_members"] == 2
    w0, w1 = (load_file(m / "model.safetensors")["net.1.weight"] for m in members)
    assert not torch.equal(w0, w1)


def test_lr_auto_is_resolved_before_the_doctor_and_compare_see_it():
    from trainwell.diagnose import diagnose_config
    from trainwell.experiments.compare import Plan, validate

    report = diagnose_config(dict(QUICK, **{"optim.lr": "auto"}), epochs=1)
    assert report.context.startswith("init + 1")
    validate(Plan(base=["optim.lr=auto", "model.name=mlp", "data.limit=200"], seeds=[0]))


def test_doctor_update_ratios_span_one_optimiser_step_under_accumulation():
    # every=2 with accumulate=2 samples the first micro-batch of every step: measured up to the next
    # forward (the second micro-batch, no step taken yet) the ratio would be 0.
    from trainwell.diagnose import DoctorCallback

    cfg, splits, state = state_for({"train.accumulate": 2, "model.norm": "none", "train.epochs": 1})
    doctor = DoctorCallback(state.model, every=2)
    fit(state, splits.train, splits.val, LoopSettings.from_config(cfg, splits.num_classes), callbacks=[doctor])
    doctor.close()
    ratios = [layer.update_ratio for layer in doctor.report.layers if layer.is_weight]
    assert ratios and all(r > 0 for r in ratios)


def test_an_unfinished_compare_run_continues_from_its_checkpoint(tmp_path):
    from trainwell.experiments.compare import Plan, execute

    plan = Plan(base=["model.name=mlp", "model.width=16", "data.limit=200", "train.epochs=3"], seeds=[0])
    execute(plan, tmp_path, workers=1, quiet=True)
    run_dir = next((tmp_path / "runs").glob("*/seed-0"))
    before, weights = rows_with_timing(run_dir), load_file(run_dir / "model.safetensors")
    # as if killed during epoch 3: no summary, no final weights, only the checkpoint of epoch 2
    (run_dir / "summary.json").unlink()
    (run_dir / "model.safetensors").unlink()
    max((run_dir / "checkpoints").glob("step-*.safetensors")).unlink()
    state = execute(plan, tmp_path, workers=1, quiet=True)
    after = rows_with_timing(run_dir)
    assert state.ran == 1 and len(after) == 3
    assert after[:2] == before[:2]  # epochs 1-2 come from the checkpoint, timings included: not retrained
    assert {k: v for k, v in after[2].items() if k not in TIMING} == {k: v for k, v in before[2].items()
                                                                      if k not in TIMING}
    resumed = load_file(run_dir / "model.safetensors")
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)


def rows_with_timing(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_checkpoint_is_a_plain_safetensors_file_with_its_state_in_the_metadata(tmp_path):
    from safetensors import safe_open

    run = trainwell.train(dict(QUICK, **{"train.epochs": 1}), out=tmp_path / "r", quiet=True)
    newest = max((run.dir / "checkpoints").glob("step-*.safetensors"))
    with safe_open(str(newest), "pt") as f:  # the library's own reader
        meta = f.metadata()
        weight = f.get_tensor("loop.model.net.1.weight")
    assert meta["format"] == "trainwell-checkpoint" and int(meta["step"]) == run.summary["steps"]
    assert json.loads(meta["state"])["loop"]["epoch"] == 1
    # the last checkpoint holds the final weights (train.keep=last, no EMA)
    torch.testing.assert_close(weight, load_file(run.dir / "model.safetensors")["net.1.weight"], rtol=0, atol=0)


def test_an_ensemble_folder_resumes_its_unfinished_members(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = trainwell.train(dict(QUICK, **{"train.ensemble": 2, "train.epochs": 1}), out="ens", quiet=True)
    member = sorted((tmp_path / "ens" / "members-runs" / "runs").glob("*/seed-1"))[0]
    (member / "summary.json").unlink()  # as if killed after its last checkpoint
    before = (member / "metrics.jsonl").read_text()
    again = trainwell.train(resume=tmp_path / "ens", quiet=True)  # another spelling of the same folder
    assert again.summary["member_accs"] == first.summary["member_accs"]
    assert (member / "summary.json").is_file()
    assert (member / "metrics.jsonl").read_text() == before  # timings too: continued, not retrained
    with pytest.raises(ConfigError, match="ensemble.*train.epochs cannot change"):
        trainwell.train(resume=tmp_path / "ens", overrides=["train.epochs=3"], quiet=True)


def test_resume_with_other_stateful_callbacks_is_refused(tmp_path):
    from trainwell.train.callbacks import EarlyStopping

    run = trainwell.train(QUICK, out=tmp_path / "r", quiet=True)
    (run.dir / "summary.json").unlink()
    with pytest.raises(ConfigError, match=r"saved with the callbacks none, this run has \['EarlyStopping'\]"):
        trainwell.train(resume=run.dir, callbacks=[EarlyStopping(3)], quiet=True)
    trainwell.train(resume=run.dir, quiet=True)  # displays and logs may differ: a --quiet resume is fine


# ----------------------------------------------------------------------------- one step against a reference


def one_step_run(overrides):
    """One optimiser step of fit (one batch, plain SGD, constant LR): the model before and after it."""
    cfg = trainwell.resolve(dict(QUICK, **{"model.norm": "none", "optim.momentum": 0.0, "optim.nesterov": False,
                                           "optim.weight_decay": 0.0, "optim.lr": 0.5, "sched.name": "constant",
                                           "train.epochs": 1, "train.batch_size": 48}, **overrides))
    splits = load_splits(cfg.data)
    train = TensorSplit(splits.train.x[:48], splits.train.y[:48])
    model = build_classifier(cfg, splits)
    before = copy.deepcopy(model)
    state = build_state(model, cfg, len(train), CPU)
    result = fit(state, train, splits.val, LoopSettings.from_config(cfg, splits.num_classes))
    assert result.steps == 1
    return train, before, state.model, splits.num_classes


def reference_step(model, train, num_classes, lr, smoothing, clip):
    """SGD on cross-entropy against (1 - eps) * onehot + eps / K (Szegedy et al. 2016), the gradient
    scaled by min(1, clip / (||g||_2 + 1e-6)) over all parameters together when clip > 0
    (torch.nn.utils.clip_grad_norm_). Returns the new parameters and the gradient's norm."""
    params = list(model.parameters())
    logp = torch.log_softmax(model(to_float(train.x)), 1)
    target = (1 - smoothing) * torch.eye(num_classes)[train.y] + smoothing / num_classes
    loss = -(target * logp).sum(1).mean()
    grads = torch.autograd.grad(loss, params)
    norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
    scale = min(1.0, clip / (norm + 1e-6)) if clip > 0 else 1.0
    return [(p - lr * scale * g).detach() for p, g in zip(params, grads)], norm


@pytest.mark.parametrize("smoothing, clip", [(0.3, 0.0), (0.0, 0.05), (0.2, 0.05)])
def test_one_unmixed_step_is_sgd_on_the_smoothed_targets_with_the_clipped_gradient(smoothing, clip):
    train, before, after, k = one_step_run({"loss.label_smoothing": smoothing, "train.grad_clip": clip})
    expected, norm = reference_step(before, train, k, 0.5, smoothing, clip)
    if clip:
        assert norm > 3 * clip  # the clip is active in this step
    for new, ref in zip(after.parameters(), expected):
        torch.testing.assert_close(new.detach(), ref, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- pieces the mutation run found unpinned


def test_resolve_device_says_what_this_machine_lacks(monkeypatch):
    from trainwell.train.trainer import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"^train.device=cuda but no CUDA GPU is visible; use train.device=auto or cpu\.$"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match=r"^--device=mps but MPS \(Apple's GPU backend\) is not available on this "
                                          r"machine; use --device=auto or cpu\.$"):
        resolve_device("mps", "--device")
    with pytest.raises(ConfigError, match=r"^train.device 'tpu' is not a device; use auto, cpu, cuda\[:N\] or mps\.$"):
        resolve_device("tpu")
    with pytest.raises(ConfigError, match=r"^train.device 'meta' is not supported; use auto, cpu, cuda\[:N\] or mps\.$"):
        resolve_device("meta")
    # A machine with two GPUs, as far as resolve_device can tell (it only asks these two questions).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"^train.device=cuda:2 but only 2 CUDA GPU\(s\) are visible \(cuda:0..cuda:1\); "
                                          r"use train.device=cuda or a smaller index\.$"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("mps") == torch.device("mps")


def test_signals_become_a_stop_request_and_a_second_one_stops_at_once():
    import os
    import signal
    import threading

    from trainwell.train.trainer import catch_signals

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(KeyboardInterrupt):
        with catch_signals() as request:
            assert request.signum is None
            os.kill(os.getpid(), signal.SIGTERM)
            assert request.signum == signal.SIGTERM  # (delivered before the next bytecode in the main thread)
            os.kill(os.getpid(), signal.SIGINT)  # a second signal: stop now
    assert {s: signal.getsignal(s) for s in before} == before  # the handlers are put back

    seen = {}

    def in_a_thread():  # signals reach only the main thread: a request that never fires, no handler changed
        with catch_signals() as request:
            seen["request"] = request
            seen["handlers"] = {s: signal.getsignal(s) for s in before}

    t = threading.Thread(target=in_a_thread)
    t.start()
    t.join()
    assert seen["request"].signum is None and seen["handlers"] == before


def test_loading_a_state_restores_every_field_and_checks_ema_and_the_loss_scaler():
    cfg, splits, state = state_for({"train.ema": 0.9})
    state.perm, state.batch = torch.randperm(len(splits.train)), 3
    state.divergence = {"step": 5, "epoch": 1, "action": "rollback", "rollbacks": 1}
    state.stop_reason, state.epoch_momentum = "early_stopping", 0.85
    state.loss_sum, state.correct = torch.tensor(2.5), torch.tensor(7)
    saved = copy.deepcopy(state.state_dict())

    _, _, fresh = state_for({"train.ema": 0.9})
    fresh.load_state_dict(copy.deepcopy(saved))
    assert torch.equal(fresh.perm, state.perm) and fresh.batch == 3
    assert fresh.divergence == state.divergence and fresh.stop_reason == "early_stopping"
    assert fresh.epoch_momentum == 0.85 and fresh.loss_sum.item() == 2.5 and fresh.correct.item() == 7
    assert fresh.loss_sum.device == fresh.correct.device == CPU
    old = {k: v for k, v in copy.deepcopy(saved).items() if k != "epoch_momentum"}  # a checkpoint from before it
    fresh.load_state_dict(old)
    assert math.isnan(fresh.epoch_momentum)

    _, _, no_ema = state_for()
    with pytest.raises(ConfigError, match=r"^the checkpoint and the config disagree on train.ema; resume with the "
                                          r"run's config\.$"):
        no_ema.load_state_dict(copy.deepcopy(saved))
    scaled = dict(copy.deepcopy(saved), scaler=torch.amp.GradScaler("cpu", init_scale=64.0).state_dict())
    with pytest.raises(ConfigError, match=r"^the checkpoint and the config disagree on train.precision \(fp16 scales "
                                          r"the loss\); resume with the run's config\.$"):
        fresh.load_state_dict(scaled)
    fresh.scaler = torch.amp.GradScaler("cpu", init_scale=2.0)
    fresh.load_state_dict(copy.deepcopy(scaled))
    assert fresh.scaler.get_scale() == 64.0  # the scale comes from the checkpoint


def test_predict_logits_runs_the_forward_in_the_format_it_is_given():
    from trainwell.train.precision import forward_format
    from trainwell.train.trainer import predict_logits

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    x = torch.randn(10, 16)
    bf16 = forward_format("bf16", False, CPU)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(x).float()
    got = predict_logits(model, x, CPU, batch_size=4, fmt=bf16)
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    assert not torch.equal(got, predict_logits(model, x, CPU, batch_size=4))  # fp32 differs: the format mattered


def test_evaluate_split_scores_the_forward_in_its_format_and_an_empty_split_as_nan():
    from trainwell.train.precision import forward_format
    from trainwell.train.trainer import evaluate_split

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    split = TensorSplit(torch.randn(10, 16), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0]))
    bf16 = forward_format("bf16", False, CPU)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(split.x).float()
    by_hand = torch.nn.functional.cross_entropy(logits, split.y).item()
    got = evaluate_split(model, split, CPU, 4, bf16)
    assert got == {"loss": by_hand, "acc": (logits.argmax(1) == split.y).float().mean().item(), "n": 10}
    assert evaluate_split(model, split, CPU, 4)["loss"] != by_hand  # fp32 differs: the format mattered
    empty = evaluate_split(model, TensorSplit(torch.empty(0, 16), torch.empty(0, dtype=torch.int64)), CPU, 4, bf16)
    assert math.isnan(empty["loss"]) and math.isnan(empty["acc"]) and empty["n"] == 0
