"""Data sources: each turns a :class:`~trainwell.config.DataConfig` into an :class:`ArrayData`.

A source is a function ``load(cfg) -> ArrayData`` registered in :data:`DATASETS` under the name
users give as ``data.name``. Metadata on each entry:

* ``needs_path`` - whether ``data.path`` must be set;
* ``kind`` - ``"image"``, ``"signal"`` or ``"tabular"`` (``"any"`` for ``npz``, whose kind
  depends on the file's array shapes).

Array conventions, shared by every source and by :mod:`trainwell.data.splits`:

* images are ``uint8`` arrays of shape ``(N, C, H, W)`` with values 0..255;
* signals are ``float32`` arrays of shape ``(N, C, L)``;
* tabular data are ``float32`` arrays of shape ``(N, F)``;
* labels are ``int64`` arrays of shape ``(N,)`` with values ``0..K-1``.

Nothing here downloads anything: ``digits`` is bundled with scikit-learn, ``mnist1d`` is
generated locally (and cached), every other source reads files the user already has. Every
problem with a file raises :class:`~trainwell.errors.DataError` with one line naming the file
and the fix.

Files are untrusted. Every size a header declares (IDX dimensions, a ``.npy`` header's shape, a
zip entry's size, a pickled array's shape, an image's width and height) is checked against the
bytes really there before anything is allocated. CIFAR's pickles are read without numpy's object
machinery: the unpickler gets trainwell's stand-ins for the few numpy globals a CIFAR batch names,
which only check and record their arguments; the records become arrays through ``np.frombuffer``
with dtypes built here from a whitelist of plain numeric and byte-string types (see the cifar
section). Nothing is ever unpickled by numpy (``allow_pickle`` stays False).

One module per format (the shape of timm's ``data/readers``): :mod:`.base` (the registry and what
every reader shares), :mod:`.digits`, :mod:`.mnist1d`, :mod:`.idx`, :mod:`.cifar`, :mod:`.folder`,
:mod:`.npz`, :mod:`.csv_table`. Importing the package registers every source.
"""

from __future__ import annotations

from trainwell.data.sources.base import (
    DATASETS,
    MAX_DEFLATE_RATIO,
    ArrayData,
    cache_dir,
    check_float32_range,
    decoded_names,
    kind_of,
    one_line,
    shown_names,
)
# Imported in the order the sources are listed (trainwell list, docs/reference.md): bundled first.
from trainwell.data.sources.digits import load_digits
from trainwell.data.sources.mnist1d import MNIST1D_ARGS, generate_mnist1d, load_mnist1d
from trainwell.data.sources.idx import load_idx, read_idx
from trainwell.data.sources.cifar import SafeUnpickler, load_cifar, safe_unpickle
from trainwell.data.sources.folder import (
    IMAGE_SUFFIXES,
    MAX_IMAGE_PIXELS,
    ImageTooLarge,
    image_bombs_refused,
    load_folder,
    load_image,
)
from trainwell.data.sources.npz import load_npz, npy_header, npz_array_names, read_npz
from trainwell.data.sources.csv_table import load_csv, read_feature_rows

__all__ = [
    "DATASETS", "MAX_DEFLATE_RATIO", "ArrayData", "cache_dir", "check_float32_range", "decoded_names", "kind_of",
    "one_line", "shown_names", "SafeUnpickler", "load_cifar", "safe_unpickle", "load_csv", "read_feature_rows", "load_digits",
    "IMAGE_SUFFIXES", "MAX_IMAGE_PIXELS", "ImageTooLarge", "image_bombs_refused", "load_folder", "load_image",
    "load_idx", "read_idx", "MNIST1D_ARGS", "generate_mnist1d", "load_mnist1d", "load_npz", "npy_header",
    "npz_array_names", "read_npz",
]
