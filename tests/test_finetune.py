"""Transfer learning: data selection (data.classes, data.per_class), layer groups, the four strategies,
frozen batch norm, reloading a fine-tuned run, and the one-line errors of `trainwell finetune`."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import trainwell
from trainwell.cli import main
from trainwell.config import DataConfig, resolve
from trainwell.data import ArrayData, load_splits, make_splits
from trainwell.errors import ConfigError, DataError
from trainwell.nn import build_model
from trainwell.runs import finetune as ft
from trainwell.nn.layer_groups import group_parameters, layer_groups
from trainwell.runs.finetune import apply_strategy, finetune
from trainwell.train.optim import build_optimizer, build_scheduler

RUN = {"train.epochs": 2, "train.progress": False, "train.device": "cpu"}
QUICK = {**RUN, "model.name": "mlp", "model.width": 32, "model.depth": 2}
NEW = {**RUN, "data.classes": [5, 6, 7, 8, 9]}  # model.* come from the pretrained run


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """An mlp with batch norm (the default model.norm) trained on digits 0-4."""
    out = tmp_path_factory.mktemp("pre") / "run"
    trainwell.train({**QUICK, "data.classes": [0, 1, 2, 3, 4]}, out=out, quiet=True)
    return out


def _weights(run_dir):
    return load_file(str(run_dir / "model.safetensors"))


def _record_start(monkeypatch) -> dict:
    """Record the fine-tuned model's state right after the strategy is applied (before training)."""
    seen: dict = {}
    original = ft.apply_strategy

    def recording(classifier, cfg):
        plan = original(classifier, cfg)
        seen["state"] = {k: v.detach().clone() for k, v in classifier.state_dict().items()}
        return plan

    monkeypatch.setattr(ft, "apply_strategy", recording)
    return seen


# ----------------------------------------------------------------------------- data selection


def _synthetic(tmp_ok: bool = True) -> ArrayData:
    # x encodes the original label, so relabelling can be checked example by example.
    y = np.array([0] * 5 + [1] * 7 + [2] * 3 + [3] * 6)
    y_test = np.array([0, 1, 1, 2, 2, 2, 3])
    x = y[:, None].astype(np.float32).repeat(2, 1)
    return ArrayData(x, y, y_test[:, None].astype(np.float32).repeat(2, 1), y_test, ["a", "b", "c", "d"], "syn")


def test_data_classes_and_per_class_match_a_hand_count():
    cfg = DataConfig(name="syn", val_fraction=0, classes=[2, 0])
    splits = make_splits(_synthetic(), cfg)
    # by hand: train keeps the 3 examples of class 2 (-> label 0) and the 5 of class 0 (-> label 1);
    # test keeps 3 of class 2 and 1 of class 0.
    assert splits.classes == ["c", "a"]
    assert np.bincount(splits.train.y.numpy()).tolist() == [3, 5]
    assert np.bincount(splits.test.y.numpy()).tolist() == [3, 1]
    original = {0: 2, 1: 0}
    for part in (splits.train, splits.test):
        assert all(original[int(label)] == int(x) for x, label in zip(part.x[:, 0], part.y))
    capped = make_splits(_synthetic(), DataConfig(name="syn", val_fraction=0, classes=[2, 0], per_class=4))
    assert np.bincount(capped.train.y.numpy()).tolist() == [3, 4]  # class 2 has only 3
    assert np.bincount(capped.test.y.numpy()).tolist() == [3, 1]  # per_class touches training data only


def test_classes_filter_the_full_splits_and_per_class_is_seeded_by_split_seed_only():
    full = load_splits(resolve(QUICK).data)
    five = load_splits(resolve(NEW).data)
    for part, whole in ((five.train, full.train), (five.val, full.val), (five.test, full.test)):
        counts = np.bincount(whole.y.numpy(), minlength=10)[5:]
        assert np.bincount(part.y.numpy(), minlength=5).tolist() == counts.tolist()
    assert five.classes == ["5", "6", "7", "8", "9"]

    ten = load_splits(resolve({**NEW, "data.per_class": 10}).data)
    assert np.bincount(ten.train.y.numpy()).tolist() == [10] * 5
    again = load_splits(resolve({**NEW, "data.per_class": 10, "train.seed": 7}).data)
    assert torch.equal(ten.train.x, again.train.x)
    fifty = load_splits(resolve({**NEW, "data.per_class": 50}).data)
    rows = {tuple(r) for r in fifty.train.x.reshape(len(fifty.train), -1).tolist()}
    assert all(tuple(r) in rows for r in ten.train.x.reshape(len(ten.train), -1).tolist())  # nested
    other = load_splits(resolve({**NEW, "data.per_class": 10, "data.split_seed": 1}).data)
    assert not torch.equal(ten.train.x, other.train.x)


