"""Command-line edges: options between overrides, SIGTERM ending like Ctrl-C, plain text in `list`."""

import os
import signal
import subprocess
import sys

import pytest
import yaml

from trainwell.cli import app, main


def test_overrides_may_follow_options(capsys):
    assert main(["train", "model.name=mlp", "--print-config", "train.epochs=2"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (cfg["model"]["name"], cfg["train"]["epochs"]) == ("mlp", 2)


def test_evaluate_takes_overrides_around_its_options(monkeypatch):
    seen = {}
    monkeypatch.setattr(app, "cmd_evaluate", lambda args: seen.update(vars(args)) or 0)
    assert main(["evaluate", "runs/x", "data.name=npz", "--split", "val", "data.path=o.npz", "--json"]) == 0
    assert seen["run_dir"] == "runs/x" and seen["overrides"] == ["data.name=npz", "data.path=o.npz"]
    assert seen["split"] == "val" and seen["json"] is True and seen["command"] == "evaluate"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_outside_training_prints_the_next_step(monkeypatch, capsys, signum):
    def killed(args):
        os.kill(os.getpid(), signum)
        raise AssertionError("the signal should have stopped the command")

    monkeypatch.setattr(app, "cmd_list", killed)
    assert main(["list"]) == 128 + signum
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and signal.Signals(signum).name in err[0] and "Run the same command again" in err[0]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored after the command


def test_sigterm_in_a_real_process_gets_one_line_and_exit_143():
    code = ("import os, signal, sys\nimport trainwell.cli.app as a\n"
            "a.cmd_list = lambda args: os.kill(os.getpid(), signal.SIGTERM)\nsys.exit(a.main(['list']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 143, proc.stderr
    assert proc.stderr.count("\n") == 1 and "interrupted by SIGTERM" in proc.stderr and "Traceback" not in proc.stderr


def test_list_prints_square_brackets_as_text(capsys):
    assert main(["list", "model"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "[conv('same')" in out and "[Linear(width)" in out
