"""Named random streams, all spawned from one seed: the only place trainwell turns a seed into generators.

``numpy.random.SeedSequence(train.seed)`` spawns one child per purpose (O'Neill's PCG seeding, the
scheme NumPy recommends for independent parallel streams); child *i* is
``SeedSequence(seed, spawn_key=(i,))``, exactly ``SeedSequence(seed).spawn(n)[i]``. Turning one
purpose on (augmentation, say) therefore never shifts another's draws (the shuffling order), and
two seeds never share a stream: seed 1's init stream is not seed 0's shuffle stream, which a
``seed + k`` offset scheme cannot promise (member 1 of an ensemble would shuffle with member 0's
init generator).

Example::

    g = torch_generator(seed=0, stream="shuffle")      # torch.Generator on the CPU
    rng = numpy_generator(seed=0, stream="mix")        # numpy.random.Generator
"""

from __future__ import annotations

import numpy as np
import torch

#: Every stream a run draws from, in spawn order (append new ones at the end: an index never moves).
STREAMS: tuple[str, ...] = ("init", "shuffle", "augment", "mix", "dropout", "doctor", "lr_find")


def seed_sequence(seed: int, stream: str) -> np.random.SeedSequence:
    """The SeedSequence of one named stream of ``seed``.

    ``name@rankR`` (R >= 1) is rank R's own stream ``name`` in a data-parallel run: the stream's child
    ``SeedSequence(seed, spawn_key=(i, R))``, i.e. ``seed_sequence(seed, name).spawn(R + 1)[R]``;
    rank 0 draws from ``name`` itself, so one process is the plain run.
    """
    name, _, rank = stream.partition("@rank")
    if name not in STREAMS or (rank and not (rank.isdigit() and int(rank) >= 1)):
        raise ValueError(f"unknown random stream '{stream}'; streams: {', '.join(STREAMS)} (and NAME@rankR, R >= 1)")
    key = (STREAMS.index(name),) if not rank else (STREAMS.index(name), int(rank))
    return np.random.SeedSequence(int(seed), spawn_key=key)


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit integer seed for the stream (what ``torch.Generator.manual_seed`` takes)."""
    return int(seed_sequence(seed, stream).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def torch_generator(seed: int, stream: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator on ``device`` seeded from the stream."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, stream))


def numpy_generator(seed: int, stream: str) -> np.random.Generator:
    """A numpy Generator (PCG64) seeded from the stream."""
    return np.random.default_rng(seed_sequence(seed, stream))


def seed_global(seed: int, stream: str = "dropout") -> None:
    """Seed torch's global generators (CPU and every CUDA device) from a stream.

    Dropout and other modules that take no generator draw from the global one: it is seeded here and
    its state is saved with every checkpoint.
    """
    value = stream_seed(seed, stream)
    torch.manual_seed(value)  # also seeds every CUDA device