def test_bad_class_selection_is_one_line():
    with pytest.raises(DataError, match=r"class index 12 .* 0\.\.9"):
        load_splits(resolve({"data.classes": [5, 12]}).data)
    with pytest.raises(ConfigError, match="twice"):
        load_splits(resolve({"data.classes": [5, 5]}).data)
    with pytest.raises(ConfigError, match="per_class"):
        load_splits(resolve({"data.per_class": -1}).data)


# ----------------------------------------------------------------------------- layer groups


@pytest.mark.parametrize("model, expected", [
    ({"model.name": "mlp", "model.depth": 2}, [["Flatten", "Linear", "BatchNorm1d", "ReLU"],
                                               ["Linear", "BatchNorm1d", "ReLU"], ["Linear"]]),
    ({"model.name": "cnn", "model.channels": [4, 8]}, [["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"],
                                                       ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d",
                                                        "AdaptiveAvgPool2d", "Flatten"], ["Linear"]]),
    ({"model.name": "resnet", "model.width": 4, "model.depth": 2},
     [["Conv2d"], ["PreActBlock"] * 2, ["PreActBlock"] * 2,
      ["PreActBlock", "PreActBlock", "BatchNorm2d", "ReLU", "AdaptiveAvgPool2d", "Flatten"], ["Linear"]]),
])
def test_layer_groups_follow_the_model_structure(model, expected):
    net = build_model(resolve(model), (1, 8, 8), 5)
    groups = layer_groups(net)
    assert [[type(m).__name__ for m in g] for g in groups] == expected
    assert groups[-1] == [list(net.children())[-1]]  # the head: the final Linear
    named = [n for g in group_parameters(net) for n, _ in g]
    assert sorted(named) == sorted(n for n, _ in net.named_parameters())  # every parameter, once


# ----------------------------------------------------------------------------- strategies


@pytest.mark.parametrize("classes", [[5, 6, 7], list(range(10))])
def test_head_is_rebuilt_for_another_number_of_classes(pretrained, tmp_path, classes):
    run = finetune(pretrained, {**NEW, "data.classes": classes}, out=tmp_path / "ft", quiet=True)
    head = list(run.model.net.children())[-1]
    assert head.out_features == len(classes) and run.classes == [str(c) for c in classes]
    assert _weights(pretrained)["net.7.weight"].shape == (5, 32)
    assert run.summary["pretrained"] == str(pretrained) and run.summary["strategy"] == "discriminative"  # the default


def test_linear_probe_trains_only_the_head(pretrained, tmp_path, monkeypatch):
    start = _record_start(monkeypatch)
    run = finetune(pretrained, {**NEW, "finetune.strategy": "linear_probe"}, out=tmp_path / "ft", quiet=True)
    before, after = _weights(pretrained), _weights(run.dir)
    backbone = [k for k in after if k.startswith("net.") and not k.startswith("net.7.")]
    assert backbone and all(torch.equal(after[k], before[k]) for k in backbone)  # BN buffers included
    assert all(torch.equal(after[k], before[k]) for k in after if k.startswith("preprocess."))
    assert not torch.equal(after["net.7.weight"], start["state"]["net.7.weight"])
    head = after["net.7.weight"].numel() + after["net.7.bias"].numel()
    assert run.summary["trainable_params"] == head
    assert run.summary["frozen_params"] == run.summary["params"] - head


@pytest.mark.parametrize("strategy", ["linear_probe", "full"])
def test_frozen_batch_norm_keeps_running_statistics_and_train_mode_changes_them(pretrained, tmp_path, strategy):
    stats = ("net.2.running_mean", "net.2.running_var", "net.5.running_mean", "net.5.running_var")
    before = _weights(pretrained)
    frozen = finetune(pretrained, {**NEW, "finetune.strategy": strategy}, out=tmp_path / "frozen", quiet=True)
    after = _weights(frozen.dir)
    assert all(torch.equal(after[k], before[k]) for k in stats)
    assert frozen.summary["bn"] == "frozen" and frozen.summary["bn_layers_frozen"] == 2
    # requires_grad=False (linear_probe) does not protect the statistics: with bn=train they move.
    moving = finetune(pretrained, {**NEW, "finetune.strategy": strategy, "finetune.bn": "train"},
                      out=tmp_path / "train", quiet=True)
    moved = _weights(moving.dir)
    assert all(not torch.equal(moved[k], before[k]) for k in stats)
    if strategy == "full":  # frozen BN still trains its scale and shift
        assert not torch.equal(after["net.2.weight"], before["net.2.weight"])


