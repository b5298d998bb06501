"""How a compare's runs (trials) are executed: the backend that runs them and the local implementation.

:func:`trainwell.experiments.compare.execute` decides *which* runs are still to do; a
:class:`TrialRunner` decides *where* they run and yields each one's outcome as it finishes:

* ``local`` (:class:`LocalRunner`): this machine, in this process for one worker, else a process pool
  (``spawn``) of one worker per core on CPU, each with ``cores // workers`` torch threads, or one worker
  per visible GPU, each seeing only its own GPU (:func:`gpus_for_workers`).
* ``ray`` (:class:`trainwell.experiments.ray_backend.RayRunner`): a Ray cluster, local or remote; the
  finished run folders come back to this process as bytes, so the cluster needs no shared filesystem.

Either way one trial is :func:`execute_job`: train the run into its folder, then measure it. The choice
is a :class:`Backend`, made once per command (``--backend local|ray``); :func:`backend_session` holds a
Ray cluster across every compare of a command (a lab with pretraining, ``lab all``), so it starts once.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from trainwell.errors import ConfigError, TrainwellError, unknown_name_message
from trainwell.fileio import write_json
from trainwell.train.rundir import read_json

if TYPE_CHECKING:  # annotations only: the local backend never imports a queue it does not use
    from multiprocessing.queues import Queue

    from trainwell.config import Config

MEASURES_FILE = "measures.json"
BACKENDS = ("local", "ray")


class BackendError(ConfigError):
    """The backend cannot run trials (its flags, ray missing, ``--address`` unreachable, too few CPUs or
    GPUs): one line, exit 2, and a whole lecture stops (every lab would fail alike)."""


# ----------------------------------------------------------------------------- one trial


def _load_callable(spec: str) -> Callable[..., Any]:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def execute_job(cfg: Config, run_dir: str, measure: str | None) -> dict[str, Any]:
    """Train one run into ``run_dir`` and measure it; returns its summary merged with its measures.

    An unfinished run of an interrupted compare continues from its newest checkpoint (exactly where
    it was); a folder without one starts again. Top-level so a process pool or a Ray task can call
    it; ``cfg`` is the typed Config (pickled to the worker, never re-parsed from text)."""
    from trainwell.train.checkpoint import CHECKPOINT_DIR
    from trainwell.runs.finetune import train_run
    from trainwell.runs.train import train
    from trainwell.train.load import load_run

    run_dir_path = Path(run_dir)
    if not (run_dir_path / "summary.json").is_file():
        # A fine-tuned run (finetune.source) is written whole or not at all, so it never has checkpoints here.
        if any((run_dir_path / CHECKPOINT_DIR).glob("step-*.safetensors")):
            train(resume=run_dir_path, quiet=True)
        else:
            train_run(cfg, out=run_dir_path, overwrite=True, quiet=True)
    summary = read_json(run_dir_path / "summary.json", "summary")
    if measure is not None:
        from trainwell.data import load_splits

        # Measured on the saved run, not the model still in memory: the same path whether the run
        # was trained just now or by an interrupted compare, and what is measured is what was saved.
        run = load_run(run_dir_path)
        measures = _load_callable(measure)(run, load_splits(run.config.data))
        write_json(run_dir_path / MEASURES_FILE, measures)
        summary = {**summary, **measures}
    return summary


@dataclass(frozen=True)
class Trial:
    """One run to execute: ``index`` is its place in the list handed to :meth:`TrialRunner.run`."""

    index: int
    cfg: Config
    run_dir: Path
    measure: str | None


@dataclass(frozen=True)
class TrialResult:
    """A finished trial: its summary (merged with its measures), or the one line of the TrainwellError
    that stopped it. Any other exception is a bug and propagates out of :meth:`TrialRunner.run`."""

    trial: Trial
    summary: dict[str, Any] | None = None
    error: str | None = None


class TrialRunner(Protocol):
    """Runs trials and yields each one's result as it finishes (in any order).

    A finished trial's folder is complete (summary.json written last) by the time it is yielded.
    Closing the iterator early (an exception in the caller, Ctrl-C) stops the trials not yet
    finished; their folders stay unfinished, and the next compare runs them again.
    """

    def run(self, trials: Sequence[Trial]) -> Generator[TrialResult, None, None]: ...


# ----------------------------------------------------------------------------- the backend


@dataclass(frozen=True)
class Backend:
    """Where trials run: ``local`` (this machine's process pool) or ``ray`` (a Ray cluster).

    ``address``: a running cluster's head (``HOST:PORT``, what ``ray start --head`` prints); without
    it, a Ray instance is started on this machine for the command and shut down after it.
    ``cpus_per_trial``: cores Ray reserves for each run, and its torch threads (default 1).
    ``gpus_per_trial``: GPUs Ray reserves for each run (default 0; a fraction shares one GPU).
    """

    name: str = "local"
    address: str | None = None
    cpus_per_trial: int | None = None
    gpus_per_trial: float | None = None

    def __post_init__(self) -> None:
        if self.name not in BACKENDS:
            raise BackendError(unknown_name_message("backend", self.name, BACKENDS))
        ray_only = [flag for flag, value in (("--address", self.address), ("--cpus-per-trial", self.cpus_per_trial),
                                             ("--gpus-per-trial", self.gpus_per_trial)) if value is not None]
        if self.name == "local" and ray_only:
            verb, them = ("applies", "it") if len(ray_only) == 1 else ("apply", "them")
            raise BackendError(f"{', '.join(ray_only)} {verb} to --backend ray; the local pool runs one trial per core "
                               f"(or per GPU) on this machine: add --backend ray, or drop {them} (--workers K sets "
                               "the pool's size).")
        if self.cpus_per_trial is not None and (isinstance(self.cpus_per_trial, bool) or
                                                not isinstance(self.cpus_per_trial, int) or self.cpus_per_trial < 1):
            raise BackendError(f"--cpus-per-trial must be a whole number of cores, at least 1 (each run's torch "
                               f"threads), got {self.cpus_per_trial}.")
        if self.gpus_per_trial is not None and not self.gpus_per_trial >= 0:
            raise BackendError(f"--gpus-per-trial must be at least 0 (a fraction such as 0.5 shares a GPU), "
                               f"got {self.gpus_per_trial:g}.")
        if self.address is not None:
            from trainwell.experiments.ray_backend import parse_address  # the module imports ray only when used

            parse_address(self.address)

    @property
    def cpus(self) -> int:
        return self.cpus_per_trial if self.cpus_per_trial is not None else 1

    @property
    def gpus(self) -> float:
        return self.gpus_per_trial if self.gpus_per_trial is not None else 0.0


def as_backend(backend: str | Backend | None) -> Backend:
    """``"local"``/``"ray"`` (defaults for the rest), a :class:`Backend`, or None (local)."""
    if backend is None:
        return Backend()
    return backend if isinstance(backend, Backend) else Backend(backend)


def check_backend(backend: Backend) -> Backend:
    """The checks that need no cluster (for Ray: installed, ``--address`` answering), for a command line
    to fail in a second, before its data is loaded; returns ``backend``."""
    if backend.name == "ray":
        from trainwell.experiments.ray_backend import preflight

        preflight(backend)
    return backend


@contextlib.contextmanager
def backend_session(backend: Backend) -> Iterator[None]:
    """Hold the backend for a block: for Ray, the cluster is started or joined on entry (so a mistake,
    such as too few CPUs or GPUs, fails before anything is written), reused by every compare inside the
    block, and, if trainwell started it, shut down when the outermost block ends, also on an error or
    Ctrl-C. The local pool needs nothing held: each compare starts and ends its own."""
    if backend.name != "ray":
        yield
        return
    from trainwell.experiments.ray_backend import ray_session

    with ray_session(backend):
        yield


# ----------------------------------------------------------------------------- the local pool


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def visible_gpus(environ: dict[str, str] | None = None, device_count: Callable[[], int] | None = None) -> list[str]:
    """The CUDA GPUs this process may hand to workers, as ``CUDA_VISIBLE_DEVICES`` entries: the entries
    of an existing ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs, in its order), else ``0 .. count-1``."""
    environ = dict(os.environ) if environ is None else environ
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [entry.strip() for entry in listed.split(",") if entry.strip()]
    if device_count is None:
        import torch

        device_count = torch.cuda.device_count
    return [str(i) for i in range(device_count())]


def gpus_for_workers(workers: int, gpus: Sequence[str]) -> list[str]:
    """Each pool worker's ``CUDA_VISIBLE_DEVICES``: the GPUs handed out in turn, so each worker has a
    GPU of its own while there are GPUs enough (a GPU is shared only by more workers than GPUs)."""
    if not gpus:
        return []
    return [gpus[i % len(gpus)] for i in range(workers)]


def pool_size(n_jobs: int, devices: Sequence[str], cores: int, gpus: Sequence[str]) -> int:
    """How many runs the local pool runs at once: one per core when every run is on the CPU; one per
    GPU when every run is on ``cuda`` without an index (each worker then sees one GPU as ``cuda``);
    else one (a run that names ``cuda:N`` or ``mps`` shares its device with nothing).

    ``devices``: each config's resolved device, as text (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    if all(d == "cpu" for d in devices):
        return max(1, min(n_jobs, cores))
    if gpus and all(d == "cuda" for d in devices):
        return max(1, min(n_jobs, len(gpus)))
    return 1


