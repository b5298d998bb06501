"""Trials on Ray (``--backend ray``): each run of a compare is a Ray task, on one machine or a cluster.

    trainwell compare --vary model.activation=relu,tanh --seeds 5 --backend ray     # Ray on this machine
    trainwell compare ... --backend ray --address 10.0.0.5:6379 --cpus-per-trial 4 --gpus-per-trial 1

Each run is ``ray.remote(num_cpus=C, num_gpus=G)`` calling the same
:func:`~trainwell.experiments.trials.execute_job` as the local pool, with ``torch.set_num_threads(C)``,
so a run on Ray is bit-for-bit the run of the local pool (on CPU, at the same thread count).

Where results land: this process (the driver) writes them. A task trains into a temporary folder on its
node and returns the finished run folder as bytes (a tar); the driver unpacks it into a staging folder
beside ``OUT/runs/<cell>/seed-S`` and renames it into place. So a cluster needs no shared filesystem
(a node's disk is not the driver's: a run written there directly would be lost to the driver), and an
interrupted driver never leaves a half-unpacked run: a run folder is there whole, with summary.json, or
not at all. A compare started again skips the finished runs as with the local pool; a run left unfinished
by the local pool restarts from scratch on Ray (its checkpoints stay on the driver, and the task starts in
an empty folder).

What the nodes need: trainwell and its dependencies (the same versions as the driver's, for the same
numbers), and every file a config names (``data.path``, ``finetune.source``) at the same path, since a
task reads them on its node. On the Ray instance this command starts, that is this machine. A run's
``train.device`` is resolved on its node: ``auto`` takes the GPU that ``--gpus-per-trial`` reserves.

Without ``--address`` a Ray instance is started on this machine (``num_cpus`` = the cores this process
may use, no dashboard, Ray's logging quiet) when the command's first compare starts, shared by all its
compares (``lab all``: one instance), and shut down when the command ends, also on an error or Ctrl-C;
``RAY_ADDRESS`` is not read. With ``--address HOST:PORT`` (a running cluster's head, as
``ray start --head`` prints it) the address is probed first, with a time limit, so a wrong one is one
line instead of Ray's minutes of retries; a head that wants a token (Ray's default for ``ray start
--head``) is joined with ``RAY_AUTH_MODE=token`` and the token in ``~/.ray/auth_token`` or
``RAY_AUTH_TOKEN`` (Ray sends a token to an address it is given only when told to). The ``--address``
path was run by hand against a ``ray start --head --block`` on this machine; the tests start a local
instance. An already initialised Ray (``ray.init`` called by a Python caller) is used as it is and left
running.

Failures: a run that raises a TrainwellError is reported as the local pool reports it (its line, the
others go on); any other exception in a task propagates, as from the local pool; a run that no node can
hold (``--cpus-per-trial``/``--gpus-per-trial`` beyond the cluster's) is one line before anything runs,
where Ray would wait for such a node forever.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import signal
import socket
import tarfile
import tempfile
import threading
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from trainwell.errors import TrainwellError, exception_line
from trainwell.experiments.trials import Backend, BackendError, Trial, TrialResult, available_cores, execute_job

if TYPE_CHECKING:
    from trainwell.config import Config

INSTALL_HINT = "pip install 'trainwell[ray]'"
PROBE_SECONDS = 5.0  # how long --address may take to answer before it counts as unreachable
# The client preface of HTTP/2 and an empty SETTINGS frame: a Ray head's GCS is a gRPC (HTTP/2) server,
# which answers with a SETTINGS frame; an HTTP/1 server (the dashboard, port 8265) answers otherwise.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_H2_SETTINGS = 4


def import_ray() -> ModuleType:
    """The ray module, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise BackendError(f"--backend ray needs the ray package, which is not installed here: {INSTALL_HINT} "
                           "(or use --backend local).") from None
    return ray


