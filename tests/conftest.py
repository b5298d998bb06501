"""Test-wide settings.

The suite runs with pytest-xdist on 2 cores: one intra-op thread per worker avoids oversubscribing
the cores (with 2 workers x 2 OpenMP threads, spinning threads slow small models down 10x or more).
The mnist1d cache goes to a per-session temporary folder so tests never touch the user's cache.
"""

import os
from pathlib import Path

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


@pytest.fixture(scope="session")
def ray_package():
    """The ray module (the optional extra trainwell[ray]); skips without it, except under CI (``CI`` set),
    where a silently skipped check would prove nothing: there the test fails."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        message = "the Ray tests need the ray package (pip install -e '.[test]')"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; under CI (CI is set) they must run, not be skipped", pytrace=False)
        pytest.skip(message)
    import ray

    return ray


@pytest.fixture(scope="session")
def fix_suite_results():
    """doctor --fix's suite (trainwell.diagnose.fixsuite), trained once per test process (~12 s): its own tests
    and docs/doctor.md's check both read it."""
    from trainwell.diagnose.fixsuite import run_fix_suite

    return run_fix_suite()


@pytest.fixture
def repo_docs():
    """The repository's docs/ folder, found from the tests' own place (the package never looks for it)."""
    return Path(__file__).resolve().parents[1] / "docs"


# Fuzzing (hypothesis): a bounded number of examples per reader keeps CI in its time budget;
# TRAINWELL_FUZZ_EXAMPLES=2000 runs more. Each example has a time bound (deadline) so a reader that
# hangs on some input fails the test instead of stalling the suite.
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "trainwell",
    max_examples=int(os.environ.get("TRAINWELL_FUZZ_EXAMPLES", "60")),
    deadline=int(os.environ.get("TRAINWELL_FUZZ_DEADLINE_MS", "2000")),
    derandomize=os.environ.get("TRAINWELL_FUZZ_RANDOM") is None,  # CI repeats; set it to explore new inputs
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
settings.load_profile("trainwell")
