"""``cifar``: CIFAR-10/100 'python version' batches, read without numpy's object machinery.

The unpickler's ``find_class`` returns trainwell's stand-ins for the few numpy globals a CIFAR batch names;
they only check and record their arguments (canonical dtype states of plain numeric and byte-string
types, shapes whose byte count matches the data), and the records become arrays through
``np.frombuffer`` with dtypes built here. A pre-scan of the opcodes refuses memo indexes no pickler
writes. So a crafted pickle can neither run code nor forge an object pointer.
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
import re
import tarfile
import warnings
from pathlib import Path
from typing import IO, Any

import numpy as np

from trainwell.config import DataConfig
from trainwell.errors import ConfigError, DataError
from trainwell.data.sources.base import (
    ArrayData,
    DATASETS,
    decoded_names,
    _integer_labels,
    _need_path,
    _numeric_class_names,
    one_line,
    _shown,
)


#
# CIFAR's "python version" batches are pickles of dicts holding numpy arrays. Unpickling can call
# whatever a file names, and even numpy's own array constructors are unsafe: a crafted dtype state
# (object fields, forged flags) makes an array whose bytes are read as object pointers, which
# crashes the process. So no numpy object machinery ever runs on pickle data: find_class hands the
# unpickler trainwell's own stand-ins, which only check and record their arguments and state; the
# checked records become real arrays through np.frombuffer with a dtype we build ourselves from a
# whitelisted type string. A scan of the opcodes before unpickling refuses the opcodes no CIFAR file
# uses and memo indices no pickler writes (the C unpickler would allocate memory for them).

# A CIFAR-100 train file is 155 MB; a "batch" far larger is not CIFAR, and is not read into memory.
_MAX_CIFAR_FILE_BYTES = 1 << 30
# No CIFAR array comes near this; the bound only keeps absurd shapes (of zero-size arrays, or whose
# size overflows) away from numpy.
_MAX_PICKLED_ARRAY_BYTES = 1 << 36
# A CIFAR batch is a dict of lists: deeper nesting is not CIFAR (and would only cost recursion).
_MAX_PICKLE_DEPTH = 16
# Opcodes that build objects other than through REDUCE/BUILD, fetch external objects or use the
# extension registry: none of them appears in a CIFAR file, so a pickle that uses one is refused.
_REFUSED_OPCODES = frozenset(
    {"PERSID", "BINPERSID", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4", "NEXT_BUFFER", "READONLY_BUFFER"}
)
_MEMO_OPCODES = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"})
# The dtypes a CIFAR pickle may name: bool, integers of 1-8 bytes, floats of 2-8 bytes, byte strings.
_DTYPE_SPEC = re.compile(r"b1|[iu][1248]|f[248]|S[1-9][0-9]{0,8}")


class _Refused(Exception):
    """A pickle construct that no CIFAR batch holds; :func:`safe_unpickle` names the file."""


def _is_int(value: Any, expected: int) -> bool:
    """Whether ``value`` is the plain int ``expected`` (not a bool, float or other look-alike)."""
    return type(value) is int and value == expected


def _text(value: Any) -> str | None:
    """A str, or ASCII bytes (as Python 2 pickles read with encoding="bytes" give), as str; else None."""
    if type(value) is str:
        return value
    if type(value) is bytes and value.isascii():
        return value.decode("ascii")
    return None


def _size_text(n: int) -> str:
    """A byte count for a message: exact unless absurdly long."""
    return f"{n:,}" if n.bit_length() <= 128 else f"about 2**{n.bit_length()}"


class _Stub:
    """Base of every object find_class hands the unpickler: it checks and records, never calls numpy.

    Pickle's BUILD opcode calls ``__setstate__`` and REDUCE calls the object: both refuse here
    unless a subclass allows the one use numpy's own pickles make of it.
    """

    __slots__ = ()
    what = "a numpy global"

    def __call__(self, *args: Any) -> Any:
        raise _Refused(f"calls {self.what}, which no CIFAR batch does")

    def __setstate__(self, state: Any) -> None:
        raise _Refused(f"builds (pickle BUILD) {self.what}, which no CIFAR batch does")


class _DtypeStub(_Stub):
    """A numpy dtype named by the pickle: a whitelisted type string, made a dtype by its canonical state."""

    __slots__ = ("spec", "dtype")
    what = "a numpy dtype"

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.dtype: np.dtype | None = None

    def __setstate__(self, state: Any) -> None:
        if self.dtype is not None:
            raise _Refused(f"builds the numpy dtype '{self.spec}' twice")
        flexible = self.spec[0] == "S"
        elsize, alignment = (int(self.spec[1:]), 1) if flexible else (-1, -1)
        orders = ("|",) if flexible or self.spec[1:] == "1" else ("<", ">", "=")
        # numpy's own state for a plain dtype: (3, byte order, subarray, names, fields, elsize,
        # alignment, flags). Anything else (fields, subarrays, object flags) is refused.
        canonical = (
            type(state) is tuple
            and len(state) == 8
            and _is_int(state[0], 3)
            and _text(state[1]) in orders
            and state[2] is None
            and state[3] is None
            and state[4] is None
            and _is_int(state[5], elsize)
            and _is_int(state[6], alignment)
            and _is_int(state[7], 0)
        )
        if not canonical:
            raise _Refused(
                f"gives the numpy dtype '{self.spec}' a state other than numpy's plain "
                f"(3, byte order, None, None, None, {elsize}, {alignment}, 0): fields, subarrays or object flags"
            )
        order = _text(state[1])
        self.dtype = np.dtype(self.spec if order == "|" else f"{order}{self.spec}")


def _built_dtype(value: Any) -> np.dtype:
    """The dtype of a built :class:`_DtypeStub`; refused for anything else."""
    if type(value) is not _DtypeStub or value.dtype is None:
        raise _Refused("gives a numpy array or scalar something other than a built numpy dtype")
    return value.dtype


def _raw_bytes(value: Any) -> bytes | bytearray:
    """An array's raw data: bytes (bytearray from protocol 5); object arrays' lists are refused."""
    if type(value) not in (bytes, bytearray):
        raise _Refused(f"gives a numpy array data of type {type(value).__name__}, not bytes (object arrays are never loaded)")
    return value


def _array_from_raw(raw: Any, dtype_stub: Any, shape: Any, order: str) -> np.ndarray:
    """A real array over the checked bytes ``raw``: sizes are compared before anything is allocated."""
    dtype = _built_dtype(dtype_stub)
    data = _raw_bytes(raw)
    if type(shape) is not tuple or len(shape) > 32 or any(type(d) is not int or d < 0 for d in shape):
        raise _Refused("gives a numpy array a shape that is not a tuple of at most 32 non-negative integers")
    bound = math.prod(max(d, 1) for d in shape) * dtype.itemsize
    if bound > _MAX_PICKLED_ARRAY_BYTES:
        raise _Refused(f"declares a numpy array of {_size_text(bound)} bytes, beyond any CIFAR array")
    need = math.prod(shape) * dtype.itemsize
    if need != len(data):
        raise _Refused(
            f"declares a numpy array of shape {shape} and dtype {dtype} ({need:,} bytes) but gives it {len(data):,} bytes of data"
        )
    array = np.frombuffer(data, dtype=dtype, count=need // dtype.itemsize).reshape(shape, order=order)  # type: ignore[call-overload]  # order is "C"/"F", checked
    return array if array.flags.writeable else array.copy(order="K")  # bytes are read-only: own a copy


class _ArrayStub(_Stub):
    """A numpy array under construction: ``_reconstruct`` makes it empty, BUILD gives its checked state."""

    __slots__ = ("array",)
    what = "a numpy array"

    def __init__(self, array: np.ndarray | None = None) -> None:
        self.array = array

    def __setstate__(self, state: Any) -> None:
        if self.array is not None:
            raise _Refused("builds one numpy array twice")
        # numpy's ndarray state: (version 1, shape, dtype, is_fortran, raw bytes).
        if type(state) is not tuple or len(state) != 5 or not _is_int(state[0], 1) or type(state[3]) not in (bool, int):
            raise _Refused("gives a numpy array a state other than numpy's (1, shape, dtype, is_fortran, rawdata)")
        if state[3] not in (0, 1):
            raise _Refused("gives a numpy array an is_fortran flag that is neither true nor false")
        self.array = _array_from_raw(state[4], state[2], state[1], "F" if state[3] else "C")


class _NdarrayGlobal(_Stub):
    """``numpy.ndarray``: only ever an argument of ``_reconstruct``; calling or building it is refused."""

    __slots__ = ()
    what = "numpy.ndarray"

    def __call__(self, *args: Any) -> Any:
        raise _Refused("calls numpy.ndarray directly, which no CIFAR batch does")


class _ReconstructGlobal(_Stub):
    """``numpy.core.multiarray._reconstruct``: only as numpy pickles it, ``(ndarray, (0,), b'b')``."""

    __slots__ = ()
    what = "numpy's _reconstruct"

    def __call__(self, *args: Any) -> _ArrayStub:
        canonical = (
            len(args) == 3
            and args[0] is _NDARRAY
            and type(args[1]) is tuple
            and len(args[1]) == 1
            and _is_int(args[1][0], 0)
            and type(args[2]) in (bytes, str)
            and args[2] in (b"b", "b")
        )
        if not canonical:
            raise _Refused("calls numpy's _reconstruct with arguments other than numpy's (ndarray, (0,), b'b')")
        return _ArrayStub()


class _DtypeGlobal(_Stub):
    """``numpy.dtype``: only ``(type string, False, True)`` with a whitelisted type string."""

    __slots__ = ()
    what = "numpy.dtype"

    def __call__(self, *args: Any) -> _DtypeStub:
        spec = _text(args[0]) if len(args) == 3 else None
        # numpy passes (spec, align=False, copy=True); Python 2 numpy wrote them as ints 0 and 1.
        flags_ok = len(args) == 3 and type(args[1]) in (bool, int) and type(args[2]) in (bool, int)
        if spec is None or not flags_ok or args[1] != 0 or args[2] not in (0, 1) or not _DTYPE_SPEC.fullmatch(spec):
            shown = f" '{_shown(args[0])}'" if args and type(args[0]) in (str, bytes) else ""
            raise _Refused(
                f"asks for the numpy dtype{shown}; only plain numbers (bool, int, uint, float) and byte strings are loaded"
            )
        return _DtypeStub(spec)


class _ScalarGlobal(_Stub):
    """``numpy.core.multiarray.scalar`` (a pickled ``np.int64``...): becomes a Python number at once."""

    __slots__ = ()
    what = "numpy's scalar"

    def __call__(self, *args: Any) -> Any:
        if len(args) != 2:
            raise _Refused("calls numpy's scalar with arguments other than (dtype, bytes)")
        dtype, raw = _built_dtype(args[0]), _raw_bytes(args[1])
        if len(raw) != dtype.itemsize:
            raise _Refused(f"gives a numpy {dtype} scalar {len(raw)} bytes instead of {dtype.itemsize}")
        return np.frombuffer(raw, dtype=dtype).item()


class _FrombufferGlobal(_Stub):
    """``numpy.core.numeric._frombuffer``, numpy's pickle protocol 5 form ``(buffer, dtype, shape, order)``."""

    __slots__ = ()
    what = "numpy's _frombuffer"

    def __call__(self, *args: Any) -> _ArrayStub:
        order = _text(args[3]) if len(args) == 4 else None
        if order not in ("C", "F"):
            raise _Refused("calls numpy's _frombuffer with arguments other than (buffer, dtype, shape, 'C' or 'F')")
        return _ArrayStub(_array_from_raw(args[0], args[1], args[2], order))


