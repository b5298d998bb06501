"""Hostile data files: crafted pickles, lying headers, bombs and out-of-range floats each end in one DataError.

The crafted CIFAR pickles are written opcode by opcode (see ``Op``) as an attacker would, not by
numpy. Most are fed to the reader in-process; a few, including the two that crashed the old
reader with SIGSEGV, run through ``trainwell train`` in a subprocess, which must stay alive and
print one line.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from trainwell.config import DataConfig
from trainwell.data import DATASETS, ArrayData, load_splits, read_inputs
from trainwell.errors import DataError

from test_data_sources import py2_pickle  # Python-2-style CIFAR pickles, as the originals


def load(name: str, **kw) -> ArrayData:
    return DATASETS.get(name)(DataConfig(name=name, **kw))


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message.strip() == message, message
    return message


# ----------------------------------------------------------------------------- pickle opcodes


class Op(bytes):
    """Pickle opcodes that push one value; plain Python values are turned into opcodes by ``lit``."""


def lit(value) -> Op:
    buf = io.BytesIO()
    pickler = pickle._Pickler(buf, protocol=3)
    pickler.fast = True  # no memo opcodes: the crafted pickles below control every memo index
    pickler.dump(value)
    return Op(buf.getvalue()[2:-1])  # without PROTO and STOP


def ex(value) -> Op:
    return value if isinstance(value, Op) else lit(value)


def glob(module: str, name: str) -> Op:
    return Op(b"c" + f"{module}\n{name}\n".encode())


def tup(*items) -> Op:
    return Op(b"(" + b"".join(ex(i) for i in items) + b"t")


def call(fn: Op, *args) -> Op:
    return Op(fn + tup(*args) + b"R")


def build(obj: Op, state) -> Op:
    return Op(obj + ex(state) + b"b")


def dict_of(**items) -> Op:
    return Op(b"}(" + b"".join(lit(k.encode()) + ex(v) for k, v in items.items()) + b"u")


def pickled(value) -> bytes:
    return b"\x80\x03" + ex(value) + b"."


RECONSTRUCT = glob("numpy._core.multiarray", "_reconstruct")
NDARRAY = glob("numpy", "ndarray")
DTYPE = glob("numpy", "dtype")
POINTERS = struct.pack("<QQ", 0x4141414141, 0x4242424242)  # forged object pointers


def plain_state(spec: str) -> tuple:
    """numpy's own dtype state for a plain type string."""
    if spec.startswith("S"):
        return (3, "|", None, None, None, int(spec[1:]), 1, 0)
    return (3, "|" if spec[1:] == "1" else "<", None, None, None, -1, -1, 0)


def dtype(spec: str = "u1", state=None) -> Op:
    return build(call(DTYPE, spec, False, True), plain_state(spec) if state is None else state)


def array(shape, raw, dt: Op | None = None, version=1, fortran=False, head: Op | None = None) -> Op:
    head = call(RECONSTRUCT, NDARRAY, (0,), b"b") if head is None else head
    return build(head, tup(version, shape, dt or dtype(), fortran, raw))


def object_field_dtype(flags: int) -> Op:
    """A structured dtype whose one field holds objects, with the flags forged to ``flags``."""
    fields = Op(b"}(" + lit("a") + tup(dtype("O8", (3, "|", None, None, None, -1, -1, 63)), 0) + b"u")
    return build(call(DTYPE, "V8", False, True), tup(3, "|", None, ("a",), fields, 8, 1, flags))


# ----------------------------------------------------------------------------- cifar folders

N = 2
NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def good_data() -> Op:
    return array((N, 3072), bytes(range(256)) * (N * 12))


def batch(data=None, labels=None) -> bytes:
    return pickled(dict_of(data=good_data() if data is None else data, labels=[0, 1] if labels is None else labels))


def meta(label_names=None) -> bytes:
    return pickled(dict_of(label_names=NAMES if label_names is None else label_names))


def write_cifar(folder: Path, **files: bytes) -> Path:
    """A CIFAR-10 folder: data_batch_1, test_batch and batches.meta, each replaceable by name."""
    folder.mkdir(parents=True, exist_ok=True)
    default = {"data_batch_1": batch(), "test_batch": batch(), "batches.meta": meta()}
    for name, blob in {**default, **{k.replace("_meta", ".meta"): v for k, v in files.items()}}.items():
        (folder / name).write_bytes(blob)
    return folder


