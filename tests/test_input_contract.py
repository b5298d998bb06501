"""The input contract (issue 11, item 7): a run records what its training inputs looked like, and
evaluate / predict / finetune warn when new data is on another scale instead of answering 10%.

The contract module is imported inside each test (``_cx()``), so that without it every test fails
on its own rather than the file failing to import.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import datasets as skd

from trainwell.cli import main
from trainwell.config import DataConfig
from trainwell.data import ArrayData, load_splits, make_splits
from trainwell.errors import DataError


def _cx():
    return importlib.import_module("trainwell.train.contract")


def _warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("warning:")]


# ----------------------------------------------------------------------------- the datasets


def _tabular(loader, standardise: bool) -> ArrayData:
    bunch = loader()
    x = bunch.data.astype(np.float32)
    if standardise:
        x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1)
    return ArrayData(x=x, y=bunch.target, x_test=None, y_test=None,
                     classes=[str(c) for c in np.unique(bunch.target)], description="tabular")


def _mnist1d() -> ArrayData:
    from trainwell.data.sources import MNIST1D_ARGS, generate_mnist1d

    raw = generate_mnist1d(dict(MNIST1D_ARGS, num_samples=1200))  # the bundled generator, fewer samples
    return ArrayData(x=raw["x"], y=raw["y"], x_test=raw["x_test"], y_test=raw["y_test"],
                     classes=[str(i) for i in range(10)], description="mnist1d")


SOURCES = {
    "digits": lambda: None,
    "mnist1d": _mnist1d,
    "breast_cancer": lambda: _tabular(skd.load_breast_cancer, False),
    "breast_cancer-standardised": lambda: _tabular(skd.load_breast_cancer, True),
    "iris": lambda: _tabular(skd.load_iris, False),
    "iris-standardised": lambda: _tabular(skd.load_iris, True),
    "wine": lambda: _tabular(skd.load_wine, False),
    "wine-standardised": lambda: _tabular(skd.load_wine, True),
}


@pytest.fixture(scope="module", params=sorted(SOURCES))
def dataset(request):
    """(name, splits, the same data split another way) for each bundled source."""
    name = request.param
    if name == "digits":
        return name, load_splits(DataConfig(name="digits")), load_splits(DataConfig(name="digits", split_seed=5, val_fraction=0.3))
    data = SOURCES[name]()
    return (name, make_splits(data, DataConfig(name="npz", test_fraction=0.2, val_fraction=0.1)),
            make_splits(data, DataConfig(name="npz", test_fraction=0.3, val_fraction=0.2, split_seed=7)))


# ----------------------------------------------------------------------------- input_contract


def test_contract_records_dtype_shape_and_statistics_per_channel():
    cx = _cx()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 3, 4, 5), dtype=np.uint8)
    x[:, 1] //= 4  # channel 1 on another scale
    c = cx.input_contract(torch.from_numpy(x))
    assert c["dtype"] == "uint8" and c["shape"] == [3, 4, 5] and c["divisor"] == 255.0 and c["n"] == 50
    assert c["per"] == "channel" and len(c["stats"]) == 3
    for ch, s in enumerate(c["stats"]):
        v = x[:, ch].astype(np.float64)
        assert (s["min"], s["max"]) == (v.min(), v.max())
        assert s["mean"] == pytest.approx(v.mean()) and s["std"] == pytest.approx(v.std())
        per_example = v.reshape(50, -1).std(1)
        assert per_example.min() <= s["example_std"][0] <= s["example_std"][1] <= per_example.max()
    assert json.loads(json.dumps(c)) == c  # plain JSON for model.json

    f = rng.normal(3.0, 2.0, size=(40, 6)).astype(np.float32)
    v = cx.input_contract(f)
    assert v["per"] == "all" and len(v["stats"]) == 1 and v["dtype"] == "float32" and v["divisor"] == 1.0
    assert v["stats"][0]["mean"] == pytest.approx(f.astype(np.float64).mean())


def test_contract_is_a_cheap_deterministic_subsample_that_draws_no_random_number():
    cx = _cx()
    x = torch.arange(5000 * 4, dtype=torch.float32).reshape(5000, 4)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    a, b = cx.input_contract(x), cx.input_contract(x.clone())
    assert torch.equal(torch_state, torch.get_rng_state())  # the global streams training draws from
    assert all(np.array_equal(p, q) for p, q in zip(np_state, np.random.get_state()))
    assert a == b and a["n"] == 5000 and a["sampled"] == cx.MAX_EXAMPLES < 5000
    assert a["stats"][0]["min"] == 0 and a["stats"][0]["max"] == 5000 * 4 - 1  # first and last example kept


def test_model_card_records_the_contract_of_the_stored_training_split(dataset):
    from trainwell.config import Config
    from trainwell.train.build import model_card

    name, splits, _ = dataset
    card = model_card(splits, Config(), custom=False)
    assert card["inputs"] == _cx().input_contract(splits.train.x)
    assert card["inputs"]["shape"] == list(splits.input_shape) and card["inputs"]["n"] == len(splits.train)


# ----------------------------------------------------------------------------- never on the run's own data


def _batches(x: np.ndarray, size: int, limit: int = 60) -> list[np.ndarray]:
    return [x[i : i + size] for i in range(0, min(len(x), size * limit) - size + 1, size)]


def test_the_runs_own_data_never_warns(dataset):
    """Training, validation and test splits, another split_seed's, every single example and
    consecutive batches (class-ordered sources make batches of one class) of them: no warning."""
    cx = _cx()
    name, splits, other = dataset
    contract = cx.input_contract(splits.train.x)
    parts = {"train": splits.train.x, "val": splits.val.x, "test": splits.test.x,
             "other test": other.test.x, "other val": other.val.x, "other train": other.train.x}
    for part, x in parts.items():
        x = x.numpy()
        assert cx.check_inputs(contract, x, part) == [], (name, part)
        for size in (1, 2, 5, 16, 17):
            warned = [w for b in _batches(x, size) for w in cx.check_inputs(contract, b, part)]
            assert not warned, (name, part, size, warned[:1])


def test_harmless_dtype_differences_do_not_warn():
    """float64 / int features for a float32 run; [0, 1] float images for a uint8 run (to_float turns
    both into the same inputs); uint8 batches for a run trained on float [0, 1] images."""
    cx = _cx()
    splits = load_splits(DataConfig(name="digits"))
    images = splits.test.x.numpy()
    contract = cx.input_contract(splits.train.x)
    assert cx.check_inputs(contract, images.astype(np.float32) / 255, "x") == []
    assert cx.check_inputs(contract, images.astype(np.float64) / 255, "x") == []
    assert cx.check_inputs(cx.input_contract(splits.train.x.float() / 255), images, "x") == []
    data = _tabular(skd.load_wine, False)
    tab = make_splits(data, DataConfig(name="npz", test_fraction=0.2))
    contract = cx.input_contract(tab.train.x)
    assert cx.check_inputs(contract, tab.test.x.numpy().astype(np.float64), "x") == []
    assert cx.check_inputs(contract, np.round(tab.test.x.numpy()).astype(np.int64), "x") == []


# ----------------------------------------------------------------------------- always on rescaled data


@pytest.mark.parametrize("factor", [1 / 1000, 1 / 255, 1 / 16, 16, 255, 1000])
def test_rescaled_data_always_warns_with_the_numbers(dataset, factor):
    cx = _cx()
    name, splits, _ = dataset
    contract = cx.input_contract(splits.train.x)
    x = splits.test.x.numpy()
    scaled = x.astype(np.float64) * factor / (255 if x.dtype == np.uint8 else 1)  # float, in the model's units
    if x.dtype == np.uint8 and factor == 1 / 16:
        scaled = np.round(x * factor).astype(np.uint8)  # counts 0..16 stored as uint8
    warnings = cx.check_inputs(contract, scaled, "data.path 'new.npz'", run="runs/r")
    assert len(warnings) == 1, (name, factor)
    line = warnings[0]
    assert line.startswith("data.path 'new.npz': ") and re.search("but run 'runs/r' was trained on (uint8 )?values", line)
    assert f"–{cx._num(float(scaled.max()))} (mean" in line and f"–{cx._num(float(splits.train.x.max()))} (mean" in line
    assert re.search(r"; scale them the same way \((about )?x[*/][\d.]+(/\d+)? here(, stored as uint8)?\) or retrain$", line) \
        or line.endswith("store them as uint8 or divide them by 255"), line
    # One example at a time: images and signals always. A table's rows differ in scale by 20x among
    # themselves (breast_cancer), so one row only tells 255x or 1000x, and a shrunken one only
    # from at least MIN_VALUES features (iris has 4).
    tabular = x.ndim == 2
    if not tabular or (max(factor, 1 / factor) >= 255 and (factor > 1 or x.shape[1] >= cx.MIN_VALUES)):
        missed = [i for i in range(0, len(scaled), 7) if not cx.check_inputs(contract, scaled[i : i + 1], "x")]
        assert not missed, (name, factor, missed[:5])


def test_counts_0_to_16_get_the_exact_fix():
    cx = _cx()
    splits = load_splits(DataConfig(name="digits"))
    contract = cx.input_contract(splits.train.x)
    counts = skd.load_digits().images[:, None].astype("uint8")  # the obvious export: values 0..16
    (line,) = cx.check_inputs(contract, counts, "data.path 'o.npz'", run="runs/cnn")
    mean = cx._num(float(splits.train.x.double().mean()), 2)
    assert line == (f"data.path 'o.npz': values 0–16 (mean {counts.mean():.1f}), but run 'runs/cnn' was trained on "
                    f"values 0–255 (mean {mean}); scale them the same way (x*255/16 here, stored as uint8) or retrain")


def test_float_pixels_0_to_255_for_a_uint8_run_name_the_dtype():
    cx = _cx()
    splits = load_splits(DataConfig(name="digits"))
    (line,) = cx.check_inputs(cx.input_contract(splits.train.x), splits.test.x.numpy().astype(np.float32), "x")
    assert "float32 values 0–255" in line and "trained on uint8 values 0–255" in line
    assert "store them as uint8 or divide them by 255" in line


def test_unit_scaled_features_for_a_run_on_0_255_features_warn():
    cx = _cx()
    bunch = skd.load_digits()
    data = ArrayData(x=(bunch.data * 255 / 16).astype(np.float32), y=bunch.target, x_test=None, y_test=None,
                     classes=[str(i) for i in range(10)], description="digits as 64 features")
    splits = make_splits(data, DataConfig(name="npz", test_fraction=0.2))
    contract = cx.input_contract(splits.train.x)
    (line,) = cx.check_inputs(contract, splits.test.x.numpy() / 255, "x")
    assert "values 0–1 (mean" in line and "trained on values 0–255" in line and "(x*255 here)" in line


def test_standardised_against_raw_breast_cancer_warns():
    cx = _cx()
    raw = make_splits(_tabular(skd.load_breast_cancer, False), DataConfig(name="npz", test_fraction=0.2))
    std = make_splits(_tabular(skd.load_breast_cancer, True), DataConfig(name="npz", test_fraction=0.2))
    assert cx.check_inputs(cx.input_contract(raw.train.x), std.test.x, "x")
    assert cx.check_inputs(cx.input_contract(std.train.x), raw.test.x, "x")


# ----------------------------------------------------------------------------- errors and old runs


def test_wrong_shape_or_a_dtype_that_cannot_be_meant_is_an_error():
    cx = _cx()
    contract = cx.input_contract(np.zeros((4, 1, 8, 8), dtype=np.uint8) + np.arange(4, dtype=np.uint8)[:, None, None, None])
    with pytest.raises(DataError, match=r"^data.path 'o.npz': examples of shape \(1, 28, 28\), but run 'r' was trained "
                                        r"on examples of shape \(1, 8, 8\); .*retrain\.$"):
        cx.check_inputs(contract, np.zeros((3, 1, 28, 28), dtype=np.uint8), "data.path 'o.npz'", run="r")
    with pytest.raises(DataError, match="shape"):
        cx.check_inputs(contract, np.zeros((3, 64), dtype=np.uint8), "x")
    for bad in (np.zeros((3, 1, 8, 8), dtype=np.complex64), np.full((3, 1, 8, 8), "a"), np.empty((3, 1, 8, 8), dtype=object),
                torch.zeros((3, 1, 8, 8), dtype=torch.complex64)):
        with pytest.raises(DataError, match=r"^x: examples of dtype .*, but the run takes numbers \(uint8\); convert"):
            cx.check_inputs(contract, bad, "x")


def test_a_run_without_a_contract_is_not_checked(tmp_path):
    cx = _cx()
    assert cx.check_inputs(None, np.zeros((3, 1, 8, 8), dtype=np.complex64), "x") == []
    assert cx.check_inputs({"version": 99}, np.zeros((3, 5)), "x") == []
    (tmp_path / "model.json").write_text(json.dumps({"format": "trainwell-model", "format_version": 1}))
    assert cx.read_contract(tmp_path) is None


# ----------------------------------------------------------------------------- end to end, through the CLI


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A digits run (mlp, 1 epoch) and npz exports of scikit-learn's digits: counts 0..16 and pixels 0..255."""
    import trainwell

    root = tmp_path_factory.mktemp("contract")
    run = trainwell.train({"model.name": "mlp", "model.width": 32, "train.epochs": 1, "train.progress": False},
                          out=root / "run", quiet=True)
    d = skd.load_digits()
    np.savez(root / "o.npz", x=d.images[:, None].astype("uint8"), y=d.target)
    np.savez(root / "ok.npz", x=np.round(d.images[:, None] * 255 / 16).astype("uint8"), y=d.target)
    return Path(run.dir)


