"""The doctor on anyone's PyTorch model: functional activations (F.relu, torch.tanh, x.sigmoid(), x.relu_())
recorded like activation modules, and ``--model FILE.py:CLASS`` on the command line."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainwell
from trainwell.diagnose import Recorder, diagnose_model
from trainwell.diagnose.recorder import FUNCTIONAL_ACTIVATIONS, FunctionalActivation, functional_activations


class Net(nn.Module):
    """The official PyTorch MNIST example's network (pytorch/examples, mnist/main.py), as published."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        output = F.log_softmax(x, dim=1)
        return output


class ModuleNet(Net):
    """The same network with nn.ReLU modules: what the doctor saw before functional activations."""

    def __init__(self) -> None:
        super().__init__()
        self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU()

    def forward(self, x):
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        x = torch.flatten(self.dropout1(F.max_pool2d(x, 2)), 1)
        return F.log_softmax(self.fc2(self.dropout2(self.relu3(self.fc1(x)))), dim=1)


PAIRS = {"conv1→relu": "relu1", "conv2→relu": "relu2", "fc1→relu": "relu3"}


def _twins() -> tuple[Net, ModuleNet]:
    torch.manual_seed(0)
    functional = Net()
    modules = ModuleNet()
    modules.load_state_dict(functional.state_dict())  # nn.ReLU has no state: the same weights
    return functional, modules


def _batch(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 28, 28, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def _same_statistics(a, b) -> None:
    """Every statistic of two layer rows equal, but the name and the op (how it is written)."""
    left, right = dataclasses.asdict(a), dataclasses.asdict(b)
    for row in (left, right):
        row.pop("name"), row.pop("op")
    assert left == right


def test_the_mnist_examples_functional_relus_get_the_statistics_of_relu_modules():
    functional, modules = _twins()
    x, y = _batch()
    got = diagnose_model(functional, x, y, lr=0.01)
    want = diagnose_model(modules, x, y, lr=0.01)
    assert [layer.name for layer in got.layers] == ["conv1", "conv1→relu", "conv2", "conv2→relu", "fc1", "fc1→relu",
                                                   "fc2"]
    assert [layer.name for layer in want.layers] == ["conv1", "relu1", "conv2", "relu2", "fc1", "relu3", "fc2"]
    rows = {layer.name: layer for layer in got.layers}
    reference = {layer.name: layer for layer in want.layers}
    for name, module_name in PAIRS.items():
        row = rows[name]
        assert row.kind == "activation" and row.op == "F.relu()" and row.activation == "relu"
        assert row.dead_fraction is not None and row.grad_std is not None and row.examples == 32
        _same_statistics(row, reference[module_name])
    for name in ("conv1", "conv2", "fc1", "fc2"):
        _same_statistics(rows[name], reference[name])
    assert got.codes() == want.codes()


def test_a_planted_dead_layer_after_fc1_is_found_as_in_the_module_version():
    functional, modules = _twins()
    with torch.no_grad():
        for net in (functional, modules):
            net.fc1.bias.fill_(-10.0)  # every fc1 pre-activation < 0: every ReLU after it is dead
    x, y = _batch()
    got = {f.code: f for f in diagnose_model(functional, x, y).findings}
    want = {f.code: f for f in diagnose_model(modules, x, y).findings}
    assert got["dead-units"].layers == ["fc1→relu"] and want["dead-units"].layers == ["relu3"]
    assert got["dead-units"].severity == want["dead-units"].severity == "error"
    assert got["dead-units"].evidence["dead_fraction"]["fc1→relu"] == 1.0
    assert set(got) == set(want)


# ----------------------------------------------------------------------------- every way of writing one


def _hardtanh2(x):
    return F.hardtanh(x, -2.0, 2.0)


#: (how it is written, the call, the activation module it must match)
FORMS = [
    ("F.relu", lambda x: F.relu(x), nn.ReLU()),
    ("F.relu inplace", lambda x: F.relu(x, inplace=True), nn.ReLU(inplace=True)),
    ("F.relu_", lambda x: F.relu_(x), nn.ReLU(inplace=True)),
    ("torch.relu", lambda x: torch.relu(x), nn.ReLU()),
    ("x.relu()", lambda x: x.relu(), nn.ReLU()),
    ("x.relu_()", lambda x: x.relu_(), nn.ReLU(inplace=True)),
    ("torch.tanh", lambda x: torch.tanh(x), nn.Tanh()),
    ("F.tanh", lambda x: F.tanh(x), nn.Tanh()),
    ("x.tanh()", lambda x: x.tanh(), nn.Tanh()),
    ("x.tanh_()", lambda x: x.tanh_(), nn.Tanh()),
    ("torch.sigmoid", lambda x: torch.sigmoid(x), nn.Sigmoid()),
    ("F.sigmoid", lambda x: F.sigmoid(x), nn.Sigmoid()),
    ("x.sigmoid()", lambda x: x.sigmoid(), nn.Sigmoid()),
    ("F.gelu", lambda x: F.gelu(x), nn.GELU()),
    ("F.silu", lambda x: F.silu(x), nn.SiLU()),
    ("F.elu", lambda x: F.elu(x), nn.ELU()),
    ("F.elu inplace", lambda x: F.elu(x, inplace=True), nn.ELU(inplace=True)),
    ("F.selu", lambda x: F.selu(x), nn.SELU()),
    ("F.leaky_relu", lambda x: F.leaky_relu(x, 0.1), nn.LeakyReLU(0.1)),
    ("F.leaky_relu inplace", lambda x: F.leaky_relu(x, 0.1, inplace=True), nn.LeakyReLU(0.1, inplace=True)),
    ("F.relu6", lambda x: F.relu6(x), nn.ReLU6()),
    ("F.hardtanh", lambda x: F.hardtanh(x), nn.Hardtanh()),
    ("F.hardtanh(x, -2, 2)", _hardtanh2, nn.Hardtanh(-2.0, 2.0)),
    ("F.softplus", lambda x: F.softplus(x), nn.Softplus()),
    ("F.mish", lambda x: F.mish(x), nn.Mish()),
    ("F.hardswish", lambda x: F.hardswish(x), nn.Hardswish()),
    ("F.hardsigmoid", lambda x: F.hardsigmoid(x), nn.Hardsigmoid()),
    ("F.softsign", lambda x: F.softsign(x), nn.Softsign()),
    ("F.celu", lambda x: F.celu(x), nn.CELU()),
]


class Mlp(nn.Module):
    def __init__(self, act) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 16), nn.Linear(16, 3)
        self.act = act

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


