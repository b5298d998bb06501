"""Each doctor rule at its documented thresholds, one epsilon either side (diagnose/rules.py, thresholds.py).

The thresholds are written here as the numbers docs and docstrings state (20% dead units, 10x
signal loss, ...), not read from :mod:`trainwell.diagnose.thresholds`: a constant moved there moves
a rule's verdict, and these tests see it. Each rule is looked at alone (other rules may also fire on
the same statistics).
"""

from __future__ import annotations

import math

import pytest

from trainwell.diagnose.report import Finding, InputStats, LayerStats
from trainwell.diagnose.rules import Context, run_rules

EPS = 1e-6  # relative: just below / just above a threshold


def below(x):
    return x * (1 - EPS)


def above(x):
    return x * (1 + EPS)


def found(ctx, code):
    """The findings of one rule code for ``ctx`` (at most one per rule)."""
    hits = [f for f in run_rules(ctx) if f.code == code]
    assert len(hits) <= 1
    return hits[0] if hits else None


def severity(ctx, code):
    f = found(ctx, code)
    return f.severity if f else None


def hidden(name, depth, **stats):
    return LayerStats(name, "linear", "Linear", depth, units=8, **stats)


def head(depth, **stats):
    return LayerStats("head", "linear", "Linear", depth, units=10, **stats)


def net(*hidden_stats, **head_stats):
    """Hidden Linear layers (pre-activation stats given per layer) then a 10-way head."""
    layers = [hidden(f"h{i}", i, **s) for i, s in enumerate(hidden_stats)]
    return layers + [head(len(layers), **head_stats)]


def input_with(mean=0.0, std=1.0, feature_mean_abs_max=0.0, feature_std_min=1.0, feature_std_max=1.0):
    return InputStats(mean, std, feature_mean_abs_max, feature_std_min, feature_std_max, 4, 100)


# ----------------------------------------------------------------------------- forward signal


@pytest.mark.parametrize("input_std", [1.0, 4.0])
def test_vanishing_activations_warns_below_a_tenth_of_the_input_std_and_errs_below_a_thousandth(input_std):
    def at(ratio):
        return severity(Context(net({"std": ratio * input_std}, {"std": input_std}), input_with(std=input_std)),
                        "vanishing-activations")

    assert at(above(0.1)) is None
    assert at(below(0.1)) == "warning"
    assert at(above(1e-3)) == "warning"
    assert at(below(1e-3)) == "error"
    f = found(Context(net({"std": 0.05 * input_std}, {"std": 1.0 * input_std}), input_with(std=input_std)),
              "vanishing-activations")
    assert f.layers == ["h0"] and f.evidence["min_ratio"] == pytest.approx(0.05) and f.evidence["threshold"] == 0.1
    assert f.evidence["input_std"] == input_std and set(f.evidence["std"]) == {"h0", "h1"}


def test_vanishing_activations_ignores_the_head_and_normalised_layers():
    layers = [hidden("h0", 0, std=1.0), head(1, std=1e-6)]
    assert found(Context(layers), "vanishing-activations") is None
    normalised = [LayerStats("h0", "linear", "Linear", 0, units=8, std=1e-6, normalized=True), head(1, std=1.0)]
    assert found(Context(normalised), "vanishing-activations") is None


def test_without_input_statistics_the_reference_std_is_one():
    assert severity(Context(net({"std": below(0.1)})), "vanishing-activations") == "warning"
    assert severity(Context(net({"std": above(0.1)})), "vanishing-activations") is None
    # a zero or non-finite input std also falls back to 1
    for std in (0.0, math.nan):
        ctx = Context(net({"std": below(0.1)}), input_with(std=std))
        assert severity(ctx, "vanishing-activations") == "warning"


@pytest.mark.parametrize("input_std", [1.0, 0.5])
def test_exploding_activations_warns_past_ten_times_the_input_std_and_errs_past_a_thousand(input_std):
    def at(ratio):
        return severity(Context(net({"std": input_std}, {"std": ratio * input_std}), input_with(std=input_std)),
                        "exploding-activations")

    assert at(below(10)) is None
    assert at(above(10)) == "warning"
    assert at(below(1e3)) == "warning"
    assert at(above(1e3)) == "error"
    f = found(Context(net({"std": input_std}, {"std": 20 * input_std}), input_with(std=input_std)),
              "exploding-activations")
    assert f.layers == ["h1"] and f.evidence["max_ratio"] == pytest.approx(20) and f.evidence["threshold"] == 10


def act(name, depth, **stats):
    return LayerStats(name, "activation", "Tanh", depth, activation="tanh", **stats)


def test_saturation_warns_past_a_quarter_and_errs_past_sixty_percent():
    def at(fraction):
        return severity(Context([act("a0", 0, saturated_fraction=fraction)]), "saturation")

    assert at(below(0.25)) is None
    assert at(above(0.25)) == "warning"
    assert at(below(0.6)) == "warning"
    assert at(above(0.6)) == "error"
    f = found(Context([act("a0", 0, saturated_fraction=0.1), act("a1", 1, saturated_fraction=0.3)]), "saturation")
    assert f.layers == ["a1"] and f.evidence["threshold"] == 0.25 and f.evidence["eps"] == 0.025
    assert f.evidence["saturated_fraction"] == {"a0": 0.1, "a1": 0.3}


def relu(name, depth, dead, examples=64):
    return LayerStats(name, "activation", "ReLU", depth, activation="relu", dead_fraction=dead, examples=examples)


