"""torchvision / timm models: built from the local cache (never downloaded), their input
normalisation, and the model.json record from which a fine-tuned one is rebuilt.

A network pretrained on ImageNet expects its inputs on [0, 1] and then normalised per channel with
the mean/std its weights were trained with (torchvision: ``weights.transforms().mean/std``; timm:
``pretrained_cfg["mean"/"std"]``). A hub fine-tune therefore takes that normalisation as its
preprocessing: ``data.preprocess=standardize`` with the weights' statistics instead of ones fitted
on the training split (:meth:`InputNormalization.module`, the same :class:`Standardize` module, so
train, evaluate, predict and export apply it with one piece of code), exactly as fine-tuning a
trainwell run transfers that run's preprocessing statistics with its weights.

The run folder records ``"hub": {"library", "name", "num_classes"}`` and ``"input_normalization":
{"mean", "std", "from"}`` in model.json (:func:`hub_card`); :func:`~trainwell.train.load.load_run`
rebuilds the network with ``hub_model(library, name, num_classes, pretrained=False)`` (nothing read
from the cache) and loads model.safetensors into it (the normalisation is in it too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainwell.data import Splits, to_float
from trainwell.data.preprocess import Standardize
from trainwell.errors import ConfigError, DataError, unknown_name_message

HUBS = ("torchvision", "timm")
#: The data.preprocess of a hub fine-tune: standardize, with the pretrained weights' statistics.
HUB_PREPROCESS = "standardize"


def _fetch_command(lib: str, name: str) -> str:
    return {
        "torchvision": f"python -c \"import torchvision; torchvision.models.get_model('{name}', weights='DEFAULT')\"",
        "timm": f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\"",
    }[lib]


def import_hub(lib: str, name: str) -> Any:
    """The torchvision or timm package; a one-line ConfigError (what, how to fix) when it is not installed."""
    try:
        return __import__(lib)
    except ImportError:
        raise ConfigError(f"'{lib}:{name}' needs the {lib} package, which is not installed; pip install "
                          f"{lib}, then fetch the weights once with {_fetch_command(lib, name)} (trainwell never "
                          "downloads).") from None


def _torchvision_weights(module: Any, name: str) -> Any:
    models = module.models
    try:
        return models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        raise ConfigError(unknown_name_message("torchvision model", name, models.list_models())) from None


def hub_model(lib: str, name: str, num_classes: int, pretrained: bool = True) -> nn.Module:
    """A torchvision or timm model with its weights from the local cache (never downloaded), head replaced.

    ``pretrained=False``: the architecture alone, randomly initialised (nothing read from the cache).
    Raises a one-line ConfigError when the package is not importable or the weights are not cached.
    """
    fetch = _fetch_command(lib, name)
    module = import_hub(lib, name)
    if lib == "torchvision":
        weights = _torchvision_weights(module, name)
        model = module.models.get_model(name, weights=None)
        if pretrained:
            cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url.split("?")[0]).name
            if not cached.is_file():
                raise ConfigError(f"the weights of torchvision:{name} are not in the local cache ('{cached}'); "
                                  f"trainwell never downloads: fetch them once with {fetch}.")
            model.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
        _replace_last_linear(model, num_classes)
        return model
    if name not in module.list_models():
        raise ConfigError(unknown_name_message("timm model", name, module.list_models()))
    if not pretrained:
        return module.create_model(name, pretrained=False, num_classes=num_classes)
    cfg = module.models.get_pretrained_cfg(name)
    file: str | None = None
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
    found = next(((n, m) for n, m in reversed(list(model.named_modules())) if isinstance(m, nn.Linear)), None)
    if found is None:
        raise ConfigError("the pretrained model has no final nn.Linear to replace with a new head.")
    name, last = found
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], nn.Linear(last.in_features, num_classes))


# ----------------------------------------------------------------------------- input normalisation


@dataclass(frozen=True)
class InputNormalization:
    """The per-channel normalisation a pretrained network expects: ``(x - mean[c]) / std[c]``, x on [0, 1]."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # e.g. "torchvision:resnet18 weights"

    def module(self) -> Standardize:
        """The preprocessing that applies it: :class:`Standardize` with these statistics, shaped (C, 1, 1)."""
        shape = (len(self.mean), 1, 1)
        return Standardize(torch.tensor(self.mean, dtype=torch.float64).view(shape),
                           torch.tensor(self.std, dtype=torch.float64).view(shape))

    def record(self) -> dict[str, Any]:
        """model.json's and summary.json's ``input_normalization``."""
        return {"mean": list(self.mean), "std": list(self.std), "from": self.source}


def _statistic(holder: Any, key: str) -> Any:
    """``holder.key`` or ``holder[key]`` (torchvision transforms and timm configs are objects, meta a dict)."""
    if isinstance(holder, dict):
        return holder.get(key)
    return getattr(holder, key, None)


def hub_normalization(lib: str, name: str) -> InputNormalization:
    """The mean/std of ``lib:name``'s pretrained weights: torchvision's ``weights.transforms()`` (else
    ``weights.meta``), timm's ``get_pretrained_cfg(name)``. One-line ConfigError when they are not
    there or not a valid per-channel normalisation (finite, std > 0, as many means as stds)."""
    module = import_hub(lib, name)
    if lib == "torchvision":
        weights = _torchvision_weights(module, name)
        holders = [weights.transforms(), weights.meta]
    else:
        holders = [module.models.get_pretrained_cfg(name)]
    for holder in holders:
        mean, std = _statistic(holder, "mean"), _statistic(holder, "std")
        if mean is not None and std is not None:
            break
    try:
        mean_t, std_t = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        valid = 0 < len(mean_t) == len(std_t) and all(math.isfinite(v) for v in mean_t + std_t) and min(std_t) > 0
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ConfigError(f"{lib}:{name}'s weights do not give their input normalisation (a mean and a std per "
                          f"channel, got mean={mean!r}, std={std!r}); trainwell cannot fine-tune it.")
    return InputNormalization(mean_t, std_t, f"{lib}:{name} weights")


def check_hub_input(model: nn.Module, normalization: InputNormalization, splits: Splits, source: str) -> None:
    """A one-line DataError when the hub model cannot take the data: not (C, H, W) images with one
    channel per normalisation mean, or a forward on two normalised training examples fails."""
    shape = tuple(splits.input_shape)
    fits = len(shape) == 3 and shape[0] == len(normalization.mean)
    if fits:
        try:
            with torch.no_grad():
                model.eval()(normalization.module()(to_float(splits.train.x[:2])))
        except RuntimeError:
            fits = False
    if not fits:
        raise DataError(f"'{source}' cannot take examples of shape {shape} from data '{splits.description}' (it "
                        f"expects {len(normalization.mean)}-channel images (C, H, W)); use data of the shape it was "
                        "trained on.")


def hub_card(lib: str, name: str, num_classes: int, normalization: InputNormalization | None) -> dict[str, Any]:
    """model.json's fields of a run whose network is ``hub_model(lib, name, num_classes)``: what
    :func:`~trainwell.train.load.load_run` rebuilds it from, and the normalisation it was given (None:
    trained from scratch, its preprocessing fitted on the data)."""
    card: dict[str, Any] = {"model": f"{lib}:{name}", "hub": {"library": lib, "name": name, "num_classes": num_classes}}
    if normalization is not None:
        card["input_normalization"] = normalization.record()
    return card


__all__ = ["HUBS", "HUB_PREPROCESS", "InputNormalization", "check_hub_input", "hub_card", "hub_model",
           "hub_normalization", "import_hub"]
