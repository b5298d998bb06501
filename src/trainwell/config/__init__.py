"""Typed configuration: the schema (:mod:`.schema`), its resolution from presets, files and overrides
(:mod:`.resolution`), and the one grammar of list and ``name:args`` values (:mod:`.values`).

Every name callers use is importable from here::

    from trainwell.config import Config, resolve
    cfg = resolve(["preset=mnist1d", "optim.lr=0.05", "model.activation=leaky_relu:0.2"])
    cfg.model.activation  # Spec('leaky_relu', (0.2,)), equal to "leaky_relu:0.2"
"""

from trainwell.config.resolution import (
    from_dict,
    load_preset,
    load_yaml_file,
    parse_override,
    preset_names,
    resolve,
)
from trainwell.config.schema import (
    ALIASES,
    LEAF_TYPES,
    SECTIONS,
    Config,
    DataConfig,
    FinetuneConfig,
    InitConfig,
    LossConfig,
    MixConfig,
    ModelConfig,
    OptimConfig,
    RegConfig,
    SchedConfig,
    TrainConfig,
    flatten,
    key_table,
)
from trainwell.config.values import MAX_VALUE_ITEMS, Spec, parse, render, split_items, to_spec, to_specs

__all__ = [
    "ALIASES", "LEAF_TYPES", "MAX_VALUE_ITEMS", "SECTIONS", "Config", "DataConfig", "FinetuneConfig", "InitConfig",
    "LossConfig", "MixConfig", "ModelConfig", "OptimConfig", "RegConfig", "SchedConfig", "Spec", "TrainConfig",
    "flatten", "from_dict", "key_table", "load_preset", "load_yaml_file", "parse", "parse_override", "preset_names",
    "render", "resolve", "split_items", "to_spec", "to_specs",
]
