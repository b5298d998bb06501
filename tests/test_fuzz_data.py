"""Fuzzing the data readers: random bytes and mutated valid files either load or raise TrainwellError.

Each reader (IDX, npy, npz, csv, CIFAR folder and .tar.gz, image folder, and predict's
``read_inputs``) gets random bytes, mutations (bytes flipped, inserted, deleted, the file cut)
of a small valid file, and headers that lie about their sizes. Nothing else may escape: no other
exception, no warning (a printed RuntimeWarning is noise the user cannot act on), no hang (the hypothesis profile in
conftest.py gives each example a deadline), and nothing written outside the example's own
temporary folder (the cache folder and the working directory are compared before and after).
Examples are bounded by the profile (TRAINWELL_FUZZ_EXAMPLES, 60 by default).
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

# The opcode builder and PNG writer of the crafted-file tests, reused to assemble hostile inputs.
from test_hostile_data import DTYPE, NDARRAY, RECONSTRUCT, Op, array, build, call, dict_of, dtype, lit, pickled, png_header_only, tup
from trainwell.config import DataConfig
from trainwell.data import load_splits, read_inputs
from trainwell.errors import TrainwellError

# ----------------------------------------------------------------------------- mutations

MUTATION = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "truncate", "overwrite"]),
    st.one_of(st.integers(0, 256), st.integers(0, 1 << 16)),  # headers live near the start: favour it
    st.binary(min_size=1, max_size=8),
)


def mutate(data: bytes, ops: list[tuple[str, int, bytes]]) -> bytes:
    """``data`` after each operation, its position taken modulo the current length."""
    out = bytearray(data)
    for op, position, payload in ops:
        at = position % (len(out) + 1)
        if op == "flip" and at < len(out):
            out[at] ^= payload[0] or 0xFF
        elif op == "insert":
            out[at:at] = payload
        elif op == "delete":
            del out[at : at + len(payload)]
        elif op == "truncate":
            del out[at:]
        elif op == "overwrite":
            out[at : at + len(payload)] = payload
    return bytes(out)


def hostile(valid: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, or ``valid`` mutated by one to four operations."""
    return st.one_of(st.binary(max_size=1024), st.lists(MUTATION, min_size=1, max_size=4).map(lambda ops: mutate(valid, ops)))


# ----------------------------------------------------------------------------- the contract


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.is_dir() else set()


def loads_or_refuses(read, folder: Path) -> None:
    """Run ``read()``: it may return or raise a one-line TrainwellError, and writes nothing anywhere."""
    cache = Path(os.environ.get("TRAINWELL_CACHE", tempfile.gettempdir()))
    before = (snapshot(folder), snapshot(cache), set(os.listdir(os.getcwd())))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            read()
        except TrainwellError as exc:
            assert "\n" not in str(exc), str(exc)
    assert not caught, [f"{w.category.__name__}: {w.message}" for w in caught]
    assert (snapshot(folder), snapshot(cache), set(os.listdir(os.getcwd()))) == before


def load(name: str, path: Path, **kw):
    """What ``trainwell train`` does with the data: read, validate, split."""
    return load_splits(DataConfig(name=name, path=str(path), **kw))


# ----------------------------------------------------------------------------- valid files

RNG = np.random.default_rng(0)


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    return bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


IDX_IMAGES = idx_bytes(RNG.integers(0, 256, (6, 3, 3), dtype=np.uint8))
IDX_LABELS = idx_bytes(np.array([0, 1, 2, 1, 0, 2], np.uint8))


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def npz_bytes(compressed: bool, **arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


X_TAB = RNG.normal(size=(8, 3))  # float64: mutated exponents can leave float32's range
Y = np.arange(8) % 2
NPZ = {c: npz_bytes(c, x=X_TAB, y=Y, x_test=X_TAB[:4], y_test=Y[:4]) for c in (False, True)}
CSV = b"a,b,label\n1.5,2,cat\n-3,4e3,dog\n0,1,cat\n2,2,dog\n1,7,cat\n5,1,dog\n"


def cifar_batch(n: int, protocol) -> bytes:
    batch = {b"data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [int(v) for v in RNG.integers(0, 10, n)]}
    return pickle.dumps(batch, protocol=protocol)


CIFAR = {p: cifar_batch(3, p) for p in (2, 4, 5)}
CIFAR_META = pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}, protocol=2)


