"""Recurrent models (rnn, gru, lstm): how they read a sequence, their readouts, and the per-gate init of
their weights, checked against torch.nn.init, the schemes' formulas (KS tests) and orthogonality."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import pytest
import torch
from scipy import stats
from torch import nn

from trainwell.config import Config, InitConfig, ModelConfig, resolve
from trainwell.errors import ConfigError
from trainwell.nn import INITS, build_model, init_model
from trainwell.nn.init import GATES, init_recurrent
from trainwell.nn.layer_groups import layer_groups
from trainwell.nn.recurrent import RecurrentClassifier

RECURRENT = ("rnn", "gru", "lstm")
#: Gate blocks per model, as torch stacks them.
BLOCKS = {"rnn": 1, "gru": 3, "lstm": 4}
CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cfg(name: str, init: dict | None = None, **model) -> Config:
    small = {"hidden": 6, "dropout": 0.0, **model}
    return dataclasses.replace(Config(), model=dataclasses.replace(ModelConfig(), name=name, **small),
                               init=dataclasses.replace(InitConfig(), **(init or {})))


def _net(name: str, shape=(2, 7), classes: int = 3, seed: int = 0, init: dict | None = None, **model) -> nn.Module:
    return build_model(_cfg(name, init, **model), shape, classes, generator=_gen(seed))


def _x(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed))


def _head_input(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the head sees for input ``x`` (captured by a forward pre-hook)."""
    seen: list[torch.Tensor] = []
    handle = net.head.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        net(x)
    finally:
        handle.remove()
    return seen[0]


# ----------------------------------------------------------------------------- reading a sequence


@pytest.mark.parametrize("name", RECURRENT)
def test_the_stack_is_torchs_cell_with_the_configured_sizes(name):
    net = _net(name, shape=(3, 11), hidden=5, layers=2, bidirectional=True)
    assert isinstance(net, RecurrentClassifier) and type(net.rnn) is CELLS[name]
    assert (net.rnn.input_size, net.rnn.hidden_size, net.rnn.num_layers, net.rnn.bidirectional) == (3, 5, 2, True)
    assert net.rnn.batch_first and net.head.in_features == 10 and net.head.out_features == 3
    if name == "rnn":
        assert net.rnn.nonlinearity == "tanh"  # the Elman net of the lecture, whatever model.activation says


@pytest.mark.parametrize("name", RECURRENT)
def test_channels_first_and_channels_last_read_the_same_sequence(name):
    """(C, T) channels-first and its transpose (T, C) channels-last are the same T steps of C features."""
    first = _net(name, shape=(3, 9)).eval()
    last = _net(name, shape=(9, 3), layout="channels_last").eval()
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), last.state_dict().values()))
    x = _x(4, 3, 9)
    with torch.no_grad():
        torch.testing.assert_close(first(x), last(x.transpose(1, 2)), rtol=0, atol=0)
        out, _ = first.rnn(x.transpose(1, 2))  # the time axis is the last one of (N, C, T)
        torch.testing.assert_close(_head_input(first, x), out[:, -1], rtol=0, atol=0)


@pytest.mark.parametrize("name", RECURRENT)
def test_a_vector_is_a_sequence_of_one_feature(name):
    vector, signal = _net(name, shape=(9,)).eval(), _net(name, shape=(1, 9)).eval()
    x = _x(4, 9)
    with torch.no_grad():
        torch.testing.assert_close(vector(x), signal(x.unsqueeze(1)), rtol=0, atol=0)


@pytest.mark.parametrize("name", RECURRENT)
def test_the_order_of_the_steps_matters(name):
    net = _net(name, shape=(1, 12)).eval()
    x = _x(4, 1, 12)
    with torch.no_grad():
        assert not torch.allclose(net(x), net(x.flip(-1)), atol=1e-4)


