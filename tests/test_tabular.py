"""Tabular data by default: model.name=auto becomes the mlp for a CSV (the cnn for images and signals), once,
recorded in config.yaml; predict reads CSV rows by the training columns."""

from __future__ import annotations

import io

import numpy as np
import pytest
import yaml
from rich.console import Console

import trainwell
from trainwell.config import resolve
from trainwell.data import load_splits
from trainwell.errors import ConfigError, DataError
from trainwell.train.build import model_tag, resolve_model_name

FAST = {"train.epochs": 2, "train.progress": False, "model.width": 16, "train.plots": False}


def _write_csv(path, header, rows):
    path.write_text(",".join(header) + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return path


@pytest.fixture
def table(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 3)).round(4)
    y = np.where(x[:, 0] - x[:, 2] > 0, "up", "down")
    rows = [[a, b, label, c] for (a, b, c), label in zip(x, y)]  # the label column in the middle
    return _write_csv(tmp_path / "t.csv", ["a", "b", "label", "c"], rows), x


def test_model_name_defaults_to_auto_and_a_chosen_name_stays():
    assert resolve([]).model.name == "auto"
    assert resolve(["preset=tabular"]).model.name == "mlp"
    assert resolve(["preset=mnist1d"]).model.name == "cnn"
    assert resolve(["model.name=resnet"]).model.name == "resnet"


@pytest.mark.parametrize("overrides,name", [([], "cnn"), (["data.name=mnist1d"], "cnn"),
                                            (["model.name=mlp"], "mlp")])
def test_auto_is_the_cnn_for_images_and_signals(overrides, name):
    cfg = resolve(overrides)
    assert resolve_model_name(cfg, load_splits(cfg.data)).model.name == name
    assert model_tag(cfg) == name


def test_a_csv_trains_with_the_default_model_and_the_run_records_the_mlp(table, tmp_path):
    path, _ = table
    out = io.StringIO()
    run = trainwell.train({"data.name": "csv", "data.path": str(path), **FAST}, out=tmp_path / "r",
                          console=Console(file=out, width=200))
    assert "model.name=mlp: chosen for tabular data of shape (3,)" in out.getvalue()
    assert yaml.safe_load((run.dir / "config.yaml").read_text())["model"]["name"] == "mlp"
    assert trainwell.load_run(run.dir).config.model.name == "mlp"
    assert trainwell.evaluate(run.dir)["test_acc"] == run.summary["test_acc"]  # it reloads as it trained
    chosen = io.StringIO()
    trainwell.train({"data.name": "csv", "data.path": str(path), "preset": "tabular", **FAST}, out=tmp_path / "p",
                    console=Console(file=chosen, width=200))
    assert "model.name=auto" not in chosen.getvalue()  # chosen by the preset: nothing to say
    with pytest.raises(ConfigError, match="cnn"):  # chosen by the user: not second-guessed
        trainwell.train({"data.name": "csv", "data.path": str(path), "model.name": "cnn", **FAST},
                        out=tmp_path / "c", quiet=True)


def test_predict_reads_csv_rows_by_the_training_columns(table, tmp_path):
    path, x = table
    run = trainwell.train({"data.name": "csv", "data.path": str(path), **FAST}, out=tmp_path / "r", quiet=True)
    assert trainwell.load_run(run.dir).config.data.label_column == "label"
    import json

    assert json.loads((run.dir / "model.json").read_text())["columns"] == ["a", "b", "c"]
    # Another order, no label column: the same predictions as the same rows as an array.
    rows = _write_csv(tmp_path / "new.csv", ["c", "a", "b"], [[c, a, b] for a, b, c in x[:5]])
    np.save(tmp_path / "new.npy", x[:5].astype(np.float32))
    by_csv = trainwell.predict(run.dir, [rows], device="cpu")
    by_npy = trainwell.predict(run.dir, [tmp_path / "new.npy"], device="cpu")
    assert len(by_csv) == 5 and [r["probabilities"] for r in by_csv] == [r["probabilities"] for r in by_npy]
    assert by_csv[0]["input"] == f"{rows}[0]"
    # The training file itself: its label column is ignored, one prediction per row.
    assert len(trainwell.predict(run.dir, [path], device="cpu")) == 240


@pytest.mark.parametrize("header,match", [
    (["a", "b"], r"lacks the training column\(s\) c; the run reads the columns a, b, c"),
    (["a", "b", "c", "d"], r"has column\(s\) the run was not trained on: d"),
    (["a", "a", "c"], "names column 'a' twice"),
])
def test_mismatched_csv_columns_are_one_line(table, tmp_path, header, match):
    path, _ = table
    run = trainwell.train({"data.name": "csv", "data.path": str(path), **FAST}, out=tmp_path / "r", quiet=True)
    bad = _write_csv(tmp_path / "bad.csv", header, [[1] * len(header)])
    with pytest.raises(DataError, match=match) as err:
        trainwell.predict(run.dir, [bad], device="cpu")
    assert "\n" not in str(err.value)


def test_a_csv_for_an_image_run_is_refused(tmp_path):
    run = trainwell.train({"data.limit": 200, **FAST, "model.channels": [4]}, out=tmp_path / "r", quiet=True)
    csv = _write_csv(tmp_path / "x.csv", ["a"], [[1]])
    with pytest.raises(DataError, match="neither a .npy/.npz array nor an image"):
        trainwell.predict(run.dir, [csv], device="cpu")
