"""The value grammar (trainwell.config.values): every old spelling, on the command line and in YAML,
reads through the one parser into typed values; the normal form reads back to the same value;
malformed values are one ConfigError line naming the key and the position."""

import math

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from trainwell.cli import main
from trainwell.config import MAX_VALUE_ITEMS, Config, Spec, from_dict, parse, render, resolve, split_items
from trainwell.config.values import is_name
from trainwell.errors import ConfigError


def _from_yaml(tmp_path, text: str) -> Config:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return resolve([], path)


def _cli_config(capsys, *overrides: str) -> Config:
    """The config the command line resolves, read back from what ``train --print-config`` prints."""
    assert main(["train", *overrides, "--print-config"]) == 0
    return from_dict(yaml.safe_load(capsys.readouterr().out))


# ----------------------------------------------------------------------------- the old spellings


def test_comma_lists_on_the_command_line_and_in_yaml(tmp_path, capsys):
    for cfg in (resolve(["model.channels=8,16,32", "optim.betas=0.5,0.9"]),
                _cli_config(capsys, "model.channels=8,16,32", "optim.betas=0.5,0.9"),
                _from_yaml(tmp_path, "model: {channels: '8,16,32'}\noptim: {betas: '0.5,0.9'}\n"),
                _from_yaml(tmp_path, "model: {channels: [8, 16, 32]}\noptim: {betas: [0.5, 0.9]}\n"),
                resolve(["model.channels=[8,16,32]", "optim.betas=[0.5, 0.9]"])):
        assert cfg.model.channels == [8, 16, 32] and all(type(c) is int for c in cfg.model.channels)
        assert cfg.optim.betas == [0.5, 0.9]
    assert resolve(["model.channels=", "data.classes=[]"]).model.channels == []


ROTATION = Spec("rotation", (), (("degrees", 10), ("p", 0.5)))


def test_augment_name_arg_value_on_the_command_line_and_in_yaml(tmp_path, capsys):
    for cfg in (resolve(["augment=hflip,rotation:degrees=10:p=0.5"]),
                _cli_config(capsys, "augment=hflip,rotation:degrees=10:p=0.5"),
                resolve(["augment=[hflip, {rotation: {degrees: 10, p: 0.5}}]"]),
                _from_yaml(tmp_path, "augment: 'hflip, rotation: degrees = 10 : p = 0.5'\n"),
                _from_yaml(tmp_path, "augment: [hflip, 'rotation:degrees=10:p=0.5']\n"),
                _from_yaml(tmp_path, "augment: [hflip, {rotation: {degrees: 10, p: 0.5}}]\n"),
                _from_yaml(tmp_path, "augment: [{hflip: null, rotation: {degrees: 10, p: 0.5}}]\n")):
        assert cfg.augment == [Spec("hflip"), ROTATION]
        assert cfg.augment == ["hflip", "rotation:degrees=10:p=0.5"]  # a spec equals its normal text


def test_augment_argument_values_are_typed_by_the_grammar_not_yaml():
    # YAML 1.1 reads 1e-3 as a string; the grammar reads it as the number it looks like.
    (noise, crop) = resolve(["augment=noise:std=1e-3,crop:mode=reflect:padding=2"]).augment
    assert noise.kwargs == (("std", 0.001),) and type(noise.kwargs[0][1]) is float
    assert crop.kwargs == (("mode", "reflect"), ("padding", 2))
    from trainwell.data.augment import parse_augment

    assert parse_augment([noise, crop]) == [("noise", {"std": 0.001, "p": 1.0}),
                                            ("crop", {"fraction": 0.125, "padding": 2, "mode": "reflect", "p": 1.0})]


def test_activation_name_value_on_the_command_line_and_in_yaml(tmp_path, capsys):
    from trainwell.nn import build_activation

    for cfg in (resolve(["model.activation=leaky_relu:0.2"]), _cli_config(capsys, "model.activation=leaky_relu:0.2"),
                _from_yaml(tmp_path, "model: {activation: 'leaky_relu:0.2'}\n"),
                _from_yaml(tmp_path, "model: {activation: leaky_relu:0.2}\n")):
        assert cfg.model.activation == Spec("leaky_relu", (0.2,)) == "leaky_relu:0.2"
        assert build_activation(cfg.model.activation).negative_slope == 0.2
    # The same grammar gives activations keyword arguments and YAML mappings.
    for cfg in (resolve(["model.activation=elu:alpha=0.5"]), _from_yaml(tmp_path, "model: {activation: {elu: {alpha: 0.5}}}\n")):
        assert cfg.model.activation == Spec("elu", (), (("alpha", 0.5),))
        assert build_activation(cfg.model.activation).alpha == 0.5


