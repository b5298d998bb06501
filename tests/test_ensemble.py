"""Ensembles: combination rules by hand, evaluation against each member's own, folders, errors,
train.ensemble=K, the cosine_restarts schedule and snapshot ensembles. Tiny digits MLPs throughout."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from torch import nn

import trainwell
from trainwell.cli import main
from trainwell.config import resolve
from trainwell.data import load_splits, to_float
from trainwell.errors import ConfigError, DataError, RunDirError
from trainwell.experiments.ensembles import train_ensemble
from trainwell.train.ensemble import Ensemble, combine, evaluate_ensemble
from trainwell.train.ensemble_dir import build_ensemble, load_ensemble
from trainwell.train.optim import build_scheduler, snapshot_epochs

QUICK = {"model.name": "mlp", "model.width": 32, "model.depth": 1, "train.epochs": 2, "data.limit": 200,
         "train.progress": False, "train.device": "cpu"}
QUICK_ARGS = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in QUICK.items()]


class Fixed(nn.Module):
    """Returns the same logits (N, K) whatever the input."""

    def __init__(self, logits: list[list[float]]) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: len(x)]


def softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three tiny runs differing only in the seed."""
    root = tmp_path_factory.mktemp("members")
    return [trainwell.train(dict(QUICK, **{"train.seed": s}), out=root / f"r{s}", quiet=True).dir for s in range(3)]


@pytest.fixture(scope="module")
def ens(runs, tmp_path_factory):
    return build_ensemble(runs, tmp_path_factory.mktemp("ens") / "ens")


# ----------------------------------------------------------------------------- combination rules


def test_mean_prob_is_the_log_of_the_mean_of_the_softmaxes():
    a, b = [[2.0, 0.0, -1.0], [0.0, 0.5, 3.0]], [[-1.0, 1.0, 0.0], [4.0, 0.0, 0.0]]
    out = Ensemble([Fixed(a), Fixed(b)])(torch.zeros(2, 1))
    for i in range(2):
        expected = [math.log((p + q) / 2) for p, q in zip(softmax(a[i]), softmax(b[i]))]
        assert out[i].tolist() == pytest.approx(expected, abs=1e-6)
    ml = Ensemble([Fixed(a), Fixed(b)], "mean_logit")(torch.zeros(2, 1))
    mean_logit = [(p + q) / 2 for p, q in zip(a[0], b[0])]
    assert ml[0].tolist() == pytest.approx([math.log(p) for p in softmax(mean_logit)], abs=1e-6)