LABEL_FORMS = {
    "ints": lambda y: [int(v) for v in y],
    "numpy int64 scalars": lambda y: list(y.astype(np.int64)),
    "int64 array": lambda y: y.astype(np.int64),
    "big-endian int32 array": lambda y: y.astype(">i4"),
}


@pytest.mark.parametrize("protocol", [2, 3, 4, 5, "py2"])
@pytest.mark.parametrize("labels", sorted(LABEL_FORMS))
def test_numpy_pickles_of_cifar_batches_load_at_every_protocol(tmp_path, protocol, labels):
    # numpy's own reduce output: _reconstruct + BUILD (protocols 2-4, bytes via _codecs.encode at
    # protocol 2), _frombuffer (protocol 5), numpy.core.multiarray.scalar for np.int64 labels.
    rng = np.random.default_rng(0)
    dump = py2_pickle if protocol == "py2" else (lambda o: pickle.dumps(o, protocol=protocol))
    x = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    y = rng.integers(0, 10, 3)
    files = {
        "data_batch_1": dump({b"data": x, b"labels": LABEL_FORMS[labels](y), b"filenames": [b"a.png"] * 3}),
        "test_batch": dump({b"data": x[:2], b"labels": LABEL_FORMS[labels](y[:2])}),
        "batches_meta": dump({b"label_names": NAMES, b"num_vis": np.int64(3072)}),
    }
    data = load("cifar", path=str(write_cifar(tmp_path, **files)))
    np.testing.assert_array_equal(data.x.reshape(3, -1), x)
    np.testing.assert_array_equal(data.y, y)
    np.testing.assert_array_equal(data.x_test.reshape(2, -1), x[:2])
    assert data.x.flags.writeable and data.y.dtype == np.int64 and data.classes == [n.decode() for n in NAMES]


