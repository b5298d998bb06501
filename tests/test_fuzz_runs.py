"""Fuzzing the readers of run folders, ensemble folders and checkpoints (hypothesis).

A tiny real corpus is trained once per module (a digits MLP run with two checkpoints, a second run,
and their 2-member ensemble folder). Each example copies it into a fresh temporary folder, damages
one file (random JSON values at random keys, random YAML, byte flips, truncation, insertion, random
bytes) and reads it back. The property: the reader returns, or raises trainwell's own error in one
line; never another exception, never a hang (the profile's per-example deadline, and a hard limit),
never a write outside the temporary folder (an audit hook watches every open for writing, rename,
removal and mkdir). The number of examples comes from the profile in conftest.py
(TRAINWELL_FUZZ_EXAMPLES).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st

import trainwell
from trainwell.errors import TrainwellError

QUICK = {"model.name": "mlp", "model.width": 16, "model.depth": 1, "train.epochs": 1, "data.limit": 200,
         "train.progress": False, "train.device": "cpu", "train.plots": False}


# ----------------------------------------------------------------------------- the watch on writes

_WATCH: dict[str, Any] = {"root": None, "outside": []}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_EVENTS = {"os.rename": 2, "os.link": 2, "os.symlink": 2, "os.remove": 1, "os.rmdir": 1, "os.mkdir": 1,
                "shutil.rmtree": 1, "os.truncate": 1, "os.chmod": 1, "os.utime": 1}


def _audit(event: str, args: tuple) -> None:
    """Record every path written, renamed, removed or created outside the watched folder."""
    root = _WATCH["root"]
    if root is None:
        return
    if event == "open":
        path, mode, flags = args
        if not (isinstance(mode, str) and any(c in mode for c in "wax+")) and \
                not (isinstance(flags, int) and flags & _WRITE_FLAGS):
            return
        paths = [path]
    elif event in _PATH_EVENTS:
        paths = list(args[: _PATH_EVENTS[event]])
    else:
        return
    for path in paths:
        if isinstance(path, (str, bytes, os.PathLike)):
            full = os.path.abspath(os.fsdecode(path))
            if "__pycache__" not in full and full != root and not full.startswith(root + os.sep):
                _WATCH["outside"].append((event, full))


sys.addaudithook(_audit)  # process-wide and permanent: inert unless a test sets _WATCH["root"]


@contextlib.contextmanager
def confined(folder: str, seconds: float = 20.0):
    """Everything inside writes only under ``folder`` and ends within ``seconds`` (a hang fails)."""
    def expired(signum, frame):
        raise TimeoutError(f"a reader took more than {seconds} s (a hang?)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    _WATCH.update(root=os.path.realpath(folder), outside=[])
    try:
        yield
    finally:
        _WATCH["root"] = None
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not _WATCH["outside"], f"wrote outside the temporary folder: {_WATCH['outside'][:3]}"


def outcome(read: Callable[[], Any]) -> Any:
    """The reader's result, or its TrainwellError (checked to be one line); anything else propagates.

    A Run it returns must be usable as documented: a summary dict, and logits (1, classes) for one
    example of its input shape.
    """
    try:
        result = read()
    except TrainwellError as exc:
        assert "\n" not in str(exc), str(exc)
        return exc
    if isinstance(result, trainwell.Run):
        assert isinstance(result.summary, dict), type(result.summary)
        with torch.no_grad():
            logits = result.model.eval()(torch.zeros((1, *result.input_shape)))
        assert tuple(logits.shape) == (1, len(result.classes))
    return result


# ----------------------------------------------------------------------------- the corpus


@dataclass
class Corpus:
    root: Path
    run: Path  # a finished run with two checkpoints
    ensemble: Path  # a copied 2-member ensemble folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    from trainwell.train.ensemble_dir import build_ensemble

    root = tmp_path_factory.mktemp("corpus")
    run = trainwell.train(QUICK, out=root / "run", quiet=True).dir
    other = trainwell.train(dict(QUICK, **{"train.seed": 1}), out=root / "other", quiet=True).dir
    ensemble = build_ensemble([run, other], root / "ens").dir
    assert len(list((run / "checkpoints").glob("step-*.safetensors"))) == 2
    trainwell.evaluate(run)  # imports and first-call costs outside the per-example deadline
    trainwell.load_run(ensemble)
    return Corpus(root, run, ensemble)


@pytest.fixture(scope="module")
def cached_splits(corpus):
    """evaluate's and resume's data, loaded once: the fuzzing is of the run folder, not of the digits loader."""
    inference = importlib.import_module("trainwell.train.inference")
    recipe = importlib.import_module("trainwell.runs.train")
    real = inference.load_splits
    reference = trainwell.load_run(corpus.run).config.data
    splits = real(reference)

    def load_splits(data):
        return splits if data == reference else real(data)

    patch = pytest.MonkeyPatch()
    patch.setattr(inference, "load_splits", load_splits)
    patch.setattr(recipe, "load_splits", load_splits)
    with tempfile.TemporaryDirectory() as tmp:  # the first resume's costs outside the per-example deadline
        shutil.copytree(corpus.run, Path(tmp) / "run")
        (Path(tmp) / "run" / "summary.json").unlink()
        trainwell.train(resume=Path(tmp) / "run", quiet=True)
    yield
    patch.undo()


@contextlib.contextmanager
def copy_of(folder: Path):
    """A fresh copy of ``folder`` in a new temporary folder (per example: function-scoped fixtures
    are shared by every example of a test), watched by :func:`confined`: draw before it (hypothesis
    writes its own cache)."""
    with tempfile.TemporaryDirectory(prefix="trainwell-fuzz-") as tmp:
        copy = Path(tmp) / folder.name
        shutil.copytree(folder, copy)
        with confined(tmp):
            yield copy


# ----------------------------------------------------------------------------- strategies

leaves = (st.none() | st.booleans() | st.integers() | st.integers(-3, 2**40) | st.floats()
          | st.text(max_size=8) | st.sampled_from(["mlp", "cnn", "standardize", "none", "1", "ten", ""]))
json_values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
shapes = st.lists(st.integers(-2, 2**34) | st.sampled_from([1, 8, 64]), max_size=5)
values = json_values | shapes


@st.composite
def mutated_bytes(draw, data: bytes, hot: int = 0) -> bytes:
    """``data`` with bytes flipped, truncated, inserted, or replaced by random bytes; positions below
    ``hot`` (a header) are drawn more often."""
    n = len(data)
    position = st.integers(0, max(0, n - 1)) | st.integers(0, max(0, min(n - 1, hot)))
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "random"]))
    if kind == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            out[draw(position)] ^= draw(st.integers(1, 255))
        return bytes(out)
    if kind == "truncate":
        return data[: draw(position)]
    if kind == "insert":
        i = draw(position)
        return data[:i] + draw(st.binary(min_size=1, max_size=64)) + data[i:]
    return draw(st.binary(max_size=512))


@st.composite
def mutated_json(draw, data: bytes) -> bytes:
    """A JSON object with a random key (existing or new) set to a random value or deleted, or a
    random JSON document, or the file's bytes damaged."""
    kind = draw(st.sampled_from(["key", "key", "document", "bytes"]))
    if kind == "bytes":
        return draw(mutated_bytes(data))
    if kind == "document":
        return json.dumps(draw(json_values)).encode()
    tree = json.loads(data)
    key = draw(st.sampled_from(sorted(tree)) | st.text(max_size=8))
    if draw(st.booleans()) and key in tree:
        del tree[key]
    else:
        tree[key] = draw(values)
    return json.dumps(tree).encode()


