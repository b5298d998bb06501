"""End-to-end CLI tests in subprocesses on tiny data: every command, every data source, bad input."""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

FAST = ["train.epochs=2", "train.progress=false", "model.name=mlp", "model.width=32", "model.depth=1"]


def run_cli(*args: str, cwd: Path | None = None, check: bool | None = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", TRAINWELL_CACHE=os.environ.get("TRAINWELL_CACHE", ""))
    if not env["TRAINWELL_CACHE"]:
        env.pop("TRAINWELL_CACHE")
    proc = subprocess.run([sys.executable, "-m", "trainwell", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)
    if check is True and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def assert_clean_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, one line on stderr starting with 'trainwell: error:', no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("trainwell: error:"), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# ----------------------------------------------------------------------------- tiny data files


def write_npz_images(path: Path, n: int = 60, classes: int = 3, seed: int = 0) -> Path:
    """Class k has a bright square at position k: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.integers(0, 40, size=(n, 1, 8, 8)).astype(np.uint8)
    for i, k in enumerate(y):
        x[i, 0, 2 * k : 2 * k + 2, 1:7] = 250
    np.savez(path, x=x, y=y)
    return path


def write_idx_folder(folder: Path, n: int = 40, gz: bool = True, dotted: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    sep = "." if dotted else "-"
    for prefix, count in (("train", n), ("t10k", n // 2)):
        images = rng.integers(0, 255, size=(count, 28, 28), dtype=np.uint8)
        labels = (np.arange(count) % 10).astype(np.uint8)
        blobs = {
            f"{prefix}-images{sep}idx3-ubyte": struct.pack(">IIII", 0x803, count, 28, 28) + images.tobytes(),
            f"{prefix}-labels{sep}idx1-ubyte": struct.pack(">II", 0x801, count) + labels.tobytes(),
        }
        for name, blob in blobs.items():
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(blob))
            else:
                (folder / name).write_bytes(blob)
    return folder


def write_cifar_folder(folder: Path, n: int = 20) -> Path:
    import pickle

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 255, size=(n, 3072), dtype=np.uint8),
                 b"labels": list(map(int, np.arange(n) % 10))}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, fh)
    return folder


def write_image_folder(folder: Path, per_class: int = 6) -> Path:
    from PIL import Image

    rng = np.random.default_rng(3)
    for k, name in enumerate(["cat", "dog"]):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 60, size=(12, 12, 3), dtype=np.uint8) + 150 * k
            Image.fromarray(arr.astype(np.uint8)).save(folder / name / f"{i}.png")
    return folder


def write_csv(path: Path, n: int = 60) -> Path:
    rng = np.random.default_rng(4)
    rows = ["f1,f2,f3,label"]
    for i in range(n):
        label = ["setosa", "virginica"][i % 2]
        base = 3.0 if i % 2 else -3.0
        rows.append(",".join(f"{base + v:.3f}" for v in rng.normal(size=3)) + f",{label}")
    path.write_text("\n".join(rows) + "\n")
    return path


# ----------------------------------------------------------------------------- train / evaluate / predict


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    data = write_npz_images(root / "tiny.npz")
    out = root / "run"
    run_cli("train", "data.name=npz", f"data.path={data}", *FAST, "train.epochs=8", "optim.lr=0.05",
            "--out", str(out))
    return out


def test_train_writes_a_complete_run_directory(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.yaml", "model.json", "model.safetensors", "metrics.jsonl", "summary.json", "curves.png"} <= names
    summary = json.loads((trained_run / "summary.json").read_text())
    for key in ("test_acc", "test_loss", "best_val_acc", "epochs", "params", "train_seconds", "examples_per_second"):
        assert key in summary, key
    assert summary["epochs"] == 8
    metrics = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == list(range(1, 9))
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["train"]["epochs"] == 8 and config["data"]["name"] == "npz"
    assert not any(p.name.endswith(".tmp") for p in trained_run.iterdir())


def test_trained_run_learns_the_tiny_task(trained_run):
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["test_acc"] >= 0.9


def test_evaluate_reproduces_the_training_test_accuracy(trained_run, tmp_path):
    out = tmp_path / "eval"
    proc = run_cli("evaluate", str(trained_run), "--out", str(out), "--json")
    summary = json.loads((out / "summary.json").read_text())
    train_summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["test_acc"] == pytest.approx(train_summary["test_acc"])
    assert summary["test_loss"] == pytest.approx(train_summary["test_loss"], rel=1e-5)
    assert np.array(summary["confusion"]).sum() == summary["n"]
    assert json.loads(proc.stdout)["test_acc"] == summary["test_acc"]


def test_predict_returns_classes_and_probabilities(trained_run, tmp_path):
    x = np.load(trained_run.parent / "tiny.npz")["x"][:4]
    np.savez(tmp_path / "batch.npz", x=x)
    out = tmp_path / "pred"
    proc = run_cli("predict", str(trained_run), str(tmp_path / "batch.npz"), "--out", str(out))
    rows = json.loads(proc.stdout)
    assert len(rows) == 4
    for row in rows:
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert row["probability"] == max(row["probabilities"].values())
    assert json.loads((out / "predictions.json").read_text()) == rows
    assert (out / "summary.json").is_file()


def test_predict_on_an_image_file(trained_run, tmp_path):
    from PIL import Image

    x = np.load(trained_run.parent / "tiny.npz")["x"][0, 0]
    Image.fromarray(x).save(tmp_path / "one.png")
    rows = json.loads(run_cli("predict", str(trained_run), str(tmp_path / "one.png"),
                              "--out", str(tmp_path / "p")).stdout)
    assert len(rows) == 1 and rows[0]["input"].endswith("one.png")


def test_predicting_png_files_equals_predicting_the_same_pixels_from_an_npz(trained_run, tmp_path):
    from PIL import Image

    import trainwell

    x = np.load(trained_run.parent / "tiny.npz")["x"][:6]  # (6, 1, 8, 8) uint8, not symmetric
    pngs = []
    for i, image in enumerate(x):
        pngs.append(tmp_path / f"{i}.png")
        Image.fromarray(image[0]).save(pngs[-1])
    np.savez(tmp_path / "same.npz", x=x)
    from_png = trainwell.predict(trained_run, pngs, device="cpu")
    from_npz = trainwell.predict(trained_run, [tmp_path / "same.npz"], device="cpu")
    assert [r["class"] for r in from_png] == [r["class"] for r in from_npz]
    for a, b in zip(from_png, from_npz):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-6)
    assert len({r["class"] for r in from_npz}) > 1  # the images are told apart, so a mix-up would show


def test_existing_run_directory_is_not_overwritten(trained_run):
    before = (trained_run / "summary.json").read_bytes()
    proc = run_cli("train", *FAST, "--out", str(trained_run), check=False)
    assert_clean_error(proc, "already exists", "--overwrite")
    assert (trained_run / "summary.json").read_bytes() == before


def test_overwrite_replaces_an_existing_run(tmp_path):
    data = write_npz_images(tmp_path / "d.npz")
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    run_cli("train", "data.name=npz", f"data.path={data}", *FAST, "--out", str(out), "--overwrite")
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2


# ----------------------------------------------------------------------------- every data source


@pytest.mark.parametrize("source", ["digits", "mnist1d", "idx", "idx-raw-dotted", "cifar", "folder", "npz", "csv"])
def test_every_data_source_trains_end_to_end(source, tmp_path):
    args = {
        "digits": ["data.name=digits", "data.limit=200"],
        "mnist1d": ["data.name=mnist1d", "data.limit=200"],
        "idx": ["data.name=idx", f"data.path={write_idx_folder(tmp_path / 'idx')}"],
        "idx-raw-dotted": ["data.name=idx", f"data.path={write_idx_folder(tmp_path / 'idx2', gz=False, dotted=True)}"],
        "cifar": ["data.name=cifar", f"data.path={write_cifar_folder(tmp_path / 'cifar')}"],
        "folder": ["data.name=folder", f"data.path={write_image_folder(tmp_path / 'imgs')}"],
        "npz": ["data.name=npz", f"data.path={write_npz_images(tmp_path / 'd.npz')}"],
        "csv": ["data.name=csv", f"data.path={write_csv(tmp_path / 'd.csv')}"],
    }[source]
    out = tmp_path / "run"
    run_cli("train", *args, *FAST, "--out", str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["test_acc"] <= 1.0 and summary["epochs"] == 2


@pytest.mark.parametrize("model", ["mlp", "cnn", "resnet"])
def test_every_model_trains_from_the_cli(model, tmp_path):
    data = write_npz_images(tmp_path / "d.npz")
    out = tmp_path / model
    run_cli("train", "data.name=npz", f"data.path={data}", f"model.name={model}", "model.channels=4,8",
            "model.width=4", *FAST[:2], "--out", str(out))
    assert run_cli("evaluate", str(out), "--out", str(tmp_path / f"{model}-eval")).returncode == 0


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["model.name=transformer"], ["unknown model", "mlp"]),
        (["data.name=imagenet"], ["unknown data", "digits"]),
        (["optim.lrr=0.1"], ["optim.lr"]),
        (["train.epochs=abc"], ["train.epochs"]),
        (["data.name=npz", "data.path=/nonexistent/file.npz"], ["/nonexistent/file.npz"]),
        (["data.name=idx", "data.path=/nonexistent"], ["/nonexistent"]),
        (["optim.lr=-1"], ["optim.lr"]),
        (["augment=rotatoin"], ["rotation"]),
        (["augment=rotation:degrees=-5"], ["degrees"]),
        (["sched.warmup_epochs=5"], ["warmup"]),
        (["optim.name=adam", "optim.betas=2,3"], ["optim.betas"]),
        (["train.device=cuda:7"] if not __import__("torch").cuda.is_available() else ["train.device=tpu"], ["device"]),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(args, fragments, tmp_path):
    out = tmp_path / "never"
    proc = run_cli("train", *FAST, *args, "--out", str(out), check=False)  # later keys win: args last
    assert_clean_error(proc, *fragments)
    assert not out.exists()


def test_corrupt_and_truncated_files_are_clean_errors(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 this is not a zip")
    assert_clean_error(run_cli("train", "data.name=npz", f"data.path={bad}", *FAST, check=False), str(bad))
    idx = write_idx_folder(tmp_path / "idx", gz=False)
    images = idx / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    assert_clean_error(run_cli("train", "data.name=idx", f"data.path={idx}", *FAST, check=False), "train-images")


def test_nan_and_out_of_range_labels_are_clean_errors(tmp_path):
    x = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    x[3, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.arange(30) % 2)
    assert_clean_error(run_cli("train", "data.name=npz", f"data.path={tmp_path / 'nan.npz'}", *FAST, check=False),
                       "NaN")
    np.savez(tmp_path / "neg.npz", x=np.nan_to_num(x), y=np.arange(30) % 2 - 1)
    assert_clean_error(run_cli("train", "data.name=npz", f"data.path={tmp_path / 'neg.npz'}", *FAST, check=False),
                       "label")


def test_empty_split_is_a_clean_error(tmp_path):
    np.savez(tmp_path / "few.npz", x=np.zeros((2, 2), np.float32), y=np.array([0, 1]))
    proc = run_cli("train", "data.name=npz", f"data.path={tmp_path / 'few.npz'}", *FAST,
                   "--out", str(tmp_path / "never"), check=False)
    assert_clean_error(proc, "empty")
    assert not (tmp_path / "never").exists()


def test_evaluate_and_predict_reject_bad_run_dirs(tmp_path, trained_run):
    assert_clean_error(run_cli("evaluate", str(tmp_path / "nope"), check=False), "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_clean_error(run_cli("evaluate", str(empty), check=False), "model.json")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("model.json", "config.yaml", "summary.json"):  # finished, but its weights are truncated
        (broken / name).write_bytes((trained_run / name).read_bytes())
    (broken / "model.safetensors").write_bytes((trained_run / "model.safetensors").read_bytes()[:50])
    assert_clean_error(run_cli("evaluate", str(broken), check=False), "corrupt")
    proc = run_cli("predict", str(trained_run), str(tmp_path / "missing.npz"), check=False)
    assert_clean_error(proc, "missing.npz")
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((2, 5), np.float32))
    assert_clean_error(run_cli("predict", str(trained_run), str(wrong), check=False), "shape")


def test_evaluate_rejects_labels_the_model_does_not_know(trained_run, tmp_path):
    x = np.load(trained_run.parent / "tiny.npz")["x"]
    np.savez(tmp_path / "more.npz", x=x, y=np.arange(len(x)) % 5)
    proc = run_cli("evaluate", str(trained_run), "data.name=npz", f"data.path={tmp_path / 'more.npz'}", check=False)
    assert_clean_error(proc, "out of range")


# ----------------------------------------------------------------------------- list / print-config


def test_list_shows_every_registry_with_docs():
    out = run_cli("list").stdout
    for kind in ("data", "model", "activation", "init", "optim", "sched", "preprocess", "preset"):
        assert kind in out
    for name in ("digits", "mnist1d", "idx", "cifar", "folder", "npz", "csv", "mlp", "cnn", "resnet", "cosine"):
        assert name in out
    assert_clean_error(run_cli("list", "modle", check=False), "model")


def test_print_config_shows_the_resolved_config():
    out = run_cli("train", "preset=mnist1d", "optim.lr=0.123", "--print-config").stdout
    cfg = yaml.safe_load(out)
    assert cfg["optim"]["lr"] == 0.123 and cfg["data"]["name"] == "mnist1d" and cfg["preset"] == "mnist1d"


def test_print_keys_lists_every_key():
    out = run_cli("train", "--print-keys").stdout
    assert "optim.lr" in out and "loss.label_smoothing" in out


def test_show_param_groups_with_resume_is_a_clean_error(tmp_path):
    proc = run_cli("train", "--resume", str(tmp_path / "run"), "--show-param-groups", check=False)
    assert_clean_error(proc, "--show-param-groups", "--resume")


def test_show_param_groups_lists_decayed_and_exempt_tensors():
    out = run_cli("train", "model.name=mlp", "model.norm=batch", "reg.l1=0.001", "--show-param-groups").stdout
    rows = [[cell.strip() for cell in line.strip("│ ").split("│")] for line in out.splitlines()
            if "weight" in line or "bias" in line]
    rows = [r for r in rows if len(r) == 7]  # name, shape, numel, group, weight_decay, l1, l2
    decayed = [r for r in rows if r[3] == "decay"]
    exempt = [r for r in rows if r[3] == "no_decay"]
    assert [r[0] for r in decayed] == ["1.weight", "4.weight", "7.weight"]
    assert all(r[5] == "0.001" for r in decayed) and all(r[5] == "0" and r[4] == "0" for r in exempt)
    # batch-norm scales/shifts (layers 2 and 5) and the head's bias
    assert sorted(r[0] for r in exempt) == ["2.bias", "2.weight", "5.bias", "5.weight", "7.bias"]


def test_doctor_command_flags_a_tiny_init_deep_net(tmp_path):
    out = tmp_path / "doc"
    proc = run_cli("doctor", "model.name=mlp", "model.norm=none", "model.depth=6", "model.width=64",
                   "init.scheme=normal", "init.std=0.01", "--json", "--out", str(out))
    report = json.loads(proc.stdout)
    codes = {f["code"] for f in report["findings"]}
    assert "vanishing-activations" in codes
    assert all({"code", "severity", "layers", "evidence", "fix"} <= set(f) for f in report["findings"])
    assert (out / "histograms.png").is_file()
    assert json.loads((out / "summary.json").read_text())["findings"] == report["findings"]


def test_train_with_doctor_writes_findings_into_the_summary(tmp_path):
    out = tmp_path / "run"
    run_cli("train", *FAST, "data.limit=300", "doctor=true", "--out", str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert "findings" in summary["doctor"] and (out / "doctor.json").is_file()
    assert (out / "doctor_fractions.png").stat().st_size > 0  # dead/saturated units per epoch