@pytest.mark.parametrize("written, call, module", FORMS, ids=[f[0] for f in FORMS])
def test_every_functional_form_is_seen_with_its_modules_statistics(written, call, module):
    torch.manual_seed(0)
    functional = Mlp(call)
    # A function is no submodule: the twin's module is, so the same weights go in with strict=False.
    modules = Mlp(module)
    modules.load_state_dict(functional.state_dict(), strict=False)
    gen = torch.Generator().manual_seed(2)
    x, y = 3 * torch.randn(48, 6, generator=gen), torch.randint(0, 3, (48,), generator=gen)
    got = diagnose_model(functional, x, y, lr=0.1)
    want = diagnose_model(modules, x, y, lr=0.1)
    assert [layer.name for layer in want.layers] == ["fc1", "act", "fc2"]
    name = want.layers[1].activation
    assert [layer.name for layer in got.layers] == ["fc1", f"fc1→{name}", "fc2"]
    row = got.layers[1]
    assert row.kind == "activation" and row.op.endswith("()")
    for mine, theirs in zip(got.layers, want.layers):
        _same_statistics(mine, theirs)
    assert got.codes() == want.codes()


def test_every_listed_function_is_recorded_as_the_activation_it_is_listed_under():
    functions = functional_activations()
    spaces = {"F": F, "torch": torch, "Tensor": torch.Tensor}
    labels = [label for labels in FUNCTIONAL_ACTIVATIONS.values() for label in labels]
    assert len(functions) == len(labels)  # no two labels name one function
    for name, labels in FUNCTIONAL_ACTIVATIONS.items():
        for label in labels:
            space, attr = label.split(".")
            assert functions[getattr(spaces[space], attr)] == FunctionalActivation(label, name)
    for function in functions.values():  # and each has its module's ActivationInfo (hardtanh's from the call)
        assert function.info((torch.zeros(1),), {}).name == function.name


# ----------------------------------------------------------------------------- no double count, naming, sampling


def test_activation_modules_are_recorded_once_not_again_for_the_function_they_call():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8), nn.ReLU6(),
                        nn.Linear(8, 8), nn.Hardtanh(), nn.Linear(8, 2))
    report = diagnose_model(net, torch.randn(8, 4), torch.randint(0, 2, (8,)))
    assert [layer.name for layer in report.layers] == [str(i) for i in range(9)]


