"""Exporting a trained run (or ensemble) to one file that other programs run: ONNX or TorchScript.

    trainwell export runs/cnn --format onnx                     # writes runs/cnn/model.onnx
    trainwell.export("runs/cnn", format="torchscript", out="cnn.pt")

The graph holds the whole :class:`~trainwell.nn.pipeline.Classifier`, fitted preprocessing
included, so a consumer feeds what trainwell itself stores and ``trainwell predict`` reads:

* input ``x`` (N, *input_shape), any N: the examples in the run's stored dtype, **uint8** pixels
  0..255 for images (the graph divides by 255, as :func:`~trainwell.data.splits.to_float` does),
  **float32** for tabular data and signals (taken as they are);
* output ``logits`` (N, num_classes) float32: what :func:`~trainwell.train.trainer.predict_logits`
  returns for the run. ``softmax(logits)`` are the probabilities ``trainwell predict`` reports and
  ``argmax`` its class. Logits rather than probabilities because they are what trainwell computes
  from (evaluate, predict, calibration) and lose nothing: probabilities of confident predictions
  round to 0 and 1 in float32, and any runtime applies a softmax in one operation.

An ensemble folder becomes one graph that runs every member and combines them by the ensemble's
method (:func:`~trainwell.train.ensemble.combine`; ``mean_prob``, the default, is the log of the
mean of the members' probabilities): its ``logits`` are those log-probabilities, which
``trainwell`` itself treats as logits (softmax leaves them unchanged).

The file's metadata (ONNX ``metadata_props``, string values with lists as JSON; TorchScript
``_extra_files["trainwell.json"]``, one JSON object) holds :func:`export_metadata`: ``input_name``,
``input_dtype``, ``input_shape`` (``["N", *input_shape]``), ``input_scaling`` (``x / 255`` for uint8),
``preprocess`` (the fitted preprocessing inside the graph; an ensemble's, member by member) and
``preprocess_doc``, ``output_name``, ``output`` (what the numbers are), ``classes`` (the names in
output order), ``model``, ``run`` and ``producer``.

Formats. ONNX: opset :data:`ONNX_OPSET`, written by torch's ``torch.export``-based exporter
(``torch.onnx.export(dynamo=True)``, the one torch recommends; its TorchScript-based predecessor is
deprecated); it needs the ``export`` extra (``pip install 'trainwell[export]'``: onnx, onnxscript,
onnxruntime). TorchScript: ``torch.jit.trace`` of the same module, loaded with ``torch.jit.load``
and torch alone (torch deprecates TorchScript in favour of ``torch.export``: prefer ONNX for
anything lasting).

Checks before anything is written: the ONNX model passes ``onnx.checker``, its batch axis is
symbolic, and the file as written (run by onnxruntime, or reloaded by ``torch.jit.load``) gives
the model's outputs on random batches of 1 and 3 examples. A model that cannot be exported (code
that turns the batch size into a constant, as ``reshape(len(x), -1)`` does, or an operation the
exporter lacks) is one :class:`ExportError` line and no file. The file is written atomically
(:func:`~trainwell.fileio.atomic_write_bytes`); an existing one is replaced only with ``overwrite``.

The graph computes in float32 whatever ``train.precision`` the run trained with.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainwell.data import PREPROCESSORS
from trainwell.data.splits import to_float
from trainwell.errors import ConfigError, TrainwellError, exception_line, unknown_name_message
from trainwell.fileio import atomic_write_bytes
from trainwell.train.ensemble import Ensemble
from trainwell.train.load import Run, load_run

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
"""Export formats and the extension of their default file name (``RUN_DIR/model.onnx``, ``model.pt``)."""
ONNX_OPSET = 20
"""The ONNX opset written: torch's own default here, pinned so the files do not change with torch."""
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
"""What ONNX export imports: the ``export`` extra."""
INPUT, OUTPUT = "x", "logits"
METADATA_FILE = "trainwell.json"
"""The TorchScript archive's extra file holding the metadata."""
#: Batch sizes the exported file is checked at (it is traced at another, 2).
CHECK_BATCHES = (1, 3)
#: How a graph comes to take one batch size only, and the fix (trainwell's recurrent readout once did it).
_FROZEN_BATCH = ("the model's code turns the batch size into a constant (e.g. x.reshape(len(x), -1); "
                 "x.flatten(1) keeps it free).")
