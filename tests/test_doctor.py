"""The doctor: each statistic against hand-computed values, the hooks, the rules, the entry points."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from trainwell.diagnose import (
    RULES,
    Context,
    DoctorCallback,
    Finding,
    InputStats,
    LayerStats,
    Recorder,
    Report,
    diagnose_model,
    plot_report,
    run_rules,
)
from trainwell.diagnose import thresholds as T
from trainwell.diagnose.stats import (
    LayerAccumulator,
    Moments,
    dead_fraction,
    estimate_update_ratio,
    ever_positive,
    histogram,
    read_all,
    saturated_fraction,
    strided_sample,
    update_ratio,
)
from trainwell.errors import ConfigError, DataError

# ----------------------------------------------------------------------------- statistics


def test_histogram_counts_clamp_outliers_into_end_bins_and_skip_nan():
    x = torch.tensor([-5.0, -1.0, 0.0, 0.5, 1.0, 5.0, float("nan")])
    # bins [-2,-1) [-1,0) [0,1) [1,2]: -5 -> -2 (bin 0), -1 (bin 1), 0 and 0.5 (bin 2), 1 and 5 -> 2 (bin 3)
    assert histogram(x, bins=4, lo=-2.0, hi=2.0).tolist() == [1.0, 1.0, 2.0, 2.0]


def test_histogram_sample_is_bounded_and_does_not_alias_with_axis_sizes():
    x = torch.arange(64 * 32 * 8 * 8, dtype=torch.float32).reshape(64, 32, 8, 8)
    sample = strided_sample(x, limit=1000)
    assert len(sample) <= 1001
    columns = {int(v) % 8 for v in sample}  # the position along the last axis of each sampled value
    assert columns == set(range(8))
    assert torch.equal(strided_sample(torch.ones(10), limit=1000), torch.ones(10))


def test_dead_fraction_counts_units_never_positive_over_every_example():
    x = torch.tensor([[1.0, 0.0, 0.0, -1.0],
                      [0.0, 0.0, 2.0, -1.0],
                      [0.0, 0.0, 0.0, 0.0]])  # (examples, units): units 1 and 3 never fire
    alive = ever_positive(x, unit_dim=1)
    assert alive.tolist() == [True, False, True, False]
    assert dead_fraction(alive).item() == pytest.approx(0.5)


def test_dead_fraction_of_conv_output_is_per_channel():
    x = torch.zeros(2, 3, 2, 2)
    x[1, 0, 1, 1] = 0.3  # channel 0 fires at one position of one example: alive
    x[0, 2] = -1.0  # channel 2 only negative: dead; channel 1 all zero: dead
    alive = ever_positive(x, unit_dim=1)
    assert alive.tolist() == [True, False, False]
    assert dead_fraction(alive).item() == pytest.approx(2 / 3)


def test_dead_units_accumulate_with_logical_or_across_batches():
    acc = LayerAccumulator(-4.0, 4.0, bins=9, can_die=True)
    acc.update_output(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]), unit_dim=1)
    acc.update_output(torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, -3.0]]), unit_dim=1)
    values = read_all({"l": acc.tensors()})["l"]
    assert values["dead_fraction"] == pytest.approx(1 / 3)  # only unit 2 never fired
    assert sum(values["hist"]) == 12


def test_saturated_fraction_of_sigmoid_and_tanh():
    sig = torch.tensor([0.01, 0.5, 0.98, 0.975, 0.03])  # margin 0.025 of range 1: 0.01, 0.98, 0.975
    assert saturated_fraction(sig, 0.0, 1.0, eps=0.025).item() == pytest.approx(3 / 5)
    tanh = torch.tensor([-0.99, 0.96, 0.5, 0.94])  # margin 0.05 of range 2: -0.99, 0.96
    assert saturated_fraction(tanh, -1.0, 1.0, eps=0.025).item() == pytest.approx(2 / 4)


def test_saturation_eps_is_where_the_derivative_drops_below_a_tenth_of_its_peak():
    y_tanh = 1 - T.SATURATION_EPS * 2  # the tanh bound minus eps * range
    y_sig = 1 - T.SATURATION_EPS
    assert 1 - y_tanh**2 == pytest.approx(0.0975)
    assert y_sig * (1 - y_sig) / 0.25 == pytest.approx(0.0975)


def test_update_ratio_is_the_norm_of_the_step_over_the_norm_of_the_weights():
    before, after = torch.tensor([3.0, 4.0]), torch.tensor([3.0, 4.5])
    assert update_ratio(before, after).item() == pytest.approx(0.5 / 5.0)


def test_estimated_update_ratio_for_sgd_and_adam():
    w = torch.tensor([3.0, 4.0])  # ||W|| = 5
    assert estimate_update_ratio(w, torch.tensor([0.6, 0.8]), lr=0.1).item() == pytest.approx(0.1 * 1.0 / 5)
    # Adam's first step is lr per element with a non-zero gradient.
    assert estimate_update_ratio(w, torch.tensor([7.0, 0.0]), 0.1, "adam").item() == pytest.approx(0.1 / 5)
    two = estimate_update_ratio(w, torch.tensor([7.0, -1e-3]), 0.1, "adamw").item()
    assert two == pytest.approx(0.1 * math.sqrt(2) / 5)


def test_moments_merge_batches_exactly():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, generator=gen) * 3 + 10, torch.randn(7, 3, generator=gen)
    m = Moments()
    m.update(a)
    m.update(b)
    both = torch.cat([a, b]).double().numpy()
    assert m.mean.item() == pytest.approx(both.mean(), rel=1e-5)
    assert m.var().item() == pytest.approx(both.var(), rel=1e-5)
    per_feature = Moments()
    per_feature.update(a, [0])
    per_feature.update(b, [0])
    np.testing.assert_allclose(per_feature.var().numpy(), both.var(axis=0), rtol=1e-5)


def test_read_all_returns_floats_and_lists():
    out = read_all({"a": {"s": torch.tensor(2.5), "v": torch.tensor([1.0, 2.0])}, "b": {}})
    assert out == {"a": {"s": 2.5, "v": [1.0, 2.0]}, "b": {}}


# ----------------------------------------------------------------------------- diagnose_model on a tiny net


def _tiny_net() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        net[0].bias.copy_(torch.tensor([0.0, 0.0, -10.0]))  # unit 2 can never fire on these inputs
        net[2].weight.copy_(torch.tensor([[1.0, -1.0, 0.5], [0.5, 0.5, 1.0]]))
        net[2].bias.zero_()
    return net


def test_diagnose_model_layer_statistics_match_hand_computation():
    net = _tiny_net()
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.0, -2.0], [2.0, 1.0]])
    y = torch.tensor([0, 1, 0, 1])
    report = diagnose_model(net, x, y, lr=0.1)
    by_name = {layer.name: layer for layer in report.layers}
    assert [layer.name for layer in report.layers] == ["0", "1", "2"]
    z = x @ net[0].weight.T + net[0].bias
    assert by_name["0"].mean == pytest.approx(z.mean().item(), rel=1e-5)
    assert by_name["0"].std == pytest.approx(z.std(unbiased=False).item(), rel=1e-5)
    h = torch.relu(z)
    assert by_name["1"].dead_fraction == pytest.approx(1 / 3)  # unit 2
    assert by_name["1"].mean == pytest.approx(h.mean().item(), rel=1e-5)
    assert sum(by_name["1"].hist) == h.numel()
    # Gradients and first-step SGD update ratios from an independent autograd pass.
    ref = _tiny_net()
    nn.functional.cross_entropy(ref(x), y).backward()
    for i in ("0", "2"):
        w, g = ref[int(i)].weight, ref[int(i)].weight.grad
        assert by_name[i].grad_norm == pytest.approx(g.norm().item(), rel=1e-5)
        assert by_name[i].update_ratio == pytest.approx(0.1 * g.norm().item() / w.norm().item(), rel=1e-5)
    assert report.loss == pytest.approx(nn.functional.cross_entropy(ref(x), y).item(), rel=1e-6)
    assert report.input.std == pytest.approx(x.std(unbiased=False).item(), rel=1e-5)
    assert report.input.features == 2


def test_diagnose_model_leaves_the_model_and_rng_unchanged():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
    net.eval()
    net[0].weight.grad = torch.ones_like(net[0].weight)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    torch.manual_seed(123)
    diagnose_model(net, x, y, lr=0.01)
    after_rng = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(after_rng, torch.rand(1))
    assert not net.training
    assert torch.equal(net[0].weight.grad, torch.ones_like(net[0].weight)) and net[4].weight.grad is None
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert not net._forward_pre_hooks and not any(m._forward_hooks for m in net.modules())


def test_reused_activation_module_is_recorded_per_call_in_depth_order():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.head = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)
            self.act = nn.Tanh()

        def forward(self, x):
            return self.head(self.act(self.fc2(self.act(self.fc1(x)))))

    torch.manual_seed(0)
    report = diagnose_model(Shared(), torch.randn(8, 4), torch.randint(0, 2, (8,)))
    assert [layer.name for layer in report.layers] == ["fc1", "act", "fc2", "act#1", "head"]
    assert all(layer.saturated_fraction is not None for layer in report.layers if layer.kind == "activation")


def test_input_is_judged_after_the_models_own_preprocessing():
    from trainwell.data.preprocess import fit_preprocess
    from trainwell.nn.pipeline import Classifier

    torch.manual_seed(0)
    raw = torch.rand(64, 1, 4, 4) * 255.0  # raw pixel values
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    y = torch.randint(0, 3, (64,))
    assert diagnose_model(net, raw, y).has("unnormalized-input")
    model = Classifier(net, fit_preprocess("standardize", raw))
    report = diagnose_model(model, raw, y)
    assert not report.has("unnormalized-input", "info")
    assert abs(report.input.mean) < 1e-5 and report.input.std == pytest.approx(1.0, rel=1e-4)


def test_diagnose_model_rejects_bad_input_with_one_line_errors():
    net = nn.Linear(3, 2)
    with pytest.raises(DataError, match="examples"):
        diagnose_model(net, torch.randn(4, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(DataError, match="at least 2"):
        diagnose_model(net, torch.randn(1, 3), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ConfigError, match="lr"):
        diagnose_model(net, torch.randn(4, 3), torch.zeros(4, dtype=torch.long), lr=-1.0)
    with pytest.raises(DataError, match="do not match"):
        diagnose_model(net, torch.randn(4, 3), torch.zeros(4, 5))
    with pytest.raises(ConfigError, match="integer >= 1"):
        Recorder(net, every=0)
    with pytest.raises(ConfigError, match="optimizer"):
        diagnose_model(net, torch.randn(4, 3), torch.zeros(4, dtype=torch.long), lr=0.1, optimizer="lbfgs")
    frozen = nn.Linear(3, 2).requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable"):
        diagnose_model(frozen, torch.randn(4, 3), torch.zeros(4, dtype=torch.long))


def test_float_targets_use_mse():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    assert diagnose_model(net, x, y).loss == pytest.approx(nn.functional.mse_loss(net(x), y).item(), rel=1e-6)


# ----------------------------------------------------------------------------- report


def _report() -> Report:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.Sigmoid(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    return diagnose_model(net, torch.randn(32, 4) * 100, torch.randint(0, 3, (32,)), lr=0.1)


def test_report_to_dict_is_strict_json_with_the_documented_keys():
    report = _report()
    d = report.to_dict()
    json.dumps(d, allow_nan=False)
    assert {"findings", "layers"} <= set(d)
    assert d["findings"], "raw-scale input must produce findings"
    for f in d["findings"]:
        assert {"code", "severity", "layers", "evidence", "fix"} <= set(f)
        assert f["code"] in RULES and f["severity"] in ("info", "warning", "error")
    severities = [f.severity for f in report.findings]
    order = {"error": 0, "warning": 1, "info": 2}
    assert severities == sorted(severities, key=order.__getitem__)


def test_render_prints_findings_and_layer_table():
    from rich.console import Console

    console = Console(record=True, width=200)
    report = _report()
    report.render(console)
    text = console.export_text()
    assert "unnormalized-input" in text and "layers" in text and "Linear(4->16)" in text


def test_plot_report_writes_three_pngs(tmp_path):
    paths = plot_report(_report(), tmp_path)
    assert [p.name for p in paths] == ["histograms.png", "std_by_depth.png", "grad_by_depth.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_exit_code_by_severity():
    warn = Report([Finding("dead-units", "warning", [], {}, "fix")])
    assert warn.exit_code() == 0 and warn.exit_code(strict=True) == 1
    error = Report([Finding("divergence", "error", [], {}, "fix")])
    assert error.exit_code() == 0 and error.exit_code(strict=True) == 1
    assert Report([Finding("unnormalized-input", "info", [], {}, "fix")]).exit_code(strict=True) == 0
    with pytest.raises(ValueError):
        Finding("x", "fatal", [], {}, "")


def test_every_rule_code_has_a_doc_and_the_issue_codes_exist():
    required = {"vanishing-activations", "exploding-activations", "saturation", "dead-units",
                "vanishing-gradients", "exploding-gradients", "unnormalized-input", "update-ratio-high",
                "update-ratio-low", "divergence", "overfitting", "lr-too-high", "lr-too-low"}
    assert required <= set(RULES.names())
    assert all(entry.doc for entry in RULES)


# ----------------------------------------------------------------------------- rules on hand-made statistics


def _weights(*ratios: float) -> list[LayerStats]:
    return [LayerStats(f"l{i}", "linear", "Linear", i, units=10, update_ratio=r) for i, r in enumerate(ratios)]


def test_update_ratio_rules_use_the_median_over_layers():
    assert run_rules(Context(_weights(1e-3, 2e-3, 0.3))) == []  # one hot head does not flag
    (f,) = run_rules(Context(_weights(0.1, 0.2, 0.3)))
    assert f.code == "update-ratio-high" and f.severity == "warning" and f.evidence["median"] == 0.2
    (f,) = run_rules(Context(_weights(1e-6, 2e-6, 1e-3)))
    assert f.code == "update-ratio-low" and f.layers == ["l0", "l1"]


def test_low_updates_are_expected_once_the_schedule_has_decayed_the_lr():
    hist = [{"epoch": 1, "train_loss": 1.0, "lr": 0.1}, {"epoch": 2, "train_loss": 0.99, "lr": 0.01}]
    assert run_rules(Context(_weights(1e-6, 1e-6, 1e-6), history=hist)) == []
    hist[-1]["lr"] = 0.1
    codes = {f.code for f in run_rules(Context(_weights(1e-6, 1e-6, 1e-6), history=hist))}
    assert codes == {"update-ratio-low", "lr-too-low"}


def test_overfitting_needs_val_loss_rising_past_the_gl_threshold_while_train_falls():
    def rows(train, val):
        return [{"epoch": i + 1, "train_loss": t, "val_loss": v} for i, (t, v) in enumerate(zip(train, val))]

    (f,) = run_rules(Context(history=rows([1.0, 0.5, 0.3, 0.2, 0.1], [0.9, 0.5, 0.55, 0.6, 0.7])))
    assert f.code == "overfitting" and f.evidence["best_epoch"] == 2
    assert f.evidence["generalisation_loss"] == pytest.approx(0.4)
    assert run_rules(Context(history=rows([1.0, 0.5, 0.3, 0.2, 0.1], [0.9, 0.5, 0.4, 0.35, 0.3]))) == []
    # Only one epoch of rise: not yet (patience 2).
    assert run_rules(Context(history=rows([1.0, 0.5, 0.3, 0.2], [0.9, 0.5, 0.4, 0.6]))) == []


def test_divergence_and_lr_too_high_from_a_nan_history():
    hist = [{"epoch": 1, "train_loss": 2.0}, {"epoch": 2, "train_loss": float("nan")}]
    found = {f.code: f for f in run_rules(Context(history=hist))}
    assert found["divergence"].severity == "error" and found["divergence"].evidence["nonfinite_train_loss_epoch"] == 2
    assert found["lr-too-high"].severity == "error"


def test_loss_worse_than_chance_after_an_epoch_means_lr_too_high():
    layers = [LayerStats("head", "linear", "Linear", 0, units=10)]
    hist = [{"epoch": 1, "train_loss": 40.0}, {"epoch": 2, "train_loss": 2.3}]
    (f,) = run_rules(Context(layers, history=hist))
    assert f.code == "lr-too-high" and f.evidence["chance_loss"] == pytest.approx(math.log(10), rel=1e-2)


def test_unnormalized_input_thresholds():
    def stats(mean, std, fmean, fstd):
        return InputStats(mean, std, fmean, fstd, fstd, 3, 100)

    assert run_rules(Context(input=stats(0.0, 1.0, 0.1, 1.0))) == []
    (f,) = run_rules(Context(input=stats(80.0, 90.0, 80.0, 90.0)))
    assert f.code == "unnormalized-input" and f.severity == "warning"
    (f,) = run_rules(Context(input=stats(0.3, 0.4, 0.3, 0.4)))  # [0, 1] pixels: only not centred
    assert f.severity == "info"


# ----------------------------------------------------------------------------- during training


def _steps(model: nn.Module, n: int, opt: torch.optim.Optimizer | None = None) -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(n):
        x, y = torch.randn(16, 4, generator=gen), torch.randint(0, 3, (16,), generator=gen)
        loss = nn.functional.cross_entropy(model(x), y)
        if opt is not None:
            opt.zero_grad()
        loss.backward()
        if opt is not None:
            opt.step()


def test_sampling_every_n_steps_and_no_hooks_on_other_steps():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    rec = Recorder(net, every=3)
    seen = []
    spy = net[0].register_forward_pre_hook(lambda m, a: seen.append(len(net[2]._forward_hooks)))
    _steps(net, 7)
    # Steps 0, 3, 6 are sampled: only then do the other layers carry the recorder's hooks.
    assert seen == [1, 0, 0, 1, 0, 0, 1]
    assert rec.samples == 3 and rec.accs["0"].samples == 3 and rec.accs["0"].examples == 48
    net.eval()
    net(torch.randn(2, 4))  # eval forwards are not training steps
    assert rec.steps == 7
    spy.remove()
    rec.close()
    assert not net._forward_pre_hooks and not any(m._forward_hooks for m in net.modules())


def test_measured_update_ratio_is_the_real_optimiser_step():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    rec = Recorder(net, every=1, track_updates=True)
    before = net[0].weight.detach().clone()
    _steps(net, 1, opt)
    rec.flush_updates()
    expected = ((net[0].weight - before).norm() / before.norm()).item()
    (values, _) = rec.read()
    assert values[0].values["update_ratio"] == pytest.approx(expected, rel=1e-5)
    rec.close()


def test_doctor_callback_with_fit_on_digits(digits, tmp_path):
    import dataclasses

    from trainwell.config import resolve
    from trainwell.train.build import build_classifier
    from trainwell.train.trainer import LoopSettings, build_state, fit

    cfg = resolve(["model.name=mlp", "model.width=32", "model.depth=1", "train.progress=false"])
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=2))
    model = build_classifier(cfg, digits)
    state = build_state(model, cfg, len(digits.train), torch.device("cpu"))
    doctor = DoctorCallback(model, every=5)
    fit(state, digits.train, digits.val, LoopSettings.from_config(cfg, digits.num_classes), callbacks=[doctor])
    doctor.close()
    assert [r.context for r in doctor.reports] == ["epoch 1", "epoch 2"]
    layers = doctor.report.layers
    assert [layer.kind for layer in layers] == ["linear", "activation", "linear"]
    assert all(layer.update_ratio > 0 for layer in layers if layer.is_weight)
    assert doctor.report.input is not None and doctor.report.input.std == pytest.approx(1.0, abs=0.2)
    summary = doctor.summary()
    json.dumps(summary, allow_nan=False)
    assert summary["worst"] is None and summary["sampled_every"] == 5
    assert not model._forward_pre_hooks
    paths = doctor.write(tmp_path)
    assert [p.name for p in paths] == ["doctor.json", "doctor_histograms.png", "doctor_std_by_depth.png",
                                       "doctor_grad_by_depth.png", "doctor_fractions.png"]
    saved = json.loads(paths[0].read_text())
    assert saved["summary"]["codes"] == [] and saved["last"]["context"] == "epoch 2"


@pytest.fixture(scope="module")
def digits():
    from trainwell.config import resolve
    from trainwell.data import load_splits

    return load_splits(resolve([]).data)


# ----------------------------------------------------------------------------- run directories and the command


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from trainwell.runs.train import train

    out = tmp_path_factory.mktemp("run") / "run"
    train(["model.name=mlp", "model.width=32", "model.depth=1", "train.epochs=2", "train.progress=false"],
          out=out, quiet=True)
    return out


def test_diagnose_run_on_a_run_directory(run_dir):
    from trainwell.diagnose import diagnose_run

    report = diagnose_run(run_dir, batch_size=64)
    assert report.context.startswith("run ")
    assert [layer.kind for layer in report.layers] == ["linear", "activation", "linear"]
    assert report.layers[0].update_ratio is None  # no lr: small steps at the end of a schedule are expected
    assert report.input.examples == 64


def _doctor_args(*argv: str) -> argparse.Namespace:
    from trainwell.cli.doctor import add_doctor_parser

    parser = argparse.ArgumentParser(prog="trainwell")
    add_doctor_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["doctor", *argv])


def test_doctor_command_on_a_run_dir_and_on_a_config(run_dir, tmp_path, capsys):
    from trainwell.cli.doctor import cmd_doctor

    assert cmd_doctor(_doctor_args(str(run_dir), "--json", "--out", str(tmp_path / "a"))) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {"findings", "layers"} <= set(printed)
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["findings"] == printed["findings"]
    assert {p.name for p in (tmp_path / "a").iterdir()} == {"report.json", "summary.json", "histograms.png", "std_by_depth.png",
                                                           "grad_by_depth.png"}
    # A config with a planted fault: N(0, 0.01) init of a deep MLP -> an error, exit 1 with --strict.
    args = _doctor_args("model.name=mlp", "model.norm=none", "model.depth=5", "model.width=32", "init.scheme=normal",
                        "--strict", "--out", str(tmp_path / "b"), "--no-plots")
    assert cmd_doctor(args) == 1
    out = capsys.readouterr().out
    assert "vanishing-activations" in out
    saved = json.loads((tmp_path / "b" / "report.json").read_text())
    assert "vanishing-activations" in [f["code"] for f in saved["findings"]]


def test_doctor_command_errors_are_one_line_config_errors(tmp_path):
    from trainwell.cli.doctor import run_doctor

    with pytest.raises(ConfigError, match="neither a run directory"):
        run_doctor(_doctor_args(str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="batch-size"):
        run_doctor(_doctor_args("--batch-size", "1"))


def test_hooks_never_read_device_tensors_on_the_host(monkeypatch):
    """Accumulation stays on the device: no .item()/bool()/float()/tolist() inside the hooks of a step."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 8), nn.Tanh(),
                        nn.Linear(8, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    rec = Recorder(net, every=1, track_updates=True)
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))

    def forbidden(*args, **kwargs):
        raise AssertionError("a host read of a tensor inside the doctor's hooks")

    with monkeypatch.context() as m:
        for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"):
            m.setattr(torch.Tensor, name, forbidden)
        for _ in range(3):
            loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        net(x)  # the next forward turns the weight snapshots into update ratios
    records, inputs = rec.read()  # the one host read
    assert records[0].samples == 4 and records[0].values["update_ratio"] > 0
    assert records[1].values["dead_fraction"] >= 0 and records[3].values["saturated_fraction"] >= 0
    rec.close()