def test_functional_names_say_what_ran_before_them():
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.act, self.head = nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)

        def forward(self, x):
            h = torch.tanh(x)  # before any layer: "input→tanh"
            h = F.relu(self.act(self.fc(h)))  # after the module "act"
            h = self.fc(h).sigmoid()  # fc again: its second call is "fc#1"
            return self.head(F.relu(F.relu(h)))

    torch.manual_seed(0)
    report = diagnose_model(Mixed(), torch.randn(8, 4), torch.randint(0, 2, (8,)))
    assert [layer.name for layer in report.layers] == [
        "input→tanh", "fc", "act", "act→relu", "fc#1", "fc#1→sigmoid", "fc#1→sigmoid→relu",
        "fc#1→sigmoid→relu→relu", "head"]
    rows = {layer.name: layer for layer in report.layers}
    assert rows["fc#1→sigmoid"].op == "Tensor.sigmoid()" and rows["input→tanh"].op == "torch.tanh()"
    assert rows["fc#1→sigmoid"].saturated_fraction is not None and rows["act→relu"].dead_fraction is not None


def _mode_depth() -> int:
    return torch._C._len_torch_function_stack()


def test_functional_activations_are_caught_on_sampled_steps_only():
    seen = []

    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)

        def forward(self, x):
            seen.append(_mode_depth())
            return self.fc2(F.relu(self.fc1(x)))

    torch.manual_seed(0)
    net = Spy()
    rec = Recorder(net, every=3)
    for _ in range(7):
        F.cross_entropy(net(torch.randn(16, 4)), torch.randint(0, 3, (16,))).backward()
        assert _mode_depth() == 0  # left at the end of each forward: not in the loss or the backward pass
    assert seen == [1, 0, 0, 1, 0, 0, 1]
    assert rec.accs["fc1→relu"].samples == 3 and rec.accs["fc1→relu"].examples == 48
    rec.reset()
    for _ in range(3):  # the 8th and 9th steps are not sampled, the 10th is: under the same keys again
        net(torch.randn(16, 4))
    assert list(rec.accs) == ["fc1", "fc1→relu", "fc2"]
    rec.close()
    assert _mode_depth() == 0 and not net._forward_hooks and not net._forward_pre_hooks


def test_a_forward_that_raises_on_a_sampled_step_leaves_no_mode_behind():
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            F.relu(self.fc(x))
            raise ValueError("the user's bug")

    rec = Recorder(Broken(), every=1)
    with pytest.raises(ValueError, match="the user's bug"):
        rec.model(torch.randn(2, 4))
    assert _mode_depth() == 0
    rec.close()


def test_diagnose_model_is_exported_at_the_top_level():
    assert trainwell.diagnose_model is diagnose_model and "diagnose_model" in trainwell.__all__


# ----------------------------------------------------------------------------- --model FILE.py:CLASS

SMALL_NET = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