#: The files a run or ensemble folder is read from: never an export's --out.
_RUN_FILES = ("config.yaml", "model.json", "model.safetensors", "summary.json", "ensemble.json", "metrics.jsonl")


class ExportError(TrainwellError):
    """The run cannot be exported in the asked format, or the export's output file is refused."""


class _StoredInputs(nn.Module):
    """The model behind :func:`to_float`: it takes examples as stored (uint8 pixels, float32 values)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(to_float(x))


@dataclass(frozen=True)
class Exported:
    """A written export: its file, format and the metadata recorded in it."""

    path: Path
    format: str
    metadata: dict[str, Any]

    def line(self) -> str:
        """One line for the command line: the file, what it takes and what it returns."""
        m = self.metadata
        opset = f", opset {ONNX_OPSET}" if self.format == "onnx" else ""
        scaling = "x / 255, " if m["input_dtype"] == "uint8" else ""
        return (f"exported {m['model']} to {self.path} ({self.format}{opset}): {_signature(m)}; preprocessing "
                f"inside: {scaling}{m['preprocess']}")


def _signature(metadata: dict[str, Any]) -> str:
    """``x uint8 (N, 1, 8, 8) -> logits (N, 10)``: what the exported graph takes and returns."""
    shape = ", ".join(map(str, metadata["input_shape"]))
    return f"{INPUT} {metadata['input_dtype']} ({shape}) -> {OUTPUT} (N, {len(metadata['classes'])})"


def export(run: str | Path | Run, format: str = "onnx", out: str | Path | None = None, *,
           overwrite: bool = False) -> Path:
    """Export a run folder, an ensemble folder or a :class:`Run` (as ``trainwell.train`` returns) to
    one ``format`` file (``onnx`` or ``torchscript``) at ``out`` (default ``RUN_DIR/model.onnx`` or
    ``model.pt``); returns its path. See the module docstring for what the file takes and returns."""
    return export_run(run, format, out, overwrite=overwrite).path


def export_run(run: str | Path | Run, format: str = "onnx", out: str | Path | None = None, *,
               overwrite: bool = False) -> Exported:
    """:func:`export`, returning the file's path, format and metadata."""
    if format not in FORMATS:
        raise ConfigError(unknown_name_message("export format", str(format), FORMATS))
    run_dir = (Path(run.dir) if run.dir is not None else None) if isinstance(run, Run) else Path(run)
    path = _out_path(run_dir, format, out, overwrite)  # refusals first, before the seconds of work
    if format == "onnx":
        _require_onnx()
    if isinstance(run, Run):  # the caller's model: exported from a copy, its device and mode untouched
        loaded, model = run, copy.deepcopy(run.model).to("cpu").eval()
    else:
        loaded = load_run(run)
        model = loaded.model.eval()
    dtype = stored_dtype(loaded)
    module = _StoredInputs(model).eval()
    metadata = export_metadata(loaded, dtype)
    name = f"run '{run_dir}'" if run_dir is not None else "the run"
    with torch.no_grad(), _quiet_exporters():
        data = _onnx_bytes(module, loaded, dtype, metadata, name) if format == "onnx" else \
            _torchscript_bytes(module, loaded, dtype, metadata, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return Exported(path, format, metadata)


def _out_path(run_dir: Path | None, format: str, out: str | Path | None, overwrite: bool) -> Path:
    """The file to write, refused when it is a folder, one of the run's own files, or exists without ``overwrite``."""
    if out is None:
        if run_dir is None:
            raise ConfigError("this run has no folder to write the export into; pass out=FILE.")
        return run_dir / f"model{FORMATS[format]}"
    path = Path(out)
    if path.is_dir():
        raise ExportError(f"--out '{path}' is a folder; pass a file name, e.g. '{path / ('model' + FORMATS[format])}'.")
    if run_dir is not None and path.name in _RUN_FILES and path.resolve().parent == run_dir.resolve():
        raise ExportError(f"--out '{path}' is one of the run's own files; choose another file name.")
    if path.exists() and not overwrite:
        raise ExportError(f"output file '{path}' already exists; choose another --out or pass --overwrite to replace it.")
    return path


def _require_onnx() -> None:
    missing = []
    for package in ONNX_PACKAGES:
        try:
            __import__(package)
        except ImportError:
            missing.append(package)
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)} (not installed); install them with: "
                          "pip install 'trainwell[export]'")


