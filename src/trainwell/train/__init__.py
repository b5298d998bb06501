"""Training: optimisers and schedules, the loop, run directories and the train/evaluate/predict API."""

from trainwell.train.optim import OPTIMIZERS, SCHEDULES


def __getattr__(name: str):
    if name in ("Run", "evaluate", "load_run", "predict", "train"):
        from trainwell.train import run

        return getattr(run, name)
    raise AttributeError(f"module 'trainwell.train' has no attribute '{name}'")


__all__ = ["OPTIMIZERS", "SCHEDULES", "Run", "evaluate", "load_run", "predict", "train"]