def test_gradual_unfreezing_adds_one_group_from_the_top_each_period(pretrained, tmp_path):
    sizes = [sum(p.numel() for _, p in g) for g in group_parameters(trainwell.load_run(pretrained).model)]
    bottom, middle, head = sizes
    run = finetune(pretrained, {**NEW, "finetune.strategy": "gradual", "train.epochs": 2},
                   out=tmp_path / "every1", quiet=True)
    assert run.summary["trainable_params_by_epoch"] == [head, head + middle]
    before, after = _weights(pretrained), _weights(run.dir)
    assert torch.equal(after["net.1.weight"], before["net.1.weight"])  # the bottom group never unfroze
    assert not torch.equal(after["net.4.weight"], before["net.4.weight"])  # the top one trained in epoch 2
    assert [g["trains_from_epoch"] for g in run.summary["layer_groups"]] == [None, 2, 1]
    slow = finetune(pretrained, {**NEW, "finetune.strategy": "gradual", "finetune.unfreeze_every": 2,
                                 "train.epochs": 5}, out=tmp_path / "every2", quiet=True)
    assert slow.summary["trainable_params_by_epoch"] == [head, head, head + middle, head + middle, sum(sizes)]


def test_discriminative_learning_rates_decay_by_group_from_the_top(pretrained):
    cfg = resolve({**NEW, "finetune.strategy": "discriminative", "finetune.lr_decay": 0.5, "optim.lr": 0.1})
    classifier = trainwell.load_run(pretrained).model
    apply_strategy(classifier, cfg)
    optimizer, _ = build_optimizer(classifier, cfg.optim)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    groups = group_parameters(classifier)
    for depth, group in enumerate(reversed(groups)):
        assert all(lr_of[id(p)] == pytest.approx(0.1 * 0.5**depth) for _, p in group)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)  # the logged lr is the head's
    schedule = build_scheduler(optimizer, cfg, steps_per_epoch=10)
    for _ in range(7):
        schedule.step()
    lrs = {round(g["lr"] / optimizer.param_groups[0]["lr"], 9) for g in optimizer.param_groups}
    assert lrs == {1.0, 0.5, 0.25}  # the schedule keeps the ratios


def test_full_fine_tuning_reloads_like_any_run_and_compares_to_scratch(pretrained, tmp_path):
    run = finetune(pretrained, {**NEW, "data.per_class": 10, "finetune.strategy": "full"}, out=tmp_path / "ft",
                   compare_scratch=True, quiet=True)
    card = json.loads((run.dir / "model.json").read_text())
    assert card["custom_model"] is False and card["model"] == "mlp"
    loaded = trainwell.load_run(run.dir)
    x = run.splits.test.x[:20].float()
    run.model.eval()
    torch.testing.assert_close(loaded.model(x), run.model.cpu()(x))
    assert trainwell.evaluate(run.dir)["test_acc"] == pytest.approx(run.summary["test_acc"])
    scratch = json.loads((run.dir / "scratch" / "summary.json").read_text())
    summary = json.loads((run.dir / "summary.json").read_text())
    assert summary["scratch_test_acc"] == scratch["test_acc"]
    assert summary["gain"] == pytest.approx(summary["test_acc"] - scratch["test_acc"])
    assert summary["n_train"] == scratch["n_train"] == 50
    assert main(["evaluate", str(run.dir), "--out", str(tmp_path / "ev")]) == 0


# ----------------------------------------------------------------------------- errors, via the CLI


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trainwell: error:") and "\n" not in err
    return err


