"""read_inputs (trainwell predict): arrays and image files into one batch, with clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from trainwell.data import read_inputs
from trainwell.errors import DataError


def test_npz_single_example_and_npy_batch_are_stacked(tmp_path):
    one = np.random.default_rng(0).normal(size=(1, 40)).astype(np.float32)
    batch = np.random.default_rng(1).normal(size=(3, 1, 40))
    np.savez(tmp_path / "one.npz", x=one)
    np.save(tmp_path / "batch.npy", batch)
    out = read_inputs([str(tmp_path / "one.npz"), str(tmp_path / "batch.npy")], (1, 40), image=False)
    assert out.shape == (4, 1, 40) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], one)
    np.testing.assert_allclose(out[1:], batch.astype(np.float32))


def test_npz_with_only_array_under_another_name(tmp_path):
    np.savez(tmp_path / "a.npz", features=np.ones((2, 5)))
    assert read_inputs([str(tmp_path / "a.npz")], (5,), image=False).shape == (2, 5)


def test_npz_with_several_arrays_but_no_x_is_reported(tmp_path):
    np.savez(tmp_path / "a.npz", a=np.ones(5), b=np.ones(5))
    with pytest.raises(DataError, match="holds arrays a, b"):
        read_inputs([str(tmp_path / "a.npz")], (5,), image=False)


def test_images_are_converted_resized_and_uint8(tmp_path):
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(np.full((8, 8), 90, np.uint8)).save(tmp_path / "b.png")
    gray = read_inputs([str(tmp_path / "a.png"), str(tmp_path / "b.png")], (1, 8, 8), image=True)
    assert gray.shape == (2, 1, 8, 8) and gray.dtype == np.uint8
    assert gray[0, 0, 0, 0] == np.asarray(Image.fromarray(rgb).convert("L"))[0, 0] and gray[1].max() == 90
    color = read_inputs([str(tmp_path / "a.png"), str(tmp_path / "b.png")], (3, 5, 6), image=True)
    assert color.shape == (2, 3, 5, 6)
    assert color[0, :, 2, 2].tolist() == [200, 0, 0] and color[1, :, 0, 0].tolist() == [90, 90, 90]


def test_uint8_arrays_for_image_models(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (2, 1, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "a.npy", x)
    np.save(tmp_path / "b.npy", x.astype(np.int64))  # exact pixel values in another dtype: fine
    out = read_inputs([str(tmp_path / "a.npy"), str(tmp_path / "b.npy")], (1, 4, 4), image=True)
    assert out.dtype == np.uint8 and np.array_equal(out[:2], x) and np.array_equal(out[2:], x)


def test_float_pixels_for_image_models_are_reported(tmp_path):
    np.save(tmp_path / "a.npy", np.full((1, 4, 4), 0.5, np.float32))
    with pytest.raises(DataError, match="uint8 pixel values 0..255"):
        read_inputs([str(tmp_path / "a.npy")], (1, 4, 4), image=True)


def test_shape_mismatch_names_file_got_and_expected(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((2, 7), np.float32))
    with pytest.raises(DataError, match=r"a.npy' holds an array of shape \(2, 7\); the model expects \(5,\)"):
        read_inputs([str(tmp_path / "a.npy")], (5,), image=False)


def test_missing_file_and_no_files_are_reported(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_inputs([str(tmp_path / "nope.npy")], (5,), image=False)
    with pytest.raises(DataError, match="no input files"):
        read_inputs([], (5,), image=False)


def test_image_file_for_tabular_model_is_reported(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(DataError, match="takes tabular inputs of shape \\(16,\\)"):
        read_inputs([str(tmp_path / "a.png")], (16,), image=False)


def test_corrupt_image_and_pickled_npy_are_reported(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(DataError, match="a.png' is neither"):
        read_inputs([str(tmp_path / "a.png")], (1, 4, 4), image=True)
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="not a readable .npy"):
        read_inputs([str(tmp_path / "o.npy")], (1,), image=False)


def test_nan_inputs_are_reported(tmp_path):
    np.save(tmp_path / "a.npy", np.array([1.0, np.nan], np.float32))
    with pytest.raises(DataError, match="NaN/inf"):
        read_inputs([str(tmp_path / "a.npy")], (2,), image=False)