def stored_dtype(run: Run) -> torch.dtype:
    """The dtype the run's examples are stored in, which the exported graph takes: uint8 (pixels) or float32.

    Read from the run's input contract (model.json's ``inputs``; an ensemble's first member's); a run
    recorded without one takes what ``trainwell predict`` reads: uint8 images, float32 otherwise.
    """
    from trainwell.train.contract import read_contract

    contract = read_contract(run.dir) if run.dir is not None else None
    stored = contract.get("dtype") if contract else None
    if stored is None and run.splits is not None:
        stored = str(run.splits.train.dtype).replace("torch.", "")
    if stored is None:
        return torch.uint8 if len(run.input_shape) == 3 else torch.float32
    return torch.uint8 if stored == "uint8" else torch.float32


def _members(model: nn.Module) -> list[nn.Module]:
    return list(model.members) if isinstance(model, Ensemble) else [model]


def _preprocess_names(model: nn.Module) -> list[str]:
    """The fitted preprocessing of the run, or of each member of an ensemble in order (``none`` for none)."""
    return [str(getattr(getattr(member, "preprocess", None), "name", "") or "none") for member in _members(model)]


def _preprocess_doc(names: list[str], card: dict[str, Any]) -> str:
    """Each preprocessing named once, with its one-line doc (its statistics are in the graph): fitted on
    the training split, or a torchvision/timm fine-tune's weights' mean/std (model.json's input_normalization)."""
    docs = [f"{name}: {PREPROCESSORS.entry(name).doc}" for name in dict.fromkeys(names) if name in PREPROCESSORS]
    given = card.get("input_normalization")
    where = f"The mean/std of the {given['from']}, not fitted on the training split" \
        if isinstance(given, dict) and "from" in given else "Fitted on the training split"
    return " ".join(docs) + f" {where}; the statistics are constants of the graph."


def _card(run: Run) -> dict[str, Any]:
    """The run's model card, or nothing (an ensemble, a run without a folder, an unreadable card)."""
    from trainwell.train.load import read_card

    if run.dir is not None:
        with contextlib.suppress(TrainwellError):
            return read_card(run.dir)
    return {}


def export_metadata(run: Run, dtype: torch.dtype) -> dict[str, Any]:
    """What the exported file records about itself (the module docstring lists where)."""
    from trainwell.version import __version__

    model = run.model
    preprocess = _preprocess_names(model)
    card = {} if isinstance(model, Ensemble) else _card(run)
    if isinstance(model, Ensemble):
        kind = f"ensemble of {len(model.members)} runs ({model.method})"
        output = (f"log-probabilities of the ensemble ({model.method}), N x {len(run.classes)}: logits as trainwell "
                  "treats them; softmax gives trainwell predict's probabilities")
    else:
        # the card's name (custom for an nn.Module passed to train, torchvision:NAME for a hub fine-tune)
        kind = str(card.get("model") or run.config.model.name)
        output = (f"logits, N x {len(run.classes)} float32: softmax gives trainwell predict's probabilities, argmax "
                  "its class")
    return {
        "producer": f"trainwell {__version__}",
        "run": run.dir.name if run.dir is not None else "",
        "model": kind,
        "input_name": INPUT,
        "input_dtype": str(dtype).replace("torch.", ""),
        "input_shape": ["N", *run.input_shape],
        "input_scaling": "x / 255 (uint8 pixels to [0, 1])" if dtype == torch.uint8 else "none (x as it is)",
        "preprocess": ", ".join(preprocess),
        "preprocess_doc": _preprocess_doc(preprocess, card),
        "output_name": OUTPUT,
        "output": output,
        "classes": list(run.classes),
    }


def _examples(run: Run, dtype: torch.dtype, n: int, seed: int) -> torch.Tensor:
    """``n`` random examples of the run's input shape and stored dtype (deterministic)."""
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        return torch.randint(0, 256, (n, *run.input_shape), generator=gen, dtype=torch.uint8)
    return torch.randn((n, *run.input_shape), generator=gen)