def uses_gpu_pool(configs: Sequence[Config]) -> bool:
    """Every config runs on ``cuda`` with no index: the pool may give each worker its own GPU."""
    from trainwell.train.trainer import resolve_device

    return bool(configs) and all(str(resolve_device(c.train.device)) == "cuda" for c in configs)


def default_workers(n_jobs: int, configs: Sequence[Config]) -> int:
    """:func:`pool_size` for these configs on this machine."""
    from trainwell.train.trainer import resolve_device

    devices = [str(resolve_device(c.train.device)) for c in configs]
    gpus = visible_gpus() if any(d.startswith("cuda") for d in devices) else []
    return pool_size(n_jobs, devices, available_cores(), gpus)


def _init_worker(threads: int, gpu_queue: Queue[str] | None = None) -> None:
    """A pool worker's start: its own GPU first (``CUDA_VISIBLE_DEVICES`` must be set before torch
    initialises CUDA, which it does at the first CUDA call), then its torch threads."""
    if gpu_queue is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_queue.get_nowait()
    import torch

    torch.set_num_threads(threads)


def start_pool(workers: int, gpus: Sequence[str] = ()) -> ProcessPoolExecutor:
    """A ``spawn`` pool of ``workers`` processes, each with ``cores // workers`` torch threads and, given
    ``gpus`` (one ``CUDA_VISIBLE_DEVICES`` value per worker, :func:`gpus_for_workers`), its own GPU.

    Each starting worker takes the next value from a queue (the pool gives every worker the same
    initializer arguments), and a ``ProcessPoolExecutor`` never replaces a worker, so each value goes to
    exactly one. The GPU hand-out is tested with made-up device lists only: it was not run on real GPUs.
    """
    context = get_context("spawn")
    threads = max(1, available_cores() // workers)
    queue = None
    if gpus:
        queue = context.Queue()
        for value in gpus:
            queue.put(value)
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                               initargs=(threads, queue))