def image_bytes(fmt: str, rgb: bool = False) -> bytes:
    pixels = RNG.integers(0, 256, (6, 5, 3) if rgb else (6, 5), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


IMAGES = {".png": image_bytes("PNG"), ".jpg": image_bytes("JPEG", rgb=True), ".gif": image_bytes("GIF"), ".bmp": image_bytes("BMP")}


def tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


CIFAR_TAR = tar_gz({"data_batch_1": CIFAR[2], "batches.meta": CIFAR_META})

# ----------------------------------------------------------------------------- the readers


# Headers that lie: any type code, any dimensions, a few bytes of data.
LYING_IDX = st.builds(
    lambda code, dims, tail: bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + tail,
    st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]),
    st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4),
    st.binary(max_size=64),
)


IDX_FILES = {"images": ("train-images-idx3-ubyte", IDX_IMAGES), "labels": ("train-labels-idx1-ubyte", IDX_LABELS)}


@given(role=st.sampled_from(sorted(IDX_FILES)), mode=st.sampled_from(["raw", "gz", "gz stream"]), data=st.data())
def test_fuzz_idx(role, mode, data):
    valid = IDX_FILES[role][1]
    if mode == "gz stream":  # the .gz file itself damaged, not only what it holds
        blob = data.draw(hostile(gzip.compress(valid, mtime=0)))
    else:
        content = data.draw(st.one_of(hostile(valid), LYING_IDX))
        blob = gzip.compress(content, mtime=0) if mode == "gz" else content
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        for which, (name, good) in IDX_FILES.items():
            if which == role:
                (folder / (name + ("" if mode == "raw" else ".gz"))).write_bytes(blob)
            else:
                (folder / name).write_bytes(good)
        loads_or_refuses(lambda: load("idx", folder), folder)


