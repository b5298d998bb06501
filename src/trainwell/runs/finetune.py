"""Transfer learning: fine-tune a pretrained network on new data (``trainwell finetune``).

Python API::

    from trainwell.runs.finetune import finetune
    pre = trainwell.train({"data.classes": [0, 1, 2, 3, 4], "model.name": "mlp"}, out="runs/pre")
    run = finetune("runs/pre", {"data.classes": [5, 6, 7, 8, 9], "data.per_class": 10,
                                "finetune.strategy": "linear_probe"}, out="runs/ft", compare_scratch=True)
    run.summary["test_acc"], run.summary["scratch_test_acc"], run.summary["gain"]

What is transferred: every tensor of the pretrained model except the head (the final Linear):
the preprocessing statistics included, since the features were learned on inputs scaled that way.
The head is re-initialised for the new number of classes (seeded by train.seed). The fine-tuned run
directory is an ordinary run: ``trainwell evaluate`` / ``predict`` / :func:`~trainwell.load_run`
read it like any other.

Layer groups (:func:`layer_groups`), bottom to top, the head last: mlp, one per hidden block
(Linear, norm, activation, dropout); cnn, one per conv block (conv, norm, activation, pool; the
last one also holds the global pooling); resnet, the stem conv, then one per stage of residual
blocks (the last stage also holds the final norm). Strategies (``finetune.strategy``):

* ``full``: every layer trains at optim.lr;
* ``linear_probe``: the backbone is frozen, only the new head trains;
* ``gradual``: ULMFiT's gradual unfreezing (Howard & Ruder 2018): the head alone for the first
  ``finetune.unfreeze_every`` epochs, then one more group from the top every that many epochs;
* ``discriminative``: every group trains, group g from the top (head g=0) at
  optim.lr * finetune.lr_decay**g (ULMFiT's discriminative fine-tuning; schedules keep the ratio).

Batch norm (``finetune.bn``): ``frozen`` keeps every pretrained batch-norm layer in eval mode for
the whole run, so its running mean/var stay those of the pretraining data (its scale and shift
still train when their group does). The pitfall it avoids: ``requires_grad=False`` on a BN layer's
weights does NOT freeze it: in train mode it still normalises with batch statistics and overwrites
running_mean/var with the new data's. ``train`` leaves batch norm alone (statistics update).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from trainwell.config import Config, resolve
from trainwell.data import Splits, load_preprocess, load_splits, to_float
from trainwell.errors import ConfigError, DataError, Interrupted, RunDirError, TrainwellError, unknown_name_message
from trainwell.nn import build_model
from trainwell.nn.models import PreActBlock
from trainwell.nn.pipeline import Classifier, count_parameters
from trainwell.nn.layers import NORM_LAYERS
from trainwell.fileio import write_json
from trainwell.train.rundir import StagedDir, load_weights, staged_out_dir
from trainwell.runs.train import train
from trainwell.train.build import check_names, init_generator
from trainwell.train.load import Run, read_run_files
from trainwell.train.events import Callback, EpochEnd

STRATEGIES = ("full", "linear_probe", "gradual", "discriminative")
BN_MODES = ("frozen", "train")
HUBS = ("torchvision", "timm")


# ----------------------------------------------------------------------------- layer groups


def _unwrap(net: nn.Module) -> nn.Module:
    return net.net if isinstance(net, Classifier) else net


def named_layer_groups(net: nn.Module) -> list[list[tuple[str, nn.Module]]]:
    """:func:`layer_groups` with each module's name in ``net`` (a Classifier means its ``.net``)."""
    net = _unwrap(net)
    units: list[list[tuple[str, nn.Module]]] = []
    pending: list[tuple[str, nn.Module]] = []  # parameter-free modules before the first unit
    for name, child in net.named_children():
        has_params = any(True for _ in child.parameters())
        if has_params and (not units or not isinstance(child, NORM_LAYERS)):
            starts_stage = not (
                # A residual block that keeps its input's shape continues the stage of the block before.
                isinstance(child, PreActBlock) and child.shortcut is None
                and units and isinstance(units[-1][-1][1], PreActBlock)
            )
            if starts_stage:
                units.append(pending + [(name, child)])
                pending = []
            else:
                units[-1].append((name, child))
        elif units:
            units[-1].append((name, child))  # norms, activations, pooling join the layer before
        else:
            pending.append((name, child))
    if not units:
        return [pending] if pending else []
    return units


def layer_groups(net: nn.Module) -> list[list[nn.Module]]:
    """The network's layer groups, bottom to top, the head (final Linear) last.

    Derived from the top-level children of ``net`` (a Classifier means its ``.net``): every child with
    parameters starts a group, except a norm (it joins the layer it normalises) and a residual block
    that keeps its input's shape (it joins its stage); parameter-free children (activation, pooling,
    dropout, flatten) join the group before them. mlp: one group per hidden block; cnn: per conv block;
    resnet: the stem, then one per stage.
    """
    return [[m for _, m in group] for group in named_layer_groups(net)]