def test_vary_lists_are_cut_by_the_grammar():
    from trainwell.experiments.compare import parse_vary

    key, values = parse_vary("model.channels=[16,32],[32,64]")
    assert [resolve([f"{key}={v}"]).model.channels for v in values] == [[16, 32], [32, 64]]
    assert parse_vary("model.activation=relu,leaky_relu:0.1") == ("model.activation", ["relu", "leaky_relu:0.1"])
    assert parse_vary('data.path="a,b.npz",c.npz') == ("data.path", ['"a,b.npz"', "c.npz"])
    assert resolve(['data.path="a,b.npz"']).data.path == "a,b.npz"
    assert parse_vary("augment=[hflip, {rotation: {degrees: 5}}],[]")[1] == ["[hflip, {rotation: {degrees: 5}}]", "[]"]


def test_the_normal_form_is_written_to_config_yaml_and_reads_back(tmp_path):
    cfg = resolve(["augment=[hflip, {rotation: {degrees: 10, p: 0.5}}]", "model.activation=leaky_relu:0.2"])
    saved = yaml.safe_load(cfg.to_yaml())
    assert saved["augment"] == ["hflip", "rotation:degrees=10:p=0.5"]
    assert saved["model"]["activation"] == "leaky_relu:0.2"
    assert from_dict(saved) == cfg


def test_a_run_folder_written_before_the_grammar_still_loads(tmp_path):
    """Old config.yaml files hold augment ops as {name: {arg: value}} mappings: they load to the
    same config as the normal form."""
    from trainwell.train.load import read_config

    tree = yaml.safe_load(resolve([]).to_yaml())
    tree["augment"] = [{"crop": {"padding": 4}}, "hflip"]
    tree["model"]["activation"] = "leaky_relu:0.2"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    cfg = read_config(tmp_path)
    assert cfg == resolve(["augment=crop:padding=4,hflip", "model.activation=leaky_relu:0.2"])
    assert cfg.augment[0] == Spec("crop", (), (("padding", 4),))


# ----------------------------------------------------------------------------- the parser itself


def test_parse_reads_each_form():
    assert parse("") == []
    assert parse("8, 16 ,32") == [8, 16, 32]
    assert parse("[16,32],[32,64]") == [[16, 32], [32, 64]]
    assert parse("[]") == [] and parse("[[]]") == [[]]
    assert parse("relu") == "relu"
    assert parse("elu:") == Spec("elu", ("",))
    assert parse(" elu : 0.5 ") == Spec("elu", (0.5,))
    assert parse("a:1:k=v:q='it''s'") == Spec("a", (1,), (("k", "v"), ("q", "it's")))
    assert parse('"x,y:z"') == "x,y:z" and parse(r'"\u00e9\n"') == "é\n"
    for text, value in (("1", 1), ("-2", -2), ("1.5", 1.5), ("1e-3", 0.001), ("true", True), ("False", False),
                        ("null", None), ("~", None), ("inf", math.inf), ("-inf", -math.inf), ("it's", "it's")):
        got = parse(text)
        assert got == value and type(got) is type(value), text
    assert math.isnan(parse("nan"))


@pytest.mark.parametrize("override, problem, position", [
    ("model.channels=[8,16", "unclosed '['", 1),
    ("model.channels=8,,16", "empty item", 3),
    ("model.channels=8,16]", "unexpected ']'", 5),
    ("augment=rotation:degrees=10:degrees=5", "argument 'degrees' given twice", 21),
    ("augment=noise:p=0.1:2", "a positional argument after a keyword one", 13),
    ("augment=noise:std=\"0.1", "unclosed \"", 11),
    ("augment=noise:1=2", "1 is not an argument name", 7),
    ("augment=a b:x", "'a b' is not a name", 1),
    ("model.activation=elu:[1]", "unexpected '['", 5),
    ("augment=noise:std={a}", "unexpected '{'", 11),
    ("augment=noise:q=\"\\x\"", "a bad escape", 9),
])
def test_malformed_values_are_one_line_naming_the_key_and_the_position(override, problem, position):
    key = override.split("=", 1)[0]
    with pytest.raises(ConfigError) as info:
        resolve([override])
    message = str(info.value)
    assert f"config key '{key}'" in message and problem in message and f"at position {position} of" in message
    assert "\n" not in message


