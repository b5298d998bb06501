"""Preprocessing: standardize against scikit-learn's StandardScaler, inverses, saving and reloading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.preprocessing import StandardScaler

from trainwell.data import PREPROCESSORS, fit_preprocess, load_preprocess, to_float
from trainwell.data.preprocess import Identity, Standardize
from trainwell.errors import ConfigError, DataError, RunDirError


def data(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=dtype) * 3 + 5).to(dtype)


def test_registry_has_none_and_standardize_with_docs():
    assert PREPROCESSORS.names() == ["none", "standardize"]
    assert all(e.doc for e in PREPROCESSORS)


def test_standardize_tabular_matches_standard_scaler_per_feature():
    x = data((200, 4))
    x[:, 2] = 7.0  # constant feature: only centred, as StandardScaler does
    pre = fit_preprocess("standardize", x)
    scaler = StandardScaler().fit(x.numpy())
    assert pre.mean.shape == (4,) and pre.std.shape == (4,)
    np.testing.assert_allclose(pre.mean.numpy(), scaler.mean_, rtol=1e-6)
    np.testing.assert_allclose(pre.std.numpy(), scaler.scale_, rtol=1e-6)
    np.testing.assert_allclose(pre(x).numpy(), scaler.transform(x.numpy()), atol=1e-6)


@pytest.mark.parametrize("shape", [(50, 3, 6, 5), (60, 2, 9)])
def test_standardize_per_channel_matches_standard_scaler_on_reshaped_data(shape):
    x = data(shape)
    x[:, 1] = x[:, 1] * 10 - 4  # channels with different scales
    pre = Standardize.fit(x)
    channels = shape[1]
    assert pre.mean.shape == (channels,) + (1,) * (len(shape) - 2)
    per_channel = x.movedim(1, -1).reshape(-1, channels).numpy()  # rows: (example, position)
    scaler = StandardScaler().fit(per_channel)
    np.testing.assert_allclose(pre.mean.flatten().numpy(), scaler.mean_, rtol=1e-6)
    np.testing.assert_allclose(pre.std.flatten().numpy(), scaler.scale_, rtol=1e-6)
    out = pre(x)
    expected = torch.from_numpy(scaler.transform(per_channel)).reshape(x.movedim(1, -1).shape).movedim(-1, 1)
    np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-6)
    assert out.shape == x.shape


def test_standardize_chunked_fit_equals_one_pass(monkeypatch):
    x = data((103, 2, 4, 4))
    whole = Standardize.fit(x)
    monkeypatch.setattr(Standardize, "_CHUNK_BYTES", 8 * 32 * 7)  # 7 examples per chunk
    chunked = Standardize.fit(x)
    torch.testing.assert_close(chunked.mean, whole.mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(chunked.std, whole.std, rtol=1e-6, atol=1e-7)


def test_standardize_inverse_undoes_forward():
    x = data((40, 3, 4, 4), dtype=torch.float32)
    pre = Standardize.fit(x)
    torch.testing.assert_close(pre.inverse(pre(x)), x, rtol=1e-5, atol=1e-5)
    ident = Identity.fit(x)
    assert torch.equal(ident.inverse(ident(x)), x)


def test_uint8_images_are_scaled_like_to_float():
    x = torch.randint(0, 256, (30, 1, 5, 5), dtype=torch.uint8)
    a, b = Standardize.fit(x), Standardize.fit(to_float(x))
    torch.testing.assert_close(a.mean, b.mean)
    torch.testing.assert_close(a(x), b(to_float(x)))
    assert 0 < float(a.mean) < 1  # statistics of [0, 1] pixels, not of 0..255
    torch.testing.assert_close(Identity.fit(x)(x), to_float(x))


def test_standardized_training_data_has_zero_mean_unit_std():
    x = data((500, 3, 8), dtype=torch.float32)
    out = Standardize.fit(x)(x).double()
    torch.testing.assert_close(out.mean(dim=(0, 2)), torch.zeros(3, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(0, 2), unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)


def test_single_example_broadcasts():
    x = data((20, 2, 3, 3), dtype=torch.float32)
    pre = Standardize.fit(x)
    torch.testing.assert_close(pre(x[0]), pre(x)[0])


def test_buffers_are_float32_and_saved_in_state_dict():
    pre = fit_preprocess("standardize", data((20, 3)))
    state = pre.state_dict()
    assert set(state) == {"mean", "std"} and all(t.dtype == torch.float32 for t in state.values())
    assert Identity.fit(data((3, 2))).state_dict() == {}


@pytest.mark.parametrize("name,shape", [("standardize", (30, 3, 4, 4)), ("standardize", (30, 5)), ("none", (30, 5))])
def test_from_state_rebuilds_the_same_module(name, shape):
    x = data(shape, dtype=torch.float32)
    pre = fit_preprocess(name, x)
    state = {k: v.clone() for k, v in pre.state_dict().items()}
    again = load_preprocess(name, state)
    assert type(again) is type(pre)
    assert torch.equal(again(x), pre(x))


def test_from_state_rejects_missing_or_bad_entries():
    with pytest.raises(RunDirError, match="expected \\['mean', 'std'\\]"):
        load_preprocess("standardize", {"mean": torch.zeros(3)})
    with pytest.raises(RunDirError, match="inconsistent"):
        load_preprocess("standardize", {"mean": torch.zeros(3), "std": torch.zeros(3)})
    with pytest.raises(RunDirError, match="non-finite"):
        load_preprocess("standardize", {"mean": torch.full((3,), float("nan")), "std": torch.ones(3)})
    with pytest.raises(RunDirError):
        load_preprocess("none", {"mean": torch.zeros(3)})


def test_unknown_preprocess_is_config_error():
    with pytest.raises(ConfigError, match="unknown preprocess 'standardise'. Did you mean 'standardize'"):
        fit_preprocess("standardise", data((3, 2)))


def test_fit_rejects_nan_and_empty_inputs():
    x = data((10, 2))
    x[3, 1] = float("nan")
    with pytest.raises(DataError, match="NaN/inf"):
        fit_preprocess("standardize", x)
    with pytest.raises(DataError, match="non-empty tensor"):
        fit_preprocess("standardize", torch.zeros(0, 3))
