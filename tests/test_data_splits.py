"""Splits: sizes, disjointness, stratification, seeding, limit, validation errors, tensors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from trainwell.config import DataConfig
from trainwell.data import ArrayData, Splits, TensorSplit, load_splits, make_splits, to_float, validate
from trainwell.data.sources import DATASETS
from trainwell.errors import ConfigError, DataError


def synthetic(n: int = 1000, counts: list[int] | None = None, test: int = 0) -> ArrayData:
    """Tabular data whose first feature is the example's index, so splits can be traced back."""
    counts = counts or [n // 5] * 5
    y = np.concatenate([np.full(c, k) for k, c in enumerate(counts)]).astype(np.int64)
    y = y[np.random.default_rng(0).permutation(len(y))]
    x = np.stack([np.arange(len(y)), np.ones(len(y))], axis=1).astype(np.float32)
    x_test = y_test = None
    if test:
        x_test = np.full((test, 2), -1, np.float32)
        y_test = np.arange(test) % len(counts)
    return ArrayData(x, y, x_test, y_test, [f"c{k}" for k in range(len(counts))], "synthetic")


def ids(split: TensorSplit) -> np.ndarray:
    return split.x[:, 0].numpy().astype(int)


def split(data: ArrayData, **kw) -> Splits:
    return make_splits(data, DataConfig(name="synthetic", **kw))


def test_split_sizes_follow_fractions_with_ceil():
    s = split(synthetic(1000), val_fraction=0.1, test_fraction=0.2)
    assert (len(s.train), len(s.val), len(s.test)) == (720, 80, 200)
    s = split(synthetic(counts=[200, 200, 200, 200, 199]), val_fraction=0.1, test_fraction=0.25)
    assert len(s.test) == 250 and len(s.val) == 75 and len(s.train) == 674


def test_splits_are_disjoint_and_cover_the_data():
    s = split(synthetic(1000))
    a, b, c = ids(s.train), ids(s.val), ids(s.test)
    assert not set(a) & set(b) and not set(a) & set(c) and not set(b) & set(c)
    assert sorted(np.concatenate([a, b, c])) == list(range(1000))
    assert np.all(np.diff(a) > 0)  # kept in source order


def test_labels_travel_with_their_examples():
    data = synthetic(500)
    s = split(data)
    for part in (s.train, s.val, s.test):
        np.testing.assert_array_equal(part.y.numpy(), data.y[ids(part)])


def test_splits_are_stratified():
    data = synthetic(counts=[500, 300, 150, 40, 10])
    s = split(data, val_fraction=0.1, test_fraction=0.2)
    for part, frac in [(s.test, 0.2), (s.val, 0.1 * 0.8)]:
        got = np.bincount(part.y.numpy(), minlength=5)
        expected = np.array([500, 300, 150, 40, 10]) * frac
        assert np.all(np.abs(got - expected) <= 1), (got, expected)


def test_split_is_plain_random_when_a_class_has_one_example():
    s = split(synthetic(counts=[50, 49, 1]), val_fraction=0.2, test_fraction=0.2)
    assert len(s.test) == 20 and len(s.val) == 16 and len(s.train) == 64


def test_same_split_seed_gives_same_split_and_other_seed_differs():
    data = synthetic(300)
    a, b, c = split(data, split_seed=3), split(data, split_seed=3), split(data, split_seed=4)
    for name in ("train", "val", "test"):
        assert np.array_equal(ids(getattr(a, name)), ids(getattr(b, name)))
    assert not np.array_equal(ids(a.test), ids(c.test))


def test_test_split_does_not_depend_on_val_fraction_or_limit():
    data = synthetic(400)
    base = split(data, val_fraction=0.1)
    other = split(data, val_fraction=0.3, limit=50)
    assert np.array_equal(ids(base.test), ids(other.test))


def test_split_does_not_touch_global_rngs():
    np.random.seed(5)
    torch.manual_seed(5)
    before = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    split(synthetic(200))
    assert np.array_equal(np.random.get_state()[1], before[0]) and torch.equal(torch.get_rng_state(), before[1])


def test_limit_subsamples_train_stratified_and_seeded():
    data = synthetic(counts=[400, 200, 200, 100, 100])
    full = split(data)
    limited = split(data, limit=100)
    assert len(limited.train) == 100
    assert set(ids(limited.train)) <= set(ids(full.train))
    assert np.array_equal(ids(limited.val), ids(full.val)) and np.array_equal(ids(limited.test), ids(full.test))
    counts = np.bincount(limited.train.y.numpy(), minlength=5)
    assert np.all(np.abs(counts - np.array([40, 20, 20, 10, 10])) <= 1)
    assert np.array_equal(ids(split(data, limit=100).train), ids(limited.train))
    assert len(split(data, limit=10**6).train) == len(full.train)


def test_own_test_split_is_used_whole_and_test_fraction_ignored():
    data = synthetic(100, test=30)
    s = split(data, test_fraction=0.5, val_fraction=0.2)
    assert len(s.test) == 30 and torch.all(s.test.x[:, 0] == -1)
    assert len(s.val) == 20 and len(s.train) == 80


def test_val_fraction_zero_gives_empty_val_of_the_right_shape():
    s = split(synthetic(100), val_fraction=0.0)
    assert len(s.val) == 0 and s.val.x.shape == (0, 2) and s.val.x.dtype == torch.float32
    assert s.val.y.dtype == torch.int64 and len(s.train) == 80


@pytest.mark.parametrize("key,value", [("val_fraction", -0.1), ("val_fraction", 1.0), ("test_fraction", 1.5), ("test_fraction", -1.0)])
def test_bad_fractions_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=f"data.{key} must be a fraction in \\[0, 1\\)"):
        split(synthetic(100), **{key: value})


