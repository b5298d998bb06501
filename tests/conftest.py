"""Test-wide settings.

The suite runs with pytest-xdist on 2 cores: one intra-op thread per worker avoids oversubscribing
the cores (with 2 workers x 2 OpenMP threads, spinning threads slow small models down 10x or more).
The mnist1d cache goes to a per-session temporary folder so tests never touch the user's cache.
"""

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
# MLflow (tests/test_tracking.py) sends usage telemetry unless told not to; the tests reach no network.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

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


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store (its tables made: that costs seconds) for tests to copy; xdist workers
    share it (each makes its own under a name of its own, then moves it in place). Skips without mlflow
    (the extra trainwell[mlflow]), except under CI (``CI`` set), where the test fails."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        message = "the MLflow tests need the mlflow package (pip install -e '.[test]')"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; under CI (CI is set) they must run, not be skipped", pytrace=False)
        pytest.skip(message)
    from mlflow.tracking import MlflowClient

    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "mlflow-template.db"
    if not shared.is_file():
        mine = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
        MlflowClient(f"sqlite:///{mine}").search_experiments()
        os.replace(mine, shared)
    return shared


@pytest.fixture
def mlflow_store(mlflow_template, tmp_path, monkeypatch) -> str:
    """A fresh MLflow store in this test's folder, which is also the working folder (where MLflow's
    defaults point: ./mlflow.db, and ./mlruns for the artifacts); returns its URI."""
    import shutil

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


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