@st.composite
def mutated_yaml(draw, text: str) -> bytes:
    """config.yaml with a random dotted key (existing or new) set to a random value, a section
    replaced, a random YAML document, or the file's bytes damaged."""
    kind = draw(st.sampled_from(["key", "key", "section", "document", "bytes"]))
    if kind == "bytes":
        return draw(mutated_bytes(text.encode()))
    if kind == "document":
        return yaml.safe_dump(draw(json_values)).encode()
    tree = yaml.safe_load(text)
    section = draw(st.sampled_from(sorted(tree)) | st.text(max_size=6))
    if kind == "section":
        tree[section] = draw(values)
    else:
        leaf_keys = sorted(tree[section]) if isinstance(tree.get(section), dict) else []
        leaf = draw(st.sampled_from(leaf_keys) | st.text(max_size=6)) if leaf_keys else draw(st.text(max_size=6))
        if not isinstance(tree.get(section), dict):
            tree[section] = {}
        tree[section][leaf] = draw(values)
    return yaml.safe_dump(tree).encode()


def header_end(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


def with_header(data: bytes, header: dict[str, Any]) -> bytes:
    """``data`` with its safetensors header replaced (length and padding consistent)."""
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[header_end(data):]


@st.composite
def reshaped(draw, shape: list[int]) -> list[int]:
    """Another shape with as many elements: leading 1s (another rank), 1s inserted or removed, axes
    reversed, or flattened."""
    kind = draw(st.sampled_from(["lead", "lead", "ones", "reverse", "flat"]))
    if kind == "lead":
        return [1] * draw(st.sampled_from([2, 1, 3])) + list(shape)
    if kind == "reverse":
        return shape[::-1]
    if kind == "flat":
        return [math.prod(shape)] if shape else [1]
    out = [d for d in shape if d != 1] if draw(st.booleans()) else list(shape)
    for _ in range(draw(st.integers(0, 3))):
        out.insert(draw(st.integers(0, len(out))), 1)
    return out


@st.composite
def mutated_safetensors(draw, data: bytes) -> bytes:
    """A safetensors file with its bytes damaged (the header more often), or one header entry's
    dtype, shape (often to another shape of as many elements) or offsets changed and the header
    re-encoded consistently: a well-formed file whose tensors do not fit."""
    if draw(st.booleans()):
        return draw(mutated_bytes(data, hot=header_end(data)))
    header = json.loads(data[8:header_end(data)])
    names = sorted(k for k in header if k != "__metadata__")
    stats = [k for k in names if k.startswith("preprocess.")]
    if stats and draw(st.booleans()):  # every statistic reshaped alike (weights of a run on other data)
        old = header[stats[0]]["shape"]
        new = draw(reshaped(old))
        for k in stats:
            if header[k]["shape"] == old:
                header[k]["shape"] = new
        return with_header(data, header)
    name = draw(st.sampled_from(stats or names) | st.sampled_from(names))
    field = draw(st.sampled_from(["dtype", "shape", "shape", "shape", "data_offsets"]))
    if field == "dtype":
        header[name][field] = draw(st.sampled_from(["F32", "F16", "I32", "BOOL", "U8", "F64", "X9"]))
    elif field == "shape":
        header[name][field] = draw(reshaped(header[name]["shape"]) | reshaped(header[name]["shape"]) | shapes)
    else:
        header[name][field] = draw(shapes)
    return with_header(data, header)


# ----------------------------------------------------------------------------- run folders


def _load_and_evaluate(run: Path) -> None:
    result = outcome(lambda: trainwell.load_run(run))
    if not isinstance(result, TrainwellError):
        outcome(lambda: trainwell.evaluate(run))


@given(data=st.data())
def test_a_mutated_model_card_loads_or_is_a_trainwell_error(corpus, cached_splits, data):
    damaged = data.draw(mutated_json((corpus.run / "model.json").read_bytes()))
    with copy_of(corpus.run) as run:
        (run / "model.json").write_bytes(damaged)
        _load_and_evaluate(run)


@given(data=st.data())
def test_a_mutated_config_loads_or_is_a_trainwell_error(corpus, cached_splits, data):
    damaged = data.draw(mutated_yaml((corpus.run / "config.yaml").read_text()))
    with copy_of(corpus.run) as run:
        (run / "config.yaml").write_bytes(damaged)
        _load_and_evaluate(run)


@given(data=st.data())
def test_mutated_weights_load_or_are_a_trainwell_error(corpus, cached_splits, data):
    damaged = data.draw(mutated_safetensors((corpus.run / "model.safetensors").read_bytes()))
    with copy_of(corpus.run) as run:
        (run / "model.safetensors").write_bytes(damaged)
        _load_and_evaluate(run)


@given(data=st.data())
def test_a_mutated_summary_loads_or_is_a_trainwell_error(corpus, data):
    damaged = data.draw(mutated_json((corpus.run / "summary.json").read_bytes()))
    with copy_of(corpus.run) as run:
        (run / "summary.json").write_bytes(damaged)
        outcome(lambda: trainwell.load_run(run))


# ----------------------------------------------------------------------------- ensemble folders


@given(data=st.data())
def test_a_mutated_ensemble_file_loads_or_is_a_trainwell_error(corpus, data):
    name = data.draw(st.sampled_from(["ensemble.json", "ensemble.json", "summary.json"]))
    damaged = data.draw(mutated_json((corpus.ensemble / name).read_bytes()))
    with copy_of(corpus.ensemble) as ens:
        (ens / name).write_bytes(damaged)
        outcome(lambda: trainwell.load_run(ens))


@given(data=st.data())
def test_a_mutated_member_file_loads_or_is_a_trainwell_error(corpus, data):
    member = data.draw(st.sampled_from(["members/00", "members/01"]))
    name = data.draw(st.sampled_from(["model.json", "config.yaml", "model.safetensors", "summary.json"]))
    original = (corpus.ensemble / member / name).read_bytes()
    mutation = {"model.json": mutated_json, "summary.json": mutated_json,
                "config.yaml": lambda raw: mutated_yaml(raw.decode()), "model.safetensors": mutated_safetensors}
    damaged = data.draw(mutation[name](original))
    with copy_of(corpus.ensemble) as ens:
        (ens / member / name).write_bytes(damaged)
        outcome(lambda: trainwell.load_run(ens))


# ----------------------------------------------------------------------------- checkpoints


@st.composite
def rehashed_checkpoint(draw, data: bytes) -> bytes:
    """A checkpoint whose state JSON is changed (a random key of the tree, or the whole tree) with its
    hash recomputed: the hashes catch damage, not a file made by something else."""
    from trainwell.train.checkpoint import _state_sha256

    header = json.loads(data[8:header_end(data)])
    meta = header["__metadata__"]
    state = json.loads(meta["state"])
    if draw(st.booleans()):
        state = draw(json_values)
    else:
        node = state
        while isinstance(node, dict) and node and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(node)))
            if not isinstance(node[key], dict) or not node[key]:
                break
            node = node[key]
        if isinstance(node, dict):
            node[draw(st.sampled_from(sorted(node)) | st.text(max_size=6)) if node else "x"] = draw(values)
    meta["state"] = json.dumps(state, separators=(",", ":"))
    meta["state_sha256"] = _state_sha256(int(meta["step"]), int(meta["epoch"]), meta["state"])
    return with_header(data, header)