class Small(nn.Module):
    """A functional CNN for 8x8 digits."""

    def __init__(self, channels=4):
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.fc = nn.Linear(channels * 16, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.fc(torch.flatten(x, 1))


class Wide(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 7)

    def forward(self, x):
        return self.fc(torch.flatten(x, 1))


class NotAModule:
    pass


def helper():
    return 1


if __name__ == "__main__":
    raise SystemExit("the file's main block ran")
'''


@pytest.fixture
def user_file(tmp_path):
    # Named like an installed package: the file is imported by its path, never the module of that name.
    path = tmp_path / "torch.py"
    path.write_text(SMALL_NET)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[str, str]:
    """8x8 one-channel images of 10 classes, as digits (whose loader imports scikit-learn: seconds);
    ``flat.npz`` beside it: vectors of 40 features, data no conv net of the file is written for."""
    import numpy as np

    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("data")
    np.savez(folder / "images.npz", x=rng.random((200, 1, 8, 8), dtype=np.float32), y=np.arange(200) % 10)
    np.savez(folder / "flat.npz", x=rng.random((200, 40), dtype=np.float32), y=np.arange(200) % 10)
    return "data.name=npz", f"data.path={folder / 'images.npz'}"


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    from trainwell.cli.app import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_doctor_on_a_model_class_in_the_users_file(user_file, data, tmp_path, capsys):
    out_dir = tmp_path / "doctor"
    code, out, err = _main(capsys, "doctor", "--model", f"{user_file}:Small", "--model-args", '{"channels": 6}',
                           *data, "--json", "--no-plots", "--out", str(out_dir))
    assert code == 0, err
    layers = {row["name"]: row for row in json.loads(out)["layers"]}
    assert list(layers) == ["net.conv", "net.conv→relu", "net.fc"]
    assert layers["net.conv"]["units"] == 6 and layers["net.conv→relu"]["op"] == "F.relu()"
    assert math.isfinite(layers["net.conv→relu"]["dead_fraction"])
    assert (out_dir / "report.json").is_file()


def test_train_a_model_class_in_the_users_file_as_a_custom_model(user_file, data, tmp_path, capsys):
    from trainwell.train.load import read_card

    out_dir = tmp_path / "run"
    code, _, err = _main(capsys, "train", "--model", f"{user_file}:Small", *data, "train.epochs=1",
                         "train.plots=false", "--quiet", "--out", str(out_dir))
    assert code == 0, err
    card = read_card(out_dir)
    assert card["custom_model"] is True and card["model"] == "custom"
    code, _, err = _main(capsys, "evaluate", str(out_dir))  # what load_run says of a custom model
    assert code == 2 and "custom nn.Module" in err
    code, _, err = _main(capsys, "train", "--resume", str(out_dir), "train.epochs=2", "--quiet")
    assert code == 2 and "--resume RUN_DIR --model FILE.py:CLASS" in err
    code, _, err = _main(capsys, "train", "--resume", str(out_dir), "--model", f"{user_file}:Small", "train.epochs=2",
                         "--quiet")
    assert code == 0, err
    assert json.loads((out_dir / "summary.json").read_text())["epochs"] == 2


def _refusal(capsys, *argv: str) -> str:
    code, out, err = _main(capsys, *argv)
    assert code == 2 and "Traceback" not in err and err.startswith("trainwell: error: --")
    assert err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("command", ["doctor", "train"])
def test_every_model_mistake_is_one_line(user_file, data, tmp_path, capsys, command):
    base = (command, *data, "--out", str(tmp_path / "never"))
    spec = f"{user_file}:Small"
    missing = tmp_path / "missing.py"
    assert f"'{missing}' does not exist" in _refusal(capsys, *base, "--model", f"{missing}:Net")
    text = tmp_path / "net.txt"
    text.write_text(SMALL_NET)
    assert "is not a .py file" in _refusal(capsys, *base, "--model", f"{text}:Small")
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\n\nraise RuntimeError('no GPU here\\nsecond line')\n")
    err = _refusal(capsys, *base, "--model", f"{broken}:Net")
    assert f"importing '{broken}' failed (line 3): RuntimeError: no GPU here;" in err
    assert "has no class 'Nett'; its nn.Module classes: Small, Wide." in _refusal(capsys, *base, "--model",
                                                                                  f"{user_file}:Nett")
    assert "'helper' in" in _refusal(capsys, *base, "--model", f"{user_file}:helper")
    assert "not an nn.Module subclass; its nn.Module classes: Small, Wide" in _refusal(
        capsys, *base, "--model", f"{user_file}:NotAModule")
    assert "--model takes FILE.py:CLASS" in _refusal(capsys, *base, "--model", str(user_file))
    assert "got a JSON list" in _refusal(capsys, *base, "--model", spec, "--model-args", "[4]")
    assert "must be a JSON object" in _refusal(capsys, *base, "--model", spec, "--model-args", "{channels: 4}")
    err = _refusal(capsys, *base, "--model", spec, "--model-args", '{"width": 4}')
    assert "Small(width=4) failed: TypeError:" in err and "the class takes Small(channels=4)" in err
    assert "--model-args gives the keyword arguments" in _refusal(capsys, *base, "--model-args", "{}")
    err = _refusal(capsys, *base, "--model", spec, data[1].replace("images.npz", "flat.npz"))
    assert "its forward failed on data.name=npz's examples (a batch of shape (2, 40)): RuntimeError:" in err
    assert "needs (2, 10): one score per class" in _refusal(capsys, *base, "--model", f"{user_file}:Wide")
    assert not (tmp_path / "never").exists()


def test_model_refusals_of_each_command(user_file, tmp_path, capsys):
    spec = f"{user_file}:Small"
    assert "--model trains in one process for now; drop --nproc" in _refusal(
        capsys, "train", "--model", spec, "--nproc", "2")
    assert "a run directory has its own model" in _refusal(capsys, "doctor", str(tmp_path), "--model", spec)
    assert "with --model, run the doctor without --fix" in _refusal(capsys, "doctor", "--fix", "--model", spec)


def test_the_help_says_only_the_users_file_is_imported(capsys):
    from trainwell.cli.app import build_parser

    for command in ("train", "doctor"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "FILE.py:CLASS" in text and "Only that file is imported, by its path (not a module from sys.path" in text
