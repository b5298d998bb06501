"""trainwell: train neural networks on sound foundations, with evidence of why they train well."""

__version__ = "0.1.0"

from trainwell.config import Config, resolve  # noqa: E402
from trainwell.errors import TrainwellError  # noqa: E402


def __getattr__(name: str):
    # The training API imports torch; load it on first use so `trainwell --help` and config stay fast.
    if name in ("train", "evaluate", "predict", "load_run", "Run"):
        from trainwell.train import run

        return getattr(run, name)
    raise AttributeError(f"module 'trainwell' has no attribute '{name}'")


__all__ = ["Config", "resolve", "TrainwellError", "train", "evaluate", "predict", "load_run", "Run", "__version__"]