# ----------------------------------------------------------------------------- the cluster


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:6379`` for IPv6) -> (host, port); one line for anything else."""
    host, sep, port = address.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BackendError(f"--address '{address}' must be HOST:PORT, the head node's address as 'ray start --head' "
                           "prints it (e.g. 10.0.0.5:6379).")
    return host, int(port)


def probe_address(address: str, timeout: float = PROBE_SECONDS) -> None:
    """One line unless something at ``address`` answers within ``timeout`` s and speaks HTTP/2 (gRPC), as
    a Ray head's GCS does: Ray itself retries an unreachable address for many minutes."""
    host, port = parse_address(address)
    fix = ("start the cluster with 'ray start --head' and pass the address it prints (default port 6379), "
           "or drop --address to start Ray on this machine.")
    try:
        conn = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise BackendError(f"--address {address}: no Ray cluster answers there ({exception_line(exc)}); "
                           f"{fix}") from None
    with conn:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            return  # a TLS head answers only a TLS handshake: the connection is all that can be checked
        try:
            conn.sendall(_H2_PREFACE)
            header = conn.recv(9)
        except OSError:
            header = b""
    if len(header) < 4 or header[3] != _H2_SETTINGS:
        raise BackendError(f"--address {address} answers, but not as a Ray cluster's head (its GCS speaks gRPC; "
                           f"the dashboard's port, 8265, is not it); {fix}")


@dataclass
class _SessionState:
    depth: int = 0  # nested ray_session blocks open
    owned: bool = False  # Ray was started (ray.init) by trainwell, so trainwell shuts it down


_session = _SessionState()


def preflight(backend: Backend) -> ModuleType:
    """What can be checked without starting or joining a cluster: ray is installed, ``--address`` answers."""
    ray = import_ray()
    if backend.address is not None and not ray.is_initialized():
        probe_address(backend.address)
    return ray


@contextlib.contextmanager
def ray_session(backend: Backend) -> Iterator[None]:
    """Start or join the cluster now (:func:`connect`: a mistake is one line before any folder is written)
    and, if trainwell started it, shut it down when the outermost block ends, error and Ctrl-C included."""
    _session.depth += 1
    try:
        connect(backend)
        yield
    finally:
        _session.depth -= 1
        if _session.depth == 0 and _session.owned:
            _session.owned = False
            import_ray().shutdown()


def connect(backend: Backend) -> ModuleType:
    """Start or join the cluster unless Ray is initialised already (an outer :func:`ray_session`, or the
    caller's own ``ray.init``), and check that it can run a trial."""
    ray = preflight(backend)
    if not ray.is_initialized():
        # ray.init replaces the SIGTERM handler with a bare sys.exit; the CLI's own (SIGTERM ends a command
        # like Ctrl-C, with its one line) must stay.
        in_main = threading.current_thread() is threading.main_thread()  # only it may set handlers
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)} if in_main else {}
        quiet: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
        try:
            if backend.address is not None:
                try:
                    ray.init(address=backend.address, **quiet)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    # Ray sends its token only when told to, and never by itself to an address given to it.
                    token = "" if os.environ.get("RAY_AUTH_MODE") == "token" else (
                        "; a head started by 'ray start --head' wants a token by default: set RAY_AUTH_MODE=token, "
                        "with its token in ~/.ray/auth_token or RAY_AUTH_TOKEN")
                    raise BackendError(f"--address {backend.address}: could not join the Ray cluster there "
                                       f"({exception_line(exc, 300)}){token}.") from None
            else:
                ray.init(address="local", num_cpus=available_cores(), include_dashboard=False, **quiet)
        finally:
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)
        _session.owned = _session.depth > 0  # outside any session the caller owns it (and shuts it down)
    check_resources(ray.cluster_resources(), backend)
    return ray


def check_resources(total: dict[str, float], backend: Backend) -> None:
    """One line when no node could ever run a trial (Ray would otherwise wait for one forever)."""
    where = f"the Ray cluster at {backend.address}" if backend.address else "the Ray instance on this machine"
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    if backend.cpus > cpus:
        raise BackendError(f"--cpus-per-trial {backend.cpus}, but {where} has {cpus:g} CPUs; ask for at most "
                           f"{cpus:g}.")
    if backend.gpus > gpus:
        have = "no GPU" if not gpus else f"{gpus:g} GPUs"
        elsewhere = "" if backend.address else ", or pass --address of a cluster with GPUs"
        raise BackendError(f"--gpus-per-trial {backend.gpus:g}, but {where} has {have}; drop --gpus-per-trial "
                           f"(the runs use the CPU){elsewhere}.")


# ----------------------------------------------------------------------------- one trial as a task


