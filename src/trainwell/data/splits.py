"""Train/validation/test splits as CPU tensors, made once and reproducibly from ``data.split_seed``.

Pipeline (:func:`load_splits`)::

    DATASETS.get(cfg.name)(cfg) -> ArrayData -> validate() -> make_splits() -> Splits

How the splits are drawn (all draws seeded by ``data.split_seed`` only, never by ``train.seed``,
so runs that differ in their training seed share the same test and validation examples):

1. **test**: the source's own test split when it has one (``data.test_fraction`` is then
   ignored); otherwise ``ceil(test_fraction * N)`` examples carved from the data.
2. **val**: ``ceil(val_fraction * n)`` of the remaining ``n`` training examples.
   ``data.val_fraction=0`` gives an *empty* validation split: the trainer then skips validation.
3. **classes**: ``data.classes=[5,6,7,8,9]`` keeps only those classes in all three splits,
   relabelled 0..k-1 in that order (names kept). It filters the splits drawn above, so an example
   lands in the same split whatever the selection (a model pretrained on classes 0-4 never saw a
   test example of the fine-tuning run).
4. **per_class**: ``data.per_class > 0`` keeps at most that many training examples of each class:
   the first of a random order of the class's examples drawn from ``split_seed`` and the original
   class index alone, so every train.seed sees the same few labels and 10 per class are a subset
   of 50 per class.
5. **limit**: ``data.limit > 0`` keeps at most that many of the remaining training examples.

Each draw is stratified (class proportions kept, to within one example per class) when every
class has at least two examples among those drawn from, else uniformly random. The three draws
use independent random streams: changing ``val_fraction`` or ``limit`` never changes the test set.
Indices are kept in ascending order, so each split lists its examples in source order.

Tensors keep the storage dtype: uint8 for images (convert batches with :func:`to_float`), float32
otherwise. When a split is a whole source array (e.g. a source's own test split) of a
memory-mapped source (a stored ``npz`` member, a raw IDX file), the tensor shares the mapping
instead of copying it.

Streaming: a split of a memory-mapped source whose examples would take more than
:data:`GATHER_BYTES` is not gathered into memory. It keeps the whole mapped array and the
split's row numbers (:attr:`TensorSplit.rows`), and every reader takes only the rows it needs
(:meth:`TensorSplit.take`, :meth:`TensorSplit.chunks`): the operating system pages them in from
the file and may drop them again, so the data never has to fit in RAM. Smaller splits are
gathered as before (random access to memory beats page faults).
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from trainwell.config import DataConfig
from trainwell.data.sources import DATASETS, ArrayData, check_float32_range, kind_of
from trainwell.errors import ConfigError, DataError


#: A split of a memory-mapped source is gathered into memory when its examples take at most this
#: many bytes, and streamed from the mapping (rows read on demand) when they take more.
GATHER_BYTES = 1 << 30


@dataclass
class TensorSplit:
    """One split: its examples (N, *input_shape) uint8 images or float32, CPU; ``y`` (N,) int64.

    ``storage`` holds the examples themselves (``rows`` None), or, for a streamed split (see the
    module docstring), the whole memory-mapped source array of which the examples are the rows
    ``rows`` (int64, ascending). ``mapped``: ``storage`` lies in a file mapping, not in RAM.
    Read a split with :meth:`take` / :meth:`chunks`; :attr:`x` gathers all of it.
    """

    storage: torch.Tensor
    y: torch.Tensor
    rows: torch.Tensor | None = None
    mapped: bool = False

    def __post_init__(self) -> None:
        if self.rows is not None and len(self.rows) != len(self.y):
            raise ValueError(f"{len(self.rows)} rows for {len(self.y)} labels")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def x(self) -> torch.Tensor:
        """The examples as one tensor (N, *input_shape): ``storage`` itself, or for a streamed split
        its rows gathered into memory (a copy of the whole split: the loop, evaluation and
        preprocessing read a streamed split with :meth:`take` and :meth:`chunks` instead)."""
        return self.storage if self.rows is None else self.storage[self.rows]

    @property
    def streamed(self) -> bool:
        """Whether the examples are rows of a memory-mapped array, read on demand."""
        return self.rows is not None

    @property
    def dtype(self) -> torch.dtype:
        return self.storage.dtype

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.storage.shape[1:])

    @property
    def nbytes(self) -> int:
        """Bytes the split's examples take in their stored dtype."""
        return len(self) * math.prod(self.example_shape) * self.storage.element_size()

    def take(self, positions: torch.Tensor, pin_memory: bool = False) -> torch.Tensor:
        """The examples at ``positions`` (CPU int64, any order; (B,) -> (B, *input_shape)), a new
        tensor (in pinned memory with ``pin_memory``, ready for an asynchronous copy to a GPU).

        A memory-mapped split reads its rows in ascending file order (sequential pages) and puts
        them back in the order asked for.
        """
        rows = positions if self.rows is None else self.rows[positions]
        out = torch.empty((len(rows), *self.example_shape), dtype=self.storage.dtype, pin_memory=pin_memory)
        if not self.mapped:
            return torch.index_select(self.storage, 0, rows, out=out)
        ordered, order = torch.sort(rows)
        out[order] = self.storage[ordered]  # the row read j-th is the example asked for at order[j]
        return out

    def chunks(self, size: int) -> Iterator[torch.Tensor]:
        """The examples in order, ``size`` at a time (a view when the split is in memory)."""
        for start in range(0, len(self), size):
            if self.rows is None:
                yield self.storage[start : start + size]
            else:
                yield self.storage[self.rows[start : start + size]]  # rows ascending: sequential reads

    @classmethod
    def empty(cls, example_shape: tuple[int, ...], dtype: torch.dtype) -> TensorSplit:
        """A split with no examples (x of shape (0, *example_shape))."""
        return cls(torch.empty((0, *example_shape), dtype=dtype), torch.empty(0, dtype=torch.int64))


