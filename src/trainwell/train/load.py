"""Reading run folders back: the model card, config and weights, each checked, and the rebuilt model.

A run folder is input like any other: it may be damaged, edited by hand, half-written by a killed
run or made of files of different runs. Every field the loader uses is checked before it is used
(:func:`check_card`, :func:`read_config`), a folder without ``summary.json`` is refused as unfinished
(:func:`~trainwell.train.rundir.require_finished`), and the network is first built without memory
(on the ``meta`` device) and compared with the saved tensors, so a card or config that names a huge
network is an error, not an allocation. Each problem is one :class:`RunDirError` naming the file and
the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from trainwell.config import Config, from_dict
from trainwell.data import PREPROCESSORS, Splits, load_preprocess
from trainwell.errors import ConfigError, RunDirError, TrainwellError, exception_line, short_repr
from trainwell.nn import MODELS, build_model
from trainwell.nn.pipeline import Classifier
from trainwell.train.hub import HUBS, hub_model
from trainwell.train.rundir import FORMAT, FORMAT_VERSION, load_weights, read_json, read_summary, require_finished
from trainwell.train.trainer import resolve_device

#: The largest example a run folder may declare (elements of input_shape): 3 x 4730 x 4730.
MAX_INPUT_ELEMENTS = 1 << 26
#: The most classes a run folder may declare.
MAX_CLASSES = 1 << 20
_MISSING = object()
_KINDS = {"list": "a list", "int": "an integer", "float": "a number", "str": "a string", "bool": "true/false"}


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
    """A run folder's config.yaml: a mapping of sections, validated key by key."""
    config_path = Path(run_dir) / "config.yaml"
    if not config_path.is_file():
        raise RunDirError(f"'{run_dir}' is not a complete run directory (config.yaml is missing).")
    try:
        tree = yaml.safe_load(config_path.read_bytes().decode("utf-8"))
    except (yaml.YAMLError, ValueError, RecursionError, OSError):  # UnicodeDecodeError is a ValueError
        raise RunDirError(f"'{config_path}' is corrupt (not valid YAML); restore it.") from None
    if not isinstance(tree, dict) or not tree:
        got = "nothing" if not tree else _KINDS.get(type(tree).__name__, type(tree).__name__)
        raise RunDirError(f"'{config_path}' is invalid: its top level must be a mapping of sections (data:, model:, "
                          f"...), got {got}; restore it or retrain the run.")
    try:
        return from_dict(tree, f"'{config_path}'")
    except ConfigError as exc:  # the message quotes the file's keys and values: keep it one line
        raise ConfigError(" ".join(str(exc).split())) from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _card_field(card: dict[str, Any], path: Path, field: str, ok: Any, should: str) -> Any:
    """``card[field]`` when ``ok(value)``, else one line naming the file, the field and the value."""
    value = card.get(field, _MISSING)
    if value is _MISSING:
        raise RunDirError(f"'{path}' is invalid: field '{field}' is missing, it {should}; restore the file or "
                          "retrain the run.")
    if not ok(value):
        raise RunDirError(f"'{path}' is invalid: field '{field}' {should}, got {short_repr(value, 40)}; restore the file or "
                          "retrain the run.")
    return value


