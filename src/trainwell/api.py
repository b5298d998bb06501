"""The Python API's entry points, above every layer they dispatch to.

``trainwell.train`` trains one run (:func:`trainwell.runs.train.train`) or, with
``train.ensemble=K``, K runs combined into an ensemble (:func:`trainwell.experiments.ensembles.train_ensemble`);
``resume=RUN_DIR`` continues either kind; with ``finetune.source=PRETRAINED`` the one run is fine-tuned
from that model (:func:`trainwell.runs.finetune.train_run`).

    import trainwell
    run = trainwell.train({"model.name": "cnn", "train.epochs": 5}, out="runs/cnn")
    trainwell.train(resume="runs/cnn", overrides={"train.epochs": 8})
    trainwell.evaluate("runs/cnn")["test_acc"]
    trainwell.export("runs/cnn", format="onnx")    # runs/cnn/model.onnx, preprocessing included
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainwell.errors import ConfigError
from trainwell.experiments.trials import Backend, as_backend
from trainwell.runs.train import ConfigLike, as_config, check_ensemble_keys, resume_config
from trainwell.runs.train import train as train_one
from trainwell.train.export import export
from trainwell.train.inference import evaluate, predict
from trainwell.train.load import Run, load_run, read_config

__all__ = ["Run", "evaluate", "export", "load_run", "predict", "train"]


def train(config: ConfigLike = None, *, overrides: list[str] | dict[str, Any] | None = None,
          config_file: str | Path | None = None, out: str | Path | None = None, overwrite: bool = False,
          resume: str | Path | None = None, quiet: bool = False, console: Any = None,
          backend: str | Backend | None = None, **single: Any) -> Run:
    """Train a model from a config and write its run folder; see :func:`trainwell.runs.train.train`
    for every argument (``model``, ``splits``, ``callbacks``, ``prepare`` train a single run only).
    With train.ensemble=K, the K members train in parallel and ``out`` becomes their ensemble;
    ``backend`` says where they train (``"local"``, ``"ray"``, a :class:`~trainwell.experiments.trials.Backend`)."""
    cfg = resume_config(Path(resume), config, overrides, config_file) if resume is not None \
        else as_config(config, overrides, config_file)
    backend = as_backend(backend)
    if backend != Backend() and cfg.train.ensemble <= 1:
        raise ConfigError("--backend and its options place the members of train.ensemble=K (K > 1); one run trains "
                          "in this process: set train.ensemble=K, or drop them.")
    if cfg.train.ensemble > 1:
        if resume is not None and cfg.train.epochs != read_config(Path(resume)).train.epochs:
            raise ConfigError("--resume of an ensemble continues its unfinished members; train.epochs cannot change "
                              "(finished members would keep their epochs): train a new ensemble instead.")
        check_ensemble_keys(cfg, custom_model=single.get("model") is not None,
                            custom_data=single.get("splits") is not None or single.get("prepare") is not None)
        from trainwell.experiments.ensembles import train_ensemble

        return train_ensemble(cfg, resume if resume is not None else out, overwrite=overwrite, quiet=quiet,
                              console=console, resume=resume is not None, backend=backend)
    if cfg.finetune.source and resume is None:
        if single:
            raise ConfigError(f"finetune.source fine-tunes from a pretrained model built from the config; drop "
                              f"{', '.join(sorted(single))}= (or leave finetune.source unset).")
        from trainwell.runs.finetune import train_run

        return train_run(cfg, out=out, overwrite=overwrite, quiet=quiet, console=console)
    return train_one(config, overrides=overrides, config_file=config_file, out=out, overwrite=overwrite,
                     resume=resume, quiet=quiet, console=console, **single)
