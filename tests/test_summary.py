"""The model summary (trainwell.nn.summary) against hand formulas, and `trainwell summary` end to end.

FLOPs of a product are 2 x its multiply-adds: Linear 2*in*out per example, a convolution
2*C_in*C_out*prod(kernel)*prod(output positions). Backward: the weight gradient costs as much as
the forward, the input gradient as much again, except where the input needs no gradient.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from trainwell.config import resolve
from trainwell.nn import build_model
from trainwell.nn.summary import forward_flops, summarize, train_flops


def conv_out(size: int, k: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - k) // stride + 1


def linear_flops(fan_in: int, fan_out: int) -> int:
    return 2 * fan_in * fan_out


def model(name: str, shape: tuple[int, ...], *overrides: str, classes: int = 3) -> nn.Module:
    return build_model(resolve([f"model.name={name}", *overrides]), shape, classes,
                       generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- forward FLOPs by hand


def test_linear_is_2_in_out_per_example():
    s = summarize(nn.Linear(7, 5), (7,))
    assert s.forward_flops == linear_flops(7, 5)
    assert [(r.kind, r.output_shape, r.params, r.forward_flops) for r in s.rows] == [("Linear", (5,), 40, 70)]


@pytest.mark.parametrize("stride,padding,k,hw", [(1, 0, 3, (9, 9)), (1, 1, 3, (9, 7)), (2, 1, 3, (9, 8)),
                                                 (2, 2, 5, (11, 6)), (3, 0, 1, (10, 10))])
def test_conv2d_is_2_cin_cout_k2_hout_wout(stride, padding, k, hw):
    layer = nn.Conv2d(3, 4, k, stride=stride, padding=padding)
    s = summarize(layer, (3, *hw))
    h, w = (conv_out(n, k, stride, padding) for n in hw)
    assert s.rows[0].output_shape == (4, h, w)
    assert s.forward_flops == 2 * 3 * 4 * k * k * h * w


@pytest.mark.parametrize("stride,padding,k", [(1, 0, 5), (2, 2, 5), (1, "same", 3), (3, 1, 4)])
def test_conv1d_is_2_cin_cout_k_lout(stride, padding, k):
    layer = nn.Conv1d(2, 6, k, stride=stride, padding=padding)
    length = 23
    out = length if padding == "same" else conv_out(length, k, stride, padding)
    s = summarize(layer, (2, length))
    assert s.rows[0].output_shape == (6, out)
    assert s.forward_flops == 2 * 2 * 6 * k * out


@pytest.mark.parametrize("preset,shape", [("mnist", (1, 28, 28)), ("mnist1d", (1, 40))])
def test_a_preset_cnn_is_the_sum_of_its_layers_by_hand(preset, shape):
    cfg = resolve([f"preset={preset}", "model.name=cnn"]).model
    net = model("cnn", shape, f"preset={preset}", classes=10)
    # Per block: model.convs 'same' convolutions (the first strided by model.stem_stride in block 0:
    # padding k//2), then a max-pool by 2 along axes >= 4 long unless that stride down-sampled.
    convs, stem_stride, k = getattr(cfg, "convs", 1), getattr(cfg, "stem_stride", 1), cfg.kernel_size
    c_in, size, expected = shape[0], list(shape[1:]), 0
    for block, c_out in enumerate(cfg.channels):
        stride = stem_stride if block == 0 else 1
        for j in range(convs):
            if j == 0 and stride > 1:
                size = [(s + 2 * (k // 2) - k) // stride + 1 for s in size]
            expected += 2 * (c_in if j == 0 else c_out) * c_out * k ** len(size) * math.prod(size)
        if stride == 1:
            size = [s // 2 if s >= 4 else s for s in size]
        c_in = c_out
    features = c_in if cfg.head == "avg" else c_in * math.prod(size)
    expected += linear_flops(features, 10)
    s = summarize(net, shape)
    assert s.forward_flops == expected
    assert sum(r.forward_flops or 0 for r in s.rows) == expected
    assert s.rows[-1].output_shape == (10,)


def test_recurrent_cells_on_the_cpu_are_their_gate_products_or_say_not_counted():
    # T steps of F features into H units: per step, gates x (H x F + H x H) multiply-adds; rnn 1 gate,
    # gru 3, lstm 4. torch runs rnn/gru as matrix products on the CPU; its LSTM may be a fused kernel.
    t, f, h = 12, 3, 16
    for name, gates in (("rnn", 1), ("gru", 3), ("lstm", 4)):
        s = summarize(model(name, (f, t), f"model.hidden={h}"), (f, t))
        recurrent = s.rows[0]
        assert recurrent.name == "rnn" and recurrent.output_shape == (t, h)
        if s.complete:
            assert recurrent.forward_flops == t * 2 * gates * (h * f + h * h)
        else:  # not counted: said so, never a silent 0
            assert recurrent.forward_flops is None and s.not_counted == ("rnn",)
            assert forward_flops(model(name, (f, t)), (f, t)) is None
            assert s.table_rows()[0][-1] == "not counted" and "not counted in rnn" in s.totals_text()[1]
    assert summarize(model("rnn", (f, t)), (f, t)).complete  # the matrix-product path is counted


def test_a_layer_whose_kernel_has_no_flop_formula_is_not_counted_not_zero():
    # nn.Bilinear runs aten._trilinear, for which FlopCounterMode has no formula.
    net = nn.Sequential(nn.Linear(4, 4), nn.Flatten())
    bilinear = nn.Bilinear(4, 4, 2)

    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = net, bilinear

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x), x)

    s = summarize(Pair(), (4,))
    assert [(r.name, r.forward_flops) for r in s.rows] == [("a.0", linear_flops(4, 4)), ("a.1", 0), ("b", None)]
    assert not s.complete and s.not_counted == ("b",)
    assert "not counted" in s.table_rows()[-1][-1] and "not counted in b" in s.totals_text()[1]
    assert forward_flops(Pair(), (4,)) is None and train_flops(Pair(), (4,)) is None


def test_products_outside_any_leaf_are_in_the_total_and_shown():
    class Attention(nn.Module):  # a bmm in the container's own forward, in no leaf
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(6, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, 6)
            q = self.proj(x)
            return torch.bmm(q, q.transpose(1, 2))  # (N, T, T)

    s = summarize(Attention(), (5, 6))
    bmm = 2 * 5 * 6 * 5
    assert s.forward_flops == 5 * linear_flops(6, 6) + bmm
    assert s.outside_layers_flops == bmm
    assert s.table_rows()[-1][0] == "(outside layers)"


# ----------------------------------------------------------------------------- training FLOPs, measured


def test_training_flops_skip_the_input_gradient_of_the_first_layer():
    a, b, c = 11, 7, 3
    # One Linear: forward + weight gradient; its input needs no gradient: 2x, not 3x.
    assert summarize(nn.Linear(a, b), (a,)).train_flops == 2 * linear_flops(a, b)
    # Two: the first 2x its forward, the second 3x (weight and input gradients).
    s = summarize(nn.Sequential(nn.Linear(a, b), nn.ReLU(), nn.Linear(b, c)), (a,))
    assert s.forward_flops == linear_flops(a, b) + linear_flops(b, c)
    assert s.train_flops == 2 * linear_flops(a, b) + 3 * linear_flops(b, c)
    assert train_flops(nn.Sequential(nn.Linear(a, b), nn.ReLU(), nn.Linear(b, c)), (a,)) == s.train_flops


def test_a_frozen_first_layer_costs_only_its_forward():
    net = nn.Sequential(nn.Linear(9, 8), nn.ReLU(), nn.Linear(8, 4))
    net[0].requires_grad_(False)
    s = summarize(net, (9,))
    # Nothing below the second layer needs a gradient: its weight gradient only.
    assert s.train_flops == linear_flops(9, 8) + 2 * linear_flops(8, 4)
    assert s.trainable_params == 8 * 4 + 4 and s.frozen_params == 9 * 8 + 8


def test_conv_training_flops_are_2x_then_3x():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1))
    first, second = 2 * 1 * 4 * 9 * 36, 2 * 4 * 5 * 9 * 36
    s = summarize(net, (1, 6, 6))
    assert (s.forward_flops, s.train_flops) == (first + second, 2 * first + 3 * second)


def test_nothing_trainable_costs_the_forward_only():
    net = nn.Linear(5, 2).requires_grad_(False)
    s = summarize(net, (5,))
    assert s.train_flops == s.forward_flops == linear_flops(5, 2) and s.trainable_params == 0


# ----------------------------------------------------------------------------- parameters, shapes, order


@pytest.mark.parametrize("name,shape", [("mlp", (1, 8, 8)), ("cnn", (1, 8, 8)), ("cnn", (2, 30)),
                                        ("resnet", (3, 8, 8)), ("rnn", (1, 10)), ("gru", (2, 10)),
                                        ("lstm", (10,))])
def test_parameter_counts_are_every_tensor_once(name, shape):
    net = model(name, shape, "model.width=8")
    s = summarize(net, shape)
    assert s.params == sum(p.numel() for p in net.parameters())
    assert s.trainable_params == s.params
    assert sum(r.params for r in s.rows) == s.params  # every parameter lives in a leaf here
    assert s.rows[-1].output_shape == (3,)


def test_rows_follow_the_forward_order_with_qualified_names():
    class Reversed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Linear(3, 2)  # defined first, called second
            self.second = nn.Linear(4, 3)
            self.unused = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.first(self.second(x))

    s = summarize(nn.Sequential(Reversed()), (4,))
    assert [(r.name, r.output_shape) for r in s.rows] == [("0.second", (3,)), ("0.first", (2,)), ("0.unused", None)]
    assert s.params == 8 + 15 + 6 and s.forward_flops == linear_flops(4, 3) + linear_flops(3, 2)
    assert s.rows[-1].forward_flops == 0 and s.table_rows()[-1][2] == "not called"


def test_resnet_rows_name_the_blocks_layers_and_their_shapes():
    s = summarize(model("resnet", (3, 8, 8), "model.width=4", "model.depth=1"), (3, 8, 8))
    by_name = {r.name: r for r in s.rows}
    assert by_name["2.shortcut"].output_shape == (8, 4, 4) and by_name["3.conv2"].output_shape == (16, 2, 2)
    # a 3x3 conv of 16 channels on 2x2 with 'same' padding
    assert by_name["3.conv2"].forward_flops == 2 * 16 * 16 * 9 * 4


def test_per_example_figures_do_not_depend_on_the_batch_size():
    net = model("cnn", (1, 12, 12), "model.channels=4,8", "model.dropout=0.2")
    two, five = summarize(net, (1, 12, 12), batch_size=2), summarize(net, (1, 12, 12), batch_size=5)
    assert two == five  # frozen dataclasses: every row and total compared
    assert two.forward_flops > 0 and two.train_flops > two.forward_flops


# ----------------------------------------------------------------------------- no state change


def test_summarizing_changes_no_parameter_buffer_mode_gradient_or_random_stream():
    net = model("cnn", (1, 8, 8), "model.channels=4,8", "model.dropout=0.5")
    net.train()
    net[1].eval()  # a module in its own mode (as a frozen batch norm is)
    net[0].weight.grad = torch.full_like(net[0].weight, 3.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    modes = [m.training for m in net.modules()]
    rng = torch.get_rng_state()
    summarize(net, (1, 8, 8))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # weights, BN statistics, counts
    assert [m.training for m in net.modules()] == modes
    assert torch.equal(net[0].weight.grad, torch.full_like(net[0].weight, 3.0))
    assert all(p.grad is None for name, p in net.named_parameters() if name != "0.weight")
    assert torch.equal(torch.get_rng_state(), rng)
    # The control: the same forward outside summarize does move the statistics and the random stream.
    net(torch.zeros(2, 1, 8, 8))
    assert not torch.equal(torch.get_rng_state(), rng)
    assert not torch.equal(before["5.num_batches_tracked"], net.state_dict()["5.num_batches_tracked"])


def test_an_eval_mode_model_stays_in_eval_mode():
    net = model("mlp", (6,), "model.dropout=0.3").eval()
    summarize(net, (6,))
    assert not any(m.training for m in net.modules())


def test_to_dict_is_json_and_names_what_is_not_counted():
    s = summarize(model("cnn", (1, 8, 8), "model.channels=4"), (1, 8, 8))
    d = json.loads(json.dumps(s.to_dict()))
    assert d["params"] == s.params and d["forward_flops_per_example"] == s.forward_flops
    assert d["complete"] is True and d["not_counted"] == []
    assert [layer["name"] for layer in d["layers"]] == [r.name for r in s.rows]


# ----------------------------------------------------------------------------- the command and summary.json

MLP = ["model.name=mlp", "model.width=16", "model.depth=1", "data.limit=400"]


def digits_mlp_flops() -> tuple[int, int]:
    """Forward and training FLOPs per example of MLP on 8x8 digits (standardize: elementwise, uncounted)."""
    first, head = linear_flops(64, 16), linear_flops(16, 10)
    return first + head, 2 * first + 3 * head


def test_summary_command_prints_json_totals_and_one_epoch(capsys):
    from trainwell.cli import main
    from trainwell.data import load_splits

    assert main(["summary", *MLP, "train.batch_size=32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    forward, train = digits_mlp_flops()
    assert (out["forward_flops_per_example"], out["train_flops_per_example"]) == (forward, train)
    n = len(load_splits(resolve(MLP).data).train)
    assert out["epoch_examples"] == n - (n % 32 == 1) and out["epoch_train_flops"] == train * out["epoch_examples"]
    assert out["model"] == "mlp" and out["complete"] is True
    assert [layer["kind"] for layer in out["layers"]][1:] == ["Flatten", "Linear", "BatchNorm1d", "ReLU", "Linear"]


def test_summary_command_prints_the_table_and_totals(capsys):
    from trainwell.cli import main

    assert main(["summary", *MLP]) == 0
    out = capsys.readouterr().out
    forward, train = digits_mlp_flops()
    assert "net.1" in out and "Linear" in out and "(16,)" in out
    assert f"forward {forward / 1e6:.5f} MFLOP/example" in out and f"{train / 1e6:.5f} MFLOP/example" in out
    assert "one epoch:" in out and "GFLOP" in out


def test_summary_command_with_a_bad_config_is_one_line_and_exit_2():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "trainwell", "summary", "model.depht=3"],
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("trainwell: error:"), proc.stderr
    assert "model.depht" in lines[0] and "Traceback" not in proc.stderr


def test_a_run_records_its_params_and_flops_in_summary_json(tmp_path):
    import trainwell

    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    run = trainwell.train({"data.limit": 200, "train.epochs": 1, "train.progress": False}, model=net,
                          out=tmp_path / "r", quiet=True)
    saved = json.loads((run.dir / "summary.json").read_text())
    assert saved["params"] == 64 * 10 + 10
    # its input needs no gradient: forward + the weight gradient
    assert (saved["forward_flops_per_example"], saved["train_flops_per_example"]) == (1280, 2560)
    assert saved["flops_not_counted"] == []


def test_summary_json_leaves_flops_out_where_a_layer_is_not_counted():
    from trainwell.runs.train import flop_fields

    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.b = nn.Bilinear(4, 4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(x, x)

    assert flop_fields(summarize(Pair(), (4,))) == {"forward_flops_per_example": None,
                                                    "train_flops_per_example": None, "flops_not_counted": ["b"]}
