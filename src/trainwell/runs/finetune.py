"""Transfer learning: fine-tune a pretrained network on new data (``trainwell finetune``).

Python API::

    from trainwell.runs.finetune import finetune
    pre = trainwell.train({"data.classes": [0, 1, 2, 3, 4], "model.name": "mlp"}, out="runs/pre")
    run = finetune("runs/pre", {"data.classes": [5, 6, 7, 8, 9], "data.per_class": 10,
                                "finetune.strategy": "linear_probe"}, out="runs/ft", compare_scratch=True)
    run.summary["test_acc"], run.summary["scratch_test_acc"], run.summary["gain"]

A train run with ``finetune.source=PRETRAINED`` is the same fine-tuning with its config as given
(``trainwell train finetune.source=runs/pre preset=... data.classes=5,6,7,8,9``, :func:`train_run`):
so a compare cell, or a lab's, can be a fine-tuned run. ``{seed}`` in the source stands for
train.seed, so that each seed fine-tunes the pretrained run of its own seed
(``finetune.source=runs/pre/seed-{seed}``).

What is transferred: every tensor of the pretrained model except the head (the final Linear):
the preprocessing statistics included, since the features were learned on inputs scaled that way.
The head is re-initialised for the new number of classes (seeded by train.seed). The fine-tuned run
directory is an ordinary run: ``trainwell evaluate`` / ``predict`` / :func:`~trainwell.load_run`
read it like any other. A ``torchvision:NAME`` / ``timm:NAME`` source (:mod:`trainwell.train.hub`)
brings its weights' input normalisation as its preprocessing statistics (data.preprocess=standardize
with the weights' mean/std; any other data.preprocess is refused), and its run folder records the
model so that load_run rebuilds it.

The pretrained model is read by :mod:`trainwell.train.pretrained`; the strategies act on the layer
groups of :mod:`trainwell.nn.layer_groups` (bottom to top, the head last: mlp, one per hidden block;
cnn, one per conv block; resnet, the stem, then one per stage). Strategies (``finetune.strategy``):

* ``full``: every layer trains at optim.lr;
* ``linear_probe``: the backbone is frozen, only the new head trains;
* ``gradual``: ULMFiT's gradual unfreezing (Howard & Ruder 2018): the head alone for the first
  ``finetune.unfreeze_every`` epochs, then one more group from the top every that many epochs;
* ``discriminative``: every group trains, group g from the top (head g=0) at
  optim.lr * finetune.lr_decay**g (ULMFiT's discriminative fine-tuning; schedules keep the ratio).

Batch norm (``finetune.bn``): ``frozen`` keeps every pretrained batch-norm layer in eval mode for
the whole run (:mod:`trainwell.nn.frozen_norm`), so its running mean/var stay those of the
pretraining data (its scale and shift still train when their group does). The pitfall it avoids:
``requires_grad=False`` on a BN layer's weights does NOT freeze it: in train mode it still
normalises with batch statistics and overwrites running_mean/var with the new data's. ``train``
leaves batch norm alone (statistics update).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from rich.console import Console
from torch import nn

from trainwell.config import Config, resolve
from trainwell.data import Splits, load_preprocess, load_splits, to_float
from trainwell.data.preprocess import Preprocess
from trainwell.errors import ConfigError, DataError, Interrupted, RunDirError, TrainwellError, unknown_name_message
from trainwell.fileio import write_json
from trainwell.nn import build_model
from trainwell.nn.frozen_norm import freeze_batchnorm_statistics
from trainwell.nn.layer_groups import group_names, group_parameters, head_keys
from trainwell.nn.pipeline import Classifier, count_parameters
from trainwell.runs.train import train
from trainwell.train.build import check_names, init_generator, model_tag, resolve_model_name
from trainwell.train.events import Callback, EpochEnd
from trainwell.train.load import Run
from trainwell.train.hub import (
    HUB_PREPROCESS,
    InputNormalization,
    check_hub_input,
    hub_card,
    hub_model,
    hub_normalization,
)
from trainwell.train.pretrained import Pretrained, load_pretrained
from trainwell.train.rundir import StagedDir, is_inside, staged_out_dir

STRATEGIES = ("full", "linear_probe", "gradual", "discriminative")
BN_MODES = ("frozen", "train")
# ----------------------------------------------------------------------------- strategies


@dataclass(eq=False)
class GradualUnfreeze(Callback):
    """Callback of gradual unfreezing: after every ``every`` epochs, the next group (from the top) trains.

    ``groups_top_down`` are the frozen backbone groups, the one under the head first. Records the
    number of trainable parameters of each epoch in ``trainable_by_epoch``.
    """

    model: nn.Module
    groups_top_down: list[list[tuple[str, nn.Parameter]]]
    every: int
    trainable_by_epoch: list[int] = field(default_factory=list)
    unfrozen_at: list[int] = field(default_factory=list)

    def on_epoch_end(self, event: EpochEnd) -> None:
        self.trainable_by_epoch.append(count_parameters(self.model))
        if event.epoch % self.every == 0 and len(self.unfrozen_at) < len(self.groups_top_down):
            for _, p in self.groups_top_down[len(self.unfrozen_at)]:
                p.requires_grad_(True)
            self.unfrozen_at.append(event.epoch + 1)

    def state_dict(self) -> dict[str, Any]:
        return {"trainable_by_epoch": list(self.trainable_by_epoch), "unfrozen_at": list(self.unfrozen_at)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainable_by_epoch = [int(n) for n in state["trainable_by_epoch"]]
        self.unfrozen_at = [int(e) for e in state["unfrozen_at"]]
        for group in self.groups_top_down[: len(self.unfrozen_at)]:
            for _, p in group:
                p.requires_grad_(True)


@dataclass
class AppliedStrategy:
    """What :func:`apply_strategy` did: the groups (bottom to top), callbacks for the loop, and a report."""

    groups: list[dict[str, Any]]
    callbacks: tuple = ()
    bn_frozen: int = 0
    gradual: GradualUnfreeze | None = None


def check_finetune_config(cfg: Config) -> None:
    """One-line ConfigErrors for the finetune.* keys, before any data is loaded."""
    ft = cfg.finetune
    if ft.strategy not in STRATEGIES:
        raise ConfigError(unknown_name_message("finetune.strategy", ft.strategy, STRATEGIES))
    if ft.bn not in BN_MODES:
        raise ConfigError(unknown_name_message("finetune.bn", ft.bn, BN_MODES))
    if ft.unfreeze_every < 1:
        raise ConfigError(f"finetune.unfreeze_every must be >= 1 epoch, got {ft.unfreeze_every}.")
    if not (0 < ft.lr_decay <= 1) or not math.isfinite(ft.lr_decay):
        raise ConfigError(f"finetune.lr_decay must be in (0, 1], got {ft.lr_decay}; ULMFiT uses 1/2.6 = 0.3846.")


def apply_strategy(classifier: Classifier, cfg: Config) -> AppliedStrategy:
    """Freeze / scale the learning rate of the layer groups of ``classifier.net`` per ``cfg.finetune``.

    Sets ``requires_grad`` and the optimiser's per-parameter attributes ``lr_scale`` and
    ``unfreezes_later`` (see trainwell.train.optim), and with finetune.bn=frozen turns every batch
    norm into its Frozen* class. The preprocessing has no parameters: nothing to freeze there.
    """
    check_finetune_config(cfg)
    ft = cfg.finetune
    net = classifier.net
    groups = group_parameters(net)
    names = group_names(net)
    for group in groups:  # a fresh start, whatever the model went through before
        for _, p in group:
            p.requires_grad_(True)
            for attr in ("lr_scale", "unfreezes_later"):
                if hasattr(p, attr):
                    delattr(p, attr)
    backbone = groups[:-1]
    gradual = None
    starts = [1] * len(groups)
    scales = [1.0] * len(groups)
    if ft.strategy in ("linear_probe", "gradual"):
        for group in backbone:
            for _, p in group:
                p.requires_grad_(False)
                if ft.strategy == "gradual":
                    setattr(p, "unfreezes_later", True)  # the optimiser's per-parameter protocol (train/optim.py)
        starts = [0] * len(backbone) + [1]  # 0 = never
        if ft.strategy == "gradual":
            gradual = GradualUnfreeze(classifier, backbone[::-1], ft.unfreeze_every)
            starts = [1 + ft.unfreeze_every * (len(backbone) - i) for i in range(len(backbone))] + [1]
            starts = [s if s <= cfg.train.epochs else 0 for s in starts]
    elif ft.strategy == "discriminative":
        for depth, group in enumerate(reversed(groups)):
            scales[len(groups) - 1 - depth] = ft.lr_decay ** depth
            for _, p in group:
                setattr(p, "lr_scale", ft.lr_decay ** depth)  # read by train/optim.py's param groups
    bn_frozen = freeze_batchnorm_statistics(net) if ft.bn == "frozen" else 0
    report = [
        {"name": n, "params": sum(p.numel() for _, p in g), "lr_scale": s, "trains_from_epoch": e or None}
        for n, g, s, e in zip(names, groups, scales, starts)
    ]
    return AppliedStrategy(report, (gradual,) if gradual is not None else (), bn_frozen, gradual)


# ----------------------------------------------------------------------------- config and weight transfer


def source_of(cfg: Config) -> str | None:
    """``finetune.source`` with ``{seed}`` replaced by train.seed; None when the run trains from scratch."""
    source = cfg.finetune.source
    return source.replace("{seed}", str(cfg.train.seed)) if source else None


def finetune_config(pretrained: Pretrained, overrides: Config | list[str] | dict[str, Any] | None = None,
                    config_file: str | Path | None = None) -> Config:
    """The fine-tuning config: for a run directory, its model.* keys and data.preprocess are the
    starting point; the user's file and overrides (new data, optim, finetune.*) go on top.

    A :class:`Config` is taken as it is (a train run with finetune.source, a compare cell): its
    model.* must then be the pretrained architecture, which :func:`transfer_weights` checks.
    """
    given = isinstance(overrides, Config)
    if isinstance(overrides, Config):
        if config_file is not None:
            raise ConfigError("finetune() takes a Config or a config file with overrides, not both.")
        cfg = overrides
    elif pretrained.kind != "run":
        cfg = resolve(overrides, config_file)
    else:
        assert pretrained.config is not None
        base = Config(model=pretrained.config.model,
                      data=dataclasses.replace(Config().data, preprocess=pretrained.config.data.preprocess))
        cfg = resolve(overrides, config_file, base=base)
    if pretrained.kind == "hub" and cfg.data.preprocess != HUB_PREPROCESS:
        fix = f"set data.preprocess={HUB_PREPROCESS}" if given else "drop data.preprocess"
        raise ConfigError(
            f"data.preprocess={cfg.data.preprocess} but '{pretrained.source}' normalises its inputs with the mean/std "
            f"its weights were trained with (data.preprocess={HUB_PREPROCESS} with those statistics, applied "
            f"automatically); {fix}."
        )
    if pretrained.kind == "run" and cfg.data.preprocess != pretrained.preprocess:
        fix = f"set data.preprocess={pretrained.preprocess}" if given else "drop data.preprocess"
        raise ConfigError(
            f"data.preprocess={cfg.data.preprocess} but the pretrained run '{pretrained.source}' used "
            f"{pretrained.preprocess}, whose statistics are transferred with the weights; {fix}."
        )
    source = source_of(cfg)
    if source is not None and source != pretrained.source and Path(source).resolve() != Path(pretrained.source).resolve():
        raise ConfigError(f"finetune.source={source} but the pretrained model given is '{pretrained.source}'; "
                          "name the pretrained model once (drop finetune.source).")
    check_finetune_config(cfg)
    return cfg


def without_source(cfg: Config) -> Config:
    """The same config trained from scratch (finetune.source unset): ``--compare-scratch``'s baseline."""
    return dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, source=None))


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def transfer_weights(classifier: Classifier, pretrained: Pretrained, cfg: Config, splits: Splits) -> int:
    """Load every pretrained tensor into ``classifier`` except the head's; returns how many were loaded.

    The preprocessing is replaced by the pretrained one (its statistics); the head keeps the fresh
    initialisation built for the new number of classes. One-line errors for an input shape that does
    not fit and for a tensor whose name or shape does not match.
    """
    src = pretrained.source
    state = pretrained.state
    stray = next((k for k in state if not k.startswith(("net.", "preprocess."))), None)
    if stray is not None:
        raise ConfigError(f"'{src}' is not a trainwell model's weights (tensor '{stray}' is neither net.* nor "
                          "preprocess.*); pass a trainwell run directory or its model.safetensors.")
    if pretrained.input_shape is not None and pretrained.input_shape != tuple(splits.input_shape):
        raise DataError(
            f"the pretrained run '{src}' was trained on examples of shape {pretrained.input_shape} but data "
            f"'{splits.description}' has {tuple(splits.input_shape)}; fine-tune on data of the same shape."
        )
    name = pretrained.preprocess or cfg.data.preprocess
    pre_state = {k[len("preprocess."):]: v for k, v in state.items() if k.startswith("preprocess.")}
    try:
        preprocess = load_preprocess(name, pre_state)
    except TrainwellError:
        if pretrained.kind == "run":
            raise
        raise ConfigError(
            f"the preprocessing saved in '{src}' ({', '.join(sorted(pre_state)) or 'none'}) is not "
            f"data.preprocess={name}'s; set data.preprocess to the one the weights were trained with."
        ) from None
    try:
        with torch.no_grad():
            shape = preprocess.output_shape(tuple(splits.input_shape))
            # One example, no batch axis: statistics of another rank would broadcast to a wrong shape.
            fits = tuple(preprocess(to_float(splits.train.x[0])).shape) == shape
    except (RuntimeError, ValueError):
        fits = False
    if not fits:
        stats = ", ".join(f"{k} {_shape(v)}" for k, v in pre_state.items())
        raise DataError(
            f"the pretrained weights '{src}' were fitted on inputs of another shape (preprocessing {stats}) than "
            f"data '{splits.description}' {tuple(splits.input_shape)}; fine-tune on data of the same shape."
        )
    net = classifier.net
    if shape != cast(Preprocess, classifier.preprocess).output_shape(tuple(splits.input_shape)):
        # e.g. pca with another number of components: the network takes the pretrained preprocessing's output.
        net = build_model(cfg, shape, splits.num_classes, generator=init_generator(cfg))
    head = head_keys(net)
    target = net.state_dict()
    weights = {k[len("net."):]: v for k, v in sorted(state.items(), key=_module_order) if k.startswith("net.")}
    fix = ("drop the model.* overrides: the architecture comes from the pretrained run" if pretrained.kind == "run"
           else "set model.* to the architecture the weights were trained with (a .safetensors file does not record it)")
    for key, value in target.items():
        if key in head:
            continue
        if key not in weights:
            raise ConfigError(f"the pretrained architecture in '{src}' does not match the config: the new model has "
                              f"tensor 'net.{key}' {_shape(value)}, the pretrained weights do not; {fix}.")
        if _shape(weights[key]) != _shape(value):
            raise ConfigError(f"the pretrained architecture in '{src}' does not match the config: tensor 'net.{key}' "
                              f"is {_shape(weights[key])} pretrained but {_shape(value)} here; {fix}.")
    extra = next((k for k in weights if k not in target and not _same_module(k, head)), None)
    if extra is not None:
        raise ConfigError(f"the pretrained architecture in '{src}' does not match the config: pretrained tensor "
                          f"'net.{extra}' {_shape(weights[extra])} has no counterpart here; {fix}.")
    body = {k: v for k, v in weights.items() if k in target and k not in head}
    result = net.load_state_dict(body, strict=False)
    assert set(result.missing_keys) <= head, result.missing_keys
    classifier.preprocess = preprocess
    classifier.net = net
    return len(body) + len(pre_state)


