"""Test-wide settings.

The suite runs with pytest-xdist on 2 cores: one intra-op thread per worker avoids oversubscribing
the cores (with 2 workers x 2 OpenMP threads, spinning threads slow small models down 10x or more).
The mnist1d cache goes to a per-session temporary folder so tests never touch the user's cache.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    # xdist workers share one cache (writes are atomic): generate MNIST-1D once per session.
    cache = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "trainwell-cache"
    os.environ["TRAINWELL_CACHE"] = str(cache)
    yield