def test_cli_errors_are_one_line(pretrained, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    assert "corrupt" in _one_line_error(capsys, ["finetune", str(bad)])
    err = _one_line_error(capsys, ["finetune", str(pretrained), "model.width=64"])
    assert "'net.1.weight' is (32, 64) pretrained but (64, 64) here" in err
    err = _one_line_error(capsys, ["finetune", str(pretrained / "model.safetensors"), "model.name=mlp",
                                   "model.width=16", "model.depth=2"])
    assert "(32, 64) pretrained but (16, 64)" in err and ".safetensors file does not record it" in err
    assert "Did you mean 'linear_probe'" in _one_line_error(
        capsys, ["finetune", str(pretrained), "finetune.strategy=linaer_probe"])
    data = tmp_path / "wide.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.normal(size=(60, 10)).astype(np.float32), y=np.arange(60) % 3)
    err = _one_line_error(capsys, ["finetune", str(pretrained), "data.name=npz", f"data.path={data}"])
    assert "shape (1, 8, 8)" in err and "(10,)" in err
    monkeypatch.setitem(sys.modules, "torchvision", None)  # absent, even where it is installed
    err = _one_line_error(capsys, ["finetune", "torchvision:resnet18"])
    assert "needs the torchvision package" in err and "never downloads" in err
    assert not list(tmp_path.glob("runs"))


def test_cli_finetune_prints_test_and_scratch_accuracy(pretrained, tmp_path, capsys):
    out = tmp_path / "ft"
    argv = ["finetune", str(pretrained), "data.classes=5,6,7,8,9", "data.per_class=10", "train.epochs=2",
            "train.progress=false", "finetune.strategy=linear_probe", "--compare-scratch", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    line = capsys.readouterr().out
    assert "test acc" in line and "scratch test acc" in line and "gain" in line
    assert (out / "scratch" / "summary.json").is_file()


def test_a_pretrained_path_that_is_nothing_is_one_config_error(tmp_path):
    """Neither a folder, a file nor a hub name: a ConfigError naming it (not a None that fails later)."""
    from trainwell.errors import RunDirError
    from trainwell.train.pretrained import load_pretrained

    with pytest.raises(ConfigError, match="neither a run directory"):
        load_pretrained(tmp_path / "no-such-run")
    with pytest.raises(RunDirError, match="do not exist"):
        load_pretrained(tmp_path / "missing.safetensors")


# ----------------------------------------------------------------------------- finetune.source: a train run that fine-tunes


def test_source_of_fills_in_the_seed_and_is_none_without_a_source():
    assert ft.source_of(resolve(["finetune.source=runs/pre/seed-{seed}", "train.seed=7"])) == "runs/pre/seed-7"
    assert ft.source_of(resolve(["finetune.source=runs/pre", "train.seed=7"])) == "runs/pre"
    assert ft.source_of(resolve([])) is None


def test_a_train_run_with_finetune_source_is_that_fine_tuning_bit_for_bit(pretrained, tmp_path):
    import shutil

    shutil.copytree(pretrained, tmp_path / "pre" / "seed-3")
    config = {**QUICK, **NEW, "data.per_class": 10, "train.seed": 3}
    run = trainwell.train({**config, "finetune.source": str(tmp_path / "pre" / "seed-{seed}")}, out=tmp_path / "a",
                          quiet=True)
    assert run.summary["pretrained"] == str(tmp_path / "pre" / "seed-3")  # the run of its own seed
    assert run.summary["transferred_tensors"] > 0 and run.summary["strategy"] == "discriminative"
    by_hand = finetune(tmp_path / "pre" / "seed-3", config, out=tmp_path / "b", quiet=True)
    assert run.summary["test_acc"] == by_hand.summary["test_acc"]
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    scratch = trainwell.train(config, out=tmp_path / "c", quiet=True)  # the same config without the source
    assert "pretrained" not in scratch.summary
    c = _weights(tmp_path / "c")
    assert c.keys() == a.keys() and not all(torch.equal(c[k], a[k]) for k in a)
    assert "finetune:\n  source: " + str(tmp_path / "pre" / "seed-{seed}") in (tmp_path / "a" / "config.yaml").read_text()


def test_finetune_source_errors_are_one_line(pretrained, tmp_path):
    from trainwell.runs.train import train as train_from_scratch

    with pytest.raises(ConfigError, match="does not do"):  # never a silent training from scratch
        train_from_scratch({**QUICK, "finetune.source": str(pretrained)}, out=tmp_path / "a", quiet=True)
    with pytest.raises(ConfigError, match="name the pretrained model once"):
        finetune(pretrained, {**NEW, "finetune.source": str(tmp_path / "other")}, out=tmp_path / "b", quiet=True)
    with pytest.raises(ConfigError, match="drop model="):
        trainwell.train({**QUICK, "finetune.source": str(pretrained)}, model=nn.Linear(64, 10), quiet=True)
    with pytest.raises(ConfigError, match="neither a run directory"):
        trainwell.train({**QUICK, "finetune.source": str(tmp_path / "missing")}, out=tmp_path / "c", quiet=True)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
