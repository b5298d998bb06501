"""Reading a pretrained model: a trainwell run folder, a ``.safetensors`` file, or a torchvision/timm model.

:func:`load_pretrained` tells the three apart and reads the first two (weights, and for a run its
config, input shape and preprocessing); :func:`hub_model` builds a torchvision or timm model from
weights already in the local cache (trainwell never downloads) with a new head. Fine-tuning
(:mod:`trainwell.runs.finetune`) transfers what they hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from trainwell.config import Config
from trainwell.data import Splits, to_float
from trainwell.errors import ConfigError, DataError, RunDirError, unknown_name_message
from trainwell.train.load import read_run_files
from trainwell.train.rundir import load_weights

HUBS = ("torchvision", "timm")


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


def check_hub_input(model: nn.Module, splits: Splits, source: str) -> None:
    """A one-line DataError when the hub model cannot take two training examples (e.g. not 3-channel images)."""
    try:
        with torch.no_grad():
            model.eval()(to_float(splits.train.x[:2]).float())
    except RuntimeError:
        raise DataError(f"'{source}' cannot take examples of shape {tuple(splits.input_shape)} from data "
                        f"'{splits.description}' (it expects 3-channel images); use data of the shape it was "
                        "trained on.") from None


__all__ = ["HUBS", "Pretrained", "check_hub_input", "hub_model", "load_pretrained"]