def test_evaluate_on_counts_0_to_16_warns_on_stderr_and_exits_0(run_dir, capsys):
    """The bug: sklearn's digits exported the obvious way scored ~10% without a word."""
    o = run_dir.parent / "o.npz"
    rc = main(["evaluate", str(run_dir), "data.name=npz", f"data.path={o}", "--out", str(run_dir.parent / "ev-o")])
    out, err = capsys.readouterr()
    assert rc == 0 and "test acc" in out
    (line,) = _warnings(err)
    test = load_splits(DataConfig(name="npz", path=str(o))).test.x.double()
    train_mean = round(float(load_splits(DataConfig(name="digits")).train.x.double().mean()))
    assert line == (f"warning: data.path '{o}': values 0–16 (mean {float(test.mean()):.1f}), but run '{run_dir}' was "
                    f"trained on values 0–255 (mean {train_mean}); scale them the same way (x*255/16 here, stored as "
                    "uint8) or retrain")


def test_evaluate_on_its_own_data_or_a_faithful_export_passes_the_recorded_contract(run_dir, capsys):
    contract = json.loads((run_dir / "model.json").read_text())["inputs"]
    assert contract["dtype"] == "uint8" and contract["shape"] == [1, 8, 8] and contract["stats"][0]["max"] == 255
    assert main(["evaluate", str(run_dir), "--out", str(run_dir.parent / "ev-own")]) == 0
    ok = run_dir.parent / "ok.npz"
    assert main(["evaluate", str(run_dir), "data.name=npz", f"data.path={ok}", "--out", str(run_dir.parent / "ev-ok")]) == 0
    assert main(["evaluate", str(run_dir), "data.split_seed=3", "--out", str(run_dir.parent / "ev-seed")]) == 0
    assert _warnings(capsys.readouterr().err) == []


