"""``trainwell train --nproc N``: N local processes of one data-parallel run, started by PyTorch's
own launcher — the elastic agent behind ``torchrun`` (``torch.distributed.launcher.api``), not a
home-made one — and what each of them does as a rank.

The parent checks everything it can before a process starts (the config, the global batch against
N, the output folder, the port), then runs ``python -m trainwell train ...`` N times with a
standalone rendezvous on this machine; the agent sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and
``MASTER_ADDR``/``MASTER_PORT`` for each, and stops them all when one fails. For several machines,
start the same command under ``torchrun`` on each (README, "Scaling out"): a process that finds
``WORLD_SIZE`` in its environment is a rank either way.

One clear line when it goes wrong. Ranks started here do not print their errors: each writes its
line into a folder the parent reads afterwards (``TRAINWELL_LAUNCH_DIR``), so the parent prints the
first failure once — a rank's own error as it said it, a rank that died as its signal or exit code,
with the command that resumes the run.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from trainwell.errors import ConfigError, Interrupted, TrainwellError

#: Where ranks started by :func:`launch` leave their error lines.
LAUNCH_DIR_ENV = "TRAINWELL_LAUNCH_DIR"


class RankFailed(TrainwellError):
    """A rank of a launched run failed; the message is the first failure, said once."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class RanksInterrupted(Interrupted):
    """The launcher was sent SIGINT/SIGTERM and passed it to the ranks, which checkpointed and stopped."""

    def __init__(self, message: str, signum: int) -> None:
        TrainwellError.__init__(self, message)
        self.signum, self.epoch, self.step, self.exit_code = signum, -1, -1, 128 + signum


def check_port(port: int) -> None:
    """``--master-port``: free on this machine, or one line saying it is taken."""
    if not 0 < port < 65536:
        raise ConfigError(f"--master-port {port} is not a TCP port; use 1024-65535 or leave it out (a free one is picked).")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise ConfigError(f"--master-port {port} is in use on this machine; choose another port or leave "
                              "--master-port out (a free one is picked).") from None


@contextmanager
def _quiet_agent() -> Iterator[None]:
    """The agent logs every start and stop at WARNING (its loggers set their own levels); trainwell
    reports what matters itself."""
    names = ["torch.distributed"] + [n for n in logging.root.manager.loggerDict if n.startswith("torch.distributed.")]
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def launch(argv: Sequence[str], nproc: int, run_dir: Path, port: int | None = None) -> int:
    """Run ``python -m trainwell <argv>`` as ``nproc`` ranks on this machine; 0 when every rank finished.

    ``argv``: the command (a rank ignores ``--nproc``); ``run_dir``: the run folder the ranks write
    (named when a rank dies: resume it when it has a checkpoint). Threads: each rank gets
    ``cores // nproc`` (OMP_NUM_THREADS, unless set), so N ranks do not oversubscribe the cores.
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from trainwell.experiments.trials import available_cores

    if port is not None:
        check_port(port)
    with tempfile.TemporaryDirectory(prefix="trainwell-launch-") as tmp:
        config = LaunchConfig(
            min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
            rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{port or 0}",  # port 0: the rendezvous picks a free one
            max_restarts=0, monitor_interval=0.1, start_method="spawn",
            logs_specs=DefaultLogsSpecs(log_dir=str(Path(tmp) / "logs")),
        )
        cores = available_cores()
        saved = {k: os.environ.get(k) for k in (LAUNCH_DIR_ENV, "OMP_NUM_THREADS")}
        os.environ[LAUNCH_DIR_ENV] = tmp
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))
        try:
            with _quiet_agent():
                elastic_launch(config, sys.executable)("-m", "trainwell", *argv)
            return 0
        except ChildFailedError as exc:
            rank, failure = exc.get_first_failure()
            raise _failure(Path(tmp), rank, failure.exitcode, nproc, run_dir) from None
        except SignalException as exc:  # Ctrl-C / SIGTERM to this process: the agent passed it to the ranks
            said = Path(tmp) / "rank-0.error"  # rank 0's line: where it stopped and how to resume
            signum = int(exc.sigval)
            raise RanksInterrupted(said.read_text().partition(" ")[2] if said.is_file() else
                                   f"interrupted by {signal.Signals(signum).name} before a checkpoint was saved; "
                                   "run the command again", signum) from None
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _failure(folder: Path, rank: int, exitcode: int, nproc: int, run_dir: Path) -> RankFailed:
    """The first failure (``rank``'s, the agent's earliest) as one line: the rank's own error when it
    left one, else how it ended; and how to go on."""
    said = folder / f"rank-{rank}.error"
    if said.is_file():  # the rank said what went wrong (a TrainwellError): that line, that exit code
        code, _, line = said.read_text().partition(" ")
        return RankFailed(line, int(code))
    if exitcode < 0:
        how = f"was killed by {signal.Signals(-exitcode).name}"
    else:
        how = f"exited with code {exitcode}"
    from trainwell.train.checkpoint import CHECKPOINT_DIR

    if any((run_dir / CHECKPOINT_DIR).glob("step-*.safetensors")):
        after = f"; continue from the newest checkpoint with: trainwell train --resume {run_dir} --nproc {nproc}"
    else:
        after = f"; no checkpoint was saved in {run_dir}: run the command again"
    return RankFailed(f"process {rank} of {nproc} {how}, so the others were stopped{after}.", 1)


def launched_here() -> bool:
    """Whether this process is a rank started by :func:`launch` (whose parent reports its failures)."""
    folder = os.environ.get(LAUNCH_DIR_ENV)
    return bool(folder) and Path(str(folder)).is_dir()


def report_rank_error(rank: int, exc: TrainwellError) -> bool:
    """A rank started by :func:`launch` leaves its error line for the parent (True); otherwise False
    and the caller prints it (under torchrun, prefixed with the rank)."""
    if not launched_here():
        return False
    (Path(os.environ[LAUNCH_DIR_ENV]) / f"rank-{rank}.error").write_text(f"{exc.exit_code} {exc}")
    return True


__all__ = ["LAUNCH_DIR_ENV", "RankFailed", "check_port", "launch", "launched_here", "report_rank_error"]
