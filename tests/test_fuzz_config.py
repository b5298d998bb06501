"""Fuzzing the config layer: any override string, YAML file or dict either resolves or is one ConfigError.

The strategies are built from the real keys (``key_table``) so most examples reach the type
coercion and range checks, not just the unknown-key error; a resolved config must also survive its
own round trip (``to_yaml`` -> ``from_dict``), as a run folder's config.yaml does.
"""

import tempfile
from pathlib import Path

import yaml
from hypothesis import given
from hypothesis import strategies as st

from trainwell.config import Config, from_dict, key_table, resolve
from trainwell.errors import TrainwellError

KEYS = [row[0] for row in key_table()]
DEFAULTS = {row[0]: row[2] for row in key_table()}

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["auto", "none", "relu", "[1,2]", "1e-3", "-0", "nan", "inf", "1,2", ""]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=20), st.sampled_from(["preset", "model", "train.", ".x"]))


def _text(value):
    """How a value is typed on the command line (YAML flow style, or a raw string)."""
    return value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _resolves_or_config_error(fn):
    try:
        cfg = fn()
    except TrainwellError:
        return None
    assert isinstance(cfg, Config)
    assert from_dict(yaml.safe_load(cfg.to_yaml())) == cfg  # what a run folder stores reads back the same
    return cfg


@given(st.lists(st.tuples(keys, values), max_size=4), st.booleans())
def test_override_strings_resolve_or_raise_one_config_error(pairs, with_equals):
    overrides = [f"{k}={_text(v)}" if with_equals else f"{k}{_text(v)}" for k, v in pairs]
    _resolves_or_config_error(lambda: resolve(overrides))


@given(st.dictionaries(keys, values, max_size=4))
def test_override_dicts_resolve_or_raise_one_config_error(tree):
    _resolves_or_config_error(lambda: resolve(tree))


@given(st.one_of(st.binary(max_size=300), st.dictionaries(keys, values, max_size=4).map(
    lambda t: yaml.safe_dump(t).encode()), values.map(lambda v: yaml.safe_dump(v).encode())))
def test_config_files_resolve_or_raise_one_config_error(content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cfg.yaml"
        path.write_bytes(content)
        _resolves_or_config_error(lambda: resolve([], path))
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["cfg.yaml"]  # reading writes nothing


@given(st.sampled_from(KEYS), values)
def test_every_key_takes_its_default_and_refuses_cleanly(key, value):
    assert resolve([f"{key}={_text(DEFAULTS[key])}"]) == resolve([]) or DEFAULTS[key] is None
    _resolves_or_config_error(lambda: resolve({key: value}))


def _alias_bomb(levels: int = 7, width: int = 8) -> str:
    """A few hundred bytes of YAML naming width**levels items through aliases (a 'billion laughs')."""
    parts = [f"&a0 [{','.join(['1'] * width)}]"]
    parts += [f"&a{i} [{','.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


def test_a_yaml_alias_bomb_is_refused_before_anything_walks_it(tmp_path):
    import time

    import pytest

    from trainwell.errors import ConfigError

    bomb = _alias_bomb()
    assert len(bomb) < 400
    for attempt in (lambda: resolve([f"augment={bomb}"]), lambda: resolve([f"model.name={bomb}"])):
        start = time.perf_counter()
        with pytest.raises(ConfigError, match="more than 10,000 values") as info:
            attempt()
        assert time.perf_counter() - start < 1.0 and len(str(info.value)) < 200
    path = tmp_path / "bomb.yaml"
    path.write_text(f"data:\n  classes: {bomb}\n")
    with pytest.raises(ConfigError, match=r"config file .*data.classes"):
        resolve([], path)


def test_error_lines_show_a_long_value_cut_short():
    import pytest

    from trainwell.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        resolve({"model.name": list(range(5000))})
    assert len(str(info.value)) < 200 and "..." in str(info.value)


@given(st.lists(st.text(alphabet="ab=,[] .x1", max_size=16), min_size=1, max_size=3))
def test_vary_specs_parse_or_raise_one_config_error(specs):
    """compare --vary KEY=a,b: what a spec parses to either builds a grid of resolvable cells or is refused."""
    from trainwell.experiments.compare import grid, parse_vary

    try:
        cells = grid([parse_vary(s) for s in specs])
    except TrainwellError:
        return
    assert len(cells) >= 1
    for cell in cells:
        _resolves_or_config_error(lambda: resolve(cell.args()))
