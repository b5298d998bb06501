"""Data-parallel training over ``torch.distributed``: which process this is, its share of each batch,
and the reductions that make N processes train and report what one process would.

The processes (ranks) are started by PyTorch's own launcher — ``trainwell train --nproc N`` runs
the torchrun machinery (``torch.distributed.run``'s elastic agent, :mod:`trainwell.cli.launch`), and
``torchrun --nnodes ... -m trainwell train ...`` works across machines. Each rank finds its place in
the environment the launcher sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``)
and :func:`init_from_env` joins the process group: gloo on the CPU, NCCL on CUDA (one GPU per local
rank), with a timeout (``train.dist_timeout``) so a lost rank ends the run instead of hanging it.

How one run is split over N ranks (the design of PyTorch DDP, Li et al. 2020, "PyTorch Distributed:
Experiences on Accelerating Data Parallel Training"):

* ``train.batch_size`` is the **global** batch. Every rank draws the same permutation from the one
  shuffle stream and cuts it into the same global batches; rank r takes the r-th of N near-equal
  parts (:meth:`World.part`, the in-memory equivalent of ``DistributedSampler``).
* ``DistributedDataParallel`` averages the gradients over ranks during the backward. Each rank's loss
  is weighted by ``N * n_r / n`` (``n_r`` of the batch's ``n`` examples are its own), so the average
  is the gradient of the global batch's mean loss also when the parts differ in size (an epoch's last
  batch): N ranks take the step one process would take, up to floating-point summation order.
* Loss and accuracy sums are all-reduced when the host reads them; validation and test are sharded
  over the ranks and reduced. Batch norm normalises over each rank's part unless
  ``train.sync_bn=true`` (:mod:`trainwell.nn.sync_batchnorm`): then over the global batch.
* Random streams: the shuffle stream is shared; augmentation, mixing and dropout draw from one stream
  per rank (rank 0 keeps the single-process streams, so a 1-process run is the plain run). Every
  rank's generators are saved in the checkpoint, so a resumed DDP run continues each rank's draws.
* Only rank 0 writes: the run folder, checkpoints, ``metrics.jsonl``, the progress bar and the logs.
  A checkpoint is read by every rank on resume (multi-node: the run folder must be on a shared file
  system), with the same number of ranks it was written by.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from trainwell.errors import ConfigError, RunDirError

#: Keys of a checkpoint's loop state written by a distributed run (absent from a single-process one).
WORLD_SIZE_KEY, RANK_RNG_KEY = "world_size", "rank_rng"


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run; ``World()`` is the single process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes files and prints."""
        return self.rank == 0

    # -------------------------------------------------------------- the data

    def part(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's share of a global batch's positions: the r-th of N near-equal consecutive parts."""
        return idx if self.size == 1 else idx.tensor_split(self.size)[self.rank]

    def part_range(self, n: int) -> tuple[int, int]:
        """[start, stop) of this rank's share of ``n`` examples (the same cut as :meth:`part`)."""
        q, r = divmod(n, self.size)
        start = self.rank * q + min(self.rank, r)
        return start, start + q + (1 if self.rank < r else 0)

    def min_batch(self) -> int:
        """The smallest batch the loop trains on: two examples per rank (batch norm needs two)."""
        return 2 * self.size

    def stream(self, name: str) -> str:
        """The name of this rank's random stream ``name`` (rank 0: ``name`` itself)."""
        return name if self.rank == 0 else f"{name}@rank{self.rank}"

    # -------------------------------------------------------------- collectives (no-ops for one process)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks, in place."""
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def max(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor``'s elementwise maximum over the ranks, in place."""
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def first(self, value: int | None) -> int | None:
        """The smallest ``value`` any rank holds (None where a rank has none), the same on every rank."""
        if not self.distributed:
            return value
        none = float(2**53)
        got = -self.max(torch.tensor([-(none if value is None else float(value))], dtype=torch.float64,
                                     device=self.collective_device()))
        return None if float(got) >= none else int(got)

    def any(self, flag: bool) -> bool:
        """Whether any rank's ``flag`` is set, the same answer on every rank."""
        if not self.distributed:
            return flag
        return bool(self.max(torch.tensor([float(flag)], device=self.collective_device())).item() > 0)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled between the run's own processes only)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def collective_device(self) -> torch.device:
        """Where small tensors for collectives live: the rank's GPU under NCCL, else the CPU."""
        import torch.distributed as dist

        if self.distributed and dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    # -------------------------------------------------------------- the model

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` as DistributedDataParallel (gradients averaged in the backward), or as it is."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def share_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (batch norm's running statistics) on every rank, in place.

        DDP broadcasts them from rank 0 at the start of each forward, so between steps each rank holds
        the statistics of its own last batch: evaluated as they are, the ranks' shards would be scored
        by different models (and a resumed run, whose ranks all start from rank 0's, by another again).
        The next forward would overwrite them with rank 0's anyway, so training is unchanged."""
        if not self.distributed:
            return
        import torch.distributed as dist

        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)

    def device(self, device: torch.device) -> torch.device:
        """The device of this rank: on CUDA, the GPU of its local rank."""
        if self.distributed and str(device) == "cuda":  # (no index given: the local rank's)
            return torch.device("cuda", self.local_rank)
        return device


SINGLE = World()


class SyncClock:
    """When the loop's host reads its device-side counters (progress, the divergence check, a stop).

    One process reads by the clock, every ``seconds``. The ranks of a data-parallel run cannot: a read
    there is a collective every rank must join at the same step, and clocks differ. They read at steps
    they agree on — at each read rank 0 proposes how many steps fit in ``seconds`` from its own step
    time, and a stop (SIGINT/SIGTERM seen by any rank) is agreed in the same reduction.
    """

    def __init__(self, world: World, seconds: float, step: int) -> None:
        self.world, self.seconds = world, seconds
        self.last_time, self.last_step = time.perf_counter(), step
        self.next_time, self.next_step = self.last_time + seconds, step + 1

    def due(self, step: int) -> bool:
        return step >= self.next_step if self.world.distributed else time.perf_counter() >= self.next_time

    def synced(self, step: int, stop_here: bool) -> bool:
        """Record a read at ``step``; returns whether to stop (any rank asked, for several ranks)."""
        now = time.perf_counter()
        self.next_time = now + self.seconds
        if not self.world.distributed:
            return stop_here
        per_step = (now - self.last_time) / max(1, step - self.last_step)
        proposal = min(10_000, max(1, int(self.seconds / max(per_step, 1e-9)))) if self.world.main else 0
        agreed = self.world.max(torch.tensor([float(stop_here), float(proposal)], dtype=torch.float64,
                                             device=self.world.collective_device()))
        stop, interval = agreed.tolist()
        self.last_time, self.last_step, self.next_step = now, step, step + int(interval)
        return stop > 0


def grad_sync(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
    """Gradient accumulation under DDP: the micro-batches before a step's last run in ``no_sync()``
    (their gradients add up locally), the last one's backward averages the sum over the ranks once.
    A no-op for a model that is not DistributedDataParallel."""
    from torch.nn.parallel import DistributedDataParallel

    if sync or not isinstance(model, DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


def current_world() -> World:
    """The process group this process belongs to (initialised by :func:`init_from_env` or the user's
    own ``torch.distributed.init_process_group``), or the single process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return SINGLE
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def launched_size() -> int:
    """``WORLD_SIZE`` as a launcher (torchrun, ``--nproc``) set it for this process; 1 when not launched."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def backend_for(device: torch.device) -> str:
    """NCCL between GPUs, gloo otherwise (the CPU)."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_from_env(device: torch.device, timeout_seconds: float) -> World:
    """Join the process group a launcher described in the environment (no-op when not launched).

    ``timeout_seconds`` bounds every collective: a rank that died or never came leaves the others
    waiting at most that long, then they end with an error instead of hanging.
    """
    import torch.distributed as dist

    if launched_size() == 1 or dist.is_initialized():
        return current_world()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if torch.cuda.device_count() <= local_rank:
            raise ConfigError(f"local rank {local_rank} has no GPU of its own (this machine shows "
                              f"{torch.cuda.device_count()}); start at most that many processes per machine.")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend_for(device), timeout=timedelta(seconds=timeout_seconds))
    return current_world()


def shutdown() -> None:
    """Leave the process group (if this process joined one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_batch(batch_size: int, size: int) -> None:
    """The global batch must split evenly over the ranks (every rank's part the same size)."""
    if size > 1 and batch_size % size:
        raise ConfigError(f"train.batch_size={batch_size} is the global batch and must divide evenly over the "
                          f"{size} processes; use a multiple of {size} (e.g. train.batch_size="
                          f"{max(size, batch_size // size * size)}) or another --nproc.")


# ----------------------------------------------------------------------------- checkpoints


def pack_rank_states(world: World, loop: dict[str, Any]) -> dict[str, Any]:
    """Rank 0's loop state with every other rank's generators added (what rank 0 checkpoints).

    Collective: every rank calls it at the same point. Model, optimiser and schedule are the same on
    every rank (DDP keeps them equal); the generators are each rank's own.
    """
    if not world.distributed:
        return loop
    states = world.gather(loop["rng"])
    return {**loop, WORLD_SIZE_KEY: world.size, RANK_RNG_KEY: states[1:]}


def local_state(world: World, loop: dict[str, Any], where: str = "the checkpoint") -> dict[str, Any]:
    """The loop state this rank resumes from: its own generators; on ranks > 0 empty running sums
    (rank 0's checkpoint holds the whole epoch's sums so far)."""
    saved = int(loop.get(WORLD_SIZE_KEY, 1))
    if saved != world.size:
        how = f"--nproc {saved}" if saved > 1 else "without --nproc"
        raise RunDirError(f"{where} was written by a run on {saved} process(es), this one has {world.size}; "
                          f"resume it {how}.")
    if world.rank == 0:
        return loop
    return {**loop, "rng": loop[RANK_RNG_KEY][world.rank - 1],
            "loss_sum": torch.zeros_like(loop["loss_sum"]), "correct": torch.zeros_like(loop["correct"])}


__all__ = ["SINGLE", "SyncClock", "World", "grad_sync", "backend_for", "check_batch", "current_world", "init_from_env", "launched_size",
           "local_state", "pack_rank_states", "shutdown"]
