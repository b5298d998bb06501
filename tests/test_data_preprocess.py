"""Preprocessing: standardize against scikit-learn's StandardScaler, PCA/whitening against scikit-learn's PCA,
ZCA's defining properties, inverses, saving and reloading."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA as SkPCA
from sklearn.preprocessing import StandardScaler

from trainwell.config import DataConfig, resolve
from trainwell.data import PREPROCESSORS, fit_preprocess, load_preprocess, to_float
from trainwell.data.preprocess import PCA, ZCA, Identity, PCAWhiten, Standardize
from trainwell.errors import ConfigError, DataError, RunDirError


def data(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=dtype) * 3 + 5).to(dtype)


def test_registry_has_every_preprocessor_with_docs():
    assert PREPROCESSORS.names() == ["none", "standardize", "pca", "pca_whiten", "zca"]
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


# ----------------------------------------------------------------------------- PCA and whitening


def correlated(n, d, rank=None, seed=0, noise=0.3, dtype=torch.float64):
    """Low-rank signal plus isotropic noise, off-centre, values of order 1: full rank when noise > 0."""
    g = torch.Generator().manual_seed(seed)
    rank = rank or max(1, d // 2)
    spread = torch.linspace(3, 0.5, rank, dtype=torch.float64)[:, None] / math.sqrt(rank)
    mix = torch.randn(rank, d, generator=g, dtype=torch.float64) * spread
    x = torch.randn(n, rank, generator=g, dtype=torch.float64) @ mix + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    return (x + torch.linspace(-2, 2, d, dtype=torch.float64)).to(dtype)


def cfg(**kw):
    return DataConfig(**kw)


def test_config_keys_resolve_with_their_defaults():
    c = resolve(["data.preprocess=zca", "data.pca_components=50", "data.whiten_eps=0"])
    assert (c.data.preprocess, c.data.pca_components, c.data.whiten_eps) == ("zca", 50.0, 0.0)
    assert (DataConfig().pca_components, DataConfig().whiten_eps) == (0.99, 1e-2)
    with pytest.raises(ConfigError, match="data.pca_components"):
        resolve(["data.pca_components=many"])


# n > d: covariance + eigh; n <= d: SVD of the centred data (rank n - 1: the n-th direction is arbitrary).
@pytest.mark.parametrize("n, d, k", [(400, 12, 5), (400, 12, 12), (20, 30, 7), (20, 30, 19)])
@pytest.mark.parametrize("name, whiten", [("pca", False), ("pca_whiten", True)])
def test_pca_matches_scikit_learn(name, whiten, n, d, k):
    x = correlated(n, d, seed=n + d)
    pre = fit_preprocess(name, x, cfg(pca_components=k, whiten_eps=0.0))
    sk = SkPCA(n_components=k, whiten=whiten, svd_solver="full").fit(x.numpy())
    assert pre.n_components == k and pre(x).shape == (n, k) and pre.output_shape((d,)) == (k,)
    np.testing.assert_allclose(pre.mean.numpy(), sk.mean_, atol=1e-6)
    np.testing.assert_allclose(pre.components.numpy(), sk.components_, atol=1e-5)  # same signs (svd_flip)
    np.testing.assert_allclose(pre(x).double().numpy(), sk.transform(x.numpy()), atol=1e-5)
    np.testing.assert_allclose(pre(x).double().numpy(), SkPCA(k, whiten=whiten).fit_transform(x.numpy()), atol=1e-5)


def test_pca_of_images_flattens_and_matches_scikit_learn_on_uint8_pixels():
    g = torch.Generator().manual_seed(3)
    base = torch.rand(300, 1, 6, 6, generator=g)
    x = (255 * (0.6 * base + 0.4 * base.mean(dim=(2, 3), keepdim=True))).to(torch.uint8)  # correlated pixels
    pre = fit_preprocess("pca_whiten", x, cfg(pca_components=10, whiten_eps=0.0))
    assert pre.output_shape((1, 6, 6)) == (10,) and pre.mean.shape == (1, 6, 6)
    flat = to_float(x).double().reshape(300, -1).numpy()
    expected = SkPCA(10, whiten=True, svd_solver="full").fit_transform(flat)
    np.testing.assert_allclose(pre(x).double().numpy(), expected, atol=1e-5)
    torch.testing.assert_close(pre(x[0]), pre(x)[0])  # one example (1, 6, 6) -> (10,)


@pytest.mark.parametrize("fraction", [0.5, 0.8, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("n", [500, 25])
def test_variance_fraction_picks_the_same_k_as_scikit_learn(fraction, n):
    x = correlated(n, 40, rank=30, seed=1)
    pre = fit_preprocess("pca", x, cfg(pca_components=fraction))
    sk = SkPCA(n_components=fraction, svd_solver="full").fit(x.numpy())
    assert pre.n_components == sk.n_components_
    np.testing.assert_allclose(pre(x).double().numpy(), sk.transform(x.numpy()), atol=1e-5)


def test_whiten_eps_is_relative_to_the_mean_eigenvalue():
    # Scaling the data by 100 gives the same whitened output: eps scales with the eigenvalues.
    x = correlated(300, 10)
    for name in ("pca_whiten", "zca"):
        a = fit_preprocess(name, x, cfg(pca_components=6))
        b = fit_preprocess(name, 100 * x, cfg(pca_components=6))
        torch.testing.assert_close(a(x), b(100 * x), atol=1e-4, rtol=1e-4)
    # pca_whiten: component i is divided by sqrt(λ_i + eps * mean(λ)).
    lam = torch.linalg.eigvalsh(torch.cov(x.T)).flip(0)
    pre = fit_preprocess("pca_whiten", x, cfg(pca_components=6, whiten_eps=0.5))
    expected = 1 / torch.sqrt(lam[:6] + 0.5 * lam.mean())
    torch.testing.assert_close(pre.scale.double(), expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("eps", [1e-8, 1e-2])
def test_zca_output_covariance_is_identity_up_to_eps(eps):
    x = correlated(2000, 16, seed=4)
    pre = fit_preprocess("zca", x, cfg(whiten_eps=eps))
    out = pre(x).double()
    assert out.shape == x.shape
    cov = torch.cov(out.T)
    # Exactly: eigenvalues of the output covariance are λ / (λ + eps) along the same directions.
    lam, u = torch.linalg.eigh(torch.cov(x.T))
    eps_abs = eps * lam.mean()
    torch.testing.assert_close(cov, u @ torch.diag(lam / (lam + eps_abs)) @ u.T, atol=1e-5, rtol=0)
    tolerance = float(eps_abs / (lam.min() + eps_abs)) + 1e-5
    assert (cov - torch.eye(16, dtype=torch.float64)).abs().max() < tolerance
    torch.testing.assert_close(out.mean(0), torch.zeros(16, dtype=torch.float64), atol=1e-5, rtol=0)


def test_zca_matrix_is_symmetric_and_whitens():
    x = correlated(1000, 12, seed=5)
    pre = fit_preprocess("zca", x, cfg(whiten_eps=1e-8))
    w = pre.matrix.double()
    assert torch.equal(pre.matrix, pre.matrix.T)
    c = torch.cov(x.T)
    torch.testing.assert_close(w @ c @ w.T, torch.eye(12, dtype=torch.float64), atol=1e-4, rtol=0)


@pytest.mark.parametrize("eps", [1e-8, 1e-2])
def test_zca_is_the_whitening_closest_to_its_input(eps):
    x = correlated(1000, 12, seed=6)
    centred = (x - x.mean(0)).double()
    zca = fit_preprocess("zca", x, cfg(whiten_eps=eps))
    pcaw = fit_preprocess("pca_whiten", x, cfg(pca_components=12, whiten_eps=eps))

    def distance(y):
        return float(((centred - y.double().reshape(centred.shape)) ** 2).sum(1).mean())

    d_zca = distance(zca(x))
    assert d_zca < distance(pcaw(x))
    # Any other whitening is a rotation of ZCA's output (Q W): all of them are farther from the input.
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
        assert d_zca < distance(zca(x).double() @ q.T)


def test_zca_keeps_image_shapes_and_single_examples():
    x = correlated(200, 2 * 3 * 4, seed=7, dtype=torch.float32).reshape(200, 2, 3, 4)
    pre = fit_preprocess("zca", x)
    assert pre(x).shape == x.shape and pre.output_shape((2, 3, 4)) == (2, 3, 4)
    torch.testing.assert_close(pre(x[5]), pre(x)[5])
    assert pre.output_shape((2, 3, 4)) == Standardize.fit(x).output_shape((2, 3, 4)) == Identity.fit(x).output_shape((2, 3, 4))


@pytest.mark.parametrize("name, k", [("zca", None), ("pca", 12), ("pca_whiten", 12)])
@pytest.mark.parametrize("eps", [0.0, 1e-2])
def test_inverse_undoes_forward_with_all_components(name, k, eps):
    x = correlated(300, 12, seed=8, dtype=torch.float32).reshape(300, 3, 4)
    pre = fit_preprocess(name, x, cfg(pca_components=k or 0.99, whiten_eps=eps))
    torch.testing.assert_close(pre.inverse(pre(x)), x, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(pre.inverse(pre(x[0])), x[0], atol=1e-4, rtol=1e-4)


def test_pca_inverse_with_fewer_components_is_scikit_learns_reconstruction():
    x = correlated(300, 12, seed=9)
    pre = fit_preprocess("pca", x, cfg(pca_components=4))
    sk = SkPCA(4, svd_solver="full").fit(x.numpy())
    np.testing.assert_allclose(pre.inverse(pre(x)).double().numpy(), sk.inverse_transform(sk.transform(x.numpy())), atol=1e-4)


@pytest.mark.parametrize("name", ["pca", "pca_whiten", "zca"])
def test_pca_family_round_trips_through_state_dict(name):
    x = correlated(150, 2 * 5 * 5, seed=10, dtype=torch.float32).reshape(150, 2, 5, 5)
    pre = fit_preprocess(name, x, cfg(pca_components=0.9))
    state = {k: v.clone() for k, v in pre.state_dict().items()}
    expected = {"pca": {"mean", "components"}}.get(name, {"mean", "components", "scale"})
    assert set(state) == expected and all(t.dtype == torch.float32 for t in state.values())
    again = load_preprocess(name, state)
    assert type(again) is type(pre) and again.n_components == pre.n_components  # k from the buffer shapes
    assert again.output_shape((2, 5, 5)) == pre.output_shape((2, 5, 5))
    assert torch.equal(again(x), pre(x))


def test_zca_load_state_dict_into_an_existing_module_rebuilds_its_matrix():
    # How a run reloads: build the module, then load_state_dict the saved weights into its parent.
    a = fit_preprocess("zca", correlated(100, 6, seed=11))
    b = fit_preprocess("zca", correlated(100, 6, seed=12))
    parent = torch.nn.Sequential(b)
    parent.load_state_dict({"0." + k: v for k, v in a.state_dict().items()})
    x = correlated(5, 6, seed=13)
    assert torch.equal(parent(x), a(x))


@pytest.mark.parametrize("name", ["pca", "pca_whiten", "zca"])
def test_fitted_on_the_given_split_only(name):
    x = correlated(400, 10, seed=14)
    train, other = x[:200], x[200:] * 2 + 1
    a = fit_preprocess(name, train, cfg(pca_components=5))
    b = fit_preprocess(name, other, cfg(pca_components=5))
    c = fit_preprocess(name, train, cfg(pca_components=5))
    assert not torch.allclose(a.mean, b.mean) and not torch.allclose(a(train), b(train))
    assert torch.equal(a.mean, c.mean) and torch.equal(a(other), c(other))  # the other split did not leak in
    torch.testing.assert_close(a.mean.double(), train.mean(0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["pca", "pca_whiten", "zca"])
def test_chunked_fit_equals_one_pass(name, monkeypatch):
    x = correlated(103, 8, seed=15)
    whole = fit_preprocess(name, x, cfg(pca_components=4))
    monkeypatch.setattr(PCA if name != "zca" else ZCA, "_CHUNK_BYTES", 8 * 8 * 7)  # 7 examples per chunk
    monkeypatch.setattr(PCAWhiten, "_CHUNK_BYTES", 8 * 8 * 7)
    chunked = fit_preprocess(name, x, cfg(pca_components=4))
    torch.testing.assert_close(chunked(x), whole(x), atol=1e-5, rtol=1e-5)


def test_numpy_and_torch_scatter_paths_agree(monkeypatch):
    import trainwell.data.preprocess as pp

    x = correlated(300, 10, seed=17)
    fast = fit_preprocess("zca", x)
    monkeypatch.setattr(pp, "_NUMPY_SYRK", False)  # the path non-CPU tensors take
    slow = fit_preprocess("zca", x)
    torch.testing.assert_close(fast(x), slow(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("numpy_path", [True, False])
def test_covariance_is_accurate_for_data_far_from_the_origin(numpy_path, monkeypatch):
    import trainwell.data.preprocess as pp

    monkeypatch.setattr(pp, "_NUMPY_SYRK", numpy_path)
    monkeypatch.setattr(PCAWhiten, "_CHUNK_BYTES", 8 * 6 * 50)  # 50 rows per chunk: the shift is a chunk mean
    x = correlated(1000, 6, seed=18) + 1e5  # Σ x xᵀ - N m mᵀ would lose ~10 of float64's 16 digits
    pre = fit_preprocess("pca_whiten", x, cfg(pca_components=6, whiten_eps=0.0))
    lam = np.linalg.eigvalsh(np.cov(x.numpy(), rowvar=False))[::-1]
    np.testing.assert_allclose(1 / pre.scale.double().numpy() ** 2, lam, rtol=1e-5)


def test_uint8_fit_equals_fit_on_to_float():
    x = torch.randint(0, 256, (60, 1, 4, 4), dtype=torch.uint8)
    for name in ("pca", "zca"):
        a, b = fit_preprocess(name, x, cfg(pca_components=5)), fit_preprocess(name, to_float(x), cfg(pca_components=5))
        torch.testing.assert_close(a(x), b(to_float(x)), atol=1e-5, rtol=1e-5)
        assert 0 < float(a.mean.mean()) < 1


@pytest.mark.parametrize("value", [0.0, -3.0, 1.5, 7.25, float("nan"), float("inf"), 41.0])
def test_bad_pca_components_are_config_errors(value):
    with pytest.raises(ConfigError, match="data.pca_components"):
        fit_preprocess("pca", correlated(50, 40), cfg(pca_components=value))


@pytest.mark.parametrize("name", ["pca_whiten", "zca"])
@pytest.mark.parametrize("value", [-1e-3, float("nan"), float("inf")])
def test_bad_whiten_eps_is_a_config_error(name, value):
    with pytest.raises(ConfigError, match="data.whiten_eps"):
        fit_preprocess(name, correlated(50, 8), cfg(whiten_eps=value))


def test_exact_whitening_of_rank_deficient_data_is_a_data_error():
    x = correlated(50, 8, rank=3, noise=0.0)  # rank 3 < 8
    with pytest.raises(DataError, match="whiten_eps > 0"):
        fit_preprocess("zca", x, cfg(whiten_eps=0.0))
    with pytest.raises(DataError, match="whiten_eps > 0"):
        fit_preprocess("pca_whiten", x, cfg(pca_components=5, whiten_eps=0.0))
    assert torch.isfinite(fit_preprocess("zca", x)(x)).all()  # the default eps copes
    assert fit_preprocess("pca_whiten", x, cfg(pca_components=3, whiten_eps=0.0)).n_components == 3


@pytest.mark.parametrize("name", ["pca", "zca"])
def test_fitting_leaves_the_data_alone_and_rejects_nan(name):
    x = correlated(100, 6)
    before = x.clone()
    fit_preprocess(name, x, cfg(pca_components=3))
    assert torch.equal(x, before)
    x[7, 2] = float("inf")
    with pytest.raises(DataError, match="NaN/inf"):
        fit_preprocess(name, x, cfg(pca_components=3))


def test_constant_data_and_wrong_shapes_are_data_errors():
    with pytest.raises(DataError, match="constant"):
        fit_preprocess("zca", torch.ones(20, 4))
    with pytest.raises(DataError, match="at least 2"):
        fit_preprocess("pca", torch.ones(1, 4))
    pre = fit_preprocess("pca", correlated(30, 6), cfg(pca_components=2))
    with pytest.raises(DataError, match="shape"):
        pre(torch.zeros(3, 7))
    with pytest.raises(DataError, match="shape"):
        pre.output_shape((7,))


def test_from_state_rejects_inconsistent_pca_states():
    pre = fit_preprocess("pca_whiten", correlated(30, 6), cfg(pca_components=3))
    state = pre.state_dict()
    with pytest.raises(RunDirError, match="inconsistent"):
        load_preprocess("pca_whiten", {**state, "scale": state["scale"][:2]})
    with pytest.raises(RunDirError, match="inconsistent"):
        load_preprocess("zca", state)  # (3, 6) components: not a full basis
    with pytest.raises(RunDirError, match="expected"):
        load_preprocess("pca", state)  # pca has no scale


def test_a_model_built_for_output_shape_trains_on_pca_features():
    from trainwell.nn import build_model
    from trainwell.nn.pipeline import Classifier

    x = correlated(64, 2 * 4 * 4, seed=16, dtype=torch.float32).reshape(64, 2, 4, 4)
    c = resolve(["model.name=mlp", "model.depth=1", "model.width=8", "data.preprocess=pca", "data.pca_components=5"])
    pre = fit_preprocess(c.data.preprocess, x, c.data)
    net = build_model(c, pre.output_shape((2, 4, 4)), 3, generator=torch.Generator().manual_seed(0))
    assert Classifier(net, pre)(x).shape == (64, 3)


# ----------------------------------------------------------------------------- edges the mutation run found


@pytest.mark.parametrize("name", ["none", "standardize", "pca", "zca"])
def test_fit_errors_name_the_preprocessor_and_what_it_got(name):
    with pytest.raises(DataError, match=rf"^preprocess '{name}' is fitted on a non-empty tensor \(N, \*input_shape\); "
                                        r"got \(5,\)\.$"):
        fit_preprocess(name, torch.ones(5))
    with pytest.raises(DataError, match=rf"^preprocess '{name}' is fitted on a non-empty tensor .*; got list\.$"):
        fit_preprocess(name, [[1.0, 2.0]])


def test_damaged_state_errors_name_the_preprocessor_and_what_the_state_holds():
    with pytest.raises(RunDirError, match=r"^saved preprocess 'standardize' state has entries \['mean'\], expected "
                                          r"\['mean', 'std'\]; the run directory is damaged or was written by another "
                                          r"trainwell version: retrain\.$"):
        load_preprocess("standardize", {"mean": torch.zeros(3)})
    with pytest.raises(RunDirError, match=r"^saved preprocess 'none' state has entries list, expected \[\]"):
        load_preprocess("none", [])
    with pytest.raises(RunDirError, match=r"^saved preprocess 'pca' state has entries \['components', 'mean', "
                                          r"'scale'\], expected \['components', 'mean'\]"):
        load_preprocess("pca", fit_preprocess("pca_whiten", correlated(30, 6), cfg(pca_components=3)).state_dict())


def test_standardize_reloads_a_std_below_one():
    pre = load_preprocess("standardize", {"mean": torch.zeros(2), "std": torch.tensor([0.5, 2.0])})
    torch.testing.assert_close(pre(torch.tensor([[1.0, 1.0]])), torch.tensor([[2.0, 0.5]]))


@pytest.mark.parametrize("numpy_path", [True, False])
def test_chunked_moments_of_uint8_and_float_data_are_the_exact_mean_and_scatter(numpy_path, monkeypatch):
    import trainwell.data.preprocess as pp
    monkeypatch.setattr(pp, "_NUMPY_SYRK", numpy_path)
    g = torch.Generator().manual_seed(3)
    x8 = torch.randint(0, 256, (23, 2, 3), generator=g, dtype=torch.uint8)
    ref = x8.reshape(23, 6).to(torch.float64) / 255.0
    mean_ref = ref.mean(dim=0)
    scatter_ref = (ref - mean_ref).T @ (ref - mean_ref)
    for x, want in ((x8, ref), (x8.to(torch.float32) / 255.0, None)):
        for step in (1, 5, 23, 100):
            mean, scatter = pp._moments("pca", x, step, scatter=True)
            assert mean.dtype == scatter.dtype == torch.float64 and mean.shape == (6,) and scatter.shape == (6, 6)
            torch.testing.assert_close(mean, mean_ref, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(scatter, scatter_ref, rtol=1e-6, atol=1e-6)
            only_mean, none = pp._moments("pca", x, step, scatter=False)
            assert none is None
            torch.testing.assert_close(only_mean, mean)
    bad = x8.to(torch.float32)
    bad[4, 1, 2] = float("inf")
    with pytest.raises(DataError, match=r"^preprocess 'zca': the training inputs hold NaN/inf"):
        pp._moments("zca", bad, 5, scatter=True)


def test_pca_on_fewer_examples_than_features_and_uint8_pixels_equals_pca_on_the_scaled_floats():
    g = torch.Generator().manual_seed(4)
    x8 = torch.randint(0, 256, (8, 1, 4, 5), generator=g, dtype=torch.uint8)  # n = 8 < d = 20: the SVD path
    a = fit_preprocess("pca", x8, cfg(pca_components=3))
    b = fit_preprocess("pca", x8.to(torch.float64) / 255.0, cfg(pca_components=3))
    torch.testing.assert_close(a.components, b.components, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.mean, b.mean, rtol=1e-6, atol=1e-7)
    sk = SkPCA(n_components=3, svd_solver="full").fit(x8.reshape(8, 20).numpy() / 255.0)
    np.testing.assert_allclose(a(x8).numpy(), sk.transform(x8.reshape(8, 20).numpy() / 255.0), rtol=1e-4, atol=1e-5)


def test_zca_on_fewer_examples_than_features_keeps_the_full_basis():
    x = correlated(5, 8)  # n < d: ZCA still needs all d directions (the eigh path), regularised by whiten_eps
    pre = fit_preprocess("zca", x, cfg(whiten_eps=0.1))
    assert pre.components.shape == (8, 8) and pre.matrix.shape == (8, 8)
    torch.testing.assert_close(pre.matrix, pre.matrix.T)


def test_pca_components_counts_and_fractions_at_their_edges():
    from trainwell.data.preprocess import _n_components
    eig = torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64)  # cumulative ratios 0.5, 0.75, 1.0
    assert _n_components(1, eig, 10, 3) == 1  # 1 counts one component, it is not "all the variance"
    assert _n_components(3, eig, 10, 3) == 3
    assert _n_components(0.5, eig, 10, 3) == 2  # side="right": a ratio equal to the fraction does not exceed it
    assert _n_components(0.49, eig, 10, 3) == 1
    assert _n_components(0.999, eig, 10, 3) == 3
    assert _n_components(0.49, eig / 10, 10, 3) == 1  # a total variance below 1 is not "constant"
    with pytest.raises(DataError, match=r"^preprocess: the training inputs are constant \(zero variance\); PCA has no "
                                        r"direction to keep\.$"):
        _n_components(0.5, torch.zeros(3, dtype=torch.float64), 10, 3)
    with pytest.raises(ConfigError, match=r"; e\.g\. data\.pca_components=50, or a fraction in \(0, 1\) such as 0\.95\.$"):
        _n_components(2.5, eig, 10, 3)
    with pytest.raises(ConfigError, match=r"; lower it or use a variance fraction such as 0\.99\.$"):
        _n_components(4, eig, 10, 3)


# ----------------------------------------------------------------------------- edges the second mutation run found


def test_constructors_refuse_buffers_that_do_not_fit_word_for_word():
    with pytest.raises(ValueError, match=r"^mean \(3,\) and std \(2,\) shapes differ$"):
        Standardize(torch.zeros(3), torch.ones(2))
    basis = torch.eye(6)
    for components in (torch.zeros(3, 5), torch.zeros(2, 6, 1), torch.zeros(0, 6)):
        shape = str(tuple(components.shape)).replace("(", r"\(").replace(")", r"\)")
        with pytest.raises(ValueError, match=rf"^components {shape} do not match mean \(6,\)$"):
            PCA(torch.zeros(6), components)
    with pytest.raises(ValueError, match=r"^scale \(3,\) does not fit pca$"):
        PCA(torch.zeros(6), basis[:3], torch.ones(3))
    with pytest.raises(ValueError, match=r"^scale None does not fit pca_whiten$"):
        PCAWhiten(torch.zeros(6), basis[:3])
    with pytest.raises(ValueError, match=r"^scale \(2,\) does not fit pca_whiten$"):
        PCAWhiten(torch.zeros(6), basis[:3], torch.ones(2))
    with pytest.raises(ValueError, match=r"^zca needs a full \(d, d\) basis, got components \(3, 6\)$"):
        ZCA(torch.zeros(6), basis[:3], torch.ones(3))


def test_one_component_is_a_valid_pca_and_reloads():
    x = correlated(200, 6, seed=19)
    for name, whiten in (("pca", False), ("pca_whiten", True)):
        pre = fit_preprocess(name, x, cfg(pca_components=1, whiten_eps=0.0))
        sk = SkPCA(n_components=1, whiten=whiten, svd_solver="full").fit(x.numpy())
        assert pre.n_components == 1 and pre.output_shape((6,)) == (1,)
        np.testing.assert_allclose(pre(x).double().numpy(), sk.transform(x.numpy()), atol=1e-5)
        again = load_preprocess(name, {k: v.clone() for k, v in pre.state_dict().items()})
        assert again.n_components == 1 and torch.equal(again(x), pre(x))


def test_from_state_refuses_inconsistent_projection_buffers_word_for_word():
    good = fit_preprocess("pca_whiten", correlated(30, 6), cfg(pca_components=3)).state_dict()
    damaged = [
        ("pca", {"mean": torch.zeros(6), "components": torch.zeros(3, 7)}),
        ("pca", {"mean": torch.zeros(6), "components": torch.zeros(2, 6, 1)}),
        ("pca", {"mean": torch.zeros(6), "components": torch.zeros(0, 6)}),
        ("pca_whiten", {**good, "scale": torch.tensor([1.0, 0.0, 2.0])}),  # a scale of 0 is not 1/sqrt(λ + eps)
    ]
    for name, state in damaged:
        shapes = str([tuple(t.shape) for t in state.values()]).replace("(", r"\(").replace(")", r"\)")
        shapes = shapes.replace("[", r"\[").replace("]", r"\]")
        with pytest.raises(RunDirError, match=rf"^saved preprocess '{name}' state is inconsistent \(buffer shapes {shapes}\); "
                                              r"the run directory is damaged: retrain\.$"):
            load_preprocess(name, state)


def test_a_tensor_of_neither_an_example_nor_a_batch_is_refused_word_for_word():
    pre = fit_preprocess("pca", correlated(30, 6), cfg(pca_components=2))
    for bad in (torch.zeros(2, 3, 6), torch.zeros(3, 7)):
        shape = str(tuple(bad.shape)).replace("(", r"\(").replace(")", r"\)")
        with pytest.raises(DataError, match=rf"^preprocess 'pca' was fitted on examples of shape \(6,\); got a tensor of "
                                            rf"shape {shape}\.$"):
            pre(bad)


def test_the_base_class_has_no_inverse_and_says_whose():
    from trainwell.data.preprocess import Preprocess

    class Custom(Preprocess):
        name = "custom"

    with pytest.raises(NotImplementedError, match=r"^preprocess 'custom' has no inverse$"):
        Custom().inverse(torch.zeros(3))


def test_modules_print_their_shapes():
    assert repr(Standardize.fit(data((20, 3, 4, 4)))) == "Standardize(shape=(3, 1, 1))"
    x = correlated(50, 2 * 5 * 5, seed=20).reshape(50, 2, 5, 5)
    assert repr(fit_preprocess("pca", x, cfg(pca_components=4))) == "PCA(input_shape=(2, 5, 5), components=4)"
    assert repr(fit_preprocess("zca", correlated(50, 4))) == "ZCA(input_shape=(4,), components=4)"


def test_standardize_std_is_the_float64_std_of_data_far_from_its_origin():
    # Two adjacent float32 values: the mean is halfway between them, which float32 cannot hold, so a float32
    # mean would be off by half the spacing and the std by a factor sqrt(2).
    a = torch.tensor(1e4, dtype=torch.float32)
    x = torch.stack([a, torch.nextafter(a, torch.tensor(2e4))] * 50).reshape(100, 1)
    scaler = StandardScaler().fit(x.double().numpy())
    np.testing.assert_allclose(Standardize.fit(x).std.double().numpy(), scaler.scale_, rtol=1e-6)


@pytest.mark.parametrize("shape, chunk_bytes", [((40, 1), 40), ((40, 3), 96), ((40, 3), 100), ((40, 2, 3), 336),
                                                ((40, 2, 3), 8)])
def test_standardize_reads_the_largest_chunks_within_chunk_bytes_in_order(shape, chunk_bytes, monkeypatch):
    import trainwell.data.preprocess as pp

    x = data(shape, dtype=torch.float32)
    seen: list[torch.Tensor] = []
    real = pp.to_float
    monkeypatch.setattr(pp, "to_float", lambda t: seen.append(t) or real(t))
    monkeypatch.setattr(Standardize, "_CHUNK_BYTES", chunk_bytes)
    fitted = Standardize.fit(x)
    row_bytes = 8 * math.prod(shape[1:])  # one example in float64
    rows = [len(t) for t in seen]
    assert torch.equal(torch.cat(seen), x)  # every example once, in order
    assert all(r * row_bytes <= chunk_bytes or r == 1 for r in rows)  # within the budget (or one row)
    assert all((r + 1) * row_bytes > chunk_bytes for r in rows[:-1])  # and no smaller than it allows
    per_channel = x.double().movedim(1, -1).reshape(-1, shape[1])
    torch.testing.assert_close(fitted.mean.flatten().double(), per_channel.mean(dim=0), rtol=1e-6, atol=1e-6)


def test_exact_whitening_refuses_eigenvalues_at_numpys_rank_tolerance():
    from trainwell.data.preprocess import _whitening_scale

    # numpy.linalg.matrix_rank's default: singular values <= S.max() * max(M, N) * eps count as zero.
    tol = 2.0 * 3 * np.finfo(np.float64).eps
    for small, deficient in ((tol, True), (np.nextafter(tol, 1.0), False), (tol / 2, True), (2 * tol, False)):
        eig = torch.tensor([2.0, 0.5, small], dtype=torch.float64)
        if small != tol and small != np.nextafter(tol, 1.0):
            assert (np.linalg.matrix_rank(np.diag(eig.numpy())) < 3) == deficient
        if deficient:
            with pytest.raises(DataError, match="rank-deficient"):
                _whitening_scale("zca", eig, 0.0)
        else:
            torch.testing.assert_close(_whitening_scale("zca", eig, 0.0), 1 / eig.sqrt(), rtol=0, atol=0)
    torch.testing.assert_close(_whitening_scale("zca", torch.tensor([2.0, tol / 2], dtype=torch.float64), 0.25),
                               1 / torch.tensor([2.25, tol / 2 + 0.25], dtype=torch.float64).sqrt())


@pytest.mark.parametrize("name, k", [("zca", 0.99), ("pca_whiten", 5)])
def test_whitening_errors_word_for_word(name, k):
    x = correlated(50, 8, rank=3, noise=0.0)
    with pytest.raises(DataError, match=rf"^preprocess '{name}': the training inputs are rank-deficient \(a direction has "
                                        r"zero variance\), so exact whitening divides by zero; set data\.whiten_eps > 0 "
                                        r"\(e\.g\. 1e-2\) or keep fewer PCA components\.$"):
        fit_preprocess(name, x, cfg(pca_components=k, whiten_eps=0.0))
    with pytest.raises(DataError, match=r"^preprocess: the training inputs are constant \(zero variance\); there is "
                                        r"nothing to whiten\.$"):
        fit_preprocess(name, torch.ones(20, 4), cfg(pca_components=2))


def test_variance_fraction_is_compared_in_float64():
    from trainwell.data.preprocess import _n_components

    # The first component explains 0.9499999999 < 0.95 (float32 would read 0.95 as 0.949999988): two are kept.
    eig = torch.tensor([0.9499999999, 0.0500000001], dtype=torch.float64)
    assert _n_components(0.95, eig, 10, 2) == 2
    assert _n_components(0.9499999998, eig, 10, 2) == 1


def test_pca_on_fewer_examples_than_features_is_as_accurate_as_the_svd():
    # Singular values from 1 to 1e-6: squaring them into a covariance (eigh) loses the small directions to
    # rounding (errors ~1e-5), the SVD of the centred data keeps them to float32's precision.
    g = torch.Generator().manual_seed(0)
    n, d = 12, 30
    left, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(d, n, generator=g, dtype=torch.float64))
    x = (left * torch.logspace(0, -6, n, dtype=torch.float64)) @ right.T + 3.0
    pre = fit_preprocess("pca_whiten", x, cfg(pca_components=n - 1, whiten_eps=0.0))
    sk = SkPCA(n_components=n - 1, whiten=True, svd_solver="full").fit(x.numpy())
    np.testing.assert_allclose(pre.components.double().numpy(), sk.components_, atol=5e-7, rtol=0)
    np.testing.assert_allclose(1 / pre.scale.double().numpy() ** 2, sk.explained_variance_, rtol=5e-7)


@pytest.mark.parametrize("numpy_path", [True, False])
def test_covariance_is_accurate_for_features_at_different_offsets(numpy_path, monkeypatch):
    import trainwell.data.preprocess as pp

    monkeypatch.setattr(pp, "_NUMPY_SYRK", numpy_path)
    monkeypatch.setattr(PCAWhiten, "_CHUNK_BYTES", 8 * 6 * 50)  # 50 rows per chunk
    offsets = 1e5 * torch.tensor([1.0, -2.0, 3.0, -1.0, 2.0, -3.0], dtype=torch.float64)  # no one shift fits all
    x = correlated(1000, 6, seed=21) + offsets
    pre = fit_preprocess("pca_whiten", x, cfg(pca_components=6, whiten_eps=0.0))
    lam = np.linalg.eigvalsh(np.cov(x.numpy(), rowvar=False))[::-1]
    np.testing.assert_allclose(1 / pre.scale.double().numpy() ** 2, lam, rtol=1e-5)


@pytest.mark.parametrize("numpy_path", [True, False])
def test_chunked_moments_of_float64_data_are_float64_accurate(numpy_path, monkeypatch):
    import trainwell.data.preprocess as pp

    monkeypatch.setattr(pp, "_NUMPY_SYRK", numpy_path)
    x = correlated(37, 5, seed=22)
    centred = x - x.mean(dim=0)
    for step in (1, 4, 37):
        mean, scatter = pp._moments("pca", x, step, scatter=True)
        torch.testing.assert_close(mean, x.mean(dim=0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(scatter, centred.T @ centred, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["pca", "zca"])
def test_half_precision_inputs_fit_like_their_float64_values(name, dtype):
    x = correlated(200, 6, seed=23).to(dtype)
    a = fit_preprocess(name, x, cfg(pca_components=3))
    b = fit_preprocess(name, x.to(torch.float64), cfg(pca_components=3))
    torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.components, b.components, rtol=0, atol=1e-6)


@pytest.mark.parametrize("numpy_path", [True, False])
@pytest.mark.parametrize("name", ["pca", "zca"])
def test_fitting_float64_data_leaves_it_alone_on_both_paths(name, numpy_path, monkeypatch):
    import trainwell.data.preprocess as pp

    monkeypatch.setattr(pp, "_NUMPY_SYRK", numpy_path)
    monkeypatch.setattr(PCA if name == "pca" else ZCA, "_CHUNK_BYTES", 8 * 6 * 7)  # several chunks
    x = correlated(100, 6, seed=24)
    before = x.clone()
    fit_preprocess(name, x, cfg(pca_components=3))
    assert torch.equal(x, before)


@pytest.mark.parametrize("numpy_path", [True, False])
def test_non_finite_inputs_give_the_data_error_and_no_numpy_warning(numpy_path, monkeypatch):
    import warnings

    import trainwell.data.preprocess as pp

    monkeypatch.setattr(pp, "_NUMPY_SYRK", numpy_path)
    x = correlated(100, 6, seed=25)
    x[7, 2] = float("inf")
    x[9, 4] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("pca", "pca_whiten", "zca"):
            with pytest.raises(DataError, match=rf"^preprocess '{name}': the training inputs hold NaN/inf values; clean the "
                                                r"data first\.$"):
                fit_preprocess(name, x, cfg(pca_components=3))