@dataclass
class Splits:
    """The train, validation and test splits of one dataset, plus what a model needs to know.

    ``val`` is empty (``len(val) == 0``) when ``data.val_fraction=0``; ``train`` and ``test`` never are.
    """

    train: TensorSplit
    val: TensorSplit
    test: TensorSplit
    classes: list[str]
    """Class names; ``classes[label]`` names a label."""
    input_shape: tuple[int, ...]
    """Shape of one example, e.g. (1, 8, 8) image, (1, 40) signal, (F,) tabular."""
    description: str
    columns: list[str] | None = None
    """Tabular data's feature names, in the order of the columns of x (a CSV's header less its label column); None = unnamed."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def kind(self) -> str:
        """``"image"``, ``"signal"`` or ``"tabular"``, from :attr:`input_shape`."""
        return kind_of(self.input_shape)

    @property
    def is_uint8(self) -> bool:
        """Whether examples are stored as uint8 pixels (0..255) that :func:`to_float` scales."""
        return self.train.dtype == torch.uint8


# ----------------------------------------------------------------------------- validation

# Scan for NaN/inf in blocks of about this many bytes, so a huge memory-mapped array is checked
# without materialising a same-sized boolean mask.
_SCAN_BYTES = 64 << 20


def _count_nonfinite(x: np.ndarray) -> int:
    if x.dtype.kind not in "fc":
        return 0
    step = max(1, _SCAN_BYTES // max(1, x[:1].nbytes))
    return sum(int(np.count_nonzero(~np.isfinite(x[i : i + step]))) for i in range(0, len(x), step))


def _check_part(x: np.ndarray, y: np.ndarray | None, where: str, what: str, num_classes: int) -> None:
    """Check one (x, y) pair of ArrayData; ``what`` names it ("x, y" or "x_test, y_test")."""
    xname, yname = (n.strip() for n in what.split(","))
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        got = f"{type(x).__name__}, {type(y).__name__}"
        raise DataError(f"{where}: {xname} and {yname} must be numpy arrays, got {got}.")
    if x.ndim < 2:
        raise DataError(
            f"{where}: {xname} has shape {x.shape}; expected (N, F) tabular, (N, C, L) signals or (N, C, H, W) images "
            "(a single feature needs shape (N, 1))."
        )
    if len(x) == 0:
        raise DataError(f"{where}: {xname} is empty; the source holds no examples.")
    if x.dtype.kind not in "biuf":
        raise DataError(f"{where}: {xname} has dtype {x.dtype}; expected uint8 images or float features.")
    if y.ndim != 1:
        raise DataError(f"{where}: {yname} has shape {y.shape}; expected one label per example, shape (N,).")
    if len(y) != len(x):
        raise DataError(f"{where}: {xname} has {len(x)} examples but {yname} has {len(y)} labels; they must match.")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError(f"{where}: {yname} holds non-integer values; labels must be whole numbers 0..K-1.")
    elif y.dtype.kind not in "iub":
        raise DataError(f"{where}: {yname} has dtype {y.dtype}; labels must be integers 0..K-1.")
    low, high = y.min(), y.max()
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise DataError(
            f"{where}: labels out of range: {yname} holds {int(bad)} but there are {num_classes} classes "
            f"(labels 0..{num_classes - 1}); renumber the labels or give all class names."
        )
    # Before the NaN/inf count: a finite float64 beyond float32 becomes inf only when cast (later).
    check_float32_range(x, f"{where}: {xname}")
    bad = _count_nonfinite(x)
    if bad:
        split = "training data" if xname == "x" else "test split"
        raise DataError(
            f"{where}: {bad} NaN/inf values in {xname} (the {split}); remove or impute them before training."
        )


def validate(data: ArrayData, where: str) -> None:
    """Check an ArrayData before splitting; a DataError naming ``where`` and the problem otherwise.

    Checks: x has shape (N, ...) with N > 0 and a numeric dtype; y is (N,) whole numbers in
    ``0..len(classes)-1``; no NaN/inf in x; at least 2 classes; x_test/y_test come together and
    x_test has x's per-example shape and dtype. Arrays are only read (memory maps stay mapped).
    """
    num_classes = len(data.classes)
    _check_part(data.x, data.y, where, "x, y", num_classes)  # first: a negative label is the real problem
    if num_classes < 2:
        raise DataError(f"{where}: found {num_classes} class(es); classification needs at least 2.")
    if (data.x_test is None) != (data.y_test is None):
        raise DataError(f"{where}: only one of x_test and y_test is given; give both or neither.")
    if data.x_test is not None:
        _check_part(data.x_test, data.y_test, where, "x_test, y_test", num_classes)
        if data.x_test.shape[1:] != data.x.shape[1:]:
            raise DataError(
                f"{where}: test examples have shape {data.x_test.shape[1:]} but training examples "
                f"{data.x.shape[1:]}; both splits must have the same shape."
            )
        if data.x_test.dtype != data.x.dtype:
            raise DataError(
                f"{where}: test examples are {data.x_test.dtype} but training examples {data.x.dtype}; "
                "store both splits with the same dtype."
            )


def check_split_config(cfg: DataConfig) -> None:
    """ConfigError unless the split settings are usable (checked before any data is loaded)."""
    for key in ("val_fraction", "test_fraction"):
        value = getattr(cfg, key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
            raise ConfigError(f"data.{key} must be a fraction in [0, 1), e.g. 0.1; got {value!r}.")
    if not isinstance(cfg.limit, int) or cfg.limit < 0:
        raise ConfigError(f"data.limit must be 0 (all) or a positive number of examples; got {cfg.limit!r}.")
    if not isinstance(cfg.split_seed, int) or cfg.split_seed < 0:
        raise ConfigError(f"data.split_seed must be a non-negative integer; got {cfg.split_seed!r}.")
    if not isinstance(cfg.per_class, int) or isinstance(cfg.per_class, bool) or cfg.per_class < 0:
        raise ConfigError(f"data.per_class must be 0 (all) or a positive number of examples; got {cfg.per_class!r}.")
    classes = list(cfg.classes or [])
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes):
        raise ConfigError(f"data.classes must be class indices >= 0, e.g. data.classes=[5,6,7,8,9]; got {classes!r}.")
    if len(set(classes)) != len(classes):
        raise ConfigError(f"data.classes lists a class twice ({classes}); give each class index once.")
    if len(classes) == 1:
        raise ConfigError(f"data.classes keeps one class ({classes[0]}); classification needs at least 2.")


# ----------------------------------------------------------------------------- splitting


def _choose(labels: np.ndarray, n_pick: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of ``n_pick`` of ``labels``, stratified when every class has >= 2 examples.

    Stratified: each class gets ``floor(n_pick * count / n)`` picks, and the leftover picks go to
    the classes with the largest remainders (ties broken at random), so the total is exact and
    every class is within one pick of its proportional share.
    """
    n = len(labels)
    if n_pick >= n:
        return np.arange(n)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if counts.min() < 2:
        return np.sort(rng.permutation(n)[:n_pick])
    # Integer arithmetic: the remainders sum to exactly n * leftover, so the top-`leftover` classes
    # by remainder all have a nonzero one and no class is given more picks than it has examples.
    quota = counts * n_pick // n
    remainder = counts * n_pick % n
    leftover = n_pick - int(quota.sum())
    order = np.lexsort((rng.random(len(counts)), -remainder))
    quota[order[:leftover]] += 1
    members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    picked = [rng.permutation(m)[:q] for m, q in zip(members, quota)]
    return np.sort(np.concatenate(picked))


