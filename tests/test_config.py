"""Config resolution: precedence, typing, rejection of unknown keys with the closest valid key."""

import pytest
import yaml

from trainwell.config import ALIASES, Config, from_dict, key_table, parse_override, preset_names, resolve
from trainwell.errors import ConfigError

CONTRACT_KEYS = (
    "data.name data.path data.val_fraction data.preprocess model.name model.depth model.width "
    "model.channels model.activation model.norm model.dropout init.scheme init.std reg.l1 reg.l2 "
    "optim.name optim.lr optim.momentum optim.weight_decay sched.name sched.warmup_epochs train.epochs "
    "train.batch_size train.seed train.device augment mix.mixup_alpha mix.cutmix_alpha loss.label_smoothing"
).split()


def test_every_public_contract_key_is_settable():
    keys = {row[0] for row in key_table()}
    assert set(CONTRACT_KEYS) <= keys


def test_defaults_resolve_to_dataclass_defaults():
    assert resolve([]).to_dict() == Config().to_dict()


def test_overrides_beat_file_beat_preset_beat_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"preset": "mnist1d", "optim": {"lr": 0.3}, "train": {"epochs": 7}}))
    preset = resolve(["preset=mnist1d"])
    cfg = resolve(["train.epochs=3"], config_file=path)
    assert cfg.data.name == "mnist1d" == preset.data.name  # from the preset
    assert cfg.optim.lr == 0.3  # file beats preset
    assert cfg.train.epochs == 3  # override beats file
    assert cfg.preset == "mnist1d"


def test_override_values_are_typed():
    cfg = resolve(["optim.lr=1e-3", "model.channels=8,16,32", "train.progress=false", "data.path=null",
                   "augment=translation,noise", "model.width=64"])
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.model.channels == [8, 16, 32]
    assert cfg.train.progress is False
    assert cfg.data.path is None
    assert cfg.augment == ["translation", "noise"]
    assert cfg.model.width == 64 and isinstance(cfg.model.width, int)


def test_int_given_to_float_key_becomes_float():
    assert resolve(["optim.lr=1"]).optim.lr == 1.0
    assert isinstance(resolve(["optim.lr=1"]).optim.lr, float)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("optim.lrr=0.1", "Did you mean 'optim.lr'"),
        ("model.widht=3", "Did you mean 'model.width'"),
        ("train.epochs=1.5", "expects an integer"),
        ("train.epochs=ten", "expects an integer"),
        ("optim.lr=fast", "expects a number"),
        ("train.progress=maybe", "expects true or false"),
        ("model.channels=8,x", "model.channels[1]"),
        ("optim=3", "is a section"),
        ("noequals", "key=value"),
        ("preset=nosuch", "unknown preset"),
    ],
)
def test_bad_overrides_are_rejected_with_a_hint(override, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        resolve([override])
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: 0.1\n  momentun: 0.9\n")
    with pytest.raises(ConfigError) as info:
        resolve([], config_file=path)
    assert str(path) in str(info.value) and "optim.momentum" in str(info.value)


def test_invalid_yaml_and_missing_file_are_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve([], config_file=bad)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve([], config_file=tmp_path / "missing.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        resolve([], config_file=listy)


def test_aliases_map_to_their_new_key():
    for old, new in ALIASES.items():
        section, key = new.split(".")
        value = 0.123
        cfg = resolve([f"{old}={value}"])
        assert getattr(getattr(cfg, section), key) == value


def test_resolved_config_round_trips_through_yaml():
    cfg = resolve(["preset=mnist1d", "optim.lr=0.2", "augment=noise"])
    again = from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


def test_every_preset_resolves():
    names = preset_names()
    assert "digits" in names and "mnist1d" in names
    for name in names:
        assert resolve([f"preset={name}"]).preset == name


def test_parse_override_keeps_strings_with_equals():
    assert parse_override("data.path=a=b.npz") == ("data.path", "a=b.npz")


def test_api_dict_overrides_accept_nested_and_dotted():
    cfg = resolve({"optim": {"lr": 0.5}, "train.epochs": 2})
    assert cfg.optim.lr == 0.5 and cfg.train.epochs == 2


def test_every_preset_names_valid_ops_and_registry_entries():
    from trainwell.data import PREPROCESSORS
    from trainwell.data.augment import parse_augment
    from trainwell.data.sources import DATASETS
    from trainwell.nn import MODELS
    from trainwell.train.optim import OPTIMIZERS, SCHEDULES

    for name in preset_names():
        cfg = resolve([f"preset={name}"])
        parse_augment(cfg.augment)
        for registry, value in ((DATASETS, cfg.data.name), (MODELS, cfg.model.name), (OPTIMIZERS, cfg.optim.name),
                                (SCHEDULES, cfg.sched.name), (PREPROCESSORS, cfg.data.preprocess)):
            registry.entry(value)