@given(data=st.data())
def test_checkpoints_skip_a_mutated_one_with_a_warning_or_load_a_good_one(corpus, cached_splits, data):
    from trainwell.train.checkpoint import Checkpoints, NewerCheckpointError

    files = sorted((corpus.run / "checkpoints").glob("step-*.safetensors"))
    planted = data.draw(st.booleans())  # a newer file that is not a checkpoint, or one of the two damaged
    victim = files[-1].with_name("step-999999999.safetensors") if planted else data.draw(st.sampled_from(files))
    source = data.draw(st.sampled_from(files)).read_bytes() if planted else victim.read_bytes()
    payload = data.draw(mutated_safetensors(source) | rehashed_checkpoint(source))
    with copy_of(corpus.run) as run:
        damaged = run / "checkpoints" / victim.name
        damaged.write_bytes(payload)
        warnings: list[str] = []
        try:
            loaded = Checkpoints(run / "checkpoints").latest(warnings.append)
        except NewerCheckpointError:  # a flipped version number: refused, never skipped as if corrupt
            return
        assert loaded is not None  # the undamaged one is always there to fall back to
        assert all("\n" not in w for w in warnings)
        if loaded.path != damaged:
            newest = max(p.name for p in (run / "checkpoints").glob("step-*.safetensors"))
            assert warnings or loaded.path.name == newest  # a skipped checkpoint is always reported
        # and what --resume makes of it: the run continues, or one line (a state no loop wrote)
        (run / "summary.json").unlink()
        outcome(lambda: trainwell.train(resume=run, quiet=True))