def test_vote_majority_wins_and_a_tie_goes_to_the_highest_mean_probability():
    # Two weak votes for class 0 against one confident vote for 2: mean_prob picks 2, vote picks 0.
    m = [[[1.0, 0.9, 0.0]], [[1.0, 0.0, 0.9]], [[-9.0, -9.0, 9.0]]]
    vote = Ensemble([Fixed(x) for x in m], "vote")(torch.zeros(1, 1))
    mean_prob = Ensemble([Fixed(x) for x in m], "mean_prob")(torch.zeros(1, 1))
    assert mean_prob.argmax(1).item() == 2 and vote.argmax(1).item() == 0
    mean = [sum(softmax(x[0])[k] for x in m) / 3 for k in range(3)]
    expected = [(votes + p) / 4 for votes, p in zip([2, 0, 1], mean)]  # one pseudo-vote spread as mean prob
    assert vote.exp()[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert vote.exp().sum().item() == pytest.approx(1.0, abs=1e-6)

    # A tie: one vote each for 0 and 1; class 1 has the higher mean probability.
    tie = [[[1.0, 0.9, -5.0]], [[-5.0, 3.0, 0.0]]]
    out = Ensemble([Fixed(x) for x in tie], "vote")(torch.zeros(1, 1))
    assert out.argmax(1).item() == 1
    mean = [sum(softmax(x[0])[k] for x in tie) / 2 for k in range(3)]
    assert mean[1] > mean[0]
    assert out.exp()[0].tolist() == pytest.approx([(1 + mean[0]) / 3, (1 + mean[1]) / 3, mean[2] / 3], abs=1e-6)
    # The other way round (class 0 more probable) the tie goes to 0: the rule, not the class index.
    tie_rev = [[[3.0, -5.0, 0.0]], [[0.9, 1.0, -5.0]]]
    assert Ensemble([Fixed(x) for x in tie_rev], "vote")(torch.zeros(1, 1)).argmax(1).item() == 0


def test_unknown_method_is_a_config_error():
    with pytest.raises(ConfigError, match="mean_prob"):
        combine(torch.zeros(2, 3, 4), "median")


# ----------------------------------------------------------------------------- evaluation


def test_member_accuracies_equal_each_members_own_evaluate(runs):
    loaded = [trainwell.load_run(d) for d in runs]
    splits = load_splits(loaded[0].config.data)
    result = evaluate_ensemble([r.model for r in loaded], splits.test, "cpu", 1024)
    own = [trainwell.evaluate(d) for d in runs]
    assert result["member_accs"] == [o["test_acc"] for o in own]
    assert result["member_nlls"] == pytest.approx([o["test_loss"] for o in own], rel=1e-6)
    assert result["mean_member_acc"] == pytest.approx(sum(result["member_accs"]) / 3)
    assert set(result["methods"]) == {"mean_prob", "mean_logit", "vote"}
    assert result["ensemble_acc"] == result["methods"]["mean_prob"]["acc"]
    assert result["nll"] == result["methods"]["mean_prob"]["nll"] and 0 <= result["ece"] <= 1
    assert result["gain"] == pytest.approx(result["ensemble_acc"] - result["mean_member_acc"])
    # The ensemble's accuracy by hand: argmax of the mean softmax.
    x, y = to_float(splits.test.x), splits.test.y
    with torch.no_grad():
        mean = torch.stack([r.model(x).softmax(1) for r in loaded]).mean(0)
    assert result["ensemble_acc"] == pytest.approx((mean.argmax(1) == y).float().mean().item())


def test_ensemble_json_round_trip(ens, runs):
    info = json.loads((ens.dir / "ensemble.json").read_text())
    assert info["format"] == "trainwell-ensemble" and info["format_version"] == 1
    assert info["method"] == "mean_prob" and info["members"] == ["members/00", "members/01", "members/02"]
    assert info["classes"] == ens.classes and tuple(info["input_shape"]) == ens.input_shape
    for i, d in enumerate(runs):  # self-contained copies
        for name in ("config.yaml", "model.json", "model.safetensors", "summary.json"):
            assert (ens.dir / "members" / f"{i:02d}" / name).read_bytes() == (d / name).read_bytes()
    loaded = load_ensemble(ens.dir)
    assert isinstance(loaded.model, Ensemble) and loaded.model.method == "mean_prob"
    assert loaded.classes == ens.classes and loaded.input_shape == ens.input_shape
    x = to_float(ens.splits.test.x[:40])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), ens.model(x))
    summary = json.loads((ens.dir / "summary.json").read_text())
    assert len(summary["member_accs"]) == 3 and summary["n_members"] == 3
    for key in ("mean_member_acc", "ensemble_acc", "nll", "ece", "gain", "methods"):
        assert key in summary
    assert (ens.dir / "reliability.png").stat().st_size > 0


@pytest.mark.parametrize("method", ["mean_prob", "vote"])
def test_evaluate_and_predict_take_the_ensemble_folder(runs, ens, tmp_path, method):
    run = ens if method == "mean_prob" else build_ensemble(runs, tmp_path / "e", method=method, copy=False)
    s = run.summary
    ev = trainwell.evaluate(run.dir)
    assert ev["test_acc"] == s["ensemble_acc"] == s["methods"][method]["acc"]
    assert ev["test_loss"] == pytest.approx(s["nll"], rel=1e-4)
    assert ev["n"] == s["n"]

    x = run.splits.test.x[:5].numpy()
    np.savez(tmp_path / "x.npz", x=x)
    rows = trainwell.predict(run.dir, [tmp_path / "x.npz"], device="cpu")
    loaded = [trainwell.load_run(d) for d in runs]
    with torch.no_grad():
        logits = torch.stack([r.model(to_float(torch.from_numpy(x))) for r in loaded])
    expected = combine(logits, method).exp()
    for row, p in zip(rows, expected):
        assert row["class"] == int(p.argmax())
        assert list(row["probabilities"].values()) == pytest.approx(p.tolist(), abs=1e-5)


def test_no_copy_points_at_the_runs_with_relative_paths(runs, tmp_path):
    run = build_ensemble(runs[:2], tmp_path / "e", copy=False)
    info = json.loads((run.dir / "ensemble.json").read_text())
    assert not (run.dir / "members").exists()
    assert all(not p.startswith("/") and (run.dir / p).resolve() == d.resolve() for p, d in zip(info["members"], runs))