def _class_remap(cfg: DataConfig, classes: list[str], name: str) -> np.ndarray | None:
    """Original label -> new label (-1 = dropped) for ``data.classes``; None when it is empty (all)."""
    if not cfg.classes:
        return None
    k = len(classes)
    unknown = [c for c in cfg.classes if c >= k]
    if unknown:
        names = f" ({', '.join(f'{i}={c}' for i, c in enumerate(classes))})" if k <= 20 else ""
        raise DataError(
            f"data.classes: class index {unknown[0]} is not in data.name={name}, whose classes are "
            f"0..{k - 1}{names}; pick from those."
        )
    remap = np.full(k, -1, dtype=np.int64)
    remap[np.asarray(cfg.classes, dtype=np.int64)] = np.arange(len(cfg.classes))
    return remap


def _per_class(idx: np.ndarray, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted ``idx`` keeping at most ``n`` per label: the first ``n`` of an order drawn from ``seed``
    and the label alone (a larger ``n`` keeps a superset; other classes and ``n`` change nothing)."""
    kept = []
    for c in np.unique(labels):
        members = idx[labels == c]
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3, int(c))))
        kept.append(members[rng.permutation(len(members))[:n]])
    return np.sort(np.concatenate(kept)) if kept else idx[:0]


def _n_held(fraction: float, n: int) -> int:
    """``ceil(fraction * n)`` (as scikit-learn's train_test_split), so any fraction > 0 holds out >= 1."""
    return min(n, math.ceil(fraction * n - 1e-9)) if fraction > 0 else 0


def _as_tensor(a: np.ndarray) -> torch.Tensor:
    """A CPU tensor over ``a``'s memory when torch can share it safely, else over a copy."""
    if not (a.flags.writeable and a.flags.aligned) or any(s < 0 for s in a.strides):
        # torch.from_numpy warns on read-only arrays (a write would crash) and cannot take
        # negative strides; unaligned data would slow every kernel. Copy these few cases.
        a = np.array(a, order="C")
    return torch.from_numpy(a)


def is_memory_mapped(a: np.ndarray) -> bool:
    """Whether ``a``'s data lie in a file mapping (an ``np.memmap`` or a view of one), not in RAM.

    ``isinstance(a, np.memmap)`` alone is not enough: numpy keeps the subclass on copies too
    (``memmap[idx]`` is an in-memory ``np.memmap``); the base chain ends at the mapping itself.
    """
    base: object = a
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base, mmap.mmap)


def _split_tensors(x: np.ndarray, y: np.ndarray, idx: np.ndarray | None) -> TensorSplit:
    """``x[idx]``, ``y[idx]`` as a TensorSplit; ``idx=None`` takes the whole arrays without gathering.

    A memory-mapped ``x`` of uint8 or native float32 (what the model reads: no conversion) stays
    mapped: whole when ``idx`` is None, as rows of the mapping when the gathered split would
    exceed :data:`GATHER_BYTES` (streamed).
    """
    if idx is not None and len(idx) == len(x):
        idx = None  # indices are sorted and unique: all of them is the identity
    ys = np.ascontiguousarray(y if idx is None else y[idx], dtype=np.int64)
    mapped = is_memory_mapped(x) and (x.dtype == np.uint8 or x.dtype == np.dtype("=f4"))
    if mapped and idx is not None and len(idx) * x[:1].nbytes > GATHER_BYTES:
        return TensorSplit(_as_tensor(x), torch.from_numpy(ys), torch.from_numpy(idx.astype(np.int64)), mapped=True)
    xs = x if idx is None else x[idx]
    if xs.dtype != np.uint8:
        xs = xs.astype(np.float32, copy=False)  # also makes non-native byte orders native
    storage = _as_tensor(xs)
    shares = idx is None and mapped and storage.data_ptr() == xs.ctypes.data  # not copied by _as_tensor
    return TensorSplit(storage, torch.from_numpy(ys), mapped=shares)


def make_splits(data: ArrayData, cfg: DataConfig) -> Splits:
    """Split validated ``data`` into train/val/test tensors as described in the module docstring.

    Raises ConfigError for unusable fractions/limit and DataError when a split would be empty.
    """
    check_split_config(cfg)
    name = cfg.name if isinstance(cfg.name, str) else "data"
    test_seq, val_seq, limit_seq = np.random.SeedSequence(cfg.split_seed).spawn(3)
    y = np.asarray(data.y).astype(np.int64, copy=False)
    n = len(y)
    remap = _class_remap(cfg, [str(c) for c in data.classes], name)
    # Labels as the splits store them: relabelled 0..k-1 when data.classes selects some.
    y_out = y if remap is None else remap[y]

    if data.x_test is None:
        if cfg.test_fraction == 0:
            raise DataError(
                f"test split is empty: data.name={name} has no test split of its own and data.test_fraction=0; "
                "set data.test_fraction (e.g. 0.2)."
            )
        test_idx = _choose(y, _n_held(cfg.test_fraction, n), np.random.default_rng(test_seq))
        rest = np.setdiff1d(np.arange(n), test_idx, assume_unique=True)
        if remap is not None:
            test_idx = test_idx[y_out[test_idx] >= 0]
        test = _split_tensors(data.x, y_out, test_idx)
    else:
        rest = np.arange(n)
        y_test = np.asarray(data.y_test).astype(np.int64, copy=False)
        if remap is None:
            test = _split_tensors(data.x_test, y_test, None)
        else:
            test = _split_tensors(data.x_test, remap[y_test], np.flatnonzero(remap[y_test] >= 0))

    n_val = _n_held(cfg.val_fraction, len(rest))
    if n_val:
        pos = _choose(y[rest], n_val, np.random.default_rng(val_seq))
        val_idx, train_idx = rest[pos], np.delete(rest, pos)
    else:
        val_idx, train_idx = rest[:0], rest

    if len(train_idx) == 0:
        raise DataError(
            f"train split is empty: {n} examples of data.name={name} leave none for training after "
            f"data.test_fraction={cfg.test_fraction} and data.val_fraction={cfg.val_fraction}; "
            "lower the fractions or give more data."
        )
    classes, description = [str(c) for c in data.classes], data.description
    if remap is not None:
        train_idx, val_idx = train_idx[y_out[train_idx] >= 0], val_idx[y_out[val_idx] >= 0]
        classes = [classes[c] for c in cfg.classes]
        description += f" [classes {','.join(map(str, cfg.classes))}]"
        if len(train_idx) == 0:
            raise DataError(f"train split is empty: data.name={name} has no training examples of "
                            f"data.classes={list(cfg.classes)}; pick classes the data holds.")
    if cfg.per_class:
        train_idx = _per_class(train_idx, y[train_idx], cfg.per_class, cfg.split_seed)
        description += f" [{cfg.per_class} per class]"
    if cfg.limit and cfg.limit < len(train_idx):
        train_idx = train_idx[_choose(y_out[train_idx], cfg.limit, np.random.default_rng(limit_seq))]

    train = _split_tensors(data.x, y_out, train_idx)
    example_shape = tuple(int(s) for s in data.x.shape[1:])
    val = _split_tensors(data.x, y_out, val_idx) if len(val_idx) else TensorSplit.empty(example_shape, train.dtype)
    if len(test) == 0:
        if remap is not None:
            raise DataError(f"test split is empty: data.name={name} has no test examples of "
                            f"data.classes={list(cfg.classes)}; pick classes the data holds.")
        raise DataError(f"test split is empty: data.name={name}'s own test split holds no examples; give it some.")
    return Splits(
        train=train,
        val=val,
        test=test,
        classes=classes,
        input_shape=example_shape,
        description=description,
        columns=list(data.columns) if data.columns is not None and len(data.columns) == math.prod(example_shape)
        else None,
    )


def load_splits(cfg: DataConfig) -> Splits:
    """Load ``cfg.name`` (a DATASETS name or a ``load(cfg) -> ArrayData`` callable), validate and split it."""
    check_split_config(cfg)  # fail on a bad fraction before spending time loading data
    load = DATASETS.get(cfg.name)
    where = f"data.name={cfg.name}" if isinstance(cfg.name, str) else "data"
    if cfg.path:
        where += f" ('{cfg.path}')"
    try:
        data = load(cfg)
    except OSError as exc:
        # Sources turn the problems they expect into DataErrors; this catches the rest (a file
        # without read permission, a disk error) so users still get one line, not a traceback.
        name = f" '{exc.filename}'" if exc.filename else ""
        raise DataError(f"{where}: cannot read{name}: {exc.strerror or exc}; check the file and its permissions.") from None
    validate(data, where)
    return make_splits(data, cfg)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """A batch as float32: uint8 pixels 0..255 become [0, 1] (divided by 255); others are cast.

    Apply per batch (ideally after moving it to the device, where uint8 is 4x cheaper to transfer).
    Returns ``x`` itself when it is already float32.
    """
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    return x.to(torch.float32)
