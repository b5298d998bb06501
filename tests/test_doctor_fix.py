"""doctor --fix: findings become config changes that remove them when diagnosed again."""

import json

import pytest

from trainwell.config import resolve
from trainwell.diagnose.doctor import diagnose_config
from trainwell.diagnose.fix import matched_init, propose_fix
from trainwell.diagnose.report import Finding, Report
from trainwell.errors import ConfigError

TINY_INIT = ["model.name=mlp", "model.norm=none", "model.depth=6", "model.width=64", "init.scheme=normal",
             "init.std=0.01"]


def report_of(*codes):
    return Report([Finding(code, "warning", [], {}, "fix") for code in codes])


def test_matched_init_follows_the_activation():
    assert matched_init("relu") == "kaiming_normal" and matched_init("leaky_relu:0.2") == "kaiming_normal"
    assert matched_init("tanh") == "xavier_normal" and matched_init("selu") == "lecun_normal"


@pytest.mark.parametrize("overrides, codes, expected", [
    (["init.scheme=normal"], ["vanishing-activations"], {"init.scheme": "kaiming_normal"}),
    (["model.norm=none"], ["exploding-activations"], {"model.norm": "batch"}),
    (["model.activation=sigmoid", "model.norm=none"], ["saturation"],
     {"model.activation": "relu", "init.scheme": "kaiming_normal"}),
    (["model.activation=relu"], ["dead-units"], {"model.activation": "leaky_relu:0.1"}),
    (["data.preprocess=none"], ["unnormalized-input"], {"data.preprocess": "standardize"}),
    (["optim.lr=0.5"], ["update-ratio-high"], {"optim.lr": 0.05}),
    (["optim.lr=0.001"], ["lr-too-low"], {"optim.lr": 0.01}),
    (["init.scheme=normal", "optim.lr=0.001"], ["vanishing-gradients", "update-ratio-low"],
     {"init.scheme": "kaiming_normal"}),
    (["model.dropout=0"], ["overfitting"], {"model.dropout": 0.3}),
    # Xavier/orthogonal at their papers' gain 1 on ReLU: the init is the cause, not the missing norm.
    (["model.norm=none", "init.scheme=xavier_normal"], ["vanishing-activations"], {"init.scheme": "kaiming_normal"}),
    (["model.norm=none", "init.scheme=orthogonal", "model.activation=leaky_relu:0.2"], ["vanishing-gradients"],
     {"init.scheme": "kaiming_normal"}),
    # ... but with the activation's gain (auto, or a number of one's own), or on tanh, the norm is proposed.
    (["model.norm=none", "init.scheme=xavier_normal", "init.gain=auto"], ["vanishing-activations"],
     {"model.norm": "batch"}),
    (["model.norm=none", "init.scheme=xavier_normal", "init.gain=1.4"], ["vanishing-activations"],
     {"model.norm": "batch"}),
    (["model.norm=none", "init.scheme=xavier_normal", "model.activation=tanh"], ["vanishing-activations"],
     {"model.norm": "batch"}),
    (["model.norm=none", "init.scheme=kaiming_normal"], ["vanishing-activations"], {"model.norm": "batch"}),
    (["model.norm=none", "init.scheme=lecun_normal"], ["vanishing-activations"], {"model.norm": "batch"}),
    ([], [], {}),
])
def test_each_finding_maps_to_its_remedy(overrides, codes, expected):
    changes = propose_fix(resolve(overrides), report_of(*codes))
    assert changes.keys() == expected.keys()
    for key, value in expected.items():
        assert changes[key] == pytest.approx(value) if isinstance(value, float) else changes[key] == value


def test_fixed_config_no_longer_has_the_finding():
    cfg = resolve(TINY_INIT)
    before = diagnose_config(cfg, batch_size=128)
    assert "vanishing-activations" in before.codes()
    changes = propose_fix(cfg, before)
    after = diagnose_config(resolve([f"{k}={v}" for k, v in changes.items()], base=cfg), batch_size=128)
    assert "vanishing-activations" not in after.codes()


def test_fix_of_xavier_on_a_deep_relu_net_removes_the_collapse():
    # The lecture's demonstration (He et al. 2015): 30 ReLU layers, no norm, Xavier's gain 1.
    cfg = resolve(["model.name=mlp", "model.norm=none", "model.depth=30", "model.width=128",
                   "model.activation=relu", "init.scheme=xavier_normal"])
    before = diagnose_config(cfg, batch_size=128)
    assert "vanishing-activations" in before.codes()
    changes = propose_fix(cfg, before)
    assert changes["init.scheme"] == "kaiming_normal"
    after = diagnose_config(resolve([f"{k}={v}" for k, v in changes.items()], base=cfg), batch_size=128)
    assert "vanishing-activations" not in after.codes()


def test_fix_command_shows_before_after_and_applies(tmp_path, capsys):
    from trainwell.cli import main

    applied = tmp_path / "fixed.yaml"
    code = main(["doctor", "--fix", *TINY_INIT, "--json", "--apply", str(applied), "--out", str(tmp_path / "o")])
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert result["changes"]["init.scheme"] == "kaiming_normal"
    assert "vanishing-activations" in [f["code"] for f in result["before"]]
    assert "vanishing-activations" not in [f["code"] for f in result["after"]]
    assert resolve([], config_file=applied).init.scheme == "kaiming_normal"
    assert (tmp_path / "o" / "config.fixed.yaml").is_file()


def test_apply_never_overwrites_silently_and_needs_fix(tmp_path):
    from trainwell.cli import build_parser
    from trainwell.cli.doctor import cmd_doctor

    existing = tmp_path / "mine.yaml"
    existing.write_text("optim: {lr: 0.1}\n")
    args = build_parser().parse_args(["doctor", "--fix", *TINY_INIT, "--apply", str(existing)])
    with pytest.raises(ConfigError, match="exists"):
        cmd_doctor(args)
    assert existing.read_text() == "optim: {lr: 0.1}\n"
    with pytest.raises(ConfigError, match="--fix"):
        cmd_doctor(build_parser().parse_args(["doctor", "--apply", str(tmp_path / "x.yaml")]))