# ----------------------------------------------------------------------------- errors


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_incompatible_members_are_one_line_errors_naming_the_run(runs, tmp_path):
    bad = tmp_path / "other-classes"
    shutil.copytree(runs[1], bad)
    card = json.loads((bad / "model.json").read_text())
    card["classes"] = card["classes"][::-1]
    (bad / "model.json").write_text(json.dumps(card))
    with pytest.raises(DataError) as exc:
        build_ensemble([runs[0], bad], tmp_path / "e1")
    assert "other-classes" in _one_line(exc) and "classes" in str(exc.value)

    shaped = tmp_path / "other-shape"
    shutil.copytree(runs[1], shaped)
    card = json.loads((shaped / "model.json").read_text())
    card["input_shape"] = [1, 4, 16]  # the same 64 features, another shape: the MLP still loads
    (shaped / "model.json").write_text(json.dumps(card))
    with pytest.raises(DataError) as exc:
        build_ensemble([runs[0], shaped], tmp_path / "e2")
    assert "other-shape" in _one_line(exc) and "shape" in str(exc.value)
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e2").exists()  # checked before writing

    code = main(["ensemble", str(runs[0]), str(bad), "--out", str(tmp_path / "e3")])
    assert code == 2


@pytest.mark.parametrize("damage", ["not json", "wrong format", "missing member", "bad member"])
def test_corrupt_ensemble_folder_is_one_run_dir_error(ens, tmp_path, damage):
    broken = tmp_path / "broken"
    shutil.copytree(ens.dir, broken)
    path = broken / "ensemble.json"
    info = json.loads(path.read_text())
    if damage == "not json":
        path.write_text(path.read_text()[:40])
    elif damage == "wrong format":
        path.write_text(json.dumps({**info, "format": "something-else"}))
    elif damage == "missing member":
        shutil.rmtree(broken / "members" / "01")
    else:
        (broken / "members" / "01" / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(RunDirError) as exc:
        trainwell.load_run(broken)
    assert "ensemble" in _one_line(exc)


def test_existing_output_folder_is_refused_without_overwrite(runs, ens):
    with pytest.raises(RunDirError, match="--overwrite"):
        build_ensemble(runs, ens.dir)


def test_cli_ensemble_prints_the_table_and_json(runs, tmp_path, capsys):
    assert main(["ensemble", *map(str, runs[:2]), "--method", "mean_logit", "--no-copy",
                 "--out", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert "member 00" in out and "mean of members" in out and "ensemble vote" in out and str(tmp_path / "e") in out
    assert main(["ensemble", *map(str, runs[:2]), "--json", "--out", str(tmp_path / "j")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["member_accs"]) == 2 and data["out"] == str(tmp_path / "j")


# ----------------------------------------------------------------------------- train.ensemble=K


def test_train_ensemble_3_end_to_end(tmp_path, monkeypatch):
    import trainwell.experiments.trials as trials

    monkeypatch.setattr(trials, "default_workers", lambda n, configs: 1)  # no process pool in a test
    assert main(["train", *QUICK_ARGS, "train.ensemble=3", "train.seed=5", "--quiet", "--out", str(tmp_path / "e")]) == 0
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert len(summary["member_accs"]) == 3 and summary["seeds"] == [5, 6, 7]
    members = [tmp_path / "e" / p for p in json.loads((tmp_path / "e" / "ensemble.json").read_text())["members"]]
    seeds = [json.loads((m / "summary.json").read_text())["seed"] for m in members]
    assert seeds == [5, 6, 7]
    assert summary["member_accs"] == [json.loads((m / "summary.json").read_text())["test_acc"] for m in members]
    assert trainwell.evaluate(tmp_path / "e")["test_acc"] == summary["ensemble_acc"]
    # Members are ordinary single runs: their config says so.
    assert trainwell.load_run(members[0]).config.train.ensemble == 1


def test_train_ensemble_checks_its_key(tmp_path):
    with pytest.raises(ConfigError, match="train.ensemble"):
        trainwell.train(dict(QUICK, **{"train.ensemble": 0}), out=tmp_path / "x", quiet=True)
    with pytest.raises(ConfigError, match="custom"):
        trainwell.train(dict(QUICK, **{"train.ensemble": 2}), model=nn.Linear(64, 10), out=tmp_path / "y")
    with pytest.raises(ConfigError, match="train.ensemble"):
        train_ensemble(resolve(["train.ensemble=-1"]), tmp_path / "z")
    with pytest.raises(ConfigError, match="batch_size"):  # the members' config is checked before any folder
        trainwell.train(dict(QUICK, **{"train.ensemble": 2, "train.batch_size": 0}), out=tmp_path / "w", quiet=True)
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- cosine_restarts, snapshots


def _multipliers(overrides: list[str], spe: int) -> list[float]:
    cfg = resolve(["sched.name=cosine_restarts", "optim.lr=0.1", *overrides])
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    return build_scheduler(opt, cfg, spe).multipliers


def test_cosine_restarts_follows_the_formula_and_restarts_at_each_cycle():
    spe, cycles, floor = 5, 3, 0.001 / 0.1
    m = _multipliers([f"sched.cycles={cycles}", "train.epochs=6", "sched.min_lr=0.001"], spe)
    length = len(m) // cycles  # 10 steps per cycle
    for s, v in enumerate(m):
        phase = (s % length) / length
        assert v == pytest.approx(floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * phase)), abs=1e-12)
    starts = [s for s in range(1, len(m)) if m[s] > m[s - 1]]
    assert starts == [10, 20] and all(m[s] == pytest.approx(1.0) for s in [0, *starts])
    for c in range(cycles):  # strictly decreasing within each cycle
        seg = m[c * length:(c + 1) * length]
        assert all(a > b for a, b in zip(seg, seg[1:]))


def test_cosine_restarts_after_warmup_and_snapshot_epochs():
    m = _multipliers(["train.snapshots=2", "train.epochs=5", "sched.warmup_epochs=1"], 4)
    assert m[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # linear warmup over epoch 1
    assert m[4] == pytest.approx(1.0) and m[12] == pytest.approx(1.0)  # cycles start at steps 4 and 12
    assert m[11] < m[4] and m[11] < 0.05 and all(a > b for a, b in zip(m[4:12], m[5:12]))
    cfg = resolve(["sched.name=cosine_restarts", "train.snapshots=2", "train.epochs=5", "sched.warmup_epochs=1"])
    assert snapshot_epochs(cfg, 4) == [3, 5]


@pytest.mark.parametrize("overrides, fragment", [
    (["train.snapshots=2", "sched.name=cosine"], "sched.name=cosine_restarts"),
    (["train.snapshots=2", "sched.name=cosine_restarts", "train.epochs=5"], "multiple of 2"),
    (["train.snapshots=2", "sched.name=cosine_restarts", "sched.cycles=3"], "sched.cycles=3"),
    (["sched.name=cosine_restarts"], "sched.cycles >= 1"),
])
def test_snapshot_settings_are_one_line_config_errors(tmp_path, overrides, fragment):
    with pytest.raises(ConfigError) as exc:
        trainwell.train([*QUICK_ARGS, "train.epochs=4", *overrides], out=tmp_path / "r", quiet=True)
    assert fragment in _one_line(exc)
    assert not (tmp_path / "r").exists()


def test_snapshot_ensemble_writes_loadable_snapshots_and_a_summary(tmp_path):
    run = trainwell.train(dict(QUICK, **{"train.epochs": 4, "sched.name": "cosine_restarts", "train.snapshots": 2}),
                          out=tmp_path / "r", quiet=True)
    folders = sorted((tmp_path / "r" / "snapshots").iterdir())
    assert [f.name for f in folders] == ["00", "01"]
    for f, epoch in zip(folders, [2, 4]):
        snap = trainwell.load_run(f)
        assert snap.classes == run.classes and snap.summary["epoch"] == epoch
    # The last snapshot is the final model.
    final = trainwell.load_run(folders[-1])
    x = to_float(run.splits.test.x[:20])
    with torch.no_grad():
        torch.testing.assert_close(final.model(x), run.model.cpu().eval()(x))
    block = json.loads((tmp_path / "r" / "summary.json").read_text())["snapshot_ensemble"]
    assert len(block["member_accs"]) == 2 and block["member_accs"][-1] == pytest.approx(run.summary["test_acc"])
    for key in ("mean_member_acc", "ensemble_acc", "nll", "ece"):
        assert isinstance(block[key], float)
    ens_summary = json.loads((tmp_path / "r" / "snapshot-ensemble" / "summary.json").read_text())
    assert ens_summary["ensemble_acc"] == block["ensemble_acc"]
    assert trainwell.evaluate(tmp_path / "r" / "snapshot-ensemble")["test_acc"] == block["ensemble_acc"]


def test_the_output_folder_may_neither_hold_nor_lie_in_a_member(tmp_path):
    a, b = tmp_path / "runs" / "a", tmp_path / "runs" / "ab"  # ab shares a's prefix, not its folder
    for d in (a, b):
        d.mkdir(parents=True)
    with pytest.raises(RunDirError, match="is \\(inside\\) the member run"):
        build_ensemble([a, b], a / "ens")
    with pytest.raises(RunDirError, match="lies inside the output folder"):
        build_ensemble([a, b], tmp_path / "runs")
    with pytest.raises(RunDirError, match="is \\(inside\\) the member run"):
        build_ensemble([a, b], a)