@dataclass
class LocalRunner:
    """Trials on this machine: in this process for one worker (or one trial), else on :func:`start_pool`."""

    workers: int
    gpus: Sequence[str] = ()  # each worker's CUDA_VISIBLE_DEVICES; empty: the pool does not set it

    def run(self, trials: Sequence[Trial]) -> Generator[TrialResult, None, None]:
        if self.workers == 1 or len(trials) <= 1:
            for trial in trials:
                try:
                    yield TrialResult(trial, execute_job(trial.cfg, str(trial.run_dir), trial.measure))
                except TrainwellError as exc:
                    yield TrialResult(trial, error=str(exc))
            return
        with start_pool(self.workers, self.gpus) as pool:
            futures = {pool.submit(execute_job, t.cfg, str(t.run_dir), t.measure): t for t in trials}
            try:
                remaining = set(futures)
                while remaining:
                    finished, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        failure = fut.exception()
                        if failure is None:
                            yield TrialResult(futures[fut], fut.result())
                        elif isinstance(failure, TrainwellError):
                            yield TrialResult(futures[fut], error=str(failure))
                        else:
                            raise failure
            finally:  # also when the caller stops early (GeneratorExit): runs not started never start
                for fut in futures:
                    fut.cancel()


def make_runner(backend: Backend, workers: int | None, n_trials: int, configs: Sequence[Config]) -> TrialRunner:
    """The runner for ``backend``. ``workers``: runs at once (None: :func:`default_workers` for the local
    pool; on Ray, as many as the cluster's free CPUs and GPUs allow)."""
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}.")
    if backend.name == "ray":
        from trainwell.experiments.ray_backend import RayRunner

        return RayRunner(backend, max_in_flight=workers)
    workers = workers or default_workers(n_trials, configs)
    gpus = gpus_for_workers(workers, visible_gpus()) if workers > 1 and uses_gpu_pool(configs) else []
    return LocalRunner(workers, gpus)