@pytest.mark.parametrize("name", RECURRENT)
@pytest.mark.parametrize("layers", [1, 2])
def test_last_readout_is_the_top_layers_final_state_of_each_direction(name, layers):
    """Forward: the output after step T; backward: its output after step 1 (it reads T..1); concatenated."""
    h = 5
    net = _net(name, shape=(2, 8), hidden=h, layers=layers, bidirectional=True).eval()
    x = _x(3, 2, 8)
    with torch.no_grad():
        out, _ = net.rnn(x.transpose(1, 2))
        expected = torch.cat([out[:, -1, :h], out[:, 0, h:]], dim=1)
        torch.testing.assert_close(_head_input(net, x), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", RECURRENT)
def test_a_traced_network_takes_any_batch_size(name):
    """The readout keeps the batch size symbolic, so a graph traced at N=2 (trainwell export) runs N=1 and N=5."""
    net = _net(name, shape=(2, 8), layers=2, bidirectional=True).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices
        traced = torch.jit.trace(net, (_x(2, 2, 8),), check_trace=False)
        for n in (1, 5):
            x = _x(n, 2, 8, seed=n)
            torch.testing.assert_close(traced(x), net(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", RECURRENT)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_mean_readout_averages_the_top_outputs_over_time(name, bidirectional):
    net = _net(name, shape=(2, 8), readout="mean", bidirectional=bidirectional, layers=2).eval()
    x = _x(3, 2, 8)
    with torch.no_grad():
        out, _ = net.rnn(x.transpose(1, 2))
        torch.testing.assert_close(_head_input(net, x), out.sum(1) / 8, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", RECURRENT)
@pytest.mark.parametrize("readout", ["last", "mean"])
def test_bidirectional_variants_pass_gradcheck(name, readout):
    net = _net(name, shape=(2, 5), classes=2, hidden=2, layers=2, bidirectional=True, readout=readout).double()
    x = torch.randn(2, 2, 5, generator=_gen(), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(net, (x,))


def test_dropout_acts_between_stacked_layers_and_on_the_readout_only_when_asked():
    two = _net("gru", layers=2, dropout=0.3)
    assert two.rnn.dropout == 0.3 and isinstance(two.dropout, nn.Dropout) and two.dropout.p == 0.3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when dropout is given to a single layer
        one = _net("gru", layers=1, dropout=0.3)
    assert one.rnn.dropout == 0.0 and one.dropout.p == 0.3
    assert isinstance(_net("gru", dropout=0.0).dropout, nn.Identity)


def test_layer_groups_are_the_recurrent_stack_then_the_head():
    net = _net("lstm", layers=2, dropout=0.2)
    assert layer_groups(net) == [[net.rnn, net.dropout], [net.head]]


@pytest.mark.parametrize(("override", "says"), [
    ("model.hidden=0", "model.hidden must be >= 1, got 0"),
    ("model.layers=0", "model.layers must be >= 1, got 0"),
    ("model.readout=banana", "model.readout must be one of last, mean, got 'banana'"),
    ("model.layout=nhwc", "model.layout must be one of channels_first, channels_last, got 'nhwc'"),
    ("model.dropout=1", "model.dropout must be in [0, 1)"),
])
def test_bad_values_are_one_config_error_line(override, says):
    cfg = resolve(["model.name=gru", override])
    with pytest.raises(ConfigError) as info:
        build_model(cfg, (1, 40), 10)
    assert says in str(info.value) and "\n" not in str(info.value)


def test_an_image_is_refused_with_the_shapes_it_takes():
    with pytest.raises(ConfigError, match=r"model.name=lstm needs input of shape \(T,\) or \(C, T\) .* got \(1, 8, 8\); "
                                          r"use model.name=cnn"):
        build_model(resolve(["model.name=lstm"]), (1, 8, 8), 10)


# ----------------------------------------------------------------------------- init


def _weights(module: nn.RNNBase, kind: str) -> list[torch.Tensor]:
    """Every ``kind`` (weight_ih, weight_hh, bias_ih, bias_hh) parameter, in torch's order."""
    return [p for n, p in module.named_parameters() if n.split("_l")[0] == kind]


def _blocks(module: nn.RNNBase, kind: str) -> list[torch.Tensor]:
    return [block for w in _weights(module, kind) for block in w.detach().split(module.hidden_size)]


def _cell(name: str, features: int = 5, hidden: int = 4, layers: int = 2, seed: int = 3) -> nn.RNNBase:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CELLS[name](features, hidden, num_layers=layers, bidirectional=True)


@pytest.mark.parametrize("name", RECURRENT)
def test_init_equals_torch_nn_init_gate_block_by_gate_block_from_the_same_generator(name):
    """xavier_normal on each H x F (and H x 2H) input block, orthogonal on each H x H block, in torch's
    parameter order (layer, direction; ih then hh), all at gain 1: the same draws as torch.nn.init."""
    cell = _cell(name)
    init_recurrent(cell, InitConfig(scheme="xavier_normal", recurrent="orthogonal"), _gen(5))
    expected, g = [], _gen(5)
    for ih, hh in zip(_weights(cell, "weight_ih"), _weights(cell, "weight_hh")):
        for shape, fill in ((ih.shape, nn.init.xavier_normal_), (hh.shape, nn.init.orthogonal_)):
            for _ in range(BLOCKS[name]):
                expected.append(fill(torch.empty(4, shape[1]), generator=g))
    ours = [b for ih, hh in zip(_weights(cell, "weight_ih"), _weights(cell, "weight_hh"))
            for w in (ih, hh) for b in w.detach().split(4)]
    assert len(ours) == len(expected) == 2 * 2 * 2 * BLOCKS[name]
    assert all(torch.equal(a, b) for a, b in zip(ours, expected))


@pytest.mark.parametrize("name", RECURRENT)
def test_each_recurrent_gate_matrix_is_orthogonal(name):
    hidden = 16
    net = _net(name, shape=(3, 10), hidden=hidden, layers=2, bidirectional=True)
    eye = torch.eye(hidden)
    blocks = _blocks(net.rnn, "weight_hh")
    assert len(blocks) == 2 * 2 * BLOCKS[name]
    for block in blocks:
        torch.testing.assert_close(block @ block.T, eye, rtol=0, atol=1e-5)
    # Block by block, not Keras' whole-matrix draw: the G*H x H stack has W^T W = G I, not I.
    for w in _weights(net.rnn, "weight_hh"):
        torch.testing.assert_close(w.detach().T @ w.detach(), BLOCKS[name] * eye, rtol=0, atol=1e-4)


@pytest.mark.parametrize("scheme, dist", [
    ("kaiming_normal", lambda fi, fo: stats.norm(0, 1 / math.sqrt(fi))),
    ("xavier_uniform", lambda fi, fo: stats.uniform(-math.sqrt(6 / (fi + fo)), 2 * math.sqrt(6 / (fi + fo)))),
])
@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_input_blocks_follow_the_scheme_with_the_fans_of_one_block(scheme, dist, name):
    """Each H x F input block is one layer of F inputs and H outputs: kaiming N(0, 1/F), xavier
    U(±sqrt(6/(F+H))), not the fans of the G*H x F stack (KS test, 6,144 weights per block, p > 1e-3)."""
    features, hidden = 64, 96
    cell = CELLS[name](features, hidden)
    init_recurrent(cell, InitConfig(scheme=scheme), _gen(2))
    for block in _blocks(cell, "weight_ih"):
        assert stats.kstest(block.flatten().numpy(), dist(features, hidden).cdf).pvalue > 1e-3
    stacked = dist(features, BLOCKS[name] * hidden) if scheme == "xavier_uniform" else None
    if stacked is not None:  # the stack's fans would give a narrower distribution, and the test sees it
        assert stats.kstest(_blocks(cell, "weight_ih")[0].flatten().numpy(), stacked.cdf).pvalue < 1e-6


def test_recurrent_default_keeps_pytorchs_uniform_and_scheme_default_keeps_the_rest():
    before = _cell("gru", hidden=8)
    untouched = {n: p.detach().clone() for n, p in before.named_parameters()}
    init_recurrent(before, InitConfig(scheme="kaiming_normal", recurrent="default"), _gen())
    for n, p in before.named_parameters():
        same = torch.equal(p, untouched[n])
        assert same == n.startswith("weight_hh"), n  # only the hh matrices kept their values
        if n.startswith("weight_hh"):
            assert float(p.detach().abs().max()) <= 1 / math.sqrt(8)  # torch's U(±1/sqrt(H))
    cell = _cell("gru", hidden=8)
    init_recurrent(cell, InitConfig(scheme="default"), _gen())  # recurrent stays orthogonal
    for n, p in cell.named_parameters():
        assert torch.equal(p, untouched[n]) == (not n.startswith("weight_hh")), n


@pytest.mark.parametrize("name", RECURRENT)
def test_biases_sum_to_init_bias_and_the_lstm_forget_gate_gets_forget_bias(name):
    hidden = 4
    cell = _cell(name, hidden=hidden)
    init_recurrent(cell, InitConfig(bias=0.25, forget_bias=1.5), _gen())
    gates = GATES[cell.mode]
    for b_ih, b_hh in zip(_weights(cell, "bias_ih"), _weights(cell, "bias_hh")):
        assert torch.equal(b_hh, torch.zeros_like(b_hh))
        for gate, block in zip(gates, b_ih.detach().split(hidden)):
            assert torch.equal(block, torch.full((hidden,), 1.5 if gate == "forget" else 0.25)), gate
    assert ("forget" in gates) == (name == "lstm")


@pytest.mark.parametrize("name", RECURRENT)
def test_a_seed_gives_the_same_network_bit_for_bit(name):
    a, b, c = (_net(name, shape=(2, 9), layers=2, bidirectional=True, seed=s) for s in (4, 4, 5))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.rnn.weight_hh_l0, c.rnn.weight_hh_l0)
    assert not torch.equal(a.rnn.weight_ih_l1_reverse, c.rnn.weight_ih_l1_reverse)


def test_init_model_reaches_recurrent_layers_inside_any_module():
    model = nn.Sequential(nn.GRU(3, 8), nn.Linear(8, 2))
    init_model(model, InitConfig(recurrent="orthogonal"), _gen())
    w = model[0].weight_hh_l0.detach()
    for block in w.split(8):
        torch.testing.assert_close(block @ block.T, torch.eye(8), rtol=0, atol=1e-5)


def test_an_lstm_projection_is_one_block_of_the_scheme_at_gain_one_drawn_in_torchs_parameter_order():
    """proj_size > 0: per layer and direction torch holds weight_ih (4H x F), weight_hh (4H x P), the
    biases, then weight_hr (P x H). The H x F and H x P gate blocks get kaiming_normal / orthogonal
    block by block, the P x H projection kaiming_normal whole, all at gain 1 and with init.mode's fan
    (fan_out: H for a gate block, P for the projection): torch.nn.init's draws from the same generator."""
    features, hidden, proj = 5, 6, 3
    cell = nn.LSTM(features, hidden, num_layers=2, proj_size=proj, bidirectional=True)
    init_recurrent(cell, InitConfig(scheme="kaiming_normal", mode="fan_out", bias=0.5), _gen(5))

    def kaiming(rows: int, cols: int) -> torch.Tensor:
        return nn.init.kaiming_normal_(torch.empty(rows, cols), mode="fan_out", nonlinearity="linear", generator=g)

    g = _gen(5)
    expected: dict[str, torch.Tensor] = {}
    for layer in range(2):
        for suffix in ("", "_reverse"):
            inputs = features if layer == 0 else 2 * proj  # the layer below's two directions, projected
            expected[f"weight_ih_l{layer}{suffix}"] = torch.cat([kaiming(hidden, inputs) for _ in range(4)])
            expected[f"weight_hh_l{layer}{suffix}"] = torch.cat(
                [nn.init.orthogonal_(torch.empty(hidden, proj), generator=g) for _ in range(4)])
            expected[f"weight_hr_l{layer}{suffix}"] = kaiming(proj, hidden)
    weights = {n: p.detach() for n, p in cell.named_parameters() if n.startswith("weight")}
    assert set(weights) == set(expected)
    for name, weight in weights.items():
        torch.testing.assert_close(weight, expected[name], rtol=1e-6, atol=0, msg=name)


def test_scheme_default_keeps_pytorchs_weights_but_makes_every_recurrent_matrix_orthogonal():
    """init.scheme=default leaves the model as PyTorch built it except the hidden-to-hidden gate blocks,
    which follow init.recurrent (orthogonal) wherever the recurrent layer sits in the model."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(8)
        model = nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.LSTM(3, 5), nn.Linear(5, 2)))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    init_model(model, InitConfig(scheme="default"), _gen(1))
    for name, param in model.named_parameters():
        recurrent = "weight_hh" in name
        assert torch.equal(param, before[name]) != recurrent, name
        if recurrent:
            for block in param.detach().split(5):
                torch.testing.assert_close(block @ block.T, torch.eye(5), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("value", "says"), [
    ("banana", "init.recurrent: unknown init 'banana'."),
    ("lsuv", "init.recurrent=lsuv needs a batch and has no recurrent step"),
])
def test_a_bad_recurrent_scheme_is_one_config_error_line(value, says):
    with pytest.raises(ConfigError) as info:
        build_model(resolve(["model.name=rnn", f"init.recurrent={value}"]), (1, 10), 3)
    assert says in str(info.value) and "\n" not in str(info.value)


def test_a_bad_recurrent_scheme_says_what_it_got_and_how_to_fix_it_word_for_word():
    valid = ", ".join(sorted(INITS.names()))
    for value, says in [
        ("orthogonl", f"init.recurrent: unknown init 'orthogonl'. Did you mean 'orthogonal'? Valid: {valid}."),
        ("lsuv", "init.recurrent=lsuv needs a batch and has no recurrent step; "
                 "use orthogonal (or default for PyTorch's)."),
    ]:
        with pytest.raises(ConfigError) as info:
            build_model(resolve(["model.name=lstm", f"init.recurrent={value}"]), (1, 10), 3)
        assert str(info.value) == says


# ----------------------------------------------------------------------------- the doctor and the CLI


def test_the_doctor_records_the_head_and_names_the_recurrent_stack_it_cannot_see():
    import io

    from rich.console import Console

    from trainwell.diagnose.doctor import diagnose_config

    report = diagnose_config(["preset=mnist1d", "model.name=gru", "model.hidden=8", "data.limit=200"],
                             batch_size=64, epochs=1, every=1, console=Console(file=io.StringIO()))
    assert [layer.name for layer in report.layers] == ["net.head"]
    assert report.unseen == ["net.rnn (GRU)"] and report.to_dict()["unseen"] == ["net.rnn (GRU)"]
    assert not report.codes("warning"), report.codes("info")  # nothing wrong is said about what it cannot see
    out = io.StringIO()
    report.render(Console(file=out, width=200))
    assert "not inspected: net.rnn (GRU)" in out.getvalue()
    mlp = diagnose_config(["preset=mnist1d", "model.name=mlp", "model.width=8", "data.limit=200"], batch_size=64)
    assert mlp.unseen == [] and mlp.to_dict()["unseen"] == []


def test_cli_lists_the_models_and_refuses_a_bad_value_in_one_line():
    import subprocess
    import sys

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "trainwell", *args], capture_output=True, text=True, timeout=120)

    listed = run("list", "model")
    assert listed.returncode == 0 and all(f"\n{name} " in listed.stdout for name in RECURRENT), listed.stdout
    bad = run("doctor", "preset=mnist1d", "model.name=gru", "model.readout=banana")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == ["trainwell: error: model.readout must be one of last, mean, got 'banana'."]


def test_a_trained_recurrent_run_reloads_and_a_config_naming_more_layers_is_refused_unbuilt(tmp_path):
    import yaml

    import trainwell
    from trainwell.errors import TrainwellError

    overrides = {"data.name": "mnist1d", "data.limit": 200, "train.epochs": 1, "train.progress": False,
                 "model.name": "lstm", "model.hidden": 8, "model.layers": 2, "model.bidirectional": True,
                 "model.readout": "mean", "train.plots": False}
    run = trainwell.train(overrides, out=tmp_path / "run", quiet=True)
    summary = json.loads((run.dir / "summary.json").read_text())
    assert trainwell.evaluate(run.dir)["test_acc"] == pytest.approx(summary["test_acc"], abs=1e-6)
    tree = yaml.safe_load((run.dir / "config.yaml").read_text())
    tree["model"]["layers"] = 10**7  # built for real, this would take minutes
    (run.dir / "config.yaml").write_text(yaml.safe_dump(tree))
    with pytest.raises(TrainwellError, match="model.layers gives 10000000 layers"):
        trainwell.evaluate(run.dir)