def test_dead_units_warn_past_twenty_percent_and_err_past_half_the_layer():
    def at(fraction):
        return severity(Context([relu("r0", 0, fraction)]), "dead-units")

    assert at(below(0.2)) is None
    assert at(above(0.2)) == "warning"
    assert at(below(0.5)) == "warning"
    assert at(above(0.5)) == "error"
    f = found(Context([relu("r0", 0, 0.1), relu("r1", 1, 0.3, examples=40)]), "dead-units")
    assert f.layers == ["r1"] and f.evidence["examples"] == 40 and f.evidence["threshold"] == 0.2
    assert f.evidence["dead_fraction"] == {"r0": 0.1, "r1": 0.3}


def test_dead_and_saturated_units_carry_the_pre_activations_that_feed_them():
    # Linear h0 -> ReLU r0 -> Linear h1 (rescaled by a norm layer) -> ReLU r1 -> head: r0's feed is h0's output,
    # r1's is not recorded (the norm layer rescales h1's output before the ReLU sees it).
    layers = [hidden("h0", 0, mean=-2.0, std=0.5), relu("r0", 1, 0.9),
              hidden("h1", 2, mean=-3.0, std=1.0, normalized=True), relu("r1", 3, 0.9), head(4)]
    f = found(Context(layers), "dead-units")
    assert f.evidence["preactivation"] == {"r0": {"layer": "h0", "mean": -2.0, "std": 0.5}}
    sat = [hidden("h0", 0, mean=0.1, std=8.3), act("a0", 1, saturated_fraction=0.7), head(2)]
    assert found(Context(sat), "saturation").evidence["preactivation"] == \
        {"a0": {"layer": "h0", "mean": 0.1, "std": 8.3}}
    assert found(Context([relu("r0", 0, 0.9)]), "dead-units").evidence["preactivation"] == {}  # nothing before it


def test_dead_units_need_thirty_two_examples_before_a_silent_unit_counts():
    assert severity(Context([relu("r0", 0, 0.9, examples=32)]), "dead-units") == "error"
    assert found(Context([relu("r0", 0, 0.9, examples=31)]), "dead-units") is None


# ----------------------------------------------------------------------------- backward signal


def grads(first, last):
    """Two hidden layers with dL/dz std ``first`` and ``last``, then a head (ignored by the rule)."""
    return net({"grad_std": first}, {"grad_std": last}, grad_std=1e9)


def test_vanishing_gradients_warn_below_a_hundredth_and_err_below_ten_thousandth():
    def at(ratio):
        return severity(Context(grads(ratio * 2.0, 2.0)), "vanishing-gradients")

    assert at(above(1e-2)) is None
    assert at(below(1e-2)) == "warning"
    assert at(above(1e-4)) == "warning"
    assert at(below(1e-4)) == "error"
    f = found(Context(grads(1e-3, 1.0)), "vanishing-gradients")
    assert f.layers == ["h0"] and f.evidence["ratio"] == pytest.approx(1e-3) and f.evidence["threshold"] == 1e-2


def test_exploding_gradients_warn_past_a_hundred_and_err_past_ten_thousand():
    def at(ratio):
        return severity(Context(grads(ratio * 0.5, 0.5)), "exploding-gradients")

    assert at(below(1e2)) is None
    assert at(above(1e2)) == "warning"
    assert at(below(1e4)) == "warning"
    assert at(above(1e4)) == "error"
    f = found(Context(grads(500.0, 1.0)), "exploding-gradients")
    assert f.layers == ["h0"] and f.evidence["ratio"] == pytest.approx(500) and f.evidence["threshold"] == 1e2


def test_gradient_ratio_needs_two_hidden_layers_and_a_positive_last_gradient():
    single = net({"grad_std": 1e-9}, grad_std=1.0)
    assert found(Context(single), "vanishing-gradients") is None
    assert found(Context(grads(1.0, 0.0)), "exploding-gradients") is None


# ----------------------------------------------------------------------------- input


def test_unnormalized_input_at_each_of_its_limits():
    def at(**stats):
        return severity(Context(input=input_with(**stats)), "unnormalized-input")

    assert at(feature_mean_abs_max=below(3.0)) is None
    assert at(feature_mean_abs_max=above(3.0)) == "warning"
    assert at(feature_std_max=below(10.0)) is None
    assert at(feature_std_max=above(10.0)) == "warning"
    assert at(std=above(0.05), mean=0.0) is None
    assert at(std=below(0.05), mean=0.0) == "warning"
    # not centred: |mean| > half the std is info only
    assert at(mean=below(0.5) * 2.0, std=2.0) is None
    assert at(mean=above(0.5) * 2.0, std=2.0) == "info"
    assert at(mean=-above(0.5) * 2.0, std=2.0) == "info"


def test_unnormalized_input_names_every_problem_it_saw():
    f = found(Context(input=input_with(std=0.01, feature_mean_abs_max=5.0, feature_std_max=20.0)),
              "unnormalized-input")
    assert "a feature's mean is 5 (limit 3)" in f.message and "a feature's std is 20 (limit 10)" in f.message
    assert "the input std is 0.01 (limit 0.05)" in f.message
    assert f.evidence["feature_mean_abs_max"] == 5.0 and f.evidence["features"] == 4


def test_unnormalized_input_is_silent_on_partial_statistics():
    assert found(Context(input=input_with(std=math.nan, feature_mean_abs_max=100.0)), "unnormalized-input") is None


# ----------------------------------------------------------------------------- updates


