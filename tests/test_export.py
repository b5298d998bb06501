"""trainwell export: tiny trained runs exported to ONNX (run by onnxruntime) and TorchScript (torch.jit.load)
give trainwell's own logits on the run's test split, at any batch size, with the preprocessing inside and
the metadata written; refusals are one line and leave no file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

import trainwell
from trainwell.cli import main
from trainwell.data import load_splits
from trainwell.train.ensemble_dir import build_ensemble
from trainwell.train.export import ONNX_OPSET, ExportError, export
from trainwell.train.load import load_run
from trainwell.train.trainer import predict_logits

FAST = {"train.progress": False, "train.epochs": 1, "data.limit": 300}
RUNS = ("cnn", "pca", "gru", "ensemble")
FORMATS = ("onnx", "torchscript")
#: Each ONNX export takes seconds (torch.export, then torch's ONNX translation tables, rebuilt per call):
#: pca's graph is exported to ONNX inside the ensemble's, which runs it as a member.
CASES = [(name, fmt) for name in RUNS for fmt in FORMATS if (name, fmt) != ("pca", "onnx")]
CPU = torch.device("cpu")


def _write_signals(path: Path, n: int = 240, seed: int = 0) -> Path:
    """float32 signals (N, 2, 8): class k is a bump at steps 3k, 3k+1 on channel k % 2, in noise (short:
    exporting a recurrent network to ONNX takes time in proportion to the steps)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.normal(0, 0.3, size=(n, 2, 8)).astype(np.float32) + 2.0
    for i, k in enumerate(y):
        x[i, k % 2, 3 * k : 3 * k + 2] += 3.0
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Each kind of run once: digits' default cnn (uint8 images, standardize), an mlp behind pca,
    a gru on float32 signals (standardize per channel), and the ensemble of the first two."""
    root = tmp_path_factory.mktemp("export")
    signals = _write_signals(root / "signals.npz")
    specs = {
        "cnn": {},
        "pca": {"model.name": "mlp", "model.width": 32, "data.preprocess": "pca"},
        "gru": {"data.name": "npz", "data.path": str(signals), "model.name": "gru", "model.hidden": 16},
    }
    dirs = {name: root / name for name in specs}
    for name, overrides in specs.items():
        trainwell.train({**FAST, **overrides}, out=dirs[name], quiet=True)
    dirs["ensemble"] = build_ensemble([dirs["cnn"], dirs["pca"]], root / "ensemble").dir
    return dirs


@pytest.fixture(scope="module")
def exported(runs) -> dict[tuple[str, str], Path]:
    """Each of CASES exported once, to its default file (RUN_DIR/model.onnx, RUN_DIR/model.pt)."""
    return {(name, fmt): export(runs[name], format=fmt) for name, fmt in CASES}


def _runner(path: Path):
    """The exported file as a function of a stored-dtype batch, run as its consumers run it."""
    if path.suffix == ".onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(["logits"], {"x": x.numpy()})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice
        return torch.jit.load(str(path))


@pytest.mark.parametrize("name, fmt", CASES)
def test_the_exported_file_gives_trainwells_logits_at_any_batch_size(runs, exported, name, fmt):
    run = load_run(runs[name])
    x = load_splits(run.config.data).test.x  # stored dtype: uint8 pixels, float32 signals
    assert x.dtype == (torch.float32 if name == "gru" else torch.uint8)
    want = predict_logits(run.model, x, CPU)
    model = _runner(exported[name, fmt])
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, rtol=0, atol=1e-5)
        for n in (1, 7):
            got = model(x[:n])
            assert got.shape == (n, len(run.classes))
            torch.testing.assert_close(got, want[:n], rtol=0, atol=1e-5)


def test_the_onnx_graph_passes_the_checker_at_opset_20_with_a_free_batch_axis(exported):
    model = onnx.load(str(exported["cnn", "onnx"]))
    onnx.checker.check_model(model, full_check=True)
    assert {o.domain: o.version for o in model.opset_import}[""] == ONNX_OPSET == 20
    (x,), (logits,) = model.graph.input, model.graph.output
    assert (x.name, logits.name) == ("x", "logits")
    assert x.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert x.type.tensor_type.shape.dim[0].dim_param and [d.dim_value for d in x.type.tensor_type.shape.dim[1:]] == [1, 8, 8]
    assert logits.type.tensor_type.shape.dim[0].dim_param and logits.type.tensor_type.shape.dim[1].dim_value == 10
    gru = onnx.load(str(exported["gru", "onnx"])).graph.input[0].type.tensor_type
    assert gru.elem_type == onnx.TensorProto.FLOAT and [d.dim_value for d in gru.shape.dim[1:]] == [2, 8]


def _metadata(path: Path) -> dict:
    if path.suffix == ".onnx":  # as a consumer reads it; lists are JSON
        props = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
        return {k: json.loads(v) if v[:1] == "[" else v for k, v in props.custom_metadata_map.items()}
    files = {"trainwell.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(str(path), _extra_files=files)
    return json.loads(files["trainwell.json"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_metadata_records_the_input_the_classes_and_the_preprocessing_inside(exported, fmt):
    cnn, gru, ensemble = (_metadata(exported[name, fmt]) for name in ("cnn", "gru", "ensemble"))
    assert cnn["input_name"] == "x" and cnn["output_name"] == "logits"
    assert (cnn["input_dtype"], cnn["input_shape"], cnn["classes"]) == ("uint8", ["N", 1, 8, 8], list("0123456789"))
    assert (cnn["input_scaling"], cnn["preprocess"]) == ("x / 255 (uint8 pixels to [0, 1])", "standardize")
    assert cnn["preprocess_doc"].startswith("standardize: Subtract the training mean")
    assert cnn["model"] == "cnn" and cnn["run"] == "cnn" and cnn["producer"].startswith("trainwell ")
    assert "softmax" in cnn["output"]
    if fmt == "torchscript":
        pca = _metadata(exported["pca", fmt])
        assert (pca["preprocess"], pca["model"]) == ("pca", "mlp")
    assert (gru["input_dtype"], gru["input_shape"], gru["classes"]) == ("float32", ["N", 2, 8], ["0", "1", "2"])
    assert (gru["input_scaling"], gru["preprocess"]) == ("none (x as it is)", "standardize")
    assert ensemble["model"] == "ensemble of 2 runs (mean_prob)" and "log-probabilities" in ensemble["output"]
    assert ensemble["preprocess"] == "standardize, pca" and "pca: Project" in ensemble["preprocess_doc"]


def test_the_onnx_file_answers_as_trainwell_predict_does_from_the_same_input_file(runs, exported, tmp_path):
    x = load_splits(load_run(runs["cnn"]).config.data).test.x[:5].numpy()
    np.savez(tmp_path / "batch.npz", x=x)
    rows = trainwell.predict(runs["cnn"], [tmp_path / "batch.npz"], device="cpu")
    probs = torch.softmax(_runner(exported["cnn", "onnx"])(torch.from_numpy(x)), dim=1)
    assert [r["class"] for r in rows] == probs.argmax(1).tolist()
    np.testing.assert_allclose([list(r["probabilities"].values()) for r in rows], probs.numpy(), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- the command and its refusals


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["export", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("trainwell: error:"), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_the_command_prints_one_line_and_refuses_to_replace_a_file_without_overwrite(runs, capsys, tmp_path):
    out = tmp_path / "sub" / "cnn.pt"
    code, stdout, _ = _cli(capsys, runs["cnn"], "--format", "torchscript", "--out", out)
    assert code == 0 and out.is_file()
    assert stdout.strip().splitlines() == [stdout.strip()]
    assert f"to {out} (torchscript): x uint8 (N, 1, 8, 8) -> logits (N, 10); preprocessing inside: x / 255, " \
           "standardize" in stdout
    before = out.read_bytes()
    code, _, err = _cli(capsys, runs["cnn"], "--format", "torchscript", "--out", out)
    assert code == 2 and out.read_bytes() == before
    _one_error_line(err, f"'{out}' already exists", "--overwrite")
    code, _, _ = _cli(capsys, runs["pca"], "--format", "torchscript", "--out", out, "--overwrite")
    assert code == 0 and out.read_bytes() != before
    assert sorted(p.name for p in out.parent.iterdir()) == ["cnn.pt"]  # the atomic writer's temp file is gone


@pytest.mark.parametrize("out, says", [(".", "is a folder"), ("model.safetensors", "one of the run's own files")])
def test_an_out_that_is_a_folder_or_the_runs_own_file_is_refused(runs, capsys, out, says):
    target = runs["pca"] / out
    before = sorted(p.name for p in runs["pca"].iterdir())
    code, _, err = _cli(capsys, runs["pca"], "--format", "torchscript", "--out", target, "--overwrite")
    assert code == 2
    _one_error_line(err, says)
    assert sorted(p.name for p in runs["pca"].iterdir()) == before


def test_onnx_without_the_export_extra_is_one_line_naming_it(runs, tmp_path):
    out = tmp_path / "m.onnx"
    code = ("import sys; sys.modules['onnx'] = None; from trainwell.cli import main; "
            f"sys.exit(main(['export', {str(runs['cnn'])!r}, '--format', 'onnx', '--out', {str(out)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    _one_error_line(proc.stderr, "needs onnx", "pip install 'trainwell[export]'")
    assert not out.exists()


class _BatchFrozen(nn.Module):
    """A custom network whose code turns the batch size into a Python int (len(x)), as trainwell's
    recurrent readout once did: it trains, but no graph of it takes another batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(len(x), -1))


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory) -> trainwell.Run:
    return trainwell.train({**FAST, "data.limit": 100}, model=_BatchFrozen(),
                           out=tmp_path_factory.mktemp("custom") / "run", quiet=True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_model_that_cannot_be_exported_is_one_line_and_no_file(frozen_run, tmp_path, capsys, fmt):
    run = frozen_run
    out = tmp_path / "files" / f"custom.{fmt}"
    with pytest.raises(ExportError, match="cannot be exported to .*batch") as info:
        trainwell.export(run, format=fmt, out=out)
    assert "\n" not in str(info.value)
    assert not out.parent.exists() or not any(out.parent.iterdir())
    code, _, err = _cli(capsys, run.dir, "--format", fmt, "--out", out)  # a folder cannot rebuild a custom module
    assert code == 2 and not out.exists()
    _one_error_line(err, "custom nn.Module")
