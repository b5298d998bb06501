"""Model assembly from a config: the fitted preprocessing, the network, its model card, the augmenter.

Shared by the recipe (``trainwell.runs.train``), the doctor and the experiments; it imports neither.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from trainwell.version import __version__
from trainwell.config import Config
from trainwell.data import PREPROCESSORS, Splits, fit_preprocess, to_float
from trainwell.nn import INITS, MODELS, build_model
from trainwell.nn.init import lsuv_init
from trainwell.nn.pipeline import Classifier
from trainwell.seeds import torch_generator
from trainwell.train.contract import split_contract
from trainwell.train.optim import OPTIMIZERS, SCHEDULES
from trainwell.train.rundir import FORMAT, FORMAT_VERSION
from trainwell.train.trainer import preflight


def check_names(cfg: Config) -> None:
    """Fail on unknown names before any data is loaded or folder created."""
    MODELS.entry(cfg.model.name)
    OPTIMIZERS.entry(cfg.optim.name)
    SCHEDULES.entry(cfg.sched.name)
    PREPROCESSORS.entry(cfg.data.preprocess)


def init_generator(cfg: Config) -> torch.Generator:
    """The ``init`` stream of train.seed: every weight the network starts from is drawn from it."""
    return torch_generator(cfg.train.seed, "init")


def build_classifier(cfg: Config, splits: Splits, model: nn.Module | None = None) -> Classifier:
    """Preprocessing fitted on the training split, then the network built for its output shape.

    Initialisation draws from the ``init`` stream of train.seed; a data-dependent scheme (LSUV)
    then rescales the layers on a random training batch pushed through the fitted preprocessing.
    """
    init_gen = init_generator(cfg)
    # A streamed split is fitted on in chunks (never gathered whole); others as float32 tensors.
    train = splits.train if splits.train.streamed else to_float(splits.train.x)
    preprocess = fit_preprocess(cfg.data.preprocess, train, cfg.data)
    if model is not None:
        return Classifier(model, preprocess)
    net = build_model(cfg, preprocess.output_shape(splits.input_shape), splits.num_classes, generator=init_gen)
    if INITS.entry(cfg.init.scheme).meta.needs_batch:
        # A random sample, not the first rows: a split may be ordered by class.
        idx = torch.randperm(len(splits.train), generator=init_gen)[: max(cfg.train.batch_size, 256)]
        with torch.no_grad():
            batch = preprocess(to_float(splits.train.take(idx)))
        lsuv_init(net, batch, cfg.init, init_gen)
    return Classifier(net, preprocess)


def model_card(splits: Splits, cfg: Config, custom: bool) -> dict[str, Any]:
    """model.json: what rebuilding the model needs, without pickle."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "trainwell_version": __version__,
        "input_shape": list(splits.input_shape),
        "input_dtype": str(splits.train.dtype).replace("torch.", ""),
        "num_classes": splits.num_classes,
        "classes": list(splits.classes),
        "preprocess": cfg.data.preprocess,
        "model": cfg.model.name if not custom else "custom",
        "custom_model": custom,
        "data": splits.description,
        "inputs": split_contract(splits.train),  # what evaluate/predict/finetune check new data against
    }


def build_augmenter(cfg: Config, splits: Splits) -> Any:
    """The batched augmenter of ``cfg.augment`` for the data's input shape (None when empty)."""
    if not cfg.augment:
        return None
    from trainwell.data.augment import build_augmenter as build

    return build(cfg.augment, splits.input_shape)


def check_run(cfg: Config, splits: Splits) -> Classifier:
    """Everything ``train`` checks before it creates a folder (names, model for the data, optimiser,
    schedule, augmentation), without training: a grid of runs is checked whole before any starts."""
    check_names(cfg)
    classifier = build_classifier(cfg, splits)
    preflight(classifier, cfg, len(splits.train))
    check_loop_config(cfg, splits)
    build_augmenter(cfg, splits)
    return classifier


def check_loop_config(cfg: Config, splits: Splits) -> None:
    """Settings that need the data: early stopping and keep=best need a validation split."""
    from trainwell.errors import ConfigError

    needs_val = [k for k, on in (("train.early_stopping", cfg.train.early_stopping > 0),
                                 ("train.keep=best", cfg.train.keep == "best")) if on]
    if needs_val and len(splits.val) == 0:
        raise ConfigError(f"{' and '.join(needs_val)} need a validation split, but data.val_fraction="
                          f"{cfg.data.val_fraction:g} leaves it empty; set data.val_fraction=0.1.")


def with_lr(cfg: Config, lr: float) -> Config:
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=lr))
