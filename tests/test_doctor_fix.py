"""doctor --fix: findings become config changes that remove them when diagnosed again."""

import json

import pytest

from trainwell.config import resolve
from trainwell.diagnose.doctor import diagnose_config
from trainwell.diagnose.fix import fix_loop, matched_init, plan_fix, propose_fix
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


# ----------------------------------------------------------------------------- each fix at its thresholds

EPS = 1e-6  # relative: just below / just above a threshold
TARGET = 0.0125  # the update ratio a corrected lr aims at: a quarter of the 5e-2 warning (docs/doctor.md)


def below(x):
    return x * (1 - EPS)


def above(x):
    return x * (1 + EPS)


def finding(code, severity="warning", message="", **evidence):
    return Finding(code, severity, [], evidence, "fix", message)


def plan(overrides, *findings):
    return {c.key: c.value for c in plan_fix(resolve(overrides), Report(list(findings)))}


@pytest.mark.parametrize("median", [above(0.05), 0.72, 8.0])
def test_a_high_update_ratio_scales_the_lr_to_bring_the_measured_ratio_to_the_target(median):
    (change,) = plan_fix(resolve(["optim.lr=5"]), Report([finding("update-ratio-high", "error", median=median)]))
    assert change.key == "optim.lr" and change.value == pytest.approx(5 * TARGET / median, rel=2e-3)
    assert f"{median:.3g}" in change.reason and "0.0125" in change.reason and change.code == "update-ratio-high"


@pytest.mark.parametrize("median", [below(1e-4), 1e-6])
def test_a_low_update_ratio_raises_the_lr_the_same_way(median):
    assert plan(["optim.lr=0.001"], finding("update-ratio-low", median=median))["optim.lr"] == \
        pytest.approx(0.001 * TARGET / median, rel=2e-3)


def test_lr_too_high_scales_from_its_ratio_only_above_the_band_else_moves_10x():
    assert plan(["optim.lr=2"], finding("lr-too-high", median_update_ratio=above(0.05)))["optim.lr"] == \
        pytest.approx(2 * TARGET / 0.05, rel=2e-3)
    assert plan(["optim.lr=2"], finding("lr-too-high", median_update_ratio=below(0.05))) == {"optim.lr": 0.2}
    assert plan(["optim.lr=2"], finding("lr-too-high")) == {"optim.lr": 0.2}
    assert plan(["optim.lr=1e-5"], finding("lr-too-low", median_update_ratio=above(1e-4))) == {"optim.lr": 1e-4}


def test_no_lr_change_without_a_gradient_or_an_lr_to_scale():
    assert plan(["optim.lr=0.05"], finding("update-ratio-low", median=0.0)) == {}  # no weight moved: no gradient
    assert plan(["optim.lr=auto"], finding("update-ratio-high", median=0.5)) == {}
    # A non-finite loss at init is no step's fault; a loss that diverged in training is.
    assert plan(["optim.lr=0.05"], finding("divergence", "error", loss="nan")) == {}
    assert plan(["optim.lr=0.05"], finding("divergence", "error", nonfinite_train_loss_epoch=2)) == {"optim.lr": 0.005}
    assert plan(["optim.lr=0.05"], finding("divergence", "error", nonfinite_train_loss_epoch=1,
                                           input_nonfinite=True)) == {}


def dead(*means, std=0.5):
    rows = {f"r{i}": {"layer": f"h{i}", "mean": m, "std": std} for i, m in enumerate(means)}
    return finding("dead-units", "error", "100% of the units of r0 never fire", preactivation=rows)


@pytest.mark.parametrize("bias, means, expected", [
    (-2.0, (-2.0,), {"init.bias": 0.0}),
    (-EPS, (-EPS,), {"init.bias": 0.0}),
    (-2.0, (-2.0, -0.3), {"init.bias": 0.0}),
    # Some dead layer's pre-activations are not below 0 on average: the bias does not explain the deaths.
    (-2.0, (-2.0, EPS), {"model.activation": "leaky_relu:0.1"}),
    (-2.0, (), {"model.activation": "leaky_relu:0.1"}),  # no pre-activation recorded (a norm layer in between)
    (0.0, (-2.0,), {"model.activation": "leaky_relu:0.1"}),
    (EPS, (-2.0,), {"model.activation": "leaky_relu:0.1"}),
])
def test_dead_units_reset_the_bias_when_it_holds_the_pre_activations_below_zero(bias, means, expected):
    assert plan(["model.norm=none", f"init.bias={bias}"], dead(*means)) == expected