def lying_npz(shape: tuple[int, ...], descr: str, compressed: bool, tail: bytes) -> bytes:
    """An npz whose x.npy header declares ``shape`` of ``descr`` but holds only ``tail``."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False, "shape": shape})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED) as zf:
        zf.writestr("x.npy", header.getvalue() + tail)
        zf.writestr("y.npy", npy_bytes(Y))
    return buf.getvalue()


LYING_NPZ = st.builds(
    lying_npz,
    st.lists(st.integers(0, 2**40), min_size=1, max_size=3).map(tuple),
    st.sampled_from(["<f8", "|u1", "<i4", "<U1000", "<f8"]),
    st.booleans(),
    st.binary(max_size=64),
)


@given(blob=st.one_of(hostile(NPZ[False]), hostile(NPZ[True]), LYING_NPZ))
def test_fuzz_npz(blob):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        (folder / "d.npz").write_bytes(blob)
        loads_or_refuses(lambda: load("npz", folder / "d.npz"), folder)


# Short units repeated into tens of kilobytes: quotes, delimiters and newlines in bulk, which
# made csv.Sniffer's regular expressions run for minutes.
REPEATED_TEXT = st.builds(
    lambda unit, n: (unit * n).encode(),
    st.one_of(st.sampled_from(['"\n', 'a,"', ',"a', '",,,']), st.text(alphabet='",;\t|\n a1', min_size=1, max_size=4)),
    st.integers(4_000, 20_000),
)


@given(blob=st.one_of(hostile(CSV), st.text(max_size=300).map(str.encode), REPEATED_TEXT))
def test_fuzz_csv(blob):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        (folder / "d.csv").write_bytes(blob)
        loads_or_refuses(lambda: load("csv", folder / "d.csv"), folder)


# numpy-shaped pickles assembled at random from the pieces an attacker would use (the opcode
# builder of test_hostile_data): dtypes of any spec with any state, _reconstruct/ndarray/scalar
# calls with any arguments, BUILDs with any state, bytes that may be forged pointers. Run
# in-process: a crash kills the test run, which is the point.

SCALAR = Op(b"cnumpy._core.multiarray\nscalar\n")
FROMBUFFER = Op(b"cnumpy._core.numeric\n_frombuffer\n")
SPECS = ["u1", "i8", "f8", "b1", "S3", "O8", "V8", "f16", "U2", "c16", "M8"]
LEAVES = st.one_of(
    st.integers(-(2**66), 2**66),
    st.sampled_from([0, 1, 3, -1, 63, 3072, None, True, False, (0,), (1,), (2, 3072), b"b", "|", "<", "C", "a", ("a",)]),
    st.binary(max_size=24),
    st.sampled_from(SPECS),
).map(lit)


# Dtype states numpy writes or an attacker forges: plain, object flags (1: "holds references"
# without numpy's "pickled as a list", the state that made the old reader free forged pointers;
# 63: numpy's own for objects), flexible sizes, a later version with metadata.
FORGED_STATES = [(3, "|", None, None, None, -1, -1, f) for f in (0, 1, 63)]
DTYPE_STATES = st.one_of(
    st.sampled_from(FORGED_STATES),
    st.sampled_from([(3, o, None, None, None, e, a, f) for o in "|<" for e, a in ((-1, -1), (8, 1)) for f in (0, 1, 63)]),
    st.just((4, "|", None, None, None, -1, -1, 0, {})),
).map(lit)


def well_formed_array(spec: str, state: Op, n: int, raw: bytes) -> Op:
    """An array of ``n`` 8-byte items whose sizes agree: only its dtype (and raw bytes) are hostile."""
    return array((n,), raw[: 8 * n].ljust(8 * n, b"A"), dtype(spec, state))


WELL_FORMED_ARRAYS = st.builds(well_formed_array, st.sampled_from(["O8", "V8", "i8"]), DTYPE_STATES, st.integers(1, 3), st.binary(max_size=24))


def pieces(children: st.SearchStrategy[Op]) -> st.SearchStrategy[Op]:
    state = st.lists(children, max_size=9).map(lambda items: tup(*items))
    return st.one_of(
        WELL_FORMED_ARRAYS,
        st.builds(lambda spec, s: dtype(spec, s), st.sampled_from(SPECS), st.one_of(st.none(), state)),
        st.builds(lambda shape, raw, dt, v, f: array(shape, raw, dt, v, f), children, children, st.one_of(st.none(), children), children, children),
        st.builds(lambda args: call(RECONSTRUCT, *args), st.lists(children, max_size=4)),
        st.builds(lambda args: call(NDARRAY, *args), st.lists(children, max_size=3)),
        st.builds(lambda args: call(DTYPE, *args), st.lists(children, max_size=4)),
        st.builds(lambda args: call(SCALAR, *args), st.lists(children, max_size=3)),
        st.builds(lambda args: call(FROMBUFFER, *args), st.lists(children, max_size=5)),
        st.builds(build, children, children),
        st.lists(children, max_size=4).map(lambda items: Op(b"](" + b"".join(items) + b"e")),
        st.lists(children, max_size=4).map(lambda items: tup(*items)),
    )


PICKLE_VALUES = st.recursive(LEAVES, pieces, max_leaves=12)


VALUES = st.one_of(WELL_FORMED_ARRAYS, PICKLE_VALUES)
ASSEMBLED = {
    "data_batch_1": st.builds(lambda data, labels: pickled(dict_of(data=data, labels=labels)), VALUES, VALUES),
    "batches.meta": VALUES.map(lambda names: pickled(dict_of(label_names=names))),
}


@given(protocol=st.sampled_from(sorted(CIFAR)), data=st.data())
def test_fuzz_cifar_folder(protocol, data):
    # A training batch and the meta file, each mutated from a valid file or assembled as above.
    files = {"data_batch_1": CIFAR[protocol], "batches.meta": CIFAR_META}
    files = {name: data.draw(st.one_of(hostile(valid), ASSEMBLED[name]), label=name) for name, valid in files.items()}
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        for name, content in {**files, "test_batch": CIFAR[4]}.items():
            (folder / name).write_bytes(content)
        loads_or_refuses(lambda: load("cifar", folder), folder)


@given(blob=st.one_of(hostile(CIFAR_TAR), hostile(CIFAR[5]).map(lambda b: tar_gz({"data_batch_1": b, "batches.meta": CIFAR_META}))))
def test_fuzz_cifar_tar_gz(blob):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        (folder / "cifar-10-python.tar.gz").write_bytes(blob)
        loads_or_refuses(lambda: load("cifar", folder / "cifar-10-python.tar.gz"), folder)


# A PNG header declaring any size (Pillow detects the format from the bytes, whatever the suffix).
SIDE = st.one_of(st.integers(9_000, 14_000), st.integers(1, 2**31 - 1))  # around Pillow's limits (~9,500 and ~13,400 square), and beyond
LYING_PNG = st.builds(png_header_only, SIDE, SIDE)


@given(suffix=st.sampled_from(sorted(IMAGES)), data=st.data())
def test_fuzz_image_folder(suffix, data):
    blob = data.draw(st.one_of(hostile(IMAGES[suffix]), LYING_PNG))
    with tempfile.TemporaryDirectory() as d:
        folder = image_folder(Path(d), suffix, blob)
        loads_or_refuses(lambda: load("folder", folder, image_size=[6, 5]), folder)


def image_folder(folder: Path, suffix: str, blob: bytes) -> Path:
    """Classes a/ and b/ of three images each, the first of a/ being ``blob``."""
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        for i in range(3):
            (folder / cls / f"{i}{suffix}").write_bytes(blob if (cls, i) == ("a", 0) else IMAGES[suffix])
    return folder


FLOAT64_ROWS = st.lists(st.lists(st.floats(width=64), min_size=3, max_size=3), min_size=8, max_size=12)


@given(rows=FLOAT64_ROWS, reader=st.sampled_from(["npz", "csv", "predict"]))
def test_fuzz_float64_values(rows, reader):
    # Any float64 at all (huge, tiny, NaN, inf): loaded, or refused in one line; never a warning.
    x = np.array(rows)
    y = np.arange(len(x)) % 2
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        if reader == "csv":
            text = "a,b,c,label\n" + "".join(",".join(map(repr, r)) + f",{c}\n" for r, c in zip(rows, y))
            (folder / "d.csv").write_text(text)
            loads_or_refuses(lambda: load("csv", folder / "d.csv"), folder)
        elif reader == "npz":
            np.savez(folder / "d.npz", x=x, y=y)
            loads_or_refuses(lambda: load("npz", folder / "d.npz"), folder)
        else:
            np.save(folder / "x.npy", x)
            loads_or_refuses(lambda: read_inputs([str(folder / "x.npy")], (3,), image=False), folder)


PREDICT_FILES = {".npy": npy_bytes(X_TAB), ".npz": NPZ[False], ".png": IMAGES[".png"]}


@given(suffix=st.sampled_from(sorted(PREDICT_FILES)), data=st.data())
def test_fuzz_predict_inputs(suffix, data):
    blob = data.draw(hostile(PREDICT_FILES[suffix]))
    image = suffix == ".png"
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        (folder / f"in{suffix}").write_bytes(blob)
        loads_or_refuses(lambda: read_inputs([str(folder / f"in{suffix}")], (1, 6, 5) if image else (3,), image=image), folder)


def test_the_valid_files_load():
    # The mutations start from these: they must be valid, or the fuzzing tests only errors.
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        for name, blob in {"train-images-idx3-ubyte": IDX_IMAGES, "train-labels-idx1-ubyte": IDX_LABELS,
                           "d.npz": NPZ[True], "d.csv": CSV, "c.tar.gz": CIFAR_TAR}.items():
            (folder / name).write_bytes(blob)
        assert load("idx", folder).train.x.shape[1:] == (1, 3, 3)
        assert load("npz", folder / "d.npz").test.x.shape == (4, 3)
        assert load("csv", folder / "d.csv").classes == ["cat", "dog"]
        assert load("cifar", folder / "c.tar.gz").train.x.shape[1:] == (3, 32, 32)
        for suffix, blob in IMAGES.items():
            (folder / f"i{suffix}").write_bytes(blob)
            assert read_inputs([str(folder / f"i{suffix}")], (1, 6, 5), image=True).shape == (1, 1, 6, 5)
            images = image_folder(folder / suffix[1:], suffix, blob)
            assert load("folder", images, image_size=[6, 5]).train.x.shape[1:] in ((1, 6, 5), (3, 6, 5))
        for protocol, blob in CIFAR.items():
            (folder / "data_batch_1").write_bytes(blob)
            assert load("cifar", folder).train.x.shape[1:] == (3, 32, 32), protocol
