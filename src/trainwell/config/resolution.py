"""Resolving a typed Config, once: defaults < preset < YAML file < ``key=value`` overrides.

Unknown keys and values of the wrong type are rejected with one line naming the closest valid key.
A value is converted to its key's type here, once: numbers and booleans from their text, lists and
specs (``model.activation``, ``augment``) through the value grammar (:mod:`trainwell.config.values`),
so later layers receive typed values and only check names and ranges against their registries.

Example::

    cfg = resolve(["preset=mnist1d", "optim.lr=0.05", "model.channels=32,64"])
    cfg.optim.lr  # 0.05
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from functools import reduce
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from trainwell.config.schema import ALIASES, LEAF_TYPES, SECTIONS, Config, flatten, is_section, type_name
from trainwell.config.values import MAX_VALUE_ITEMS, Spec, parse, to_spec, to_specs
from trainwell.errors import ConfigError, closest, short_repr, unknown_name_message

# ----------------------------------------------------------------------------- coercion


def _is_optional(hint: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return True, args[0]
    return False, hint


def _arm_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    return {float: "a number", int: "an integer", str: "a string", bool: "true or false"}.get(hint, type_name(hint))


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Convert ``value`` to the type ``hint`` or raise a ConfigError naming the key."""
    optional, inner = _is_optional(hint)
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none") and optional):
        if optional:
            return None
        raise ConfigError(f"config key '{key}' cannot be empty; give a {type_name(inner)}.")
    hint = inner
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value in typing.get_args(hint):
            return value
        raise ConfigError(f"config key '{key}' expects one of {', '.join(map(repr, typing.get_args(hint)))}, got {short_repr(value)}.")
    if origin in (Union, types.UnionType):  # e.g. float | Literal["auto"]: the first arm that fits
        arms = [a for a in typing.get_args(hint) if a is not type(None)]
        for arm in arms:
            try:
                return _coerce(key, value, arm)
            except ConfigError:
                continue
        names = " or ".join(_arm_name(a) for a in arms)
        raise ConfigError(f"config key '{key}' expects {names}, got {short_repr(value)}.")

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"config key '{key}' expects {expected}, got {short_repr(value)}.")

    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise bad("true or false")
    if hint is int:
        if isinstance(value, bool):
            raise bad("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise bad("an integer")
    if hint is float:
        number = math.nan
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if math.isnan(number):  # nan also fails every range check silently and never equals itself
            raise bad("a number")
        return number
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad("a string")
    if hint is Spec:
        return to_spec(value, key)
    if origin is list:
        (item,) = typing.get_args(hint)
        if item is Spec:
            return to_specs(value, key)
        if isinstance(value, str):
            value = parse(value, f"config key '{key}'")
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    raise bad(type_name(hint))  # pragma: no cover - a field type we do not handle


# ----------------------------------------------------------------------------- merging


def _check_key(key: str, where: str) -> str:
    key = ALIASES.get(key, key)
    if key in LEAF_TYPES:
        return key
    if key in SECTIONS:
        raise ConfigError(f"{where}: '{key}' is a section; set one of its keys, e.g. '{key}.{_first_key(key)}=...'.")
    guess = closest(key, LEAF_TYPES)
    hint = f" Did you mean '{guess}'?" if guess else ""
    raise ConfigError(f"{where}: unknown config key '{key}'.{hint} List them with 'trainwell train --print-keys'.")


def _first_key(section: str) -> str:
    return next(k for k in LEAF_TYPES if k.startswith(section + ".")).split(".", 1)[1]


def _too_big(value: Any, limit: int = MAX_VALUE_ITEMS) -> bool:
    """Whether ``value`` holds more than ``limit`` items, counting each alias as often as it is used;
    stops counting at the limit, so the check itself costs at most ``limit`` steps."""
    stack, seen = [value], 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return False


def _apply(flat: dict[str, Any], updates: dict[str, Any], where: str) -> None:
    for key, value in updates.items():
        key = _check_key(key, where)
        if _too_big(value):
            raise ConfigError(f"{where}: config key '{key}' holds more than {MAX_VALUE_ITEMS:,} values (YAML aliases "
                              "expanding?); write the value out in full.")
        flat[key] = _coerce(key, value, LEAF_TYPES[key])


def _build(cls: type, flat: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        key = prefix + f.name
        kwargs[f.name] = _build(hint, flat, key + ".") if is_section(hint) else flat[key]
    return cls(**kwargs)


def _defaults() -> dict[str, Any]:
    """Every key at its default, typed (flat, dotted keys)."""
    defaults = Config()
    return {key: reduce(getattr, key.split("."), defaults) for key in LEAF_TYPES}


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=0.1"`` -> ``("optim.lr", 0.1)``: the value is read as a YAML flow value, as if it
    followed ``key:`` in a file (a string that is not valid YAML stays the string); the key's type
    then reads a string list or spec with the value grammar."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value (e.g. optim.lr=0.1).")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def preset_names() -> list[str]:
    folder = resources.files("trainwell") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict[str, Any]:
    if name not in preset_names():
        raise ConfigError(unknown_name_message("preset", name, preset_names()))
    text = (resources.files("trainwell") / "presets" / f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


def load_yaml_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist; check the path given to -c/--config.")
    try:
        tree = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        raise ConfigError(f"config file '{path}' is not valid YAML{at}; fix the syntax.") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections (data:, model:, ...).")
    return tree


def resolve(
    overrides: list[str] | dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    base: Config | dict[str, Any] | None = None,
) -> Config:
    """Resolve a typed Config: defaults (or ``base``) < preset < file < overrides.

    ``overrides`` is a list of ``key=value`` strings (CLI) or a mapping of dotted keys (API).
    A ``preset`` key, in the file or the overrides, is applied first.
    """
    flat = _defaults()
    if base is not None:
        _apply(flat, flatten(base.to_dict() if isinstance(base, Config) else base), "base config")
    file_tree = load_yaml_file(config_file) if config_file else {}
    file_flat = flatten(file_tree)
    if isinstance(overrides, dict):
        over_flat = flatten(overrides)
    else:
        over_flat = dict(parse_override(o) for o in (overrides or []))
    preset = over_flat.pop("preset", None) or file_flat.pop("preset", None)
    file_flat.pop("preset", None)
    if preset:
        preset = str(preset)
        _apply(flat, flatten(load_preset(preset)), f"preset '{preset}'")
        flat["preset"] = preset
    _apply(flat, file_flat, f"config file '{config_file}'")
    _apply(flat, over_flat, "override")
    return _build(Config, flat)


def from_dict(tree: dict[str, Any], where: str = "config") -> Config:
    """Rebuild a Config from a saved resolved dict (run directories), validating every key."""
    flat = _defaults()
    _apply(flat, flatten(tree), where)
    return _build(Config, flat)