# Each crafted pickle: (the file it replaces, its bytes, a fragment of the refusal).
CRAFTED = {
    "object dtype O8 array in data": (
        "data_batch_1",
        batch(data=array((1, 2), POINTERS, dt=dtype("O8", (3, "|", None, None, None, -1, -1, 63)))),
        "numpy dtype 'O8'",
    ),
    "fields on a plain dtype's state": (
        "data_batch_1",
        batch(labels=array((2,), bytes(16), dt=dtype("u8", (3, "<", None, ("a",), {"a": 0}, -1, -1, 0)))),
        "fields, subarrays or object flags",
    ),
    "structured dtype V8": ("data_batch_1", batch(labels=array((2,), bytes(16), dt=dtype("V8", plain_state("u8")))), "'V8'"),
    "dtype state version 4": (
        "data_batch_1",
        batch(labels=array((2,), bytes(2), dt=dtype("u1", (4, "|", None, None, None, -1, -1, 0, {})))),
        "fields, subarrays or object flags",
    ),
    "dtype with object flags": (
        "data_batch_1",
        batch(labels=array((2,), bytes(16), dt=dtype("i8", (3, "<", None, None, None, -1, -1, 63)))),
        "fields, subarrays or object flags",
    ),
    "array state version 0": ("data_batch_1", batch(data=array((N, 3072), bytes(N * 3072), version=0)), "(1, shape, dtype"),
    "_reconstruct of a non-ndarray": (
        "data_batch_1",
        batch(data=array((N, 3072), bytes(N * 3072), head=call(RECONSTRUCT, DTYPE, (0,), b"b"))),
        "_reconstruct with arguments",
    ),
    "_reconstruct nested in _reconstruct": (
        "data_batch_1",
        batch(data=array((N, 3072), bytes(N * 3072), head=call(RECONSTRUCT, call(RECONSTRUCT, NDARRAY, (0,), b"b"), (0,), b"b"))),
        "_reconstruct with arguments",
    ),
    "dtype of a dtype": ("data_batch_1", batch(labels=array((2,), bytes(2), dt=build(call(DTYPE, dtype(), False, True), plain_state("u1")))), "asks for the numpy dtype"),
    "ndarray called directly": ("data_batch_1", batch(data=call(NDARRAY, (N, 3072), dtype())), "calls numpy.ndarray directly"),
    "ndarray as a value": ("batches.meta", meta(label_names=NDARRAY), "holds numpy.ndarray as a value"),
    "built dtype used as a value": ("batches.meta", meta(label_names=dtype("i8")), "holds a numpy dtype as a value"),
    "dtype built twice": ("data_batch_1", batch(labels=array((2,), bytes(16), dt=build(dtype("i8"), plain_state("i8")))), "twice"),
    "array built twice": ("data_batch_1", batch(data=build(good_data(), tup(1, (N, 3072), dtype(), False, bytes(N * 3072)))), "twice"),
    "array never built": ("data_batch_1", batch(data=call(RECONSTRUCT, NDARRAY, (0,), b"b")), "never builds"),
    "huge shape, small rawdata": ("data_batch_1", batch(data=array((10**12, 3072), bytes(100))), "beyond any CIFAR array"),
    "zero-size shape whose size overflows": ("data_batch_1", batch(data=array((0, 2**70, 2**70), b"")), "beyond any CIFAR array"),
    "shape and rawdata disagree": ("data_batch_1", batch(data=array((N, 3072), bytes(100))), "shape (2, 3072)"),
    "negative dimension": ("data_batch_1", batch(data=array((-1, 3072), bytes(3072))), "non-negative integers"),
    "rawdata not bytes": ("data_batch_1", batch(data=array((N, 3072), [0] * (N * 3072))), "not bytes"),
    "memo index in the billions": ("data_batch_1", b"\x80\x03N" + b"r" + struct.pack("<I", 2**32 - 1) + b".", "memo index"),
    # STACK_GLOBAL takes the names from the stack, so they may hold newlines: the message stays one line.
    "unknown global with a newline in its name": (
        "batches.meta",
        meta(label_names=call(Op(lit("os\nimport") + lit("system") + b"\x93"), "true")),
        "'os\\nimport.system'",
    ),
    "container holding itself": ("data_batch_1", batch(labels=Op(b"]q\x00h\x00a")), "contains itself"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_cifar_pickle_is_refused_in_one_line(tmp_path, case):
    # First the folder with the builder's valid files: they load, so the refusal is the crafted part's.
    valid = load("cifar", path=str(write_cifar(tmp_path / "valid")))
    assert valid.x.shape == (N, 3, 32, 32) and valid.x.reshape(N, -1)[0, :256].tolist() == list(range(256))
    assert valid.y.tolist() == [0, 1] and valid.classes == [n.decode() for n in NAMES]
    name, blob, fragment = CRAFTED[case]
    folder = write_cifar(tmp_path / "c", **{name.replace(".", "_"): blob})
    with pytest.raises(DataError) as err:
        load("cifar", path=str(folder))
    message = one_line_error(err)
    assert f"'{folder / name}'" in message and "refused to unpickle" in message and fragment in message, message


def test_crafted_cifar_member_of_a_tar_gz_is_refused(tmp_path):
    files = {"data_batch_1": CRAFTED["object dtype O8 array in data"][1], "batches.meta": meta()}
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    with pytest.raises(DataError) as err:
        load("cifar", path=str(archive))
    assert "cifar-10-batches-py/data_batch_1" in one_line_error(err) and "'O8'" in str(err.value)


# Through the CLI, in a subprocess: the process must stay alive (the first two crashed it).
SUBPROCESS_CASES = {
    "object dtype O8 with forged flags in batches.meta": (
        "batches.meta",
        meta(label_names=array((2,), POINTERS, dt=dtype("O8", (3, "|", None, None, None, -1, -1, 1)))),
    ),
    "object field with forged flags in labels": ("data_batch_1", batch(labels=array((2,), POINTERS, dt=object_field_dtype(1)))),
    "huge shape, small rawdata": CRAFTED["huge shape, small rawdata"][:2],
}


def run_train(tmp_path: Path, *args: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", TRAINWELL_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(
        [sys.executable, "-m", "trainwell", "train", *args, "train.epochs=1", "--out", str(out)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=timeout,
    )
    return proc, out


def assert_one_line_exit_2(proc: subprocess.CompletedProcess, out: Path, *fragments: str) -> None:
    assert proc.returncode >= 0, f"killed by signal {-proc.returncode}: {proc.stderr}"
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("trainwell: error:"), proc.stderr
    assert all(f in lines[0] for f in fragments), lines[0]
    assert not out.exists()


@pytest.mark.parametrize("case", sorted(SUBPROCESS_CASES))
def test_crafted_cifar_pickle_ends_in_one_line_and_exit_2_in_a_live_process(tmp_path, case):
    name, blob = SUBPROCESS_CASES[case]
    folder = write_cifar(tmp_path / "c", **{name.replace(".", "_"): blob})
    proc, out = run_train(tmp_path, "data.name=cifar", f"data.path={folder}")
    assert_one_line_exit_2(proc, out, name, "refused to unpickle")


# ----------------------------------------------------------------------------- idx headers


def idx_bytes(code: int, dims: tuple[int, ...], data: bytes) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + data


def write_idx_folder(folder: Path, images: bytes, gz: bool = False) -> Path:
    """An MNIST folder whose train images are ``images`` (raw or gzipped) and whose labels are fine."""
    folder.mkdir(parents=True, exist_ok=True)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    (folder / name).write_bytes(gzip.compress(images) if gz else images)
    (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(0x08, (2,), b"\x00\x01"))
    return folder / name


IDX_LIES = {
    "100-byte file claiming 100,000x1,000x1,000 images": (idx_bytes(0x08, (100_000, 1000, 1000), bytes(84)), False, "truncated"),
    "gzip claiming (2**32-1)**3 float64 values": (idx_bytes(0x0E, (2**32 - 1,) * 3, bytes(84)), True, "truncated"),
    "200 dimensions": (bytes([0, 0, 0x08, 200]) + struct.pack(">200I", *[1] * 200), False, "200 dimensions"),
}


@pytest.mark.parametrize("case", sorted(IDX_LIES))
def test_idx_header_is_checked_against_the_file_before_allocating(tmp_path, case):
    blob, gz, fragment = IDX_LIES[case]
    target = write_idx_folder(tmp_path / "m", blob, gz)
    with pytest.raises(DataError) as err:
        load("idx", path=str(tmp_path / "m"))
    message = one_line_error(err)
    assert str(target) in message and fragment in message, message


RAW_IDX_LIES = {
    # Raw files of bytes are memory-mapped: the size checks must come first (a mapping past the
    # end of the file would crash the process with SIGBUS on the first read of the missing rows).
    "one byte short": (idx_bytes(0x08, (2, 2, 2), bytes(7)), "truncated"),
    "one byte too many": (idx_bytes(0x08, (2, 2, 2), bytes(9)), "beyond"),
    "cut inside the header": (bytes([0, 0, 0x08, 3]) + struct.pack(">2I", 2, 2), "inside its header"),
    "header only": (idx_bytes(0x08, (5, 28, 28), b""), "truncated"),
}


@pytest.mark.parametrize("case", sorted(RAW_IDX_LIES))
def test_raw_idx_lies_are_one_data_error_line_before_anything_is_mapped(tmp_path, case):
    blob, fragment = RAW_IDX_LIES[case]
    target = write_idx_folder(tmp_path / "m", blob)
    with pytest.raises(DataError) as err:
        load("idx", path=str(tmp_path / "m"))
    message = one_line_error(err)
    assert str(target) in message and fragment in message, message


def test_idx_label_beyond_a_million_classes_is_refused(tmp_path):
    # Class names are made for labels 0..max: a label of 2,000,000 would make 2,000,001 of them.
    folder = tmp_path / "m"
    write_idx_folder(folder, idx_bytes(0x08, (2, 2, 2), bytes(8)))
    (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(0x0C, (2,), struct.pack(">ii", 0, 2_000_000)))
    with pytest.raises(DataError) as err:
        load("idx", path=str(folder))
    assert "2000000" in one_line_error(err) and "classes" in str(err.value)


def test_idx_header_lie_through_the_cli_is_one_line(tmp_path):
    target = write_idx_folder(tmp_path / "m", IDX_LIES["100-byte file claiming 100,000x1,000x1,000 images"][0])
    proc, out = run_train(tmp_path, "data.name=idx", f"data.path={tmp_path / 'm'}")
    assert_one_line_exit_2(proc, out, str(target), "truncated")


# ----------------------------------------------------------------------------- csv


def test_csv_of_hostile_quotes_is_read_in_seconds_not_minutes(tmp_path):
    # csv.Sniffer's regular expressions need minutes for 64 KB of quote-newline pairs; the
    # delimiter guess must not, and the file still ends in one line (it holds no data rows).
    (tmp_path / "d.csv").write_text('"\n' * 32768)
    proc, out = run_train(tmp_path, "data.name=csv", f"data.path={tmp_path / 'd.csv'}", timeout=60)
    assert_one_line_exit_2(proc, out, "d.csv")


# ----------------------------------------------------------------------------- npy / npz headers


def npy_header_bytes(shape, descr: str = "<f8") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


TERABYTES = (10**6, 10**6)  # 8 TB of float64


def test_npy_header_claiming_terabytes_is_refused_by_predict(tmp_path):
    path = tmp_path / "big.npy"
    path.write_bytes(npy_header_bytes(TERABYTES) + bytes(80))
    with pytest.raises(DataError) as err:
        read_inputs([str(path)], (10**6,), image=False)
    message = one_line_error(err)
    assert str(path) in message and "declares shape (1000000, 1000000)" in message and "truncated" in message


def test_npy_with_bytes_beyond_its_array_is_refused(tmp_path):
    path = tmp_path / "a.npy"
    path.write_bytes(npy_header_bytes((2,)) + bytes(16) + b"junk")
    with pytest.raises(DataError) as err:
        read_inputs([str(path)], (2,), image=False)
    assert "extra bytes" in one_line_error(err)


def write_npz(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, blob in members.items():
            zf.writestr(name, blob)
    return path


def y_member(n: int = 3) -> bytes:
    return npy_header_bytes((n,), "<i8") + bytes(8 * n)


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "deflated"])
def test_npz_member_header_claiming_terabytes_is_refused(tmp_path, compression):
    path = write_npz(tmp_path / "d.npz", {"x.npy": npy_header_bytes(TERABYTES) + bytes(80), "y.npy": y_member()}, compression)
    for read in (lambda: load("npz", path=str(path)), lambda: read_inputs([str(path)], (10**6,), image=False)):
        with pytest.raises(DataError) as err:
            read()
        message = one_line_error(err)
        assert str(path) in message and "'x.npy'" in message and "declares shape (1000000, 1000000)" in message, message


def patch_entry(blob: bytes, name: str, file_size: int, crc: int) -> bytes:
    """``blob`` (a zip) with ``name``'s declared size and CRC replaced in both its headers."""
    out = bytearray(blob)
    encoded = name.encode()
    local = out.index(b"PK\x03\x04")
    while out[local + 30 : local + 30 + len(encoded)] != encoded:
        local = out.index(b"PK\x03\x04", local + 4)
    struct.pack_into("<I", out, local + 14, crc)
    struct.pack_into("<I", out, local + 22, file_size)
    central = out.index(b"PK\x01\x02")
    while out[central + 46 : central + 46 + len(encoded)] != encoded:
        central = out.index(b"PK\x01\x02", central + 4)
    struct.pack_into("<I", out, central + 16, crc)
    struct.pack_into("<I", out, central + 24, file_size)
    return bytes(out)


def test_npz_deflated_member_that_inflates_to_more_than_declared_is_refused(tmp_path):
    # The entry declares the header and 3 float64 values (with their CRC) but inflates to 6 values:
    # the old reader stopped at the declared size and loaded the rest silently.
    declared = npy_header_bytes((3, 1)) + np.arange(3.0).tobytes()
    blob = write_npz(tmp_path / "src.npz", {"x.npy": declared + np.arange(3.0).tobytes(), "y.npy": y_member()}, zipfile.ZIP_DEFLATED)
    path = tmp_path / "d.npz"
    path.write_bytes(patch_entry(blob.read_bytes(), "x.npy", len(declared), zlib.crc32(declared)))
    with pytest.raises(DataError) as err:
        load("npz", path=str(path))
    assert "'x.npy' decompresses to more than" in one_line_error(err)


def test_npz_deflated_member_that_inflates_to_less_than_declared_is_refused(tmp_path):
    body = npy_header_bytes((6, 1)) + np.arange(3.0).tobytes()  # the header promises 6 values
    blob = write_npz(tmp_path / "src.npz", {"x.npy": body, "y.npy": y_member(6)}, zipfile.ZIP_DEFLATED)
    path = tmp_path / "d.npz"
    path.write_bytes(patch_entry(blob.read_bytes(), "x.npy", len(body) + 24, zlib.crc32(body)))
    with pytest.raises(DataError) as err:
        load("npz", path=str(path))
    assert "'x.npy' decompresses to less than" in one_line_error(err)


# ----------------------------------------------------------------------------- images


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature, an IHDR chunk declaring ``width`` x ``height`` grayscale pixels, and IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# Pillow warns above ~89 Mpx (10,000 x 10,000) and refuses above twice that (100,000 x 100,000);
# with Pillow's limit lifted, trainwell's own check of the header's size still refuses them.
@pytest.mark.parametrize("pillow_limit", [True, False], ids=["pillow-limit", "no-pillow-limit"])
@pytest.mark.parametrize("side", [10_000, 100_000])
def test_image_header_declaring_too_many_pixels_is_refused_without_a_warning(tmp_path, monkeypatch, side, pillow_limit):
    from PIL import Image

    if not pillow_limit:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    folder = tmp_path / "imgs"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    (folder / "a" / "bomb.png").write_bytes(png_header_only(side, side))
    (folder / "b" / "bomb.png").write_bytes(png_header_only(side, side))
    for read in (lambda: load("folder", path=str(folder)), lambda: read_inputs([str(folder / "a" / "bomb.png")], (1, 8, 8), image=True)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(DataError) as err:
                read()
        assert not caught, [str(w.message) for w in caught]
        message = one_line_error(err)
        assert "bomb.png' declares" in message and f"{side * side:,} pixels" in message, message


# ----------------------------------------------------------------------------- float64 beyond float32


def no_warnings(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn()


def test_float64_npz_beyond_float32_is_refused_before_the_cast_and_nan_keeps_its_message(tmp_path):
    x = np.ones((4, 3))
    x[1, 2], x[2, 0] = 1e300, np.nan  # a finite value too large for float32, and a real NaN
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 0, 1]))
    with pytest.raises(DataError) as err:
        no_warnings(lambda: load("npz", path=str(tmp_path / "d.npz")))
    message = one_line_error(err)
    assert "'x' holds values up to 1e+300, beyond float32's range (±3.4e38); rescale them" in message and "NaN" not in message

    from trainwell.data import validate

    x[1, 2] = -5.0  # only the NaN left: the source loads it and validation names it as NaN/inf
    np.savez(tmp_path / "n.npz", x=x, y=np.array([0, 1, 0, 1]))
    data = no_warnings(lambda: load("npz", path=str(tmp_path / "n.npz")))
    with pytest.raises(DataError, match="NaN/inf"):
        validate(data, "npz")


def test_csv_value_beyond_float32_is_refused_not_turned_into_inf(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,label\n1,2,x\n-3e39,4,y\n")
    with pytest.raises(DataError) as err:
        no_warnings(lambda: load("csv", path=str(tmp_path / "d.csv")))
    assert "d.csv' holds values up to -3e+39, beyond float32's range" in one_line_error(err)


def test_predict_input_beyond_float32_is_refused_without_a_warning(tmp_path):
    np.save(tmp_path / "a.npy", np.array([[1.0, 1e300]]))
    with pytest.raises(DataError) as err:
        no_warnings(lambda: read_inputs([str(tmp_path / "a.npy")], (2,), image=False))
    assert "a.npy' holds values up to 1e+300, beyond float32's range" in one_line_error(err)
    np.save(tmp_path / "n.npy", np.array([[1.0, np.inf]]))
    with pytest.raises(DataError, match="NaN/inf"):
        no_warnings(lambda: read_inputs([str(tmp_path / "n.npy")], (2,), image=False))


def test_float64_from_a_python_source_beyond_float32_is_refused_by_validation():
    # data.name may be a Python callable returning float64 arrays: the split's cast to float32
    # would make 1e300 inf (with a RuntimeWarning) and training would then run on inf.
    x = np.ones((20, 2))
    x[3, 1] = 1e300

    def source(cfg):
        return ArrayData(x=x, y=np.arange(20) % 2, x_test=None, y_test=None, classes=["a", "b"], description="mine")

    with pytest.raises(DataError) as err:
        no_warnings(lambda: load_splits(DataConfig(name=source)))
    assert "x holds values up to 1e+300, beyond float32's range (±3.4e38); rescale them" in one_line_error(err)