def test_the_bias_fix_names_the_evidence():
    (change,) = plan_fix(resolve(["model.norm=none", "init.bias=-2"]), Report([dead(-1.97, -2.0)]))
    assert "mean -1.97 (std 0.5) at h0" in change.reason and "init.bias=-2" in change.reason


def test_dead_units_from_a_too_high_lr_get_the_lr_fix_and_keep_their_activation():
    assert plan(["optim.lr=0.5"], dead(-1.0), finding("update-ratio-high", median=0.1)) == {"optim.lr": 0.0625}
    assert plan(["model.activation=elu"], dead(-1.0)) == {}  # elu cannot die: nothing of this rule applies


def test_a_round_that_changes_the_input_init_or_activation_leaves_the_lr_to_the_next():
    high = finding("update-ratio-high", median=0.5)
    assert plan(["data.preprocess=none", "optim.lr=5"], finding("unnormalized-input"), high) == \
        {"data.preprocess": "standardize"}
    assert plan(["init.bias=-2", "model.norm=none"], dead(-2.0), finding("update-ratio-low", median=0.0)) == \
        {"init.bias": 0.0}
    assert plan(["init.scheme=normal"], finding("vanishing-activations"), high) == {"init.scheme": "kaiming_normal"}
    assert plan(["optim.lr=5"], high, finding("overfitting")) == {"optim.lr": 0.125, "model.dropout": 0.3}


def test_saturated_sigmoids_become_relus_and_saturated_tanh_keeps_tanh_with_its_init_matched():
    sat = finding("saturation", "error", preactivation={"a0": {"layer": "h0", "mean": 0.1, "std": 8.3}})
    assert plan(["model.activation=sigmoid", "init.scheme=normal"], sat) == \
        {"model.activation": "relu", "init.scheme": "kaiming_normal"}
    assert plan(["model.activation=tanh", "init.scheme=normal"], sat) == {"init.scheme": "xavier_normal"}
    assert plan(["model.activation=tanh", "init.scheme=xavier_normal", "model.norm=none"], sat) == \
        {"model.norm": "batch"}
    (change, _) = plan_fix(resolve(["model.activation=sigmoid"]), Report([sat]))
    assert "8.3" in change.reason


def test_info_findings_are_not_fixed():
    assert plan(["data.preprocess=none"], finding("unnormalized-input", "info")) == {}


# ----------------------------------------------------------------------------- the rounds


def diagnosing(rule):
    """A diagnose(cfg) that returns ``rule(cfg)``'s findings and counts its calls."""
    def diagnose(cfg):
        diagnose.calls += 1
        return Report(list(rule(cfg)))

    diagnose.calls = 0
    return diagnose


@pytest.mark.parametrize("rounds", [1, 2, 5])
def test_the_rounds_are_bounded_and_the_could_not_line_says_what_is_left(rounds):
    diagnose = diagnosing(lambda cfg: [finding("update-ratio-high", "error", median=1.0)])  # never satisfied
    outcome = fix_loop(resolve(["optim.lr=1"]), diagnose, max_rounds=rounds)
    assert len(outcome.rounds) == rounds and diagnose.calls == rounds + 1
    assert not outcome.clean and outcome.stopped == "rounds"
    plural = "s" if rounds > 1 else ""
    assert outcome.line() == ("doctor --fix: could not clear the findings "
                              f"(still flagged after {rounds} round{plural}); left: update-ratio-high (error).")
    assert outcome.config.optim.lr == pytest.approx(TARGET ** rounds, rel=1e-2)  # each round applied its change