def updates(*ratios):
    return [LayerStats(f"l{i}", "linear", "Linear", i, units=10, update_ratio=r) for i, r in enumerate(ratios)]


def test_update_ratio_high_warns_past_five_percent_and_errs_past_half():
    def at(median):
        return severity(Context(updates(median / 10, median, median * 10)), "update-ratio-high")

    assert at(below(5e-2)) is None
    assert at(above(5e-2)) == "warning"
    assert at(below(5e-1)) == "warning"
    assert at(above(5e-1)) == "error"
    f = found(Context(updates(0.01, 0.1, 0.2)), "update-ratio-high")
    assert f.layers == ["l1", "l2"] and f.evidence["median"] == 0.1
    assert f.evidence["threshold"] == 5e-2 and f.evidence["rule_of_thumb"] == 1e-3


def test_update_ratio_low_warns_below_a_ten_thousandth_unless_the_lr_has_decayed():
    def at(median, history=()):
        return severity(Context(updates(median, median, median), history=list(history)), "update-ratio-low")

    assert at(above(1e-4)) is None
    assert at(below(1e-4)) == "warning"
    # decayed: below half of the peak lr
    assert at(1e-6, [{"lr": 1.0}, {"lr": below(0.5)}]) is None
    assert at(1e-6, [{"lr": 1.0}, {"lr": above(0.5)}]) == "warning"
    f = found(Context(updates(1e-6, 1e-3, 1e-5)), "update-ratio-low")
    assert f.layers == ["l0", "l2"] and f.evidence["median"] == 1e-5 and f.evidence["threshold"] == 1e-4


def test_the_peak_lr_given_overrides_the_history_peak():
    ctx = Context(updates(1e-6, 1e-6, 1e-6), history=[{"lr": 0.1}], peak_lr=1.0)
    assert ctx.lr_decayed() and found(ctx, "update-ratio-low") is None
    assert not Context(history=[{"lr": 0.1}, {"lr": 0.1}]).lr_decayed()
    assert not Context().lr_decayed()


# ----------------------------------------------------------------------------- history


def epochs(train, val=None, lr=None):
    rows = [{"epoch": i + 1, "train_loss": t} for i, t in enumerate(train)]
    for row, v in zip(rows, val or []):
        row["val_loss"] = v
    for row in rows if lr is not None else []:
        row["lr"] = lr
    return rows


def test_overfitting_past_ten_percent_generalisation_loss_after_three_rising_epochs():
    train = [1.0, 0.6, 0.5, 0.4, 0.3, 0.2]

    def at(gl, rising=3):
        best = 0.5
        val = [0.9] * (len(train) - rising - 1) + [best] + [best * (1 + gl)] * rising
        return found(Context(history=epochs(train, val)), "overfitting")

    assert at(below(0.10)) is None
    assert at(above(0.10)).severity == "warning"
    assert at(0.3, rising=2) is None
    f = at(0.3, rising=3)
    assert f.evidence["best_epoch"] == 3 and f.evidence["generalisation_loss"] == pytest.approx(0.3)
    assert f.evidence["threshold"] == 0.10 and f.evidence["gap_last"] == pytest.approx(0.65 - 0.2)


def test_overfitting_needs_the_train_loss_falling_and_the_gap_growing():
    val = [0.9, 0.5, 0.7, 0.7, 0.7]
    assert found(Context(history=epochs([1.0, 0.5, 0.5, 0.5, 0.5], val)), "overfitting") is None  # train flat
    assert found(Context(history=epochs([1.0, 0.5, 0.4, 0.3, 0.2], val)), "overfitting") is not None
    assert found(Context(history=epochs([1.0, 0.5, 0.4, 0.3, 0.2], val[:4])), "overfitting") is None  # mismatch


def test_lr_too_high_when_an_epoch_is_worse_than_one_and_a_half_times_chance():
    chance = math.log(10)
    layers = [head(0)]
    for loss, expected in [(below(1.5 * chance), None), (above(1.5 * chance), "warning")]:
        f = found(Context(layers, history=epochs([loss, loss * 0.5])), "lr-too-high")
        assert (f.severity if f else None) == expected
    f = found(Context(layers, history=epochs([1.0, 20.0, 0.5])), "lr-too-high")
    assert "epoch 2 (20)" in f.message and f.evidence["chance_loss"] == pytest.approx(chance, rel=1e-2)


def test_lr_too_high_when_the_loss_rises_two_percent_after_the_first_epoch():
    assert found(Context(history=epochs([1.0, below(1.02)])), "lr-too-high") is None
    assert found(Context(history=epochs([1.0, above(1.02)])), "lr-too-high").severity == "warning"
    assert found(Context(history=epochs([1.0, 0.9, 0.8, above(1.02), 0.5])), "lr-too-high") is not None
    # only epochs 2-4 count as an early rise
    assert found(Context(history=epochs([1.0, 0.9, 0.8, 0.7, 1.5, 0.4, 0.3, 0.2])), "lr-too-high") is None


def test_lr_too_high_when_the_loss_rises_in_forty_percent_of_the_epochs():
    # 2 rises in 5 steps = 40%: flagged; 2 in 6 = 33%: not
    five = [1.0, 0.9, 0.95, 0.8, 0.85, 0.7]
    six = [1.0, 0.9, 0.95, 0.8, 0.85, 0.7, 0.6]
    assert "rose in 2 of 5 epochs" in found(Context(history=epochs(five)), "lr-too-high").message
    assert found(Context(history=epochs(six)), "lr-too-high") is None
    # the first ten epochs only
    long = [1.0 - 0.05 * i for i in range(11)] + [0.6, 0.5, 0.6, 0.5, 0.6, 0.5]
    assert found(Context(history=epochs(long)), "lr-too-high") is None