def check_card(card: Any, path: Path) -> dict[str, Any]:
    """The model card's fields and types, each checked before anything uses them (one line per problem).

    Unknown fields are kept (a newer trainwell of the same format version may add some).
    """
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise RunDirError(f"'{path}' is not a trainwell model card; pass a run directory.")
    version = _card_field(card, path, "format_version", lambda v: _is_int(v) and v >= 1, "must be an integer >= 1")
    if version > FORMAT_VERSION:
        raise RunDirError(f"run '{path.parent}' was written by a newer trainwell; upgrade trainwell to load it.")
    _card_field(card, path, "input_shape",
                lambda v: isinstance(v, list) and 1 <= len(v) <= 4 and all(_is_int(d) and d >= 1 for d in v)
                and math.prod(v) <= MAX_INPUT_ELEMENTS,
                f"must be the shape of one example: 1 to 4 positive integers, at most {MAX_INPUT_ELEMENTS:,} "
                "elements, e.g. [1, 28, 28]")
    n = _card_field(card, path, "num_classes", lambda v: _is_int(v) and 1 <= v <= MAX_CLASSES,
                    f"must be an integer from 1 to {MAX_CLASSES:,}")
    _card_field(card, path, "classes", lambda v: isinstance(v, list) and len(v) == n and
                all(isinstance(c, str) for c in v), f"must be a list of num_classes={n} class names (strings)")
    _card_field(card, path, "preprocess", lambda v: isinstance(v, str) and v in PREPROCESSORS,
                f"must name a preprocessing ({', '.join(PREPROCESSORS.names())})")
    for flag in ("custom_model", "prepared"):
        if flag in card:
            _card_field(card, path, flag, lambda v: isinstance(v, bool), "must be true or false")
    if "hub" in card:
        _card_field(card, path, "hub", lambda v: isinstance(v, dict) and v.get("library") in HUBS
                    and isinstance(v.get("name"), str) and v["name"] != "" and v.get("num_classes") == n,
                    f"must name the torchvision/timm model the run fine-tuned: {{\"library\": one of {list(HUBS)}, "
                    f"\"name\": its model name, \"num_classes\": {n}}}")
    return card


def read_card(run_dir: Path) -> dict[str, Any]:
    """A run folder's model.json, checked field by field (:func:`check_card`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory '{run_dir}' does not exist; pass a folder written by 'trainwell train'.")
    return check_card(read_json(run_dir / "model.json", "model card"), run_dir / "model.json")


def read_run_files(run_dir: str | Path) -> tuple[dict[str, Any], Config, dict[str, torch.Tensor]]:
    """A finished run folder's model card, config and weights, each checked: one clear error per problem."""
    run_dir = Path(run_dir)
    card = read_card(run_dir)
    if card.get("custom_model"):
        raise RunDirError(
            f"run '{run_dir}' used a custom nn.Module; rebuild it in Python and load model.safetensors into it."
        )
    cfg = read_config(run_dir)
    # Before the weights: an unfinished run has none yet (or a previous epoch's), and resuming is the fix.
    require_finished(run_dir, resumable=not card.get("prepared"))
    return card, cfg, load_weights(run_dir / "model.safetensors")


def _mismatch(run_dir: Path, detail: str) -> RunDirError:
    return RunDirError(f"weights in '{run_dir / 'model.safetensors'}' do not match its model.json and config.yaml "
                       f"({detail[:120]}); the folder mixes files of different runs or one of them is damaged.")


def _check_net_shapes(cfg: Config, shape: tuple[int, ...], num_classes: int, state: dict[str, torch.Tensor],
                      run_dir: Path) -> None:
    """Build the network on the meta device (no memory, no initialisation) and compare its tensors
    with the saved ones, so that a card or config naming a huge network never allocates it."""
    saved = {k: tuple(v.shape) for k, v in state.items() if k.startswith("net.")}
    # Every layer or block of the built-in models holds a tensor: more of them than saved tensors
    # cannot match (and model.depth=10**7 would take minutes to build even without memory).
    key, layers = ("model.channels", len(cfg.model.channels)) if cfg.model.name == "cnn" else \
        ("model.layers", cfg.model.layers) if cfg.model.name in ("rnn", "gru", "lstm") else \
        ("model.depth", cfg.model.depth if cfg.model.name in ("mlp", "resnet") else 0)
    if layers > len(saved):
        raise _mismatch(run_dir, f"config.yaml's {key} gives {layers} layers, the file holds {len(saved)} network "
                                 "tensors")
    try:
        with torch.device("meta"):
            net = MODELS.get(cfg.model.name)(cfg.model, shape, num_classes)
    except TrainwellError as exc:
        raise RunDirError(f"run '{run_dir}': its config.yaml and model.json do not describe a model ({exc})") from None
    except (RuntimeError, ValueError, TypeError, IndexError, ZeroDivisionError, OverflowError) as exc:
        raise _mismatch(run_dir, f"the model cannot be built: {exception_line(exc)}") \
            from None
    _compare_shapes({f"net.{k}": tuple(v.shape) for k, v in net.state_dict().items()}, state, run_dir, "the config")