@pytest.mark.parametrize("override, says", [
    ("model.activation=relu,tanh", "expects a name with optional arguments"),
    ("model.activation=3", "expects a name with optional arguments"),
    ("augment=[[hflip]]", "augment entries are op names"),
    ("augment=[{noise: {std: [1, 2]}}]", "argument 'std' takes one value"),
    ("augment=[{noise: [1]}]", "arguments must be a mapping"),
])
def test_values_of_the_wrong_shape_are_refused_by_the_config_layer(override, says):
    with pytest.raises(ConfigError, match=says) as info:
        resolve([override])
    assert "\n" not in str(info.value)


def test_registry_layers_check_names_and_arguments_of_the_typed_specs():
    from trainwell.data.augment import parse_augment
    from trainwell.nn import parse_activation

    cfg = resolve(["augment=rotation:10", "model.activation=relu:slope=0.1"])  # syntax fine: the config accepts
    with pytest.raises(ConfigError, match="arguments go as name:arg=value"):
        parse_augment(cfg.augment)
    with pytest.raises(ConfigError, match="relu takes no arguments"):
        parse_activation(cfg.model.activation)
    assert parse_activation(Spec("leaky_relu", (), (("slope", 0.3),))) == ("leaky_relu", {"slope": 0.3})
    with pytest.raises(ConfigError, match="each once"):
        parse_activation("leaky_relu:0.1:slope=0.2")


def test_values_are_bounded():
    for text, says in ((",".join(["1"] * (MAX_VALUE_ITEMS + 1)), "more than 10,000 values"),
                       ("[" * 40 + "]" * 40, "nested")):
        with pytest.raises(ConfigError, match=says):
            resolve({"model.channels": text})  # a string: the grammar reads it
        with pytest.raises(ConfigError, match=says):
            split_items(text, "--vary model.channels")


def test_split_items_keeps_brackets_and_quotes_whole():
    assert split_items(" a , [b,c] ,'d,e', {f: [g, h]} ") == ["a", "[b,c]", "'d,e'", "{f: [g, h]}"]
    assert split_items("it's,x") == ["it's", "x"]
    for bad, says in (("a,,b", "empty item at position 3"), ("[a", "unclosed '['"), ("a]", "unmatched ']'"),
                      ("'a", "unclosed '")):
        with pytest.raises(ConfigError) as info:
            split_items(bad, "--vary k")
        assert says in str(info.value) and str(info.value).startswith("--vary k: ")


# ----------------------------------------------------------------------------- render -> parse


def _typed(value):
    """The value with every scalar tagged by its type, so 1, 1.0 and True stay apart."""
    if isinstance(value, list):
        return ["list", [_typed(v) for v in value]]
    if isinstance(value, Spec):
        return ["spec", value.name, _typed(list(value.args)), [[k, _typed(v)] for k, v in value.kwargs]]
    return [type(value).__name__, value]


names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,8}", fullmatch=True).filter(is_name)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=False),
                    st.text(max_size=10), st.sampled_from(["1", "true", "null", "inf", "a b", "it's", " x", ""]))
specs = st.builds(Spec, names, st.lists(scalars, max_size=3).map(tuple),
                  st.dictionaries(names, scalars, max_size=3).map(lambda d: tuple(d.items())))
#: A spec without arguments is written as its bare name, which reads back as that string: the key's
#: type (``model.activation``, ``augment``) makes it a Spec again (test_augment_specs_round_trip...).
specs_with_args = specs.filter(lambda s: s.args or s.kwargs)
values = st.recursive(st.one_of(scalars, specs_with_args), lambda inner: st.lists(inner, max_size=4), max_leaves=12)


@given(values)
def test_render_then_parse_gives_back_the_value(value):
    text = render(value)
    assert _typed(parse(text)) == _typed(value), text
    assert render(parse(text)) == text  # the normal form is a fixed point


@given(st.lists(specs, max_size=4))
def test_augment_specs_round_trip_through_config_yaml(ops):
    cfg = Config(augment=list(ops))
    assert from_dict(yaml.safe_load(cfg.to_yaml())).augment == ops


def test_nan_is_refused_for_number_keys():
    """nan passes every range check (all comparisons are false) and never equals itself, so a run
    folder's config would not read back equal: it is refused where it is typed."""
    for value in ("nan", "NAN", float("nan")):
        with pytest.raises(ConfigError, match="config key 'train.grad_clip' expects a number"):
            resolve({"train.grad_clip": value})
    assert resolve({"train.grad_clip": "inf"}).train.grad_clip == math.inf
