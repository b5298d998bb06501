"""Hostile and careless run folders: damaged model cards and configs, unfinished runs, mixed folders,
output folders refused before the work, staged outputs, devices this machine lacks, file modes.

Each case is one line on stderr (``trainwell: error: ...``), exit 2, no traceback, and no folder left
half-written. CLI cases run in-process through ``trainwell.cli.main``; tiny digits MLPs throughout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import trainwell
from trainwell.cli import main
from trainwell.errors import TrainwellError

QUICK = {"model.name": "mlp", "model.width": 16, "model.depth": 1, "train.epochs": 1, "data.limit": 200,
         "train.progress": False, "train.device": "cpu", "train.plots": False}
QUICK_ARGS = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in QUICK.items()]


@pytest.fixture(autouse=True)
def time_limit():
    """A hang (building a 10**7-layer model, say) fails its test instead of stalling the suite."""
    def expired(signum, frame):
        raise TimeoutError("test took more than 60 s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, 60)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One finished run (1 epoch, two checkpoints); tests copy it before damaging it."""
    return trainwell.train(QUICK, out=tmp_path_factory.mktemp("runs") / "run", quiet=True).dir


@pytest.fixture
def run(finished, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def one_error_line(capsys, code: int, *fragments: str) -> str:
    """Exit code 2 and exactly one line on stderr, 'trainwell: error: ...', holding every fragment."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("trainwell: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is DELETE:
            data.pop(key)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


DELETE = object()


# ----------------------------------------------------------------------------- model.json and config.yaml


@pytest.mark.parametrize("field, value", [
    ("input_shape", DELETE),
    ("input_shape", [1, 8, -8]),
    ("input_shape", [1, 100000, 100000]),  # an MLP this wide would need 640 GB: refused, never allocated
    ("input_shape", "1x8x8"),
    ("num_classes", "ten"),
    ("num_classes", DELETE),
    ("num_classes", 7),  # does not match the 10 class names
    ("format_version", "1"),
    ("format_version", None),
    ("classes", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
    ("classes", "0123456789"),
    ("preprocess", 5),
    ("preprocess", "bogus"),
    ("custom_model", "yes"),
])
def test_a_damaged_model_card_is_one_line_naming_the_file_and_field(run, capsys, field, value):
    edit_json(run / "model.json", **{field: value})
    line = one_error_line(capsys, main(["evaluate", str(run)]), "model.json")
    if field != "num_classes" or value != 7:
        assert f"'{field}'" in line
    else:
        assert "'classes'" in line  # the names and their count disagree


@pytest.mark.parametrize("text, fragment", [
    ("- a\n- b\n", "got a list"),
    ("42\n", "got an integer"),
    ("", "got nothing"),
    ("just words\n", "got a string"),
])
def test_a_config_that_is_not_a_mapping_is_one_line(run, capsys, text, fragment):
    (run / "config.yaml").write_text(text)
    one_error_line(capsys, main(["evaluate", str(run)]), "config.yaml", fragment)


def test_a_config_that_is_not_text_is_one_line(run, capsys):
    (run / "config.yaml").write_bytes(b"model:\n  name: \xff\xfe mlp\n")
    one_error_line(capsys, main(["evaluate", str(run)]), "config.yaml")


@pytest.mark.parametrize("change", [{"width": 10**9}, {"depth": 10**7}])
def test_a_config_that_does_not_match_the_weights_never_builds_the_model(run, capsys, change):
    tree = yaml.safe_load((run / "config.yaml").read_text())
    tree["model"].update(change)
    (run / "config.yaml").write_text(yaml.safe_dump(tree))
    one_error_line(capsys, main(["evaluate", str(run)]), "model.safetensors", "do not match")


@pytest.mark.parametrize("text", ["[]", "3", '"done"'])
def test_a_summary_that_is_not_an_object_is_one_line(run, capsys, text):
    (run / "summary.json").write_text(text)
    one_error_line(capsys, main(["evaluate", str(run)]), "summary.json")


def test_statistics_of_another_shape_are_refused_on_load_not_when_used(run, capsys):
    """Preprocessing statistics that broadcast (rank 5 against examples of rank 3) loaded fine and
    failed only inside evaluate, with a matmul traceback."""
    path = run / "model.safetensors"
    data = path.read_bytes()
    end = 8 + int.from_bytes(data[:8], "little")
    header = json.loads(data[8:end])
    for name in ("preprocess.mean", "preprocess.std"):
        header[name]["shape"] = [1, 1, *header[name]["shape"]]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[end:])
    one_error_line(capsys, main(["evaluate", str(run)]), "model.safetensors", "preprocessing", "[1, 8, 8]")


def test_resuming_from_a_checkpoint_of_another_run_is_one_line(run, tmp_path, capsys):
    wider = trainwell.train(dict(QUICK, **{"model.width": 32}), out=tmp_path / "wider", quiet=True).dir
    (run / "summary.json").unlink()  # unfinished: resumable
    shutil.rmtree(run / "checkpoints")
    shutil.copytree(wider / "checkpoints", run / "checkpoints")
    one_error_line(capsys, main(["train", "--resume", str(run), "--quiet"]), "checkpoint", "does not fit",
                   "different runs")


# ----------------------------------------------------------------------------- the finished marker


def _unfinished(run: Path, checkpoints: bool) -> Path:
    (run / "summary.json").unlink()
    if not checkpoints:
        shutil.rmtree(run / "checkpoints")
    return run


@pytest.mark.parametrize("command", ["evaluate", "predict", "doctor", "finetune", "ensemble"])
def test_every_reader_refuses_an_unfinished_run_and_names_resume(run, tmp_path, capsys, command):
    _unfinished(run, checkpoints=True)
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), np.uint8))
    argv = {"evaluate": ["evaluate", str(run)],
            "predict": ["predict", str(run), str(tmp_path / "x.npy")],
            "doctor": ["doctor", str(run)],
            "finetune": ["finetune", str(run), "train.epochs=1", "data.limit=200"],
            "ensemble": ["ensemble", str(run), str(run.parent / "other")]}[command]
    if command == "ensemble":
        shutil.copytree(run, run.parent / "other")
    for argv_out in (["--out", str(tmp_path / "out")],):
        line = one_error_line(capsys, main([*argv, *argv_out]), "did not finish", f"trainwell train --resume {run}")
        assert "summary.json" in line
    assert not (tmp_path / "out").exists()


def test_a_run_killed_before_its_first_checkpoint_says_train_it_again(run, capsys):
    _unfinished(run, checkpoints=False)
    line = one_error_line(capsys, main(["evaluate", str(run)]), "did not finish", "no checkpoint", "train it again")
    assert "--resume" not in line


def test_unfinished_ensembles_say_how_to_finish_them(finished, tmp_path, capsys):
    from trainwell.train.ensemble_dir import build_ensemble

    other = tmp_path / "other"
    shutil.copytree(finished, other)
    ens = build_ensemble([finished, other], tmp_path / "ens").dir
    (ens / "summary.json").unlink()
    one_error_line(capsys, main(["evaluate", str(ens)]), "ensemble", "did not finish", "trainwell ensemble",
                   "--overwrite")
    # train.ensemble=K killed while its members train: config.yaml and members-runs/, nothing else yet
    killed = tmp_path / "killed"
    (killed / "members-runs").mkdir(parents=True)
    shutil.copy(finished / "config.yaml", killed / "config.yaml")
    one_error_line(capsys, main(["evaluate", str(killed)]), "did not finish", f"trainwell train --resume {killed}")


# ----------------------------------------------------------------------------- no mixed folders


def test_overwrite_removes_the_previous_run_entirely_and_says_so(run, capsys):
    for stale in ("doctor.json", "doctor_activations.png", "lr_find.json"):
        (run / stale).write_text("{}")
    code = main(["train", *QUICK_ARGS, "train.seed=1", "--out", str(run), "--overwrite"])
    assert code == 0
    err = capsys.readouterr().err
    assert f"--overwrite: removed the previous contents of {run}" in err
    assert not any((run / stale).exists() for stale in ("doctor.json", "doctor_activations.png", "lr_find.json"))
    assert trainwell.load_run(run).config.train.seed == 1


def test_an_overwrite_that_dies_mid_run_leaves_no_old_weights_beside_the_new_config(run, capsys):
    from trainwell.train.events import Callback

    class Crash(Callback):
        def on_epoch_end(self, event):
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        trainwell.train(dict(QUICK, **{"train.seed": 2}), out=run, overwrite=True, quiet=True, callbacks=[Crash()])
    assert not (run / "model.safetensors").exists() and not (run / "summary.json").exists()
    one_error_line(capsys, main(["evaluate", str(run)]), "did not finish", "--resume")


def test_overwrite_never_empties_a_folder_trainwell_did_not_write(tmp_path, capsys):
    mine = tmp_path / "home"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    one_error_line(capsys, main(["train", *QUICK_ARGS, "--out", str(mine), "--overwrite"]), "not a trainwell folder")
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_overwrite_never_deletes_the_data_it_trains_on(run, capsys):
    data = run / "d.npz"
    np.savez(data, x=np.zeros((30, 4), np.float32), y=np.arange(30) % 2)
    one_error_line(capsys, main(["train", *QUICK_ARGS, "data.name=npz", f"data.path={data}", "data.limit=0",
                                 "--out", str(run), "--overwrite"]), "data.path", "inside the output folder")
    assert data.is_file()


@pytest.mark.parametrize("command", ["evaluate", "predict", "doctor-run", "doctor-config", "lr-find", "ensemble",
                                     "finetune"])
def test_a_non_empty_out_is_refused_before_the_work(tmp_path, capsys, command):
    """The inputs here are all missing: the refusal of --out must come first, not the inputs' error."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    gone = str(tmp_path / "gone")
    argv = {"evaluate": ["evaluate", gone], "predict": ["predict", gone, gone + ".npz"],
            "doctor-run": ["doctor", str(out.parent)], "doctor-config": ["doctor", "data.name=npz", f"data.path={gone}"],
            "lr-find": ["lr-find", "data.name=npz", f"data.path={gone}"],
            "ensemble": ["ensemble", gone, gone + "2"],
            "finetune": ["finetune", str(tmp_path / "model.safetensors"), "data.name=npz", f"data.path={gone}"]}[command]
    if command == "finetune":
        from safetensors.torch import save_file

        save_file({"net.1.weight": torch.zeros(2, 2)}, str(tmp_path / "model.safetensors"))
    one_error_line(capsys, main([*argv, "--out", str(out)]), "already exists", "--overwrite")


def test_a_staged_output_replaces_the_old_folder_whole_and_cleans_up_a_killed_one(run, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["evaluate", str(run), "--out", str(out)]) == 0
    (out / "stale.txt").write_text("from an older evaluation")
    killed = tmp_path / ".ev.tmp-999999999"  # a command killed while building the folder
    killed.mkdir()
    assert main(["evaluate", str(run), "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["confusion.png", "reliability.png", "summary.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev", "run"]


def test_an_interrupted_staged_output_leaves_the_old_folder_intact(run, tmp_path, monkeypatch):
    import importlib

    inference = importlib.import_module("trainwell.train.inference")

    out = tmp_path / "ev"
    trainwell.evaluate(run, out=out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(inference, "write_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainwell.evaluate(run, out=out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev", "run"]


def test_ensemble_with_a_member_whose_data_has_gone_writes_nothing(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.integers(0, 255, (60, 1, 4, 4)).astype(np.uint8), y=np.arange(60) % 3)
    args = {**QUICK, "data.name": "npz", "data.path": str(data), "data.limit": 0}
    runs = [trainwell.train(dict(args, **{"train.seed": s}), out=tmp_path / f"r{s}", quiet=True).dir for s in (0, 1)]
    data.unlink()
    code = main(["ensemble", *map(str, runs), "--out", str(tmp_path / "ens")])
    one_error_line(capsys, code, "d.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r0", "r1"]


# ----------------------------------------------------------------------------- devices


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_an_unavailable_mps_device_is_one_line_before_any_folder(tmp_path, capsys):
    out = tmp_path / "run"
    one_error_line(capsys, main(["train", *QUICK_ARGS, "train.device=mps", "--out", str(out)]), "train.device=mps",
                   "MPS")
    assert not out.exists()


def test_predict_blames_its_own_device_option(run, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), np.uint8))
    line = one_error_line(capsys, main(["predict", str(run), str(tmp_path / "x.npy"), "--device", "bogus",
                                        "--out", str(tmp_path / "p")]), "--device 'bogus'")
    assert "train.device" not in line
    assert not (tmp_path / "p").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cuda_index_beyond_the_visible_gpus_is_one_line(capsys):
    from trainwell.errors import ConfigError
    from trainwell.train.trainer import resolve_device

    with pytest.raises(ConfigError, match="CUDA GPU"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


# ----------------------------------------------------------------------------- file modes


@pytest.mark.parametrize("umask, mode", [(0o002, 0o664), (0o022, 0o644)])
def test_run_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        out = trainwell.train(dict(QUICK, **{"train.plots": True}), out=tmp_path / "run", quiet=True).dir
        trainwell.evaluate(out, out=tmp_path / "ev")
    finally:
        os.umask(old)
    files = [p for p in [*out.rglob("*"), *(tmp_path / "ev").rglob("*")] if p.is_file()]
    assert {p.name for p in files} >= {"config.yaml", "model.json", "model.safetensors", "summary.json",
                                       "metrics.jsonl", "curves.png"}
    assert {p.relative_to(tmp_path).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == \
        {p.relative_to(tmp_path).as_posix(): oct(mode) for p in files}


def test_trainwell_errors_only(run):
    """The API raises trainwell's own error for a damaged card too (what the CLI turns into one line)."""
    edit_json(run / "model.json", num_classes="ten")
    with pytest.raises(TrainwellError, match="num_classes"):
        trainwell.load_run(run)


def test_is_inside_compares_resolved_paths_not_prefixes(tmp_path):
    from trainwell.train.rundir import is_inside

    (tmp_path / "runs" / "a" / "sub").mkdir(parents=True)
    (tmp_path / "runs" / "ab").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "runs" / "a")
    assert is_inside(tmp_path / "runs" / "a", tmp_path / "runs" / "a")
    assert is_inside(tmp_path / "runs" / "a" / "sub", tmp_path / "runs")
    assert is_inside(tmp_path / "link" / "sub", tmp_path / "runs" / "a")  # through a link
    assert is_inside(tmp_path / "runs" / "ab" / ".." / "a" / "sub", tmp_path / "runs" / "a")
    assert not is_inside(tmp_path / "runs" / "ab", tmp_path / "runs" / "a")  # a common prefix is not a parent
    assert not is_inside(tmp_path / "runs", tmp_path / "runs" / "a")
