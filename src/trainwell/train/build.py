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
from trainwell.data import DATASETS, PREPROCESSORS, Splits, fit_preprocess, to_float
from trainwell.nn import INITS, MODELS, build_model
from trainwell.nn.init import lsuv_init
from trainwell.nn.pipeline import Classifier
from trainwell.seeds import torch_generator
from trainwell.train.contract import split_contract
from trainwell.train.optim import OPTIMIZERS, SCHEDULES
from trainwell.train.rundir import FORMAT, FORMAT_VERSION
from trainwell.train.trainer import preflight


#: model.name's default: the data's kind decides (:func:`resolve_model_name`).
AUTO_MODEL = "auto"
#: The model ``model.name=auto`` becomes for each kind of data (:attr:`Splits.kind`): the cnn for images and
#: signals (digits, 8 seeds: 98.9% with batch norm, mlp 98.2%), the mlp for tabular rows (as preset=tabular).
MODEL_FOR_KIND = {"image": "cnn", "signal": "cnn", "tabular": "mlp"}


def resolve_model_name(cfg: Config, splits: Splits) -> Config:
    """``cfg`` with model.name=auto replaced by the model for the data's kind (:data:`MODEL_FOR_KIND`),
    once, where the config meets the data; ``cfg`` itself when the name was chosen (a preset, a file or an
    override). The run's config.yaml records the resolved name, so the run reloads as it trained."""
    if cfg.model.name != AUTO_MODEL:
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=MODEL_FOR_KIND[splits.kind]))


def auto_model_line(cfg: Config, splits: Splits) -> str | None:
    """The console's one line on what model.name=auto became (None when the name was chosen)."""
    if cfg.model.name != AUTO_MODEL:
        return None
    name = MODEL_FOR_KIND[splits.kind]
    return f"model.name={name}: chosen for {splits.kind} data of shape {tuple(splits.input_shape)} (model.name=auto " \
           "picks cnn for images and signals, mlp for tabular rows; set model.name to choose)"


def model_tag(cfg: Config) -> str:
    """The model's name for a folder name chosen before the data is read: model.name, or for auto the
    model of the source's kind of data (``auto`` for a source of any kind, such as npz)."""
    if cfg.model.name != AUTO_MODEL:
        return cfg.model.name
    kind = DATASETS.entry(cfg.data.name).meta.kind if cfg.data.name in DATASETS else "any"
    return MODEL_FOR_KIND.get(kind, AUTO_MODEL)


def check_names(cfg: Config) -> None:
    """Fail on unknown names before any data is loaded or folder created."""
    if cfg.model.name != AUTO_MODEL:
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
    cfg = resolve_model_name(cfg, splits)  # (train resolves it first, to record it)
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


def model_card(splits: Splits, cfg: Config, custom: bool, hub: dict[str, Any] | None = None) -> dict[str, Any]:
    """model.json: what rebuilding the model needs, without pickle.

    ``custom``: the network is an nn.Module passed to train, which cannot be rebuilt from the folder;
    ``hub``: it is a torchvision/timm model, rebuilt from these fields (:func:`trainwell.train.hub.hub_card`).
    """
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
        **({"columns": list(splits.columns)} if splits.columns else {}),  # tabular: what predict reads a CSV by
        **(hub or {}),
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
    """Settings that need the data: early stopping and keep=best need a validation split; loss.class_weights
    one weight per class (balanced: every class in the training split)."""
    from trainwell.errors import ConfigError
    from trainwell.train.imbalance import class_weights

    class_weights(cfg.loss.class_weights, splits.train.y, splits.num_classes, splits.classes)

    needs_val = [k for k, on in (("train.early_stopping", cfg.train.early_stopping > 0),
                                 ("train.keep=best", cfg.train.keep == "best")) if on]
    if needs_val and len(splits.val) == 0:
        raise ConfigError(f"{' and '.join(needs_val)} need a validation split, but data.val_fraction="
                          f"{cfg.data.val_fraction:g} leaves it empty; set data.val_fraction=0.1.")


def with_lr(cfg: Config, lr: float) -> Config:
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=lr))