def group_parameters(net: nn.Module) -> list[list[tuple[str, nn.Parameter]]]:
    """The named parameters of each layer group (names as in ``net.named_parameters()``); parameters
    held by ``net`` itself rather than a child (e.g. a class token) join the bottom group."""
    net = _unwrap(net)
    groups = [[(f"{name}.{pn}", p) for name, m in group for pn, p in m.named_parameters()]
              for group in named_layer_groups(net)]
    own = list(net.named_parameters(recurse=False))
    if own:
        groups = [own + groups[0], *groups[1:]] if groups else [own]
    return groups


def group_names(net: nn.Module, prefix: str = "net.") -> list[str]:
    """A short name per layer group: the range of child names it spans, e.g. ``net.0-3``."""
    names = []
    for group in named_layer_groups(net):
        first, last = group[0][0], group[-1][0]
        names.append(f"{prefix}{first}" if first == last else f"{prefix}{first}-{last}")
    return names


def _head_keys(net: nn.Module) -> set[str]:
    """State-dict keys (of ``net``) of the head group."""
    groups = named_layer_groups(net)
    if not groups:
        return set()
    return {f"{name}.{k}" for name, m in groups[-1] for k in m.state_dict()}


# ----------------------------------------------------------------------------- batch norm


class KeepsBatchStatistics:
    """Mixin of a batch-norm class whose ``train()`` always means eval: normalises with its running
    mean/var and never updates them, while its scale/shift can still train. Same state_dict keys as
    the layer it replaces, so a saved model reloads into a plain batch norm."""

    def train(self, mode: bool = True):  # type: ignore[override]
        return super().train(False)  # type: ignore[misc]


class FrozenBatchNorm1d(KeepsBatchStatistics, nn.BatchNorm1d):
    """nn.BatchNorm1d kept in eval mode (see :class:`KeepsBatchStatistics`)."""


class FrozenBatchNorm2d(KeepsBatchStatistics, nn.BatchNorm2d):
    """nn.BatchNorm2d kept in eval mode (see :class:`KeepsBatchStatistics`)."""


class FrozenBatchNorm3d(KeepsBatchStatistics, nn.BatchNorm3d):
    """nn.BatchNorm3d kept in eval mode (see :class:`KeepsBatchStatistics`)."""


_FROZEN: dict[type, type] = {nn.BatchNorm1d: FrozenBatchNorm1d, nn.BatchNorm2d: FrozenBatchNorm2d,
                             nn.BatchNorm3d: FrozenBatchNorm3d}


def freeze_batchnorm_statistics(module: nn.Module) -> int:
    """Turn every batch-norm layer in ``module`` into its Frozen* class (in place); returns how many.

    Needed because freezing a BN layer's parameters is not enough: in train mode it still normalises
    with batch statistics and overwrites running_mean/var with the new data's.
    """
    count = 0
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, KeepsBatchStatistics):
            cls = type(m)
            if cls not in _FROZEN:
                _FROZEN[cls] = type(f"Frozen{cls.__name__}", (KeepsBatchStatistics, cls), {})
            m.__class__ = _FROZEN[cls]
            m.train(False)
            count += 1
    return count


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
class Plan:
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


def apply_strategy(classifier: Classifier, cfg: Config) -> Plan:
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
                    p.unfreezes_later = True
        starts = [0] * len(backbone) + [1]  # 0 = never
        if ft.strategy == "gradual":
            gradual = GradualUnfreeze(classifier, backbone[::-1], ft.unfreeze_every)
            starts = [1 + ft.unfreeze_every * (len(backbone) - i) for i in range(len(backbone))] + [1]
            starts = [s if s <= cfg.train.epochs else 0 for s in starts]
    elif ft.strategy == "discriminative":
        for depth, group in enumerate(reversed(groups)):
            scales[len(groups) - 1 - depth] = ft.lr_decay ** depth
            for _, p in group:
                p.lr_scale = ft.lr_decay ** depth
    bn_frozen = freeze_batchnorm_statistics(net) if ft.bn == "frozen" else 0
    report = [
        {"name": n, "params": sum(p.numel() for _, p in g), "lr_scale": s, "trains_from_epoch": e or None}
        for n, g, s, e in zip(names, groups, scales, starts)
    ]
    return Plan(report, (gradual,) if gradual is not None else (), bn_frozen, gradual)


# ----------------------------------------------------------------------------- pretrained weights


