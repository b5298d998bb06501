"""train.data_on_device and memory-mapped streaming: where the training split lives, and that it changes nothing but memory.

References: the placement rule as documented (trainwell.train.placement), plain numpy fancy indexing
of the same file, /proc/self/maps (where a tensor's memory really lies), and a run with the data in
memory (the same weights bit for bit).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import trainwell
from trainwell.config import TrainConfig, resolve
from trainwell.data import load_splits, splits as splits_module
from trainwell.data.preprocess import fit_preprocess
from trainwell.data.sources import read_idx
from trainwell.data.splits import TensorSplit, is_memory_mapped
from trainwell.errors import ConfigError
from trainwell.train.build import build_classifier
from trainwell.train.placement import BatchFeed, device_bytes, place_training_data, resolve_data_on_device
from trainwell.train.trainer import LoopSettings, build_state, evaluate_split, fit

CPU = torch.device("cpu")
QUICK = {"data.limit": 300, "train.epochs": 2, "train.progress": False, "model.name": "mlp", "model.width": 32}


# ----------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(
    ("setting", "nbytes", "budget", "mapped", "expected"),
    [
        (True, 10**12, 10, True, True),  # as asked, whatever the sizes
        (False, 1, 10**12, False, False),
        ("auto", 100, None, False, True),  # the device is host memory: the data is there already
        ("auto", 100, None, True, False),  # ... unless it is memory-mapped: a copy would read the whole file
        ("auto", 100, 100, True, True),  # CUDA: fits the budget (mapped or not), exactly at the limit
        ("auto", 101, 100, False, False),  # CUDA: one byte over
        ("auto", 0, 0, False, True),
    ],
)
def test_resolution_follows_the_documented_rule(setting, nbytes, budget, mapped, expected):
    assert resolve_data_on_device(setting, nbytes, budget, mapped) is expected


@pytest.mark.parametrize("bad", ["yes", "on", 1, 0, None, "AUTO"])
def test_bad_values_are_one_config_error(bad):
    with pytest.raises(ConfigError, match="train.data_on_device"):
        resolve_data_on_device(bad, 1, None, False)
    with pytest.raises(ConfigError, match="train.data_on_device"):
        TrainConfig(data_on_device=bad)


def test_the_config_key_takes_auto_true_false_from_text():
    for text, value in (("auto", "auto"), ("true", True), ("false", False)):
        assert resolve({"train.data_on_device": text}).train.data_on_device == value
    with pytest.raises(ConfigError, match="train.data_on_device"):
        resolve({"train.data_on_device": "sometimes"})


def test_device_bytes_count_the_float_copy_of_uint8():
    split = TensorSplit(torch.zeros(10, 1, 4, 4, dtype=torch.uint8), torch.zeros(10, dtype=torch.long))
    assert split.nbytes == 160 and device_bytes(split) == 640
    floats = TensorSplit(torch.zeros(10, 3), torch.zeros(10, dtype=torch.long))
    assert device_bytes(floats) == floats.nbytes == 120


# ----------------------------------------------------------------------------- training is the same


def _fit(overrides: dict, on_device: bool, splits=None):
    cfg = trainwell.resolve(dict(QUICK, **overrides))
    splits = splits or load_splits(cfg.data)
    model = build_classifier(cfg, splits)
    state = build_state(model, cfg, len(splits.train), CPU)
    settings = LoopSettings.from_config(cfg, splits.num_classes)
    settings = LoopSettings(**{**settings.__dict__, "data_on_device": on_device})
    result = fit(state, splits.train, splits.val, settings)
    return result, {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["uint8-images", "float-tabular", "mixup-augment"])
def test_true_and_false_train_the_same_weights_bit_for_bit_on_cpu(tmp_path, kind):
    overrides: dict = {"mix.mixup_alpha": 0.4, "augment": ["translation"], "train.batch_size": 50} \
        if kind == "mixup-augment" else {}
    if kind == "float-tabular":
        rng = np.random.default_rng(0)
        features = rng.normal(size=(200, 5)).astype(np.float32)
        np.savez(tmp_path / "t.npz", x=features, y=(features[:, 0] > 0).astype(np.int64))
        overrides = {"data.name": "npz", "data.path": str(tmp_path / "t.npz"), "data.limit": 0}
    on, weights_on = _fit(overrides, True)
    off, weights_off = _fit(overrides, False)
    assert on.data_on_device is True and off.data_on_device is False
    assert _same(weights_on, weights_off)
    assert [r["train_loss"] for r in on.history] == [r["train_loss"] for r in off.history]


def test_the_run_summary_says_which_placement_was_used(tmp_path):
    run = trainwell.train({**QUICK, "train.epochs": 1, "train.data_on_device": "false"}, out=tmp_path / "r", quiet=True)
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["data_on_device"] is False
    assert run.summary["data_on_device"] is False


# ----------------------------------------------------------------------------- memory-mapped sources


def _npz(path: Path, n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An uncompressed .npz (np.savez: stored members, memory-mapped by the npz source) of
    uint8 images whose first pixel is the row number mod 256, and 3 classes."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 1, 6, 6), dtype=np.uint8)
    y = (np.arange(n) % 3).astype(np.int64)
    np.savez(path, x=x, y=y)
    return x, y


@pytest.fixture
def streamed(monkeypatch):
    """Every split of a memory-mapped source is streamed (the threshold is 1 GiB otherwise)."""
    monkeypatch.setattr(splits_module, "GATHER_BYTES", 0)


def _maps_of(path: Path) -> list[tuple[int, int]]:
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and Path(fields[5]) == path.resolve():
            lo, hi = (int(v, 16) for v in fields[0].split("-"))
            ranges.append((lo, hi))
    return ranges


def _lies_in(tensor: torch.Tensor, ranges: list[tuple[int, int]]) -> bool:
    start = tensor.untyped_storage().data_ptr()
    end = start + tensor.untyped_storage().nbytes()
    return any(lo <= start and end <= hi for lo, hi in ranges)


def _config(path: Path, **extra) -> trainwell.config.Config:
    return trainwell.resolve({**QUICK, "data.name": "npz", "data.path": str(path), "data.limit": 0, **extra})


def test_a_streamed_split_reads_the_rows_numpy_fancy_indexing_reads(tmp_path, streamed):
    x, y = _npz(tmp_path / "d.npz")
    splits = load_splits(_config(tmp_path / "d.npz").data)
    for split in (splits.train, splits.val, splits.test):
        assert split.streamed and split.mapped
        rows = split.rows.numpy()
        assert np.all(np.diff(rows) > 0)  # ascending: file order
        np.testing.assert_array_equal(split.x.numpy(), x[rows])
        np.testing.assert_array_equal(split.y.numpy(), y[rows])
        np.testing.assert_array_equal(torch.cat(list(split.chunks(7))).numpy(), x[rows])
        positions = torch.randperm(len(split), generator=torch.Generator().manual_seed(1))[:25]
        np.testing.assert_array_equal(split.take(positions).numpy(), x[rows[positions.numpy()]])  # order kept
    covered = np.sort(np.concatenate([s.rows.numpy() for s in (splits.train, splits.val, splits.test)]))
    np.testing.assert_array_equal(covered, np.arange(len(x)))  # disjoint, and together all of the file


def _raw_idx(folder: Path, n: int = 90) -> Path:
    """A folder of raw (uncompressed) MNIST-format training files: n 5x5 images, 3 classes."""
    folder.mkdir()
    images = np.random.default_rng(0).integers(0, 256, (n, 5, 5), dtype=np.uint8)
    labels = (np.arange(n) % 3).astype(np.uint8)
    for name, arr in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels)):
        header = bytes([0, 0, 0x08, arr.ndim]) + np.array(arr.shape, ">u4").tobytes()
        (folder / name).write_bytes(header + arr.tobytes())
    return folder / "train-images-idx3-ubyte"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
@pytest.mark.parametrize("source", ["npz", "idx"])
def test_a_streamed_split_is_the_file_mapping_not_a_copy(tmp_path, streamed, source):
    if source == "npz":
        _npz(tmp_path / "d.npz")
        mapped_file, cfg = tmp_path / "d.npz", _config(tmp_path / "d.npz")
    else:
        mapped_file = _raw_idx(tmp_path / "mnist")
        cfg = trainwell.resolve({**QUICK, "data.name": "idx", "data.path": str(tmp_path / "mnist"), "data.limit": 0})
    splits = load_splits(cfg.data)
    maps = _maps_of(mapped_file)
    assert maps, f"the {source} file is not memory-mapped"
    assert all(s.streamed and _lies_in(s.storage, maps) for s in (splits.train, splits.val, splits.test))
    # Placed on the host (auto on the CPU for mapped data), the loop reads batches from the mapping.
    feed = place_training_data(splits.train, CPU, "auto")
    assert not feed.on_device and _lies_in(feed.split.storage, maps)


def test_small_splits_of_a_mapped_file_are_gathered_into_memory(tmp_path, monkeypatch):
    _npz(tmp_path / "d.npz")
    gathered = load_splits(_config(tmp_path / "d.npz").data)  # under the 1 GiB threshold: copies
    monkeypatch.setattr(splits_module, "GATHER_BYTES", 0)
    streamed_splits = load_splits(_config(tmp_path / "d.npz").data)
    for a, b in zip((gathered.train, gathered.val, gathered.test), (streamed_splits.train, streamed_splits.val,
                                                                     streamed_splits.test)):
        assert not a.streamed and not a.mapped and b.streamed
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_streaming_trains_and_evaluates_as_in_memory_data_bit_for_bit(tmp_path, monkeypatch):
    _npz(tmp_path / "d.npz", n=300)
    cfg = _config(tmp_path / "d.npz", **{"data.preprocess": "standardize"})
    in_memory = load_splits(cfg.data)
    monkeypatch.setattr(splits_module, "GATHER_BYTES", 0)
    streamed_splits = load_splits(cfg.data)
    assert streamed_splits.train.streamed and not in_memory.train.streamed
    overrides = {"data.name": "npz", "data.path": str(tmp_path / "d.npz"), "data.limit": 0,
                 "data.preprocess": "standardize"}
    _, reference = _fit(overrides, True, in_memory)
    for on_device in (True, False):
        result, weights = _fit(overrides, on_device, streamed_splits)
        assert result.data_on_device is on_device and _same(weights, reference)
    model = build_classifier(cfg, in_memory)
    model.load_state_dict(reference)
    assert evaluate_split(model, streamed_splits.test, CPU, 64) == evaluate_split(model, in_memory.test, CPU, 64)


@pytest.mark.parametrize("name", ["none", "standardize", "pca", "pca_whiten", "zca"])
def test_preprocessing_fits_a_streamed_split_as_the_float_tensor_of_its_examples(tmp_path, streamed, name):
    _npz(tmp_path / "d.npz")
    train = load_splits(_config(tmp_path / "d.npz").data).train
    assert train.streamed and len(train) > 36  # more examples than features: the chunked (eigh) path
    from trainwell.data.splits import to_float

    chunked, whole = fit_preprocess(name, train), fit_preprocess(name, to_float(train.x))
    assert _same(chunked.state_dict(), whole.state_dict())


def test_pca_of_fewer_streamed_examples_than_features_is_refused(tmp_path, streamed):
    _npz(tmp_path / "d.npz", n=30)  # about 21 training examples of 36 features: PCA takes the thin SVD
    train = load_splits(_config(tmp_path / "d.npz").data).train
    with pytest.raises(ConfigError, match=r"data.preprocess=pca .* streamed .*=zca or standardize"):
        fit_preprocess("pca", train)


def test_a_run_on_a_streamed_file_trains_on_the_host_with_auto(tmp_path, streamed):
    _npz(tmp_path / "d.npz")
    run = trainwell.train({**QUICK, "data.name": "npz", "data.path": str(tmp_path / "d.npz"), "data.limit": 0,
                           "train.epochs": 1}, out=tmp_path / "r", quiet=True)
    assert run.summary["data_on_device"] is False and run.summary["test_acc"] >= 0


def test_raw_idx_files_of_bytes_are_memory_mapped_and_gz_files_read(tmp_path):
    import gzip

    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    blob = bytes([0, 0, 0x08, 3]) + np.array([2, 3, 4], ">u4").tobytes() + images.tobytes()
    (tmp_path / "a").write_bytes(blob)
    (tmp_path / "a.gz").write_bytes(gzip.compress(blob))
    raw, packed = read_idx(tmp_path / "a"), read_idx(tmp_path / "a.gz")
    assert is_memory_mapped(raw) and raw.flags.writeable and not is_memory_mapped(packed)
    np.testing.assert_array_equal(raw, images)
    np.testing.assert_array_equal(packed, images)
    raw[0, 0, 0] = 99  # copy-on-write: the file never changes
    assert (tmp_path / "a").read_bytes() == blob


def test_batch_feed_on_the_host_gives_the_device_feeds_batches(tmp_path):
    x = torch.randint(0, 256, (50, 1, 3, 3), dtype=torch.uint8)
    split = TensorSplit(x, torch.arange(50) % 2)
    idx = torch.tensor([4, 1, 30, 4])
    on_x, on_y = BatchFeed(split, CPU, True).batch(idx)
    off_x, off_y = BatchFeed(split, CPU, False).batch(idx)
    assert torch.equal(on_x, off_x) and torch.equal(on_y, off_y) and off_x.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_both_placements_give_the_same_batches_and_streamed_data_reaches_the_device(tmp_path, streamed):
    cuda = torch.device("cuda")
    _npz(tmp_path / "d.npz")
    train = load_splits(_config(tmp_path / "d.npz").data).train
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:40]
    on, off = BatchFeed(train, cuda, True), BatchFeed(train, cuda, False)
    assert on.index_device.type == "cuda" and off.index_device.type == "cpu"
    on_x, on_y = on.batch(idx.to(cuda))
    off_x, off_y = off.batch(idx)
    assert on_x.is_cuda and off_x.is_cuda and torch.equal(on_x, off_x) and torch.equal(on_y, off_y)
    assert torch.equal(on.x.cpu(), train.x.float().div(255))  # the chunked copy of a streamed split
    assert place_training_data(train, cuda, "auto").on_device  # a few KiB fit any GPU's budget