def test_the_rounds_go_on_until_the_check_is_clean():
    def rule(cfg):
        if cfg.data.preprocess == "none":
            yield finding("unnormalized-input")
            yield finding("update-ratio-high", median=5.0)  # inflated by the raw input
        elif cfg.optim.lr / 10 > 0.05:  # the ratio is lr / 10 once the input is standardised
            yield finding("update-ratio-high", median=cfg.optim.lr / 10)

    diagnose = diagnosing(rule)
    outcome = fix_loop(resolve(["data.preprocess=none", "optim.lr=5"]), diagnose)
    assert outcome.clean and len(outcome.rounds) == 2 and diagnose.calls == 3
    assert [[c.key for c in r.changes] for r in outcome.rounds] == [["data.preprocess"], ["optim.lr"]]
    assert outcome.changes() == {"data.preprocess": "standardize", "optim.lr": 0.125}
    assert outcome.rounds[1].old_value("optim.lr") == 5.0
    assert outcome.line() == ("doctor --fix: clean after 2 rounds (no warning or error): "
                              "data.preprocess=standardize optim.lr=0.125")


def test_it_stops_when_no_change_applies_or_a_change_would_return_to_a_config_tried():
    stuck = fix_loop(resolve([]), diagnosing(lambda cfg: [finding("divergence", "error", loss="nan")]))
    assert stuck.stopped == "no-change" and stuck.rounds == []
    assert stuck.line() == ("doctor --fix: could not clear the findings (no change addresses the remaining findings); "
                            "left: divergence (error).")

    def seesaw(cfg):  # 10x down, then 10x up: back where it started
        return [finding("lr-too-high")] if cfg.optim.lr > 0.01 else [finding("lr-too-low")]

    back = fix_loop(resolve(["optim.lr=0.05"]), diagnosing(seesaw))
    assert back.stopped == "repeat" and len(back.rounds) == 1 and back.config.optim.lr == pytest.approx(0.005)
    assert "return to a config already tried" in back.line() and back.line().endswith("left: lr-too-low (warning).")


def test_a_clean_config_takes_no_round():
    outcome = fix_loop(resolve([]), diagnosing(lambda cfg: [finding("unnormalized-input", "info")]))
    assert outcome.clean and outcome.rounds == []
    assert outcome.line() == "doctor --fix: nothing to fix: no warning or error."
    with pytest.raises(ValueError, match="max_rounds"):
        fix_loop(resolve([]), diagnosing(lambda cfg: []), max_rounds=0)


DEAD_AND_FAST = ["model.name=mlp", "model.norm=none", "model.width=64", "init.bias=-2", "optim.lr=5"]


def test_fix_command_prints_each_round_and_exits_by_the_last_check(tmp_path, capsys):
    from trainwell.cli import main

    assert main(["doctor", "--fix", "--strict", *DEAD_AND_FAST, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "round 1:\n  init.bias: -2.0 -> 0.0\n    why (dead-units):" in out
    assert "round 2:\n  optim.lr: 5.0 -> 0.105\n    why (update-ratio-high): the median update ratio is" in out
    assert "check after round 1: update-ratio-high (error)" in out
    assert "doctor --fix: clean after 2 rounds (no warning or error): init.bias=0.0 optim.lr=0.105" in out
    applied = tmp_path / "one.yaml"
    code = main(["doctor", "--fix", "--strict", "--rounds", "1", *DEAD_AND_FAST, "--apply", str(applied),
                 "--out", str(tmp_path / "b"), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 1 and not result["clean"] and result["stopped"] == "rounds"
    assert result["verdict"].startswith("doctor --fix: could not clear the findings (still flagged after 1 round)")
    assert [c["key"] for c in result["rounds"][0]["changes"]] == ["init.bias"]
    assert result["rounds"][0]["changes"][0]["from"] == -2.0 and result["rounds"][0]["changes"][0]["to"] == 0.0
    assert resolve([], config_file=applied).init.bias == 0.0  # the last config, written even when not clean
    assert main(["doctor", "--fix", "--rounds", "1", *DEAD_AND_FAST, "--out", str(tmp_path / "c")]) == 0


@pytest.mark.parametrize("argv, message", [
    (["doctor", "--fix", "--rounds", "0", "model.name=mlp"], "--rounds must be >= 1, got 0"),
    (["doctor", "--rounds", "2", "model.name=mlp"], "--rounds needs --fix"),
])
def test_bad_rounds_are_one_line_errors(argv, message, capsys):
    from trainwell.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