def _hub_net(hub: dict[str, Any], state: dict[str, torch.Tensor], run_dir: Path) -> torch.nn.Module:
    """The network of a torchvision/timm fine-tune, rebuilt as ``hub_model(library, name, num_classes,
    pretrained=False)`` (nothing read from the cache), first on the meta device to compare its tensors
    with the saved ones. A missing package is hub_model's one-line ConfigError."""
    lib, name, n = hub["library"], hub["name"], hub["num_classes"]
    try:
        with torch.device("meta"):
            net = hub_model(lib, name, n, pretrained=False)
    except TrainwellError:
        raise
    except Exception as exc:  # third-party builders raise their own types: one line, no traceback
        raise RunDirError(f"run '{run_dir}': {lib}:{name} cannot be built with {n} classes ({exception_line(exc)}); "
                          "the installed version may differ from the one it was trained with.") from None
    _compare_shapes({f"net.{k}": tuple(v.shape) for k, v in net.state_dict().items()}, state, run_dir,
                    f"{lib}:{name}")
    return hub_model(lib, name, n, pretrained=False)


def _compare_shapes(expected: dict[str, tuple[int, ...]], state: dict[str, torch.Tensor], run_dir: Path,
                    giver: str) -> None:
    """Every network tensor the rebuilt model has, saved with the same shape, and no other one."""
    saved = {k: tuple(v.shape) for k, v in state.items() if k.startswith("net.")}
    for key in sorted(expected.keys() | saved.keys()):
        if expected.get(key) != saved.get(key):
            raise _mismatch(run_dir, f"'{key}': {giver} gives {expected.get(key, 'nothing')}, the file "
                                     f"{saved.get(key, 'nothing')}")


def _preprocessed_shape(preprocess: Any, input_shape: tuple[int, ...], run_dir: Path) -> tuple[int, ...]:
    """The shape the network takes, checked by pushing one zero example through the saved preprocessing:
    statistics of another shape (a folder mixing runs, a damaged header) would otherwise broadcast
    into a wrong shape and fail only when the model is used."""
    try:
        shape = tuple(preprocess.output_shape(input_shape))
        with torch.no_grad():
            out = tuple(preprocess(torch.zeros((1, *input_shape))).shape)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise _mismatch(run_dir, f"its preprocessing does not take model.json's input_shape {list(input_shape)}: "
                                 f"{exception_line(exc, 80)}") from None
    if out != (1, *shape):
        raise _mismatch(run_dir, f"its preprocessing turns model.json's input_shape {list(input_shape)} into "
                                 f"{list(out[1:])}, not {list(shape)}")
    return shape


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """Rebuild a trained model from its run directory (safetensors + JSON/YAML, no pickle)."""
    run_dir = Path(run_dir)
    # An ensemble folder (trainwell ensemble; train.ensemble=K, also while its members train).
    if (run_dir / "ensemble.json").is_file() or (run_dir / "members-runs").is_dir():
        from trainwell.train.ensemble_dir import load_ensemble

        return load_ensemble(run_dir, device)
    dev = resolve_device(device, what="device") if isinstance(device, str) else device
    card, cfg, state = read_run_files(run_dir)
    input_shape = tuple(card["input_shape"])
    pre_state = {k[len("preprocess.") :]: v for k, v in state.items() if k.startswith("preprocess.")}
    preprocess = load_preprocess(card["preprocess"], pre_state)
    net_shape = _preprocessed_shape(preprocess, input_shape, run_dir)
    if "hub" in card:
        net = _hub_net(card["hub"], state, run_dir)
    else:
        _check_net_shapes(cfg, net_shape, card["num_classes"], state, run_dir)
        net = build_model(cfg, net_shape, card["num_classes"])
    model = Classifier(net, preprocess)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise _mismatch(run_dir, first) from None
    model.to(dev).eval()
    return Run(run_dir, cfg, model, read_summary(run_dir), list(card["classes"]), input_shape)