def test_lr_too_high_when_big_updates_do_not_lower_the_loss_five_percent():
    big = updates(0.1, 0.1, 0.1)
    assert found(Context(big, history=epochs([1.0, above(0.95)])), "lr-too-high") is not None
    assert found(Context(big, history=epochs([1.0, below(0.95)])), "lr-too-high") is None
    assert found(Context(updates(0.04, 0.04, 0.04), history=epochs([1.0, 1.0])), "lr-too-high") is None


def test_lr_too_low_when_tiny_updates_lower_the_loss_less_than_five_percent():
    tiny = updates(1e-6, 1e-6, 1e-6)
    assert found(Context(tiny, history=epochs([1.0, 0.96, above(0.95)], lr=0.1)), "lr-too-low") is not None
    assert found(Context(tiny, history=epochs([1.0, 0.96, below(0.95)], lr=0.1)), "lr-too-low") is None
    f = found(Context(tiny, history=epochs([1.0, 0.97], lr=0.1)), "lr-too-low")
    assert f.evidence["relative_drop"] == pytest.approx(0.03) and f.evidence["threshold"] == 0.05
    small = updates(above(1e-4), above(1e-4), above(1e-4))
    assert found(Context(small, history=epochs([1.0, 1.0], lr=0.1)), "lr-too-low") is None
    assert found(Context(tiny, history=epochs([1.0], lr=0.1)), "lr-too-low") is None


def test_divergence_names_where_the_values_became_non_finite():
    f = found(Context(history=epochs([1.0, 0.5, math.inf])), "divergence")
    assert f.evidence["nonfinite_train_loss_epoch"] == 3 and "at epoch 3" in f.message
    f = found(Context([LayerStats("h0", "linear", "Linear", 0, nonfinite=True)], loss=math.nan), "divergence")
    assert f.layers == ["h0"] and f.evidence["loss"] == "nan" and f.severity == "error"
    f = found(Context(input=InputStats(0, 1, 0, 1, 1, 4, 10, nonfinite=True)), "divergence")
    assert f.evidence["input_nonfinite"] is True and "clean the data" in f.fix
    assert found(Context(history=epochs([1.0, 0.5]), loss=0.4), "divergence") is None


def test_findings_record_when_the_statistics_were_taken():
    (f,) = [f for f in run_rules(Context([relu("r0", 0, 0.9)], when="epoch 3")) if f.code == "dead-units"]
    assert f.evidence["when"] == "epoch 3"


# ----------------------------------------------------------------------------- edges the mutation run found


def test_an_lr_at_exactly_half_the_peak_has_not_decayed():
    assert not Context(history=[{"lr": 1.0}, {"lr": 0.5}]).lr_decayed()  # "below half of the peak"
    assert Context(history=[{"lr": 1.0}, {"lr": below(0.5)}]).lr_decayed()


def test_evidence_is_rounded_to_three_significant_digits():
    f = found(Context(net({"std": 0.0123456}, {"std": 1.0})), "vanishing-activations")
    assert f.evidence["min_ratio"] == 0.0123 and f.evidence["std"] == {"h0": 0.0123, "h1": 1.0}
    f = found(Context(updates(0.123456, 0.234567, 0.345678)), "update-ratio-high")
    assert f.evidence["median"] == 0.235 and f.evidence["update_ratio"]["l2"] == 0.346