class _EncodeGlobal(_Stub):
    """``_codecs.encode``: how Python 3 writes bytes at pickle protocols 0-2, ``(text, 'latin1')``."""

    __slots__ = ()
    what = "_codecs.encode"

    def __call__(self, *args: Any) -> bytes:
        if len(args) != 2 or type(args[0]) is not str or args[1] not in ("latin1", "latin-1"):
            raise _Refused("calls _codecs.encode with arguments other than (text, 'latin1')")
        return args[0].encode("latin1")


class _BytesGlobal(_Stub):
    """``bytes``: how Python 3 writes an empty bytes object at pickle protocols 0-2, ``bytes()``."""

    __slots__ = ()
    what = "bytes"

    def __call__(self, *args: Any) -> bytes:
        if args:
            raise _Refused("calls bytes with arguments, which Python's pickler never does")
        return b""


_NDARRAY = _NdarrayGlobal()
_GLOBALS: dict[tuple[str, str], _Stub] = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DtypeGlobal(),
    ("_codecs", "encode"): _EncodeGlobal(),
    # Protocols 0-2 name builtins as Python 2 did; protocol 3 and later do not need this at all.
    ("__builtin__", "bytes"): _BytesGlobal(),
    ("builtins", "bytes"): _BytesGlobal(),
    # Python 2 and numpy < 2 wrote numpy.core; numpy >= 2 writes numpy._core.
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _ReconstructGlobal() for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "scalar"): _ScalarGlobal() for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _FrombufferGlobal() for core in ("core", "_core")},
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds dicts, lists, bytes, numbers and plain numpy arrays, and nothing else.

    A pickle can name any importable callable (``os.system``, ...) and have it called while
    loading; :meth:`find_class` is where every such name is resolved, and it resolves only to
    trainwell's stand-ins (:class:`_Stub`), so nothing outside this module ever runs. Its result
    still holds stand-ins: :func:`safe_unpickle` turns them into arrays.
    """

    def __init__(self, file: IO[bytes], where: str) -> None:
        # CIFAR batches were pickled by Python 2: "bytes" keeps its str objects (keys, names) as bytes.
        super().__init__(file, encoding="bytes")
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        stub = _GLOBALS.get((module, name))
        if stub is None:
            raise _Refused(f"asks to load '{_shown(module)}.{_shown(name)}', which no CIFAR batch contains")
        return stub

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("uses pickle persistent ids, which no CIFAR batch contains")


def _scan_opcodes(data: bytes) -> None:
    """Refuse, before unpickling, opcodes no CIFAR file uses and memo indices no pickler writes.

    Picklers number memo entries 0, 1, 2...; the C unpickler sizes its memo table by the largest
    index it is given, so an index in the billions would allocate gigabytes. Every opcode's
    argument is parsed here, so damage shows before anything is built; a text string with an
    invalid escape (a DeprecationWarning in Python's decoder) is damage too, not a printed warning.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for count, (opcode, arg, pos) in enumerate(pickletools.genops(data), start=1):
            if opcode.name in _REFUSED_OPCODES:
                raise _Refused(f"uses the pickle opcode {opcode.name} (at byte {pos}), which no CIFAR batch contains")
            if opcode.name in _MEMO_OPCODES and isinstance(arg, int) and not 0 <= arg < count:  # memo args are ints
                raise _Refused(f"uses the pickle memo index {_size_text(arg)} (at byte {pos}), which no pickler writes")


def _plain(root: Any) -> Any:
    """The unpickled ``root`` with each stand-in array replaced by its real array.

    Only dicts, lists, tuples, text, bytes, numbers, None and built arrays are allowed: a bare
    dtype or global, an array never built, a container holding itself or nested deeper than
    :data:`_MAX_PICKLE_DEPTH` is refused. Shared containers are converted once.
    """
    done: dict[int, Any] = {}
    active: set[int] = set()

    def visit(obj: Any, depth: int) -> Any:
        kind = type(obj)
        if kind in (bytes, str, int, float, bool, type(None)):
            return obj
        if kind is bytearray:
            return bytes(obj)
        if kind is _ArrayStub:
            if obj.array is None:
                raise _Refused("uses a numpy array that it never builds (no BUILD after _reconstruct)")
            return obj.array
        if kind not in (dict, list, tuple):
            what = obj.what if isinstance(obj, _Stub) else f"a {kind.__name__}"
            raise _Refused(f"holds {what} as a value, which no CIFAR batch contains")
        key = id(obj)
        if key in done:
            return done[key]
        if key in active:
            raise _Refused("holds a container that contains itself")
        if depth >= _MAX_PICKLE_DEPTH:
            raise _Refused(f"nests containers more than {_MAX_PICKLE_DEPTH} deep")
        active.add(key)
        if kind is dict:
            out: Any = {visit(k, depth + 1): visit(v, depth + 1) for k, v in obj.items()}
        else:
            out = kind(visit(v, depth + 1) for v in obj)
        active.discard(key)
        done[key] = out
        return out

    return visit(root, 0)


def _check_cifar_size(size: int, where: str) -> None:
    """Refuse, before reading it, a "batch" larger than :data:`_MAX_CIFAR_FILE_BYTES`."""
    if size > _MAX_CIFAR_FILE_BYTES:
        raise DataError(
            f"{where} is {size:,} bytes, more than the {_MAX_CIFAR_FILE_BYTES >> 20} MiB of any CIFAR file; "
            "point data.path at the original CIFAR files."
        )


def safe_unpickle(f: IO[bytes], where: str) -> Any:
    """Load one CIFAR pickle from ``f`` without running anything it names; a DataError naming ``where`` otherwise.

    The file is read whole (at most :data:`_MAX_CIFAR_FILE_BYTES`), its opcodes scanned, then
    unpickled with :class:`SafeUnpickler` and its stand-ins made real arrays.
    """
    try:
        data = f.read(_MAX_CIFAR_FILE_BYTES + 1)
        _check_cifar_size(len(data), where)
        _scan_opcodes(data)
        return _plain(SafeUnpickler(io.BytesIO(data), where).load())
    except _Refused as exc:
        raise DataError(
            f"{where} {exc}; refused to unpickle it (corrupt or malicious file): use the original CIFAR files."
        ) from None
    except DataError:
        raise
    except Exception as exc:  # a damaged pickle can fail in many ways (EOFError, UnpicklingError, ValueError, MemoryError...)
        raise DataError(
            f"{where} is not a readable CIFAR pickle ({type(exc).__name__}: {one_line(exc)}); re-download it."
        ) from None


_CIFAR_NAMES = re.compile(r"^(data_batch_\d+|test_batch|batches\.meta|train|test|meta)$")
_CIFAR10_NAMES = re.compile(r"^(data_batch_\d+|test_batch|batches\.meta)$")
_CIFAR100_NAMES = re.compile(r"^(train|test|meta)$")


def _cifar_from_folder(path: Path) -> tuple[dict[str, Any], str]:
    """Unpickled CIFAR files by name, from ``path`` or its cifar-10/100 subfolder."""
    for folder in (path, path / "cifar-10-batches-py", path / "cifar-100-python"):
        if (folder / "data_batch_1").is_file() or (folder / "train").is_file():
            names = _CIFAR10_NAMES if (folder / "data_batch_1").is_file() else _CIFAR100_NAMES
            objs = {}
            for child in sorted(folder.iterdir()):
                if child.is_file() and names.match(child.name):
                    try:
                        _check_cifar_size(child.stat().st_size, f"cifar file '{child}'")
                        with open(child, "rb") as f:
                            objs[child.name] = safe_unpickle(f, f"cifar file '{child}'")
                    except OSError as exc:
                        raise DataError(f"cifar file '{child}' cannot be read ({exc.strerror or exc}); check the file.") from None
            return objs, str(folder)
    raise DataError(
        f"cifar: no CIFAR-10 'data_batch_1' or CIFAR-100 'train' file in '{path}' "
        "(or its cifar-10-batches-py/ or cifar-100-python/ subfolder); point data.path at the extracted "
        "'python version' download or its .tar.gz."
    )


def _cifar_from_tar(path: Path) -> tuple[dict[str, Any], str]:
    """Unpickled CIFAR files by name, streamed from a tar archive (never extracted to disk)."""
    objs: dict[str, Any] = {}
    try:
        # Members are read in archive order: seeking backwards in a .tar.gz would decompress again.
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and _CIFAR_NAMES.match(base) and base not in objs:
                    where = f"cifar member '{_shown(member.name, 200)}' of '{path}'"
                    _check_cifar_size(member.size, where)
                    f = tar.extractfile(member)
                    if f is not None:
                        objs[base] = safe_unpickle(f, where)
    except DataError:
        raise
    except Exception as exc:  # tarfile and its gzip/bz2/lzma decompressors raise many types on damage
        raise DataError(f"cifar: '{path}' is not a readable tar archive ({one_line(exc)}); re-download it.") from None
    if "data_batch_1" not in objs and "train" not in objs:
        raise DataError(
            f"cifar: archive '{path}' holds no CIFAR-10 'data_batch_1' or CIFAR-100 'train' member; "
            "use the 'python version' download (cifar-10-python.tar.gz or cifar-100-python.tar.gz)."
        )
    return objs, str(path)


def _str_keys(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataError(f"{where} holds a {type(obj).__name__}, expected a CIFAR dict; re-download it.")
    if not all(type(k) in (bytes, str) for k in obj):
        raise DataError(f"{where} holds a dict with keys that are not text, unlike a CIFAR batch; re-download it.")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_labels(value: Any, where: str, key: str) -> np.ndarray:
    """A batch's labels as int64: a list of ints (as CIFAR stores them) or an integer array."""
    if isinstance(value, (list, tuple)):
        if not all(type(v) is int and -(2**63) <= v < 2**63 for v in value):
            raise DataError(f"{where}: '{key}' must be a list of integer labels, found other values; re-download it.")
        value = np.array(value, dtype=np.int64)
    elif not isinstance(value, np.ndarray):
        raise DataError(f"{where}: '{key}' must be a list of integer labels, got a {type(value).__name__}; re-download it.")
    return _integer_labels(value, where, f"'{key}'")


def _cifar_batch(obj: Any, where: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = _str_keys(obj, where)
    data = d.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        got = f"{data.dtype} array {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{where}: 'data' must be a uint8 array (N, 3072), got {got}; re-download it.")
    if label_key not in d:
        raise DataError(f"{where} has no '{label_key}' entry; re-download it.")
    labels = _cifar_labels(d[label_key], where, label_key)
    if len(labels) != len(data):
        raise DataError(f"{where} has {len(data)} images but {len(labels)} labels; re-download it.")
    # Rows are 1024 red, then 1024 green, then 1024 blue values, each row-major 32x32: (N, C, H, W).
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_class_names(meta: dict[str, Any], key: str, where: str) -> list[str] | None:
    """The class names of a meta file's ``key`` list, or None when it has none."""
    names = meta.get(key)
    if names is None:
        return None
    if not isinstance(names, (list, tuple)) or not all(type(v) in (bytes, str) for v in names):
        raise DataError(f"{where}: '{key}' must be a list of class names; re-download it.")
    return decoded_names(names)


@DATASETS.register("cifar", needs_path=True, kind="image")
def load_cifar(cfg: DataConfig) -> ArrayData:
    """CIFAR-10 or CIFAR-100 'python version' batches: a folder or the .tar.gz download."""
    if cfg.cifar_labels not in ("fine", "coarse"):
        raise ConfigError(f"data.cifar_labels must be 'fine' or 'coarse', got '{cfg.cifar_labels}'.")
    path = _need_path(cfg, "cifar", "file or folder")
    objs, where = _cifar_from_folder(path) if path.is_dir() else _cifar_from_tar(path)
    if "data_batch_1" in objs:
        variant, label_key = "CIFAR-10", "labels"
        train_names = sorted((n for n in objs if n.startswith("data_batch_")), key=lambda n: int(n.rsplit("_", 1)[1]))
        test_name, meta_name, names_key = "test_batch", "batches.meta", "label_names"
    else:
        variant, label_key = f"CIFAR-100 ({cfg.cifar_labels} labels)", f"{cfg.cifar_labels}_labels"
        train_names, test_name, meta_name = ["train"], "test", "meta"
        names_key = f"{cfg.cifar_labels}_label_names"
    parts = [_cifar_batch(objs[n], f"cifar file '{n}' in '{where}'", label_key) for n in train_names]
    x = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    y = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    x_test = y_test = None
    if test_name in objs:
        x_test, y_test = _cifar_batch(objs[test_name], f"cifar file '{test_name}' in '{where}'", label_key)
    classes = None
    if meta_name in objs:
        meta_where = f"cifar file '{meta_name}' in '{where}'"
        classes = _cifar_class_names(_str_keys(objs[meta_name], meta_where), names_key, meta_where)
    return ArrayData(
        x=x,
        y=y,
        x_test=x_test,
        y_test=y_test,
        classes=classes or _numeric_class_names(y, y_test, where=f"cifar: '{where}'"),
        description=f"cifar: {variant} from {where}",
    )