@dataclass
class Pretrained:
    """A pretrained model as :func:`load_pretrained` found it."""

    source: str
    kind: str  # "run", "safetensors" or "hub"
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    config: Config | None = None  # kind "run": the pretrained run's config
    input_shape: tuple[int, ...] | None = None  # kind "run"
    preprocess: str | None = None  # kind "run"
    hub: tuple[str, str] | None = None  # kind "hub": (library, model name)


def _is_hub(spec: str) -> bool:
    return spec.split(":", 1)[0] in HUBS and ":" in spec


def load_pretrained(spec: str | Path) -> Pretrained:
    """Read PRETRAINED: a run directory, a ``.safetensors`` file, or ``torchvision:NAME`` / ``timm:NAME``."""
    text = str(spec)
    if _is_hub(text):
        lib, name = text.split(":", 1)
        return Pretrained(text, "hub", hub=(lib, name))
    path = Path(text)
    if path.is_dir():
        card, cfg, state = read_run_files(path)
        return Pretrained(text, "run", state, cfg, tuple(int(d) for d in card["input_shape"]), card["preprocess"])
    if path.is_file() or path.suffix == ".safetensors":
        if not path.is_file():
            raise RunDirError(f"pretrained weights '{path}' do not exist; pass a run directory, a .safetensors "
                              "file or torchvision:NAME / timm:NAME.")
        return Pretrained(text, "safetensors", load_weights(path))
    raise ConfigError(f"pretrained '{text}' is neither a run directory, a .safetensors file nor "
                      "torchvision:NAME / timm:NAME; check the path.")


def finetune_config(pretrained: Pretrained, overrides: list[str] | dict[str, Any] | None = None,
                    config_file: str | Path | None = None) -> Config:
    """The fine-tuning config: for a run directory, its model.* keys and data.preprocess are the
    starting point; the user's file and overrides (new data, optim, finetune.*) go on top."""
    if pretrained.kind != "run":
        cfg = resolve(overrides, config_file)
    else:
        assert pretrained.config is not None
        base = Config(model=pretrained.config.model,
                      data=dataclasses.replace(Config().data, preprocess=pretrained.config.data.preprocess))
        cfg = resolve(overrides, config_file, base=base)
        if cfg.data.preprocess != pretrained.preprocess:
            raise ConfigError(
                f"data.preprocess={cfg.data.preprocess} but the pretrained run '{pretrained.source}' used "
                f"{pretrained.preprocess}, whose statistics are transferred with the weights; drop data.preprocess."
            )
    check_finetune_config(cfg)
    return cfg


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
    if shape != classifier.preprocess.output_shape(tuple(splits.input_shape)):
        # e.g. pca with another number of components: the network takes the pretrained preprocessing's output.
        net = build_model(cfg, shape, splits.num_classes, generator=init_generator(cfg))
    head = _head_keys(net)
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


# ----------------------------------------------------------------------------- torchvision / timm


def hub_model(lib: str, name: str, num_classes: int, pretrained: bool = True) -> nn.Module:
    """A torchvision or timm model with its weights from the local cache (never downloaded), head replaced.

    Raises a one-line ConfigError when the package is not importable or the weights are not cached.
    """
    fetch = {
        "torchvision": f"python -c \"import torchvision; torchvision.models.get_model('{name}', weights='DEFAULT')\"",
        "timm": f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\"",
    }[lib]
    try:
        module = __import__(lib)
    except ImportError:
        raise ConfigError(f"pretrained '{lib}:{name}' needs the {lib} package, which is not installed; pip install "
                          f"{lib}, then fetch the weights once with {fetch} (trainwell never downloads).") from None
    if lib == "torchvision":
        models = module.models
        try:
            weights = models.get_model_weights(name).DEFAULT
        except (ValueError, KeyError):
            raise ConfigError(unknown_name_message("torchvision model", name, models.list_models())) from None
        model = models.get_model(name, weights=None)
        if pretrained:
            file = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url.split("?")[0]).name
            if not file.is_file():
                raise ConfigError(f"the weights of torchvision:{name} are not in the local cache ('{file}'); trainwell "
                                  f"never downloads: fetch them once with {fetch}.")
            model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
        _replace_last_linear(model, num_classes)
        return model
    if name not in module.list_models():
        raise ConfigError(unknown_name_message("timm model", name, module.list_models()))
    if not pretrained:
        return module.create_model(name, pretrained=False, num_classes=num_classes)
    cfg = module.models.get_pretrained_cfg(name)
    file = None
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(hub_id, filename)
            if isinstance(found, str):
                file = found
                break
    elif cfg is not None and getattr(cfg, "url", None):
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url.split("?")[0]).name
        file = str(candidate) if candidate.is_file() else None
    if file is None:
        raise ConfigError(f"the weights of timm:{name} are not in the local cache; trainwell never downloads: "
                          f"fetch them once with {fetch}.")
    return module.create_model(name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay={"file": file})