@dataclass(frozen=True)
class RemoteOutcome:
    """What a task sends back: the run's summary and its folder as a tar, or its TrainwellError's line."""

    summary: dict[str, Any] | None = None
    archive: bytes = b""
    error: str | None = None


def train_in_temp_folder(cfg: Config, measure: str | None, threads: int) -> RemoteOutcome:
    """The body of a Ray task: train one run into a temporary folder on this node and return it as bytes.

    The threads are set here, as the local pool's initializer does: torch's result depends on them."""
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="trainwell-trial-") as tmp:
        run_dir = Path(tmp) / "run"
        try:
            summary = execute_job(cfg, str(run_dir), measure)
        except TrainwellError as exc:  # the line the local pool reports; any other exception propagates
            return RemoteOutcome(error=str(exc))
        return RemoteOutcome(summary=summary, archive=pack_run(run_dir))


def pack_run(run_dir: Path) -> bytes:
    """A run folder as an uncompressed tar (its weights and figures hardly compress)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(run_dir.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(run_dir)), recursive=False)
    return buffer.getvalue()


def place_run(archive: bytes, run_dir: Path) -> None:
    """Unpack a run into a staging folder beside ``run_dir``, then rename it into place: an interrupted
    call leaves ``run_dir`` as it was (absent, or an unfinished run), never half a run."""
    staging = run_dir.with_name(f".{run_dir.name}.incoming")
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted driver
    staging.mkdir(parents=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r") as tar:
            if hasattr(tarfile, "data_filter"):  # refuses links and paths that would land outside staging
                tar.extractall(staging, filter="data")
            else:  # pragma: no cover - Pythons before 3.10.12/3.11.4
                tar.extractall(staging)
        if run_dir.exists():  # an unfinished run of an earlier call: replaced by the finished one
            replaced = run_dir.with_name(f".{run_dir.name}.replaced")
            shutil.rmtree(replaced, ignore_errors=True)
            run_dir.rename(replaced)
            staging.rename(run_dir)
            shutil.rmtree(replaced, ignore_errors=True)
        else:
            staging.rename(run_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------- the runner


@contextlib.contextmanager
def sigterm_kept() -> Iterator[None]:
    """Around a blocking Ray call: Ray turns whatever a signal handler raises into a bare KeyboardInterrupt,
    which would lose the CLI's SIGTERM (its own line, exit 143); the handler's own exception is raised
    instead."""
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous) or threading.current_thread() is not threading.main_thread():
        yield
        return
    raised: list[BaseException] = []

    def recording(signum: int, frame: Any) -> Any:
        try:
            return previous(signum, frame)
        except BaseException as exc:
            raised.append(exc)
            raise

    signal.signal(signal.SIGTERM, recording)
    try:
        yield
    except KeyboardInterrupt:
        if raised:
            raise raised[-1] from None
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class RayRunner:
    """Trials as Ray tasks; ``max_in_flight`` (``--workers``) caps how many are submitted at once (None:
    all, and Ray runs as many as the cluster's CPUs and GPUs allow)."""

    backend: Backend
    max_in_flight: int | None = None

    def run(self, trials: Sequence[Trial]) -> Generator[TrialResult, None, None]:
        if not trials:
            return
        ray = connect(self.backend)
        task = ray.remote(train_in_temp_folder).options(num_cpus=self.backend.cpus, num_gpus=self.backend.gpus)
        waiting = list(reversed(trials))
        in_flight: dict[Any, Trial] = {}
        try:
            while waiting or in_flight:
                while waiting and (self.max_in_flight is None or len(in_flight) < self.max_in_flight):
                    trial = waiting.pop()
                    in_flight[task.remote(trial.cfg, trial.measure, self.backend.cpus)] = trial
                with sigterm_kept():
                    ready, _ = ray.wait(list(in_flight), num_returns=1)
                    outcome: RemoteOutcome = ray.get(ready[0])  # a task's other exception is raised here
                trial = in_flight.pop(ready[0])
                if outcome.error is not None:
                    yield TrialResult(trial, error=outcome.error)
                else:
                    place_run(outcome.archive, trial.run_dir)
                    yield TrialResult(trial, outcome.summary)
        finally:  # stopped early (an error, Ctrl-C): the tasks still running are stopped too
            for ref in in_flight:
                ray.cancel(ref, force=True)