def test_a_missing_train_loss_counts_as_non_finite():
    f = found(Context(history=[{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": None}]), "divergence")
    assert f.evidence["nonfinite_train_loss_epoch"] == 2


def test_the_gradient_ratio_is_first_over_last_hidden_layer_of_any_depth():
    layers = net({"grad_std": 1e-3}, {"grad_std": 5.0}, {"grad_std": 1.0}, grad_std=1e9)
    f = found(Context(layers), "vanishing-gradients")
    assert f.evidence["ratio"] == pytest.approx(1e-3) and f.layers == ["h0"]
    assert found(Context(net({"grad_std": 1.0}, {"grad_std": 1.0}, {"grad_std": 0.0})), "exploding-gradients") is None


# ----------------------------------------------------------------------------- edges the mutation run found
# (mutmut over the rule bodies, tools/mutation.py --decorated): the thresholds are strict ("> 25%"),
# and a finding's message and fix are what the report prints, so they are pinned word for word here.


def test_saturation_and_dead_units_at_exactly_their_thresholds_are_not_worse():
    assert severity(Context([act("a0", 0, saturated_fraction=0.25)]), "saturation") is None
    assert severity(Context([act("a0", 0, saturated_fraction=0.6)]), "saturation") == "warning"
    assert severity(Context([relu("r0", 0, 0.2)]), "dead-units") is None
    assert severity(Context([relu("r0", 0, 0.5)]), "dead-units") == "warning"


def test_saturation_message_and_fix_word_for_word():
    one = found(Context([act("a0", 0, saturated_fraction=0.1), act("a1", 1, saturated_fraction=0.3)]), "saturation")
    assert one.message == "30% of outputs are saturated in a1: they pass back < 10% of the gradient (threshold 25%)."
    three = found(Context([act(f"a{i}", i, saturated_fraction=0.3 + 0.1 * i) for i in range(3)]), "saturation")
    assert three.message == ("50% of outputs are saturated in a0 (and 2 more layers): they pass back < 10% of the "
                             "gradient (threshold 25%).")
    two = found(Context([act(f"a{i}", i, saturated_fraction=0.3) for i in range(2)]), "saturation")
    assert "in a0 (and 1 more layers):" in two.message
    assert one.fix == ("use a ReLU-family activation in hidden layers (model.activation=relu), or keep tanh with "
                       "init.scheme=xavier_normal, standardised inputs and model.norm=batch before the nonlinearity; "
                       "never sigmoid in hidden layers of a deep net")


def test_dead_units_message_names_the_worst_layer_and_the_fewest_examples():
    f = found(Context([relu("r0", 0, 0.3, examples=50), relu("r1", 1, 0.45, examples=40), relu("r2", 2, 0.25)]),
              "dead-units")
    assert f.message == "45% of the units of r1 never fire on 40 examples (threshold 20%)."
    assert f.fix == ("check the biases start at 0 and the init matches ReLU (init.scheme=kaiming_normal); lower "
                     "optim.lr (a too-large step pushes units into the negative region for good); or use "
                     "model.activation=leaky_relu or elu, which cannot die")


def four(*g):
    return Context(net(*({"grad_std": x} for x in g), grad_std=1e9))


def test_gradient_rules_at_exactly_their_thresholds_are_not_worse():
    assert severity(four(0.01, 1.0, 1.0, 1.0), "vanishing-gradients") is None
    assert severity(four(1e-4, 1.0, 1.0, 1.0), "vanishing-gradients") == "warning"
    assert severity(four(100.0, 1.0, 1.0, 1.0), "exploding-gradients") is None
    assert severity(four(1e4, 1.0, 1.0, 1.0), "exploding-gradients") == "warning"


def test_vanishing_gradients_lists_the_layers_below_a_hundredth_of_the_last_and_says_so_word_for_word():
    from trainwell.diagnose.rules import _INIT_FIX
    f = found(four(0.001, 0.01, 0.5, 2.0), "vanishing-gradients")
    assert f.severity == "warning" and f.layers == ["h0", "h1"]  # 0.01 < 0.01 * 2.0; 0.5 is not
    f = found(four(0.001, 0.01, 0.5, 1.0), "vanishing-gradients")
    assert f.layers == ["h0"]  # exactly a hundredth of the last is not below it
    assert f.evidence == {"grad_std": {"h0": 0.001, "h1": 0.01, "h2": 0.5, "h3": 1.0}, "ratio": 0.001, "threshold": 0.01}
    assert f.message == "dL/dz shrinks 1e+03x from h3 back to h0 (threshold 100x): the first layers barely learn."
    assert f.fix == ("avoid saturating activations in deep stacks (model.activation=relu), " + _INIT_FIX
                     + "; for very deep nets add residual connections (model.name=resnet)")


def test_exploding_gradients_lists_the_layers_past_a_hundred_times_the_last_and_says_so_word_for_word():
    from trainwell.diagnose.rules import _INIT_FIX
    f = found(four(1000.0, 200.0, 100.0, 1.0), "exploding-gradients")
    assert f.severity == "warning" and f.layers == ["h0", "h1"]  # exactly 100x is not past it
    assert f.evidence == {"grad_std": {"h0": 1000.0, "h1": 200.0, "h2": 100.0, "h3": 1.0}, "ratio": 1000.0,
                          "threshold": 100.0}
    assert f.message == "dL/dz grows 1e+03x from h3 back to h0 (threshold 100x)."
    assert f.fix == "use smaller initial weights (" + _INIT_FIX + "); clip the gradient norm (train.grad_clip=1.0)"
    assert found(four(1000.0, 200.0, 100.0, 0.5), "exploding-gradients").layers == ["h0", "h1", "h2"]


# ----------------------------------------------------------------------------- every rule's finding, whole
# (survivors of mutmut over the rule bodies, 211 of 979): each rule's finding compared whole with one
# written out here (code, severity, layers, evidence, fix and message: what the report prints), and
# each threshold at exactly its documented value (docs/doctor.md: "< 10%", "past 10x", "> 5e-2", ...
# are strict, so the value itself is not flagged / not the worse severity).

INIT_FIX = ("initialise each layer for the activation that follows it: init.scheme=kaiming_normal for the ReLU "
            "family, xavier_normal for tanh/sigmoid, lecun_normal for selu (PyTorch: nn.init.kaiming_normal_"
            "(w, nonlinearity='relu')), or add normalisation (model.norm=batch)")


def test_activation_rules_at_exactly_their_thresholds_are_not_worse():
    def at(code, std):
        return severity(Context(net({"std": std}, {"std": 1.0}), input_with(std=1.0)), code)

    assert at("vanishing-activations", 0.1) is None  # "< 10% of the input's std"
    assert at("vanishing-activations", 1e-3) == "warning"
    assert at("exploding-activations", 10.0) is None  # "past 10x"
    assert at("exploding-activations", 1e3) == "warning"


def test_vanishing_activations_finding_word_for_word():
    # input std 2: ratios 0.05, 0.02, 1.0; the head (std 1e-9) is not a hidden layer
    ctx = Context(net({"std": 0.1}, {"std": 0.04}, {"std": 2.0}, std=1e-9), input_with(std=2.0))
    assert found(ctx, "vanishing-activations") == Finding(
        "vanishing-activations", "warning", ["h0", "h1"],
        {"input_std": 2.0, "std": {"h0": 0.1, "h1": 0.04, "h2": 2.0}, "min_ratio": 0.02, "threshold": 0.1},
        INIT_FIX,
        "pre-activation std falls to 0.02x the input's (threshold 0.1x) in 2 of 3 hidden layers: later layers see "
        "an almost constant signal.")


def test_exploding_activations_finding_word_for_word():
    ctx = Context(net({"std": 0.5}, {"std": 10.0}, {"std": 61.7283}, std=1e9), input_with(std=0.5))
    assert found(ctx, "exploding-activations") == Finding(
        "exploding-activations", "warning", ["h1", "h2"],
        {"input_std": 0.5, "std": {"h0": 0.5, "h1": 10.0, "h2": 61.7}, "max_ratio": 123.0, "threshold": 10.0},
        "use smaller initial weights with the right gain (" + INIT_FIX + "); during training, also lower optim.lr",
        "pre-activation std grows to 123x the input's (threshold 10x) in 2 of 3 hidden layers.")


def test_saturation_and_dead_units_messages_round_the_percentage_of_the_worst_layer():
    f = found(Context([act("a0", 0, saturated_fraction=0.9)]), "saturation")
    assert f.message == "90% of outputs are saturated in a0: they pass back < 10% of the gradient (threshold 25%)."
    f = found(Context([relu("r0", 0, 0.9)]), "dead-units")
    assert f.message == "90% of the units of r0 never fire on 64 examples (threshold 20%)."


UNNORMALIZED_FIX = ("standardise the inputs with statistics of the training split (data.preprocess=standardize; "
                    "PyTorch: (x - mean) / std per feature or channel)")


def test_unnormalized_input_at_exactly_its_limits_is_not_flagged():
    def at(**stats):
        return severity(Context(input=input_with(**stats)), "unnormalized-input")

    assert at(feature_mean_abs_max=3.0) is None  # "more than 3 units from 0"
    assert at(feature_std_max=10.0) is None
    assert at(std=0.05) is None
    assert at(mean=1.0, std=2.0) is None  # |mean| exactly half the std: centred enough


def test_unnormalized_input_warning_word_for_word():
    x = InputStats(0.123456, 0.0123456, 5.4321, 0.00123456, 20.5, 4, 100)
    assert found(Context(input=x), "unnormalized-input") == Finding(
        "unnormalized-input", "warning", [],
        {"mean": 0.123, "std": 0.0123, "feature_mean_abs_max": 5.43, "feature_std_min": 0.00123,
         "feature_std_max": 20.5, "features": 4},
        UNNORMALIZED_FIX,
        "the network's input is not standardised: a feature's mean is 5.43 (limit 3); a feature's std is 20.5 "
        "(limit 10); the input std is 0.0123 (limit 0.05).")
    one = found(Context(input=input_with(feature_std_max=12.0)), "unnormalized-input")
    assert one.message == "the network's input is not standardised: a feature's std is 12 (limit 10)."


def test_unnormalized_input_info_word_for_word():
    x = InputStats(0.3, 0.4, 0.35, 0.3, 0.5, 4, 100)
    assert found(Context(input=x), "unnormalized-input") == Finding(
        "unnormalized-input", "info", [],
        {"mean": 0.3, "std": 0.4, "feature_mean_abs_max": 0.35, "feature_std_min": 0.3, "feature_std_max": 0.5,
         "features": 4},
        UNNORMALIZED_FIX,
        "the input is not zero-centred (mean 0.3, std 0.4); centring it speeds up the first layer's learning.")


def test_update_ratio_rules_at_exactly_their_thresholds_are_not_worse():
    assert found(Context(updates(5e-2, 5e-2, 5e-2)), "update-ratio-high") is None  # "> 5e-2"
    assert severity(Context(updates(5e-1, 5e-1, 5e-1)), "update-ratio-high") == "warning"
    assert found(Context(updates(1e-4, 1e-4, 1e-4)), "update-ratio-low") is None  # "< 1e-4"


def test_update_ratio_high_finding_word_for_word():
    # l0 exactly at 5e-2 is not past it, so it is not named
    assert found(Context(updates(5e-2, 0.1, 0.2)), "update-ratio-high") == Finding(
        "update-ratio-high", "warning", ["l1", "l2"],
        {"update_ratio": {"l0": 0.05, "l1": 0.1, "l2": 0.2}, "median": 0.1, "threshold": 0.05,
         "rule_of_thumb": 0.001},
        "lower optim.lr (try 3-10x lower, or trainwell lr-find); add warmup (sched.warmup_epochs=1)",
        "the median step changes the weights by 10% of their norm (rule of thumb ~0.1%, threshold 5%).")


def test_update_ratio_low_finding_word_for_word():
    # l0 exactly at 1e-4 is not below it, so it is not named
    assert found(Context(updates(1e-4, 1e-5, 1e-6)), "update-ratio-low") == Finding(
        "update-ratio-low", "warning", ["l1", "l2"],
        {"update_ratio": {"l0": 0.0001, "l1": 1e-05, "l2": 1e-06}, "median": 1e-05, "threshold": 0.0001,
         "rule_of_thumb": 0.001},
        "raise optim.lr (try 10x higher, or trainwell lr-find)",
        "the median step changes the weights by 1e-05 of their norm (rule of thumb ~1e-3, threshold 0.0001): "
        "training will crawl.")


DIVERGENCE_FIX = ("lower optim.lr (10x, or trainwell lr-find), add warmup (sched.warmup_epochs=1) and gradient "
                  "clipping (train.grad_clip=1.0); check for log(0) or division by zero in a custom loss")


def test_divergence_findings_word_for_word():
    assert found(Context(history=epochs([1.0, 0.5, math.inf, math.nan])), "divergence") == Finding(
        "divergence", "error", [], {"nonfinite_train_loss_epoch": 3}, DIVERGENCE_FIX,
        "training diverged at epoch 3: non-finite values in the training loss.")
    layers = [LayerStats(f"h{i}", "linear", "Linear", i, nonfinite=bad) for i, bad in enumerate((True, False, True))]
    assert found(Context(layers, loss=math.inf), "divergence") == Finding(
        "divergence", "error", ["h0", "h2"], {"loss": "inf", "nonfinite_layers": ["h0", "h2"]}, DIVERGENCE_FIX,
        "training diverged: non-finite values in the loss, the outputs of h0, h2.")
    bad_input = InputStats(0.0, 1.0, 0.0, 1.0, 1.0, 4, 10, nonfinite=True)
    assert found(Context(input=bad_input, loss=math.nan), "divergence") == Finding(
        "divergence", "error", [], {"loss": "nan", "input_nonfinite": True},
        "the input holds NaN/inf: clean the data (the doctor saw them before the first layer)",
        "training diverged: non-finite values in the loss, the input.")


def test_divergence_names_the_epoch_the_history_gives_or_the_row_number():
    resumed = [{"epoch": 7, "train_loss": 1.0}, {"epoch": 8, "train_loss": math.nan}]
    assert found(Context(history=resumed), "divergence").evidence == {"nonfinite_train_loss_epoch": 8}
    unnumbered = [{"train_loss": 1.0}, {"train_loss": math.nan}]
    assert found(Context(history=unnumbered), "divergence").evidence == {"nonfinite_train_loss_epoch": 2}


OVERFIT_TRAIN = [1.0, 0.6, 0.45, 0.4, 0.3, 0.2]
OVERFIT_VAL = [0.9, 0.6, 0.5, 0.7, 0.8, 0.9]  # minimum at epoch 3, then 3 epochs up to 80% above it


def test_overfitting_finding_word_for_word():
    assert found(Context(history=epochs(OVERFIT_TRAIN, OVERFIT_VAL)), "overfitting") == Finding(
        "overfitting", "warning", [],
        {"best_epoch": 3, "val_loss_min": 0.5, "val_loss_last": 0.9, "generalisation_loss": 0.8,
         "gap_at_best": 0.05, "gap_last": 0.7, "threshold": 0.1},
        "stop near epoch 3 (train.epochs=3) or regularise: optim.weight_decay, model.dropout=0.3, augment, "
        "mix.mixup_alpha=0.2; more data helps most",
        "val loss rose 80% above its minimum (epoch 3) over 3 epochs while train loss fell; the train-val gap grew "
        "from 0.05 to 0.7.")


def test_overfitting_names_the_epoch_the_history_gives_or_the_row_number():
    resumed = [dict(row, epoch=row["epoch"] + 10) for row in epochs(OVERFIT_TRAIN, OVERFIT_VAL)]
    f = found(Context(history=resumed), "overfitting")
    assert f.evidence["best_epoch"] == 13 and f.fix.startswith("stop near epoch 13 (train.epochs=13) or regularise")
    assert "(epoch 13)" in f.message
    unnumbered = [{k: v for k, v in row.items() if k != "epoch"} for row in epochs(OVERFIT_TRAIN, OVERFIT_VAL)]
    assert found(Context(history=unnumbered), "overfitting").evidence["best_epoch"] == 3


def test_overfitting_is_not_called_on_a_history_it_cannot_judge():
    # a non-finite loss (that is divergence)
    assert found(Context(history=epochs([math.inf] + OVERFIT_TRAIN[1:], OVERFIT_VAL)), "overfitting") is None
    # a val loss missing from an epoch: the two series no longer line up
    rows = epochs(OVERFIT_TRAIN, OVERFIT_VAL)
    del rows[0]["val_loss"]
    assert found(Context(history=rows), "overfitting") is None
    # fewer than five epochs
    assert found(Context(history=epochs([1.0, 0.5, 0.4, 0.3], [0.5, 0.6, 0.6, 0.6])), "overfitting") is None
    five = epochs([1.0, 0.5, 0.4, 0.3, 0.2], [0.5, 0.6, 0.6, 0.6, 0.6])
    assert found(Context(history=five), "overfitting").severity == "warning"
    # a val loss that reached 0: no generalisation loss to speak of (and no division by zero)
    assert found(Context(history=epochs([1.0, 0.5, 0.4, 0.3, 0.2], [0.9, 0.0, 0.2, 0.2, 0.2])), "overfitting") is None


def test_overfitting_needs_the_last_train_loss_below_the_one_at_the_val_minimum():
    train = [1.0, 0.6, 0.5, 0.4, 0.3, 0.55]  # fell, then rose back above epoch 3's 0.5 in the last epoch
    assert found(Context(history=epochs(train, OVERFIT_VAL)), "overfitting") is None


LR_HIGH_FIX = ("lower optim.lr 3-10x (trainwell lr-find suggests one); add warmup (sched.warmup_epochs=1) and "
               "train.grad_clip=1.0")


def lr_high(message, evidence, severity="warning"):
    return Finding("lr-too-high", severity, [], evidence, LR_HIGH_FIX, "the learning rate is too high: " + message)


def test_lr_too_high_findings_word_for_word():
    ctx = Context(updates(0.01, 0.02, 0.03), history=epochs([2.0, math.inf, 1.0]))
    assert found(ctx, "lr-too-high") == lr_high(
        "the loss became non-finite.", {"train_loss": [2.0, math.inf, 1.0], "median_update_ratio": 0.02}, "error")
    assert found(Context([head(0)], history=epochs([1.0, 4.0, 0.5])), "lr-too-high") == lr_high(
        "the mean train loss of epoch 2 (4) is worse than guessing (ln 10 = 2.3).",
        {"train_loss": [1.0, 4.0, 0.5], "chance_loss": 2.3})
    assert found(Context(history=epochs([1.0, 1.5, 0.9])), "lr-too-high") == lr_high(
        "the train loss rose after the first epoch.", {"train_loss": [1.0, 1.5, 0.9]})
    assert found(Context(updates(0.1, 0.1, 0.1), history=epochs([1.0, 0.97])), "lr-too-high") == lr_high(
        "updates are 0.1 of the weights per step while the loss does not fall.",
        {"train_loss": [1.0, 0.97], "median_update_ratio": 0.1})


def test_lr_too_high_oscillation_over_the_first_ten_epochs_word_for_word():
    train = [1.0, 0.9, 0.95, 0.8, 0.85, 0.7, 0.75, 0.6, 0.65, 0.5, 0.55, 0.4]  # 4 rises in the first 9 steps
    assert found(Context(history=epochs(train)), "lr-too-high") == lr_high(
        "the train loss rose in 4 of 9 epochs (oscillation).",
        {"train_loss": [1.0, 0.9, 0.95, 0.8, 0.85, 0.7, 0.75, 0.6, 0.65, 0.5]})
    # 3 rises in the first 9 steps (33%); the rise into epoch 11 is past the first ten epochs
    train = [1.0, 0.9, 0.92, 0.8, 0.82, 0.7, 0.72, 0.6, 0.5, 0.4, 0.45]
    assert found(Context(history=epochs(train)), "lr-too-high") is None
    # four epochs are enough: 2 rises in 3 steps
    f = found(Context(history=epochs([1.0, 0.9, 0.95, 0.97])), "lr-too-high")
    assert f.message == "the learning rate is too high: the train loss rose in 2 of 3 epochs (oscillation)."
    # a flat step is not a rise
    assert found(Context(history=epochs([1.0, 1.0, 1.0, 1.0, 0.9])), "lr-too-high") is None


def test_lr_too_high_for_a_two_class_head_compares_with_ln_2():
    two = [LayerStats("head", "linear", "Linear", 0, units=2)]
    assert found(Context(two, history=epochs([1.2, 1.1])), "lr-too-high") == lr_high(
        "the mean train loss of epoch 1 (1.2) is worse than guessing (ln 2 = 0.693).",
        {"train_loss": [1.2, 1.1], "chance_loss": 0.693})


def test_lr_too_high_at_exactly_its_thresholds_is_not_flagged():
    chance = 1.5 * math.log(10)
    assert found(Context([head(0)], history=epochs([chance, 0.5 * chance])), "lr-too-high") is None  # "exceeds"
    assert found(Context(history=epochs([1.0, 1.02])), "lr-too-high") is None  # "exceeds the first by 2%"
    big = updates(0.1, 0.1, 0.1)
    assert found(Context(big, history=epochs([1.0, 0.95])), "lr-too-high") is None  # fell 5%: it falls
    assert found(Context(updates(5e-2, 5e-2, 5e-2), history=epochs([1.0, 1.0])), "lr-too-high") is None
    # the last epoch is what counts: fell 50% by epoch 3
    assert found(Context(big, history=epochs([1.0, 0.99, 0.5])), "lr-too-high") is None


def test_lr_too_low_finding_word_for_word():
    ctx = Context(updates(1e-6, 2e-6, 3e-6), history=epochs([2.0, 1.95, 1.9012], lr=0.1))
    assert found(ctx, "lr-too-low") == Finding(
        "lr-too-low", "warning", [],
        {"median_update_ratio": 2e-06, "train_loss": [2.0, 1.95, 1.9], "relative_drop": 0.0494, "threshold": 0.05},
        "raise optim.lr 10x (trainwell lr-find suggests one)",
        "updates are 2e-06 of the weights per step and the train loss fell only 4.9% over 3 epochs.")
    train = [1.0 - 0.001 * i for i in range(12)]
    f = found(Context(updates(1e-6, 1e-6, 1e-6), history=epochs(train, lr=0.1)), "lr-too-low")
    assert f.evidence["train_loss"] == [1.0, 0.999, 0.998, 0.997, 0.996, 0.995, 0.994, 0.993, 0.992, 0.991]
    assert f.message.endswith("fell only 1.1% over 12 epochs.")


def test_lr_too_low_at_exactly_its_thresholds_is_not_flagged():
    tiny = updates(1e-6, 1e-6, 1e-6)
    assert found(Context(tiny, history=epochs([20.0, 19.0], lr=0.1)), "lr-too-low") is None  # fell exactly 5%
    edge = updates(1e-4, 1e-4, 1e-4)
    assert found(Context(edge, history=epochs([1.0, 1.0], lr=0.1)), "lr-too-low") is None


def test_lr_too_low_needs_a_positive_first_loss_to_measure_the_drop_against():
    tiny = updates(1e-6, 1e-6, 1e-6)
    assert found(Context(tiny, history=epochs([0.0, 0.5], lr=0.1)), "lr-too-low") is None