def test_evaluate_skips_a_run_recorded_without_a_contract(run_dir, tmp_path, capsys):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    card = json.loads((old / "model.json").read_text())
    del card["inputs"]
    (old / "model.json").write_text(json.dumps(card))
    o = run_dir.parent / "o.npz"
    assert main(["evaluate", str(old), "data.name=npz", f"data.path={o}", "--out", str(tmp_path / "ev")]) == 0
    assert _warnings(capsys.readouterr().err) == []


def test_predict_warns_per_file_that_is_off(run_dir, tmp_path, capsys):
    d = skd.load_digits()
    np.save(tmp_path / "counts.npy", d.images[:3, None].astype("uint8"))
    np.save(tmp_path / "pixels.npy", np.round(d.images[:3, None] * 255 / 16).astype("uint8"))
    rc = main(["predict", str(run_dir), str(tmp_path / "counts.npy"), str(tmp_path / "pixels.npy"), "--out", str(tmp_path / "p")])
    out, err = capsys.readouterr()
    assert rc == 0 and len(json.loads(out)) == 6
    (line,) = _warnings(err)
    assert re.match(rf"warning: input file '{re.escape(str(tmp_path / 'counts.npy'))}': values 0–1[56] \(mean [\d.]+\), "
                    rf"but run '{re.escape(str(run_dir))}' was trained on values 0–255 \(mean \d+\); scale them", line)


def test_finetune_warns_when_the_new_data_is_off_the_pretrained_scale(run_dir, tmp_path, capsys):
    o = run_dir.parent / "o.npz"
    rc = main(["finetune", str(run_dir), "data.name=npz", f"data.path={o}", "train.epochs=1", "--out", str(tmp_path / "ft")])
    err = capsys.readouterr().err
    assert rc == 0
    (line,) = _warnings(err)
    assert line.startswith(f"warning: data.path '{o}': values 0–16 (mean") and f"run '{run_dir}'" in line
    rc = main(["finetune", str(run_dir), "data.classes=5,6,7,8,9", "train.epochs=1", "--out", str(tmp_path / "ft2")])
    assert rc == 0 and _warnings(capsys.readouterr().err) == []