def _check_outputs(module: nn.Module, run: Run, dtype: torch.dtype, run_exported: Callable[[torch.Tensor], Any],
                   name: str, what: str) -> None:
    """The exported file's outputs against the module's on batches of :data:`CHECK_BATCHES` examples."""
    cannot = f"{name} cannot be exported to {what}:"
    for n in CHECK_BATCHES:
        x = _examples(run, dtype, n, seed=n)
        want = module(x)
        try:
            got = torch.as_tensor(run_exported(x))
        except Exception as exc:  # the runtime's own error types (onnxruntime's, TorchScript's)
            raise ExportError(f"{cannot} the exported graph fails on a batch of {n} ({exception_line(exc, 160)}); "
                              f"{_FROZEN_BATCH}") from None
        if got.shape != want.shape:
            raise ExportError(f"{cannot} the exported graph returns shape {tuple(got.shape)} for a batch of {n}, not "
                              f"{tuple(want.shape)}; {_FROZEN_BATCH}")
        scale = 1.0 + float(want.abs().max()) if want.numel() else 1.0
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-4 * scale):
            raise ExportError(f"{cannot} the exported graph's outputs on a batch of {n} differ from the model's by up "
                              f"to {float((got - want).abs().max()):.3g}; try the other format.")


def _onnx_bytes(module: nn.Module, run: Run, dtype: torch.dtype, metadata: dict[str, Any], name: str) -> bytes:
    import onnx
    import onnxruntime

    example = _examples(run, dtype, 2, seed=0)
    try:
        program = torch.onnx.export(module, (example,), input_names=[INPUT], output_names=[OUTPUT],
                                    opset_version=ONNX_OPSET, dynamo=True, verbose=False,
                                    dynamic_shapes=({0: torch.export.Dim("N")},))
        assert program is not None  # dynamo=True always returns the program
        proto = program.model_proto
    except Exception as exc:  # the exporter raises many types (torch.export's, onnxscript's, its own)
        raise ExportError(f"{name} cannot be exported to ONNX: {exception_line(exc, 200)}") from None
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if not batch.dim_param:
        raise ExportError(f"{name} cannot be exported to ONNX with a free batch size: the exporter fixed it at "
                          f"{batch.dim_value}; {_FROZEN_BATCH}")
    proto.doc_string = f"trainwell {metadata['model']}: {_signature(metadata)}; metadata_props say more."
    onnx.helper.set_model_props(proto, {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
    try:
        onnx.checker.check_model(proto, full_check=True)
        data = proto.SerializeToString()
    except (onnx.checker.ValidationError, ValueError) as exc:  # ValueError: over protobuf's 2 GiB
        raise ExportError(f"{name} cannot be exported to ONNX: {exception_line(exc, 200)}") from None
    try:
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own error types
        raise ExportError(f"{name} was exported to ONNX but onnxruntime cannot load the graph: "
                          f"{exception_line(exc, 200)}") from None
    _check_outputs(module, run, dtype, lambda x: session.run([OUTPUT], {INPUT: x.numpy()})[0], name, "ONNX")
    return data


def _torchscript_bytes(module: nn.Module, run: Run, dtype: torch.dtype, metadata: dict[str, Any], name: str) -> bytes:
    example = _examples(run, dtype, 2, seed=0)
    try:
        traced = torch.jit.trace(module, (example,), check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={METADATA_FILE: json.dumps(metadata)})
    except Exception as exc:  # tracing raises whatever the model's code raises under the tracer
        raise ExportError(f"{name} cannot be exported to TorchScript: {exception_line(exc, 200)}") from None
    data = buffer.getvalue()
    loaded = torch.jit.load(io.BytesIO(data))
    _check_outputs(module, run, dtype, loaded, name, "TorchScript")
    return data


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """Silence torch's exporters' notices about their own internals (deprecations, optional torchvision
    operators, tracer hints): nothing a user can act on, and the exported file is checked anyway."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


__all__ = ["ExportError", "Exported", "FORMATS", "ONNX_OPSET", "export", "export_metadata", "export_run", "stored_dtype"]
