"""Reading a pretrained model: a trainwell run folder, a ``.safetensors`` file, or a torchvision/timm model.

:func:`load_pretrained` tells the three apart and reads the first two (weights, and for a run its
config, input shape and preprocessing); :func:`~trainwell.train.hub.hub_model` builds a torchvision or
timm model from weights already in the local cache (trainwell never downloads) with a new head. Fine-tuning
(:mod:`trainwell.runs.finetune`) transfers what they hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainwell.config import Config
from trainwell.errors import ConfigError, RunDirError
from trainwell.train.hub import HUBS, check_hub_input, hub_model
from trainwell.train.load import read_run_files
from trainwell.train.rundir import load_weights


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
        if "hub" in card:  # its network is not cfg.model's: transfer_weights would report a mismatch
            raise ConfigError(f"'{path}' is a run fine-tuned from {card['model']}, which cannot be fine-tuned again "
                              f"yet; fine-tune {card['model']} on the new data instead.")
        return Pretrained(text, "run", state, cfg, tuple(int(d) for d in card["input_shape"]), card["preprocess"])
    if path.is_file() or path.suffix == ".safetensors":
        if not path.is_file():
            raise RunDirError(f"pretrained weights '{path}' do not exist; pass a run directory, a .safetensors "
                              "file or torchvision:NAME / timm:NAME.")
        return Pretrained(text, "safetensors", load_weights(path))
    raise ConfigError(f"pretrained '{text}' is neither a run directory, a .safetensors file nor "
                      "torchvision:NAME / timm:NAME; check the path.")


__all__ = ["HUBS", "Pretrained", "check_hub_input", "hub_model", "load_pretrained"]
