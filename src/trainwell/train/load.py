"""Reading run folders back: the model card, config and weights, each checked, and the rebuilt model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from trainwell.config import Config, from_dict
from trainwell.data import Splits, load_preprocess
from trainwell.errors import RunDirError
from trainwell.nn import build_model
from trainwell.nn.pipeline import Classifier
from trainwell.train.rundir import FORMAT, FORMAT_VERSION, load_weights, read_json
from trainwell.train.trainer import resolve_device


@dataclass
class Run:
    """A trained (or loaded) run: its folder, resolved config, model and summary."""

    dir: Path | None
    config: Config
    model: Any
    summary: dict[str, Any]
    classes: list[str]
    input_shape: tuple[int, ...]
    splits: Splits | None = None


def read_config(run_dir: Path) -> Config:
    """A run folder's config.yaml, validated key by key."""
    config_path = Path(run_dir) / "config.yaml"
    if not config_path.is_file():
        raise RunDirError(f"'{run_dir}' is not a complete run directory (config.yaml is missing).")
    try:
        tree = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError:
        raise RunDirError(f"'{config_path}' is corrupt (not valid YAML); restore it.") from None
    return from_dict(tree or {}, f"'{config_path}'")


def read_card(run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory '{run_dir}' does not exist; pass a folder written by 'trainwell train'.")
    card = read_json(run_dir / "model.json", "model card")
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise RunDirError(f"'{run_dir / 'model.json'}' is not a trainwell model card; pass a run directory.")
    if card.get("format_version", 0) > FORMAT_VERSION:
        raise RunDirError(f"run '{run_dir}' was written by a newer trainwell; upgrade trainwell to load it.")
    return card


def read_run_files(run_dir: str | Path) -> tuple[dict[str, Any], Config, dict[str, torch.Tensor]]:
    """A run folder's model card, config and weights, each checked: one clear error per problem."""
    run_dir = Path(run_dir)
    card = read_card(run_dir)
    if card.get("custom_model"):
        raise RunDirError(
            f"run '{run_dir}' used a custom nn.Module; rebuild it in Python and load model.safetensors into it."
        )
    cfg = read_config(run_dir)
    return card, cfg, load_weights(run_dir / "model.safetensors")


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """Rebuild a trained model from its run directory (safetensors + JSON/YAML, no pickle)."""
    run_dir = Path(run_dir)
    if (run_dir / "ensemble.json").is_file():  # an ensemble folder: trainwell ensemble, train.ensemble=K
        from trainwell.train.ensemble import load_ensemble

        return load_ensemble(run_dir, device)
    card, cfg, state = read_run_files(run_dir)
    input_shape = tuple(int(d) for d in card["input_shape"])
    pre_state = {k[len("preprocess.") :]: v for k, v in state.items() if k.startswith("preprocess.")}
    preprocess = load_preprocess(card["preprocess"], pre_state)
    net = build_model(cfg, preprocess.output_shape(input_shape), int(card["num_classes"]))
    model = Classifier(net, preprocess)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise RunDirError(
            f"weights in '{run_dir / 'model.safetensors'}' do not match its config ({first[:120]}); "
            "the folder mixes files of different runs."
        ) from None
    model.to(resolve_device(str(device)) if isinstance(device, str) else device).eval()
    summary_path = run_dir / "summary.json"
    summary = read_json(summary_path, "summary") if summary_path.is_file() else {}
    return Run(run_dir, cfg, model, summary, list(card["classes"]), input_shape)