def _module_order(item: tuple[str, Any]) -> tuple:
    """Sort state-dict keys by module position (net.10 after net.9), a module's weight first."""
    *path, leaf = item[0].split(".")
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path), leaf != "weight", leaf


def _same_module(key: str, head: set[str]) -> bool:
    """Whether ``key`` belongs to the module of a head key (e.g. a head bias the new head lacks)."""
    module = key.rsplit(".", 1)[0]
    return any(h.rsplit(".", 1)[0] == module for h in head)


# ----------------------------------------------------------------------------- the API


def finetune(
    pretrained: str | Path,
    overrides: Config | list[str] | dict[str, Any] | None = None,
    *,
    config_file: str | Path | None = None,
    out: str | Path | None = None,
    compare_scratch: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    console: Console | None = None,
) -> Run:
    """Fine-tune PRETRAINED on the data of ``overrides`` and write an ordinary run directory to ``out``.

    ``overrides`` may be a whole :class:`Config`, used as it is (:func:`finetune_config`).
    PRETRAINED: a trainwell run directory (its model.* keys and preprocessing are used), a
    ``.safetensors`` file of a trainwell model (the architecture comes from ``overrides``), or
    ``torchvision:NAME`` / ``timm:NAME`` with the package installed and the weights already cached.
    ``compare_scratch`` also trains the same config from scratch (same seed and data) into
    ``out/scratch`` and adds ``scratch_test_acc`` and ``gain`` to the summary.
    """
    source = load_pretrained(pretrained)
    cfg = finetune_config(source, overrides, config_file)
    if source.kind != "hub":
        check_names(cfg)
    tag = f"{cfg.data.name}-{model_tag(cfg) if source.hub is None else source.hub[1]}"
    staged = _staged_output(out, tag, overwrite, source)
    splits = load_splits(cfg.data)
    if source.hub is None:
        cfg = resolve_model_name(cfg, splits)  # model.name=auto (a .safetensors source): the data's kind picks
    if source.kind == "run" and tuple(splits.input_shape) == source.input_shape:
        # Other data is what fine-tuning is for, but the pretrained preprocessing and features expect
        # inputs on the pretrained run's scale: warn when they are far off (shapes: transfer_weights).
        from trainwell.train.contract import read_contract, warn_inputs

        where = f"data.path '{cfg.data.path}'" if cfg.data.path else f"data.name={cfg.data.name}"
        warn_inputs(read_contract(source.source), splits.train.x, where, run=source.source, console=console, quiet=quiet)
    prepared: dict[str, Any] = {}  # what prepare() did, read after training

    def prepare(classifier: Classifier) -> tuple:
        if normalization is not None:  # the weights' statistics replace those fitted on the data
            classifier.preprocess = normalization.module()
        else:
            prepared["loaded"] = transfer_weights(classifier, source, cfg, splits)
        prepared["strategy"] = apply_strategy(classifier, cfg)
        return prepared["strategy"].callbacks  # gradual unfreezing, if any

    model: nn.Module | None = None
    normalization: InputNormalization | None = None  # kind "hub": the weights' mean/std
    card: dict[str, Any] | None = None
    if source.hub is not None:  # kind "hub"
        lib, name = source.hub
        model = hub_model(lib, name, splits.num_classes)
        normalization = hub_normalization(lib, name)
        check_hub_input(model, normalization, splits, source.source)
        card = hub_card(lib, name, splits.num_classes, normalization)

    try:
        with staged as out_dir:
            run = train(cfg, out=out_dir, splits=splits, quiet=quiet, console=console, model=model, prepare=prepare,
                        hub=card)
            p: AppliedStrategy = prepared["strategy"]
            total = count_parameters(run.model, trainable_only=False)
            trainable = count_parameters(run.model)
            summary = dict(run.summary)
            summary.update({
                "pretrained": source.source,
                "strategy": cfg.finetune.strategy,
                "bn": cfg.finetune.bn,
                "params": total,
                "trainable_params": trainable,
                "frozen_params": total - trainable,
                "bn_layers_frozen": p.bn_frozen,
                "transferred_tensors": prepared.get("loaded"),
                "layer_groups": p.groups,
            })
            if normalization is not None:
                summary["input_normalization"] = normalization.record()
            if p.gradual is not None:
                summary["trainable_params_by_epoch"] = p.gradual.trainable_by_epoch
            if compare_scratch:
                scratch_model = scratch_card = None
                if source.hub is not None:  # kind "hub": the architecture, its preprocessing fitted on the data
                    scratch_model = hub_model(*source.hub, splits.num_classes, pretrained=False)
                    scratch_card = hub_card(*source.hub, splits.num_classes, None)
                scratch = train(without_source(cfg), out=out_dir / "scratch", splits=splits, quiet=quiet,
                                console=console, model=scratch_model, hub=scratch_card)
                summary["scratch_test_acc"] = scratch.summary["test_acc"]
                summary["gain"] = summary["test_acc"] - scratch.summary["test_acc"]
                summary["scratch_dir"] = str(staged.path / "scratch")
            write_json(out_dir / "summary.json", summary)
    except Interrupted as exc:  # train's hint names the staged folder, which is gone; nothing to resume
        raise Interrupted(exc.signum, exc.epoch, exc.step, f"fine-tuning cannot be resumed: run the command again "
                          f"('{staged.path}' is as it was before)") from None
    run.dir, run.summary = staged.path, summary
    return run


def train_run(cfg: Config, *, out: str | Path | None = None, overwrite: bool = False, quiet: bool = False,
              console: Console | None = None) -> Run:
    """One run of ``cfg`` into ``out``: fine-tuned from finetune.source when it is set (:func:`finetune`
    with the config as given), else trained from scratch (:func:`~trainwell.runs.train.train`)."""
    source = source_of(cfg)
    if source is None:
        return train(cfg, out=out, overwrite=overwrite, quiet=quiet, console=console)
    return finetune(source, cfg, out=out, overwrite=overwrite, quiet=quiet, console=console)


def _staged_output(out: str | Path | None, tag: str, overwrite: bool, source: Pretrained) -> StagedDir:
    """The fine-tuned run's folder, refused before any work when it exists (without --overwrite) or
    holds the pretrained run; built beside its target and swapped in whole (fine-tuning cannot resume,
    so a killed one leaves the previous folder as it was, not half a run)."""
    staged = staged_out_dir(out, "finetune", tag, overwrite)
    if source.kind != "hub":
        if is_inside(Path(source.source), staged.path):
            raise RunDirError(f"output folder '{staged.path}' holds the pretrained run '{source.source}', which "
                              "--overwrite would delete; choose another --out.")
    return staged
