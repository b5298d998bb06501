"""Data sources: every format written in tmp_path, loaded, and every bad-input path a DataError."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import random
import struct
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from trainwell.config import DataConfig
from trainwell.data import DATASETS, ArrayData
from trainwell.data import sources
from trainwell.errors import ConfigError, DataError


def load(name: str, **kw) -> ArrayData:
    return DATASETS.get(name)(DataConfig(name=name, **kw))


# ----------------------------------------------------------------------------- registry


def test_registry_entries_have_docs_and_metadata():
    assert DATASETS.names() == ["digits", "mnist1d", "idx", "cifar", "folder", "npz", "csv"]
    for entry in DATASETS:
        assert entry.doc and "\n" not in entry.doc
        assert isinstance(entry.meta.needs_path, bool)
        assert entry.meta.kind in ("image", "signal", "tabular", "any")
    assert not DATASETS.entry("digits").meta.needs_path
    assert DATASETS.entry("idx").meta.needs_path


@pytest.mark.parametrize("name", ["idx", "cifar", "folder", "npz", "csv"])
def test_file_sources_without_path_raise_config_error(name):
    with pytest.raises(ConfigError, match="set data.path"):
        load(name)


@pytest.mark.parametrize("name", ["idx", "cifar", "folder", "npz", "csv"])
def test_file_sources_with_missing_path_raise_data_error(name, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="does not exist") as err:
        load(name, path=str(missing))
    assert str(missing) in str(err.value)


# ----------------------------------------------------------------------------- digits


def test_digits_matches_sklearn_scaled_to_uint8():
    from sklearn.datasets import load_digits

    ref = load_digits()
    data = load("digits")
    assert data.x.shape == (1797, 1, 8, 8) and data.x.dtype == np.uint8
    assert data.x.max() == 255 and data.x.min() == 0
    np.testing.assert_array_equal(data.x[:, 0], np.round(ref.images * 255 / 16).astype(np.uint8))
    np.testing.assert_array_equal(data.y, ref.target)
    assert data.y.dtype == np.int64
    assert data.classes == [str(i) for i in range(10)]
    assert data.x_test is None and data.y_test is None
    assert data.kind == "image"


# ----------------------------------------------------------------------------- mnist1d


def test_mnist1d_args_equal_package_defaults():
    from mnist1d.data import get_dataset_args

    ref = get_dataset_args(as_dict=True)
    ref.pop("url")
    assert sources.MNIST1D_ARGS == ref


def test_mnist1d_generator_matches_reference_and_restores_global_rng():
    from mnist1d.data import make_dataset

    args = dict(sources.MNIST1D_ARGS, num_samples=200)
    np.random.seed(123)
    random.seed(123)
    np_before, py_before = np.random.get_state(), random.getstate()
    ours = sources.generate_mnist1d(args)
    np_after, py_after = np.random.get_state(), random.getstate()
    assert py_after == py_before
    assert np_after[0] == np_before[0] and np.array_equal(np_after[1], np_before[1])
    assert np_after[2:] == np_before[2:]

    class Args:
        pass

    ref_args = Args()
    ref_args.__dict__.update(args)
    ref = make_dataset(ref_args)
    np.testing.assert_array_equal(ours["x"][:, 0], ref["x"].astype(np.float32))
    np.testing.assert_array_equal(ours["x_test"][:, 0], ref["x_test"].astype(np.float32))
    np.testing.assert_array_equal(ours["y"], ref["y"])
    np.testing.assert_array_equal(ours["y_test"], ref["y_test"])
    assert ours["x"].shape == (160, 1, 40) and ours["x"].dtype == np.float32


def test_mnist1d_default_is_4000_1000_and_cached_equals_fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINWELL_CACHE", str(tmp_path))
    fresh = load("mnist1d")
    assert fresh.x.shape == (4000, 1, 40) and fresh.x.dtype == np.float32
    assert fresh.x_test.shape == (1000, 1, 40) and fresh.y_test.shape == (1000,)
    assert fresh.y.dtype == np.int64 and set(np.unique(fresh.y)) == set(range(10))
    # 500 per class overall, as make_dataset draws num_samples // 10 of each digit.
    assert np.bincount(np.concatenate([fresh.y, fresh.y_test])).tolist() == [500] * 10
    cached_files = list(tmp_path.glob("mnist1d-*.npz"))
    assert len(cached_files) == 1 and not list(tmp_path.glob("*.tmp"))
    with np.load(cached_files[0], allow_pickle=False) as z:  # a plain .npz, no pickle
        assert sorted(z.files) == ["x", "x_test", "y", "y_test"]

    def no_generation(args):
        raise AssertionError("cache not used")

    monkeypatch.setattr(sources.mnist1d, "generate_mnist1d", no_generation)
    cached = load("mnist1d")
    for key in ("x", "y", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(cached, key), getattr(fresh, key))


def test_mnist1d_corrupt_cache_is_regenerated(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINWELL_CACHE", str(tmp_path))
    monkeypatch.setitem(sources.MNIST1D_ARGS, "num_samples", 100)  # small: fast to generate
    first = load("mnist1d")
    (cache,) = tmp_path.glob("mnist1d-*.npz")
    cache.write_bytes(cache.read_bytes()[:200])  # truncated
    again = load("mnist1d")
    np.testing.assert_array_equal(again.x, first.x)
    with np.load(cache, allow_pickle=False) as z:  # rewritten whole
        np.testing.assert_array_equal(z["x"], first.x)


# ----------------------------------------------------------------------------- idx


def write_idx(path, arr: np.ndarray, code: int = 0x08, gz: bool = False, magic: bytes | None = None) -> None:
    big = arr.astype(arr.dtype.newbyteorder(">"))
    header = (magic or bytes([0, 0, code, arr.ndim])) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + big.tobytes()
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def make_idx_folder(folder, spelling: str = "-", gz: bool = False, n: int = 12, n_test: int = 5, hw=(5, 7)):
    rng = np.random.default_rng(0)
    folder.mkdir(exist_ok=True)
    x = rng.integers(0, 256, size=(n, *hw), dtype=np.uint8)
    y = (np.arange(n) % 3).astype(np.uint8)
    xt = rng.integers(0, 256, size=(n_test, *hw), dtype=np.uint8)
    yt = (np.arange(n_test) % 3).astype(np.uint8)
    suffix = ".gz" if gz else ""
    for stem, arr in [("train-images", x), ("train-labels", y), ("t10k-images", xt), ("t10k-labels", yt)]:
        kind = "idx3" if "images" in stem else "idx1"
        write_idx(folder / f"{stem}{spelling}{kind}-ubyte{suffix}", arr, gz=gz)
    return x, y, xt, yt


@pytest.mark.parametrize("spelling", ["-", "."])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_reads_both_spellings_raw_and_gz(tmp_path, spelling, gz):
    x, y, xt, yt = make_idx_folder(tmp_path / "mnist", spelling, gz)
    data = load("idx", path=str(tmp_path / "mnist"))
    assert data.x.shape == (12, 1, 5, 7) and data.x.dtype == np.uint8
    np.testing.assert_array_equal(data.x[:, 0], x)
    np.testing.assert_array_equal(data.y, y)
    np.testing.assert_array_equal(data.x_test[:, 0], xt)
    np.testing.assert_array_equal(data.y_test, yt)
    assert data.y.dtype == np.int64 and data.classes == ["0", "1", "2"]
    assert data.x.flags.writeable  # torch can share it without a warning


def test_idx_without_t10k_files_has_no_test_split(tmp_path):
    make_idx_folder(tmp_path)
    for f in tmp_path.glob("t10k-*"):
        f.unlink()
    data = load("idx", path=str(tmp_path))
    assert data.x_test is None and data.y_test is None and len(data.x) == 12


def test_idx_read_other_dtypes_big_endian(tmp_path):
    arr = np.arange(6, dtype=np.int32).reshape(2, 3) * 1000 - 2000
    write_idx(tmp_path / "a", arr, code=0x0C)
    out = sources.read_idx(tmp_path / "a")
    np.testing.assert_array_equal(out, arr)
    assert out.dtype == np.int32 and out.dtype.isnative


def test_idx_folder_without_files_names_expected_file(tmp_path):
    with pytest.raises(DataError, match="no train-images-idx3-ubyte"):
        load("idx", path=str(tmp_path))


def test_idx_path_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x")
    with pytest.raises(DataError, match="is a file, not a folder"):
        load("idx", path=str(f))


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated_file_is_reported(tmp_path, gz):
    make_idx_folder(tmp_path, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    target = tmp_path / name
    if gz:
        raw = gzip.decompress(target.read_bytes())
        target.write_bytes(gzip.compress(raw[:-10]))
    else:
        target.write_bytes(target.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated") as err:
        load("idx", path=str(tmp_path))
    assert name in str(err.value)


def test_idx_cut_gzip_stream_is_reported(tmp_path):
    make_idx_folder(tmp_path, gz=True)
    target = tmp_path / "train-labels-idx1-ubyte.gz"
    target.write_bytes(target.read_bytes()[:15])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz"):
        load("idx", path=str(tmp_path))


def test_idx_extra_bytes_are_reported(tmp_path):
    make_idx_folder(tmp_path)
    target = tmp_path / "train-labels-idx1-ubyte"
    target.write_bytes(target.read_bytes() + b"\x00\x00")
    with pytest.raises(DataError, match="beyond"):
        load("idx", path=str(tmp_path))


def test_idx_bad_magic_is_reported(tmp_path):
    make_idx_folder(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((12, 5, 7), np.uint8), magic=b"\x1f\x8b\x08\x03")
    with pytest.raises(DataError, match="does not start with an IDX header") as err:
        load("idx", path=str(tmp_path))
    assert "train-images-idx3-ubyte" in str(err.value)


def test_idx_count_mismatch_is_reported(tmp_path):
    make_idx_folder(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11, np.uint8))
    with pytest.raises(DataError, match="12 images but .* 11 labels"):
        load("idx", path=str(tmp_path))


def test_idx_labels_file_given_as_images_is_reported(tmp_path):
    make_idx_folder(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros(12, np.uint8))
    with pytest.raises(DataError, match="expected uint8 images"):
        load("idx", path=str(tmp_path))


def test_idx_test_images_without_labels_is_reported(tmp_path):
    make_idx_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="no matching t10k-labels"):
        load("idx", path=str(tmp_path))


# ----------------------------------------------------------------------------- cifar


class Py2StylePickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` opcodes, as the original CIFAR batches (cPickle, protocol 2) do."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2StylePickler(buf, protocol=2).dump(obj)
    # Python 2's numpy lived at numpy.core; protocol 2 names globals as text, so rename in place.
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def cifar10_files(n_per_batch: int = 4, batches: int = 2, py2: bool = False) -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    dump = py2_pickle if py2 else pickle.dumps
    files = {}
    for i in range(1, batches + 1):
        files[f"data_batch_{i}"] = dump({
            b"batch_label": f"training batch {i} of {batches}".encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, n_per_batch)],
            b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
            b"filenames": [b"img%d.png" % j for j in range(n_per_batch)],
        })
    files["test_batch"] = dump({
        b"batch_label": b"testing batch 1 of 1",
        b"labels": [int(v) for v in rng.integers(0, 10, 3)],
        b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8),
    })
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    files["batches.meta"] = dump({b"label_names": names, b"num_cases_per_batch": n_per_batch, b"num_vis": 3072})
    return files


def cifar100_files() -> dict[str, bytes]:
    rng = np.random.default_rng(2)

    def batch(n):
        return pickle.dumps({
            b"fine_labels": [int(v) for v in rng.integers(0, 100, n)],
            b"coarse_labels": [int(v) for v in rng.integers(0, 20, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        })

    meta = {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    }
    return {"train": batch(6), "test": batch(2), "meta": pickle.dumps(meta)}


def write_files(folder, files: dict[str, bytes]):
    folder.mkdir(parents=True, exist_ok=True)
    for name, blob in files.items():
        (folder / name).write_bytes(blob)
    return folder


def unpickled(blob: bytes):
    return pickle.loads(blob, encoding="bytes")


def check_cifar10(data: ArrayData, files: dict[str, bytes]):
    b1, b2, test = unpickled(files["data_batch_1"]), unpickled(files["data_batch_2"]), unpickled(files["test_batch"])
    assert data.x.shape == (8, 3, 32, 32) and data.x.dtype == np.uint8
    np.testing.assert_array_equal(data.x.reshape(8, -1), np.concatenate([b1[b"data"], b2[b"data"]]))
    np.testing.assert_array_equal(data.y, b1[b"labels"] + b2[b"labels"])
    np.testing.assert_array_equal(data.x_test.reshape(3, -1), test[b"data"])
    np.testing.assert_array_equal(data.y_test, test[b"labels"])
    assert data.classes[0] == "airplane" and len(data.classes) == 10
    # Channel planes: the first 1024 values of a row are the red image, row-major.
    np.testing.assert_array_equal(data.x[0, 0].ravel(), b1[b"data"][0, :1024])


def test_cifar10_folder_loads_batches_and_meta(tmp_path):
    files = cifar10_files()
    data = load("cifar", path=str(write_files(tmp_path, files)))
    check_cifar10(data, files)
    assert "CIFAR-10" in data.description


def test_cifar10_original_python2_pickles_load(tmp_path):
    files = cifar10_files(py2=True)
    assert b"cnumpy.core.multiarray\n_reconstruct" in files["data_batch_1"]
    data = load("cifar", path=str(write_files(tmp_path, files)))
    check_cifar10(data, files)


def test_cifar10_subfolder_is_found(tmp_path):
    files = cifar10_files()
    write_files(tmp_path / "cifar-10-batches-py", files)
    check_cifar10(load("cifar", path=str(tmp_path)), files)


def make_tar(path, folder_name: str, files: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(f"{folder_name}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def test_cifar10_tar_gz_loads_without_extracting(tmp_path):
    files = cifar10_files()
    archive = make_tar(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", files)
    data = load("cifar", path=str(archive))
    check_cifar10(data, files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-python.tar.gz"]


@pytest.mark.parametrize("labels,count,first", [("fine", 100, "fine0"), ("coarse", 20, "coarse0")])
def test_cifar100_fine_and_coarse_labels(tmp_path, labels, count, first):
    files = cifar100_files()
    write_files(tmp_path / "cifar-100-python", files)
    data = load("cifar", path=str(tmp_path), cifar_labels=labels)
    ref = unpickled(files["train"])
    assert data.x.shape == (6, 3, 32, 32) and data.x_test.shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(data.y, ref[f"{labels}_labels".encode()])
    assert len(data.classes) == count and data.classes[0] == first


def test_cifar100_tar_gz(tmp_path):
    files = cifar100_files()
    data = load("cifar", path=str(make_tar(tmp_path / "c.tar.gz", "cifar-100-python", files)))
    assert len(data.classes) == 100 and data.x.shape == (6, 3, 32, 32)


def test_cifar_bad_label_kind_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cifar_labels"):
        load("cifar", path=str(tmp_path), cifar_labels="medium")


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_malicious_pickle_is_refused_without_executing(tmp_path):
    marker = tmp_path / "pwned"
    files = cifar10_files()
    files["data_batch_1"] = pickle.dumps({b"data": Evil(marker), b"labels": [0]})
    write_files(tmp_path / "c", files)
    with pytest.raises(DataError, match="refused") as err:
        load("cifar", path=str(tmp_path / "c"))
    assert "system" in str(err.value) and "data_batch_1" in str(err.value)
    assert not marker.exists()


def test_cifar_malicious_member_in_tar_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    files = cifar10_files()
    files["batches.meta"] = pickle.dumps(Evil(marker))
    archive = make_tar(tmp_path / "c.tar.gz", "cifar-10-batches-py", files)
    with pytest.raises(DataError, match="refused"):
        load("cifar", path=str(archive))
    assert not marker.exists()


def test_safe_unpickler_refuses_other_numpy_callables():
    blob = pickle.dumps(np.load)  # a numpy function, but not an array constructor
    with pytest.raises(DataError, match="refused"):
        sources.safe_unpickle(io.BytesIO(blob), "blob")


def test_cifar_truncated_pickle_is_reported(tmp_path):
    files = cifar10_files()
    files["data_batch_2"] = files["data_batch_2"][:100]
    write_files(tmp_path, files)
    with pytest.raises(DataError, match="data_batch_2.*not a readable CIFAR pickle"):
        load("cifar", path=str(tmp_path))


def test_cifar_wrong_data_shape_is_reported(tmp_path):
    files = cifar10_files()
    files["data_batch_1"] = pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    write_files(tmp_path, files)
    with pytest.raises(DataError, match=r"uint8 array \(N, 3072\)"):
        load("cifar", path=str(tmp_path))


def test_cifar_corrupt_tar_is_reported(tmp_path):
    archive = make_tar(tmp_path / "c.tar.gz", "cifar-10-batches-py", cifar10_files())
    archive.write_bytes(archive.read_bytes()[:50])
    with pytest.raises(DataError, match="c.tar.gz"):
        load("cifar", path=str(archive))


def test_cifar_folder_without_batches_is_reported(tmp_path):
    with pytest.raises(DataError, match="no CIFAR-10 'data_batch_1' or CIFAR-100 'train'"):
        load("cifar", path=str(tmp_path))


# ----------------------------------------------------------------------------- folder of images


def save_png(path, arr: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def gray(v, hw=(6, 5)):
    return np.full(hw, v, np.uint8)


def rgb(v, hw=(6, 5)):
    a = np.zeros((*hw, 3), np.uint8)
    a[..., 0], a[..., 1], a[..., 2] = v, v // 2, 255 - v
    return a


def test_folder_grayscale_images_give_one_channel(tmp_path):
    for i in range(3):
        save_png(tmp_path / "cat" / f"{i}.png", gray(10 + i))
        save_png(tmp_path / "dog" / f"{i}.png", gray(100 + i))
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "dog" / "readme.md").write_text("ignored")
    data = load("folder", path=str(tmp_path))
    assert data.classes == ["cat", "dog"]
    assert data.x.shape == (6, 1, 6, 5) and data.x.dtype == np.uint8
    assert data.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.x[:, 0, 0, 0].tolist() == [10, 11, 12, 100, 101, 102]
    assert data.x_test is None


def test_folder_rgb_images_give_three_channels_in_chw(tmp_path):
    save_png(tmp_path / "a" / "0.png", rgb(200))
    save_png(tmp_path / "b" / "0.png", rgb(50))
    data = load("folder", path=str(tmp_path))
    assert data.x.shape == (2, 3, 6, 5)
    assert data.x[0, :, 0, 0].tolist() == [200, 100, 55]


def test_folder_mixed_gray_and_rgb_gives_rgb(tmp_path):
    save_png(tmp_path / "a" / "0.png", gray(7))
    save_png(tmp_path / "b" / "0.png", rgb(50))
    data = load("folder", path=str(tmp_path))
    assert data.x.shape == (2, 3, 6, 5)
    assert data.x[0, :, 0, 0].tolist() == [7, 7, 7]


def test_folder_grayscale_option_converts_rgb(tmp_path):
    save_png(tmp_path / "a" / "0.png", rgb(200))
    save_png(tmp_path / "b" / "0.png", rgb(50))
    data = load("folder", path=str(tmp_path), grayscale=True)
    assert data.x.shape == (2, 1, 6, 5)
    expected = np.asarray(Image.fromarray(rgb(200)).convert("L"))[0, 0]
    assert data.x[0, 0, 0, 0] == expected


def test_folder_train_test_subfolders_are_splits(tmp_path):
    for split, n in [("train", 3), ("test", 2)]:
        for cls in ("x", "y"):
            for i in range(n):
                save_png(tmp_path / split / cls / f"{i}.png", gray(i))
    data = load("folder", path=str(tmp_path))
    assert len(data.x) == 6 and len(data.x_test) == 4
    assert data.y_test.tolist() == [0, 0, 1, 1] and data.classes == ["x", "y"]


def test_folder_test_class_missing_from_train_is_reported(tmp_path):
    save_png(tmp_path / "train" / "x" / "0.png", gray(1))
    save_png(tmp_path / "train" / "y" / "0.png", gray(1))
    save_png(tmp_path / "test" / "z" / "0.png", gray(1))
    with pytest.raises(DataError, match="missing from .*: z"):
        load("folder", path=str(tmp_path))


def test_folder_size_mismatch_suggests_image_size(tmp_path):
    save_png(tmp_path / "a" / "0.png", gray(1, (6, 5)))
    save_png(tmp_path / "b" / "0.png", gray(1, (9, 9)))
    with pytest.raises(DataError, match="data.image_size=H,W") as err:
        load("folder", path=str(tmp_path))
    assert "9x9" in str(err.value) and "0.png" in str(err.value)


def test_folder_image_size_resizes_all(tmp_path):
    save_png(tmp_path / "a" / "0.png", gray(30, (6, 5)))
    save_png(tmp_path / "b" / "0.png", gray(60, (9, 9)))
    data = load("folder", path=str(tmp_path), image_size=[4, 3])
    assert data.x.shape == (2, 1, 4, 3)
    assert data.x[0].min() == data.x[0].max() == 30 and data.x[1].max() == 60


@pytest.mark.parametrize("bad", [[4], [0, 3], [4, -1]])
def test_folder_bad_image_size_is_config_error(tmp_path, bad):
    save_png(tmp_path / "a" / "0.png", gray(1))
    with pytest.raises(ConfigError, match="data.image_size"):
        load("folder", path=str(tmp_path), image_size=bad)


def test_folder_corrupt_png_names_the_file(tmp_path):
    save_png(tmp_path / "a" / "0.png", gray(1))
    save_png(tmp_path / "b" / "0.png", gray(1))
    broken = tmp_path / "b" / "1.png"
    broken.write_bytes((tmp_path / "b" / "0.png").read_bytes()[:30])
    with pytest.raises(DataError, match="cannot be decoded") as err:
        load("folder", path=str(tmp_path))
    assert str(broken) in str(err.value)


def test_folder_16bit_png_keeps_top_byte(tmp_path):
    arr = np.full((4, 4), 0x8000, np.uint16)
    save_png(tmp_path / "a" / "0.png", arr)
    save_png(tmp_path / "b" / "0.png", gray(1, (4, 4)))
    data = load("folder", path=str(tmp_path))
    assert data.x[0, 0, 0, 0] == 0x80


def test_folder_empty_class_folder_is_reported(tmp_path):
    save_png(tmp_path / "a" / "0.png", gray(1))
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match="has no image files"):
        load("folder", path=str(tmp_path))


def test_folder_without_class_folders_is_reported(tmp_path):
    save_png(tmp_path / "0.png", gray(1))
    with pytest.raises(DataError, match="no class sub-folders"):
        load("folder", path=str(tmp_path))


# ----------------------------------------------------------------------------- npz


def test_npz_uncompressed_is_memory_mapped(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (20, 1, 4, 4), dtype=np.uint8)
    y = np.arange(20) % 4
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=x[:5], y_test=y[:5])
    data = load("npz", path=str(tmp_path / "d.npz"))
    assert isinstance(data.x, np.memmap) and isinstance(data.x_test, np.memmap)
    np.testing.assert_array_equal(data.x, x)
    np.testing.assert_array_equal(data.x_test, x[:5])
    np.testing.assert_array_equal(data.y, y)
    assert data.x.flags.writeable  # copy-on-write: writable in memory, never written to the file
    data.x[0, 0, 0, 0] = 7 if x[0, 0, 0, 0] != 7 else 8
    np.testing.assert_array_equal(np.load(tmp_path / "d.npz")["x"], x)


def test_npz_float32_signal_stays_mapped_and_float64_becomes_float32(tmp_path):
    x = np.random.default_rng(0).normal(size=(10, 2, 8)).astype(np.float32)
    np.savez(tmp_path / "a.npz", x=x, y=np.arange(10) % 2)
    data = load("npz", path=str(tmp_path / "a.npz"))
    assert isinstance(data.x, np.memmap) and data.x.dtype == np.float32 and data.kind == "signal"
    np.savez(tmp_path / "b.npz", x=x.astype(np.float64).reshape(10, 16), y=np.arange(10) % 2)
    data = load("npz", path=str(tmp_path / "b.npz"))
    assert data.x.dtype == np.float32 and data.x.shape == (10, 16) and data.kind == "tabular"


def test_npz_compressed_loads_into_memory(tmp_path):
    x = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    np.savez_compressed(tmp_path / "d.npz", x=x, y=np.arange(10) % 2)
    data = load("npz", path=str(tmp_path / "d.npz"))
    assert not isinstance(data.x, np.memmap)
    np.testing.assert_array_equal(data.x, x)


def test_npz_fortran_order_member_maps_correctly(tmp_path):
    x = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(4, 3))
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 0, 1]))
    np.testing.assert_array_equal(load("npz", path=str(tmp_path / "d.npz")).x, x)


def test_npz_alternative_names_and_string_labels(tmp_path):
    X = np.ones((4, 2), np.float32)
    np.savez(tmp_path / "d.npz", X=X, labels=np.array(["dog", "cat", "dog", "emu"]))
    data = load("npz", path=str(tmp_path / "d.npz"))
    assert data.classes == ["cat", "dog", "emu"] and data.y.tolist() == [1, 0, 1, 2]


def test_npz_class_names_array_is_used(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((3, 2)), y=[0, 1, 0], classes=np.array(["neg", "pos"]))
    assert load("npz", path=str(tmp_path / "d.npz")).classes == ["neg", "pos"]


def test_npz_channels_last_images_are_moved_to_chw(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(5) % 2)
    data = load("npz", path=str(tmp_path / "d.npz"))
    assert data.x.shape == (5, 3, 8, 8)
    np.testing.assert_array_equal(data.x, x.transpose(0, 3, 1, 2))


def test_npz_missing_y_lists_arrays(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((3, 2)), target=np.zeros(3))
    with pytest.raises(DataError, match=r"no 'y' array \(arrays: x, target\)"):
        load("npz", path=str(tmp_path / "d.npz"))


@pytest.mark.parametrize("cut", [10, 200, -20])
def test_npz_truncated_file_is_data_error(tmp_path, cut):
    np.savez(tmp_path / "d.npz", x=np.ones((30, 20), np.float32), y=np.zeros(30, np.int64))
    blob = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "d.npz").write_bytes(blob[:cut])
    with pytest.raises(DataError, match="d.npz"):
        load("npz", path=str(tmp_path / "d.npz"))


def test_npz_damaged_member_data_is_data_error(tmp_path):
    # Central directory intact, but the stored member is shorter than its .npy header claims.
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ones((30, 20), np.float32))
    with zipfile.ZipFile(tmp_path / "d.npz", "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("x.npy", buf.getvalue()[:-100])
        zf.writestr("y.npy", _npy(np.zeros(30, np.int64)))
    with pytest.raises(DataError, match="truncated or damaged"):
        load("npz", path=str(tmp_path / "d.npz"))


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_npz_object_arrays_are_never_unpickled(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.array([[1, "a"]], dtype=object), y=np.zeros(1))
    with pytest.raises(DataError, match="Python objects"):
        load("npz", path=str(tmp_path / "d.npz"))


def test_npz_bad_shape_is_reported(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones(5), y=np.zeros(5))
    with pytest.raises(DataError, match=r"expected \(N, F\) tabular"):
        load("npz", path=str(tmp_path / "d.npz"))


def test_npz_non_integer_labels_are_reported(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((3, 2)), y=np.array([0.0, 0.5, 1.0]))
    with pytest.raises(DataError, match="whole numbers"):
        load("npz", path=str(tmp_path / "d.npz"))


# ----------------------------------------------------------------------------- csv


def test_csv_string_labels_map_to_sorted_classes(tmp_path):
    f = tmp_path / "iris.csv"
    f.write_text("a,b,label\n1,2,setosa\n3.5,-4,virginica\n5,6e1,setosa\n7,8,versicolor\n")
    data = load("csv", path=str(f))
    assert data.x.dtype == np.float32 and data.x.shape == (4, 2)
    np.testing.assert_array_equal(data.x, [[1, 2], [3.5, -4], [5, 60], [7, 8]])
    assert data.classes == ["setosa", "versicolor", "virginica"]
    assert data.y.tolist() == [0, 2, 0, 1] and data.y.dtype == np.int64


def test_csv_label_column_by_index_and_numeric_labels_sort_numerically(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("target,x1,x2\n10,1,2\n2,3,4\n\n10,5,6\n")  # a blank line is skipped
    data = load("csv", path=str(f), label_column="0")
    assert data.classes == ["2", "10"] and data.y.tolist() == [1, 0, 1]
    np.testing.assert_array_equal(data.x, [[1, 2], [3, 4], [5, 6]])


def test_csv_semicolons_and_bom_are_handled(tmp_path):
    f = tmp_path / "d.csv"
    f.write_bytes("\ufeffx;y;label\n1,5;2;a\n3;4;b\n".replace("1,5", "1.5").encode("utf-8"))
    data = load("csv", path=str(f))
    np.testing.assert_array_equal(data.x, [[1.5, 2], [3, 4]])


def test_csv_non_numeric_names_column_and_line(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("a,b,label\n1,2,x\n3,oops,y\n")
    with pytest.raises(DataError, match=r"column 'b' at line 3 holds 'oops'") as err:
        load("csv", path=str(f))
    assert str(f) in str(err.value)


def test_csv_ragged_row_is_reported(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("a,b,label\n1,2,x\n3,y\n")
    with pytest.raises(DataError, match="line 3 has 2 fields but the header has 3"):
        load("csv", path=str(f))


def test_csv_unknown_label_column_lists_columns(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("a,b,class\n1,2,x\n")
    with pytest.raises(ConfigError, match="columns: a, b, class"):
        load("csv", path=str(f))


def test_csv_empty_and_header_only_files_are_reported(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("")
    with pytest.raises(DataError, match="is empty"):
        load("csv", path=str(f))
    f.write_text("a,label\n")
    with pytest.raises(DataError, match="no data rows"):
        load("csv", path=str(f))


def test_csv_not_utf8_is_reported(tmp_path):
    f = tmp_path / "d.csv"
    f.write_bytes(b"a,label\n1,\xff\xfe\n")
    with pytest.raises(DataError, match="not UTF-8"):
        load("csv", path=str(f))