def _replace_last_linear(model: nn.Module, num_classes: int) -> None:
    name, last = next(((n, m) for n, m in reversed(list(model.named_modules())) if isinstance(m, nn.Linear)),
                      (None, None))
    if last is None:
        raise ConfigError("the pretrained model has no final nn.Linear to replace with a new head.")
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], nn.Linear(last.in_features, num_classes))


def _check_hub_input(model: nn.Module, splits: Splits, source: str) -> None:
    try:
        with torch.no_grad():
            model.eval()(to_float(splits.train.x[:2]).float())
    except RuntimeError:
        raise DataError(f"'{source}' cannot take examples of shape {tuple(splits.input_shape)} from data "
                        f"'{splits.description}' (it expects 3-channel images); use data of the shape it was "
                        "trained on.") from None


# ----------------------------------------------------------------------------- the API


def finetune(
    pretrained: str | Path,
    overrides: list[str] | dict[str, Any] | None = None,
    *,
    config_file: str | Path | None = None,
    out: str | Path | None = None,
    compare_scratch: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    console: Console | None = None,
) -> Run:
    """Fine-tune PRETRAINED on the data of ``overrides`` and write an ordinary run directory to ``out``.

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
    tag = f"{cfg.data.name}-{cfg.model.name if source.kind != 'hub' else source.hub[1]}"  # type: ignore[index]
    staged = _staged_output(out, tag, overwrite, source)
    splits = load_splits(cfg.data)
    if source.kind == "run" and tuple(splits.input_shape) == source.input_shape:
        # Other data is what fine-tuning is for, but the pretrained preprocessing and features expect
        # inputs on the pretrained run's scale: warn when they are far off (shapes: transfer_weights).
        from trainwell.train.contract import read_contract, warn_inputs

        where = f"data.path '{cfg.data.path}'" if cfg.data.path else f"data.name={cfg.data.name}"
        warn_inputs(read_contract(source.source), splits.train.x, where, run=source.source, console=console, quiet=quiet)
    plan: dict[str, Any] = {}

    def prepare(classifier: Classifier) -> tuple:
        if source.kind != "hub":
            plan["loaded"] = transfer_weights(classifier, source, cfg, splits)
        plan["plan"] = apply_strategy(classifier, cfg)
        return plan["plan"].callbacks  # gradual unfreezing, if any

    model = None
    if source.kind == "hub":
        lib, name = source.hub  # type: ignore[misc]
        model = hub_model(lib, name, splits.num_classes)
        _check_hub_input(model, splits, source.source)

    try:
        with staged as out_dir:
            run = train(cfg, out=out_dir, splits=splits, quiet=quiet, console=console, model=model, prepare=prepare)
            p: Plan = plan["plan"]
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
                "transferred_tensors": plan.get("loaded"),
                "layer_groups": p.groups,
            })
            if p.gradual is not None:
                summary["trainable_params_by_epoch"] = p.gradual.trainable_by_epoch
            if compare_scratch:
                scratch_model = None
                if source.kind == "hub":
                    scratch_model = hub_model(*source.hub, splits.num_classes, pretrained=False)  # type: ignore[misc]
                scratch = train(cfg, out=out_dir / "scratch", splits=splits, quiet=quiet, console=console,
                                model=scratch_model)
                summary["scratch_test_acc"] = scratch.summary["test_acc"]
                summary["gain"] = summary["test_acc"] - scratch.summary["test_acc"]
                summary["scratch_dir"] = str(staged.path / "scratch")
            write_json(out_dir / "summary.json", summary)
    except Interrupted as exc:  # train's hint names the staged folder, which is gone; nothing to resume
        raise Interrupted(exc.signum, exc.epoch, exc.step, f"fine-tuning cannot be resumed: run the command again "
                          f"('{staged.path}' is as it was before)") from None
    run.dir, run.summary = staged.path, summary
    return run


def _staged_output(out: str | Path | None, tag: str, overwrite: bool, source: Pretrained) -> StagedDir:
    """The fine-tuned run's folder, refused before any work when it exists (without --overwrite) or
    holds the pretrained run; built beside its target and swapped in whole (fine-tuning cannot resume,
    so a killed one leaves the previous folder as it was, not half a run)."""
    staged = staged_out_dir(out, "finetune", tag, overwrite)
    if source.kind != "hub":
        src, target = Path(source.source).resolve(), staged.path.resolve()
        if src == target or target in src.parents:
            raise RunDirError(f"output folder '{staged.path}' holds the pretrained run '{source.source}', which "
                              "--overwrite would delete; choose another --out.")
    return staged