def test_bad_limit_and_seed_are_config_errors():
    with pytest.raises(ConfigError, match="data.limit"):
        split(synthetic(100), limit=-1)
    with pytest.raises(ConfigError, match="data.split_seed"):
        split(synthetic(100), split_seed=-3)


def test_bad_fraction_fails_before_loading_data():
    def never(cfg):
        raise AssertionError("data loaded")

    with pytest.raises(ConfigError):
        load_splits(DataConfig(name=never, val_fraction=2.0))  # type: ignore[arg-type]


def test_test_fraction_zero_without_own_test_split_is_data_error():
    with pytest.raises(DataError, match="test split is empty.*data.test_fraction"):
        split(synthetic(100), test_fraction=0.0)


def test_too_little_data_for_train_is_data_error():
    data = ArrayData(np.zeros((2, 3), np.float32), np.array([0, 1]), None, None, ["a", "b"], "tiny")
    with pytest.raises(DataError, match="train split is empty.*lower the fractions or give more data"):
        split(data, test_fraction=0.5, val_fraction=0.5)


def test_images_stay_uint8_and_signals_float32():
    x = np.random.default_rng(0).integers(0, 256, (40, 1, 4, 4), dtype=np.uint8)
    s = split(ArrayData(x, np.arange(40) % 2, None, None, ["a", "b"], "img"))
    assert s.train.x.dtype == torch.uint8 and s.input_shape == (1, 4, 4) and s.kind == "image" and s.is_uint8
    x = np.random.default_rng(0).normal(size=(40, 2, 5))
    s = split(ArrayData(x, np.arange(40) % 2, None, None, ["a", "b"], "sig"))
    assert s.train.x.dtype == torch.float32 and s.input_shape == (2, 5) and s.kind == "signal"
    assert s.num_classes == 2


def test_memory_mapped_test_split_is_shared_not_copied(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (30, 1, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(30) % 3, x_test=x[:9], y_test=np.arange(9) % 3)
    cfg = DataConfig(name="npz", path=str(tmp_path / "d.npz"))
    data = DATASETS.get("npz")(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.from_numpy must not warn about read-only memory
        s = make_splits(data, cfg)
    assert isinstance(data.x_test, np.memmap)
    assert s.test.x.data_ptr() == data.x_test.ctypes.data  # same memory: the mapping itself
    np.testing.assert_array_equal(s.test.x.numpy(), x[:9])


def test_load_splits_digits_end_to_end():
    s = load_splits(DataConfig())
    assert (len(s.train), len(s.val), len(s.test)) == (1293, 144, 360)
    assert s.input_shape == (1, 8, 8) and s.num_classes == 10 and s.train.x.dtype == torch.uint8
    assert s.description.startswith("digits:")


def test_load_splits_unknown_name_is_config_error():
    with pytest.raises(ConfigError, match="unknown data 'digit'. Did you mean 'digits'"):
        load_splits(DataConfig(name="digit"))


def test_load_splits_reports_nan_in_csv(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("a,b,label\n1,nan,x\n3,4,y\n5,inf,x\n")
    with pytest.raises(DataError, match=r"2 NaN/inf values in x \(the training data\)") as err:
        load_splits(DataConfig(name="csv", path=str(f)))
    assert str(f) in str(err.value)


# ----------------------------------------------------------------------------- validate


def good() -> ArrayData:
    return ArrayData(np.zeros((6, 3), np.float32), np.array([0, 1, 2, 0, 1, 2]), None, None, ["a", "b", "c"], "ok")


def test_validate_accepts_good_data():
    validate(good(), "here")


def test_validate_nan_in_test_split_names_count_and_split():
    d = good()
    d.x_test, d.y_test = np.full((2, 3), np.nan, np.float32), np.array([0, 1])
    with pytest.raises(DataError, match=r"here: 6 NaN/inf values in x_test \(the test split\)"):
        validate(d, "here")


def test_validate_labels_out_of_range():
    d = good()
    d.y = np.array([0, 1, 2, 3, 0, 1])
    with pytest.raises(DataError, match="labels out of range: y holds 3 but there are 3 classes"):
        validate(d, "here")
    d.y = np.array([0, -1, 2, 0, 0, 1])
    with pytest.raises(DataError, match="labels out of range: y holds -1"):
        validate(d, "here")


def test_validate_non_integer_labels():
    d = good()
    d.y = np.array([0, 1, 2, 0.5, 1, 2])
    with pytest.raises(DataError, match="non-integer"):
        validate(d, "here")


def test_validate_mismatched_lengths():
    d = good()
    d.y = d.y[:5]
    with pytest.raises(DataError, match="x has 6 examples but y has 5 labels"):
        validate(d, "here")


def test_validate_one_dimensional_x():
    d = good()
    d.x = np.zeros(6, np.float32)
    with pytest.raises(DataError, match=r"x has shape \(6,\).*single feature needs shape \(N, 1\)"):
        validate(d, "here")


def test_validate_test_shape_mismatch():
    d = good()
    d.x_test, d.y_test = np.zeros((2, 4), np.float32), np.array([0, 1])
    with pytest.raises(DataError, match=r"test examples have shape \(4,\) but training examples \(3,\)"):
        validate(d, "here")


def test_validate_empty_data():
    d = good()
    d.x, d.y = d.x[:0], d.y[:0]
    with pytest.raises(DataError, match="x is empty"):
        validate(d, "here")


def test_validate_needs_two_classes():
    d = good()
    d.classes = ["only"]
    d.y = np.zeros_like(d.y)  # labels in range for one class: the class count is the only problem
    with pytest.raises(DataError, match="at least 2"):
        validate(d, "here")


def test_validate_x_test_without_y_test():
    d = good()
    d.x_test = d.x
    with pytest.raises(DataError, match="only one of x_test and y_test"):
        validate(d, "here")


# ----------------------------------------------------------------------------- to_float


def test_to_float_scales_uint8_and_passes_float32_through():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8)
    torch.testing.assert_close(to_float(x), torch.tensor([0.0, 0.2, 1.0]))
    f = torch.randn(3)
    assert to_float(f) is f
    assert to_float(torch.zeros(2, dtype=torch.float64)).dtype == torch.float32


def test_load_splits_turns_unexpected_os_errors_into_one_line():
    def unreadable(cfg):
        raise PermissionError(13, "Permission denied", "/data/x.csv")

    with pytest.raises(DataError, match="cannot read '/data/x.csv': Permission denied"):
        load_splits(DataConfig(name=unreadable))  # type: ignore[arg-type]
