"""Class imbalance: loss.class_weights against scikit-learn and the formula, data.sampler=balanced's draw
by its probabilities, both in the loop (resume, one line for mistakes), and the claim itself: on digits
made imbalanced on purpose, either remedy raises the macro-F1 on a balanced test set."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from sklearn.datasets import load_digits
from sklearn.utils.class_weight import compute_class_weight

import trainwell
from interruption import as_if_killed_in_epoch_two
from trainwell.errors import ConfigError
from trainwell.train.imbalance import balanced_draw, class_weights, weighted_cross_entropy
from trainwell.train.trainer import BatchOrder

TIMING = ("seconds", "examples_per_second")


def imbalanced_labels(counts, seed=0):
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]


# ----------------------------------------------------------------------------- the weights


@pytest.mark.parametrize("counts", [[90, 9, 1], [5, 5, 5, 5], [1000, 1], [3, 50, 7, 200, 11]])
def test_balanced_weights_are_scikit_learns(counts):
    y = imbalanced_labels(counts)
    expected = compute_class_weight("balanced", classes=np.arange(len(counts)), y=y.numpy())
    got = class_weights("balanced", y, len(counts))
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32))
    assert got[y].mean().item() == pytest.approx(1.0, rel=1e-6)  # they average 1 over the examples


def test_a_class_without_examples_or_a_wrong_list_is_one_line():
    y = imbalanced_labels([4, 0, 3])
    with pytest.raises(ConfigError, match=r"class 'bird' has no training example"):
        class_weights("balanced", y, 3, ["cat", "bird", "dog"])
    with pytest.raises(ConfigError, match=r"has 2 weight\(s\) but the data has 3 classes"):
        class_weights([1, 2], y, 3)
    with pytest.raises(ConfigError, match="not all 0"):
        class_weights([0, 0, 0], y, 3)
    with pytest.raises(ConfigError, match="finite numbers >= 0"):
        class_weights([1, float("nan"), 1], y, 3)
    assert class_weights("none", y, 3) is None
    torch.testing.assert_close(class_weights([1, 0, 2.5], y, 3), torch.tensor([1, 0, 2.5]))


def test_the_weighted_loss_is_the_batch_mean_of_w_times_the_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(7, 4, generator=g, dtype=torch.float64), torch.tensor([0, 1, 1, 3, 2, 0, 3])
    w = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64)
    logp = logits.log_softmax(1)
    by_hand = (-w[y] * logp[torch.arange(7), y]).mean()
    torch.testing.assert_close(weighted_cross_entropy(logits, y, w), by_hand)
    # smoothing eps: (1 - eps) w_y (-log p_y) + eps/K sum_c w_c (-log p_c), per example
    eps = 0.2
    smoothed = ((1 - eps) * -w[y] * logp[torch.arange(7), y] + eps / 4 * (-w * logp).sum(1)).mean()
    torch.testing.assert_close(weighted_cross_entropy(logits, y, w, eps), smoothed)
    # soft targets (mixup): -sum_c w_c t_c log p_c, per example
    t = torch.rand(7, 4, generator=g, dtype=torch.float64).softmax(1)
    torch.testing.assert_close(weighted_cross_entropy(logits, t, w), (-(w * t * logp).sum(1)).mean())
    # no weights, and all-ones weights: the plain cross-entropy
    torch.testing.assert_close(weighted_cross_entropy(logits, y, None, eps), F.cross_entropy(logits, y, label_smoothing=eps))
    torch.testing.assert_close(weighted_cross_entropy(logits, y, torch.ones(4, dtype=torch.float64)),
                               F.cross_entropy(logits, y))


# ----------------------------------------------------------------------------- the balanced draw


def test_the_balanced_draw_makes_each_class_and_each_example_within_it_equally_likely():
    counts = [900, 90, 9, 1]
    y = imbalanced_labels(counts)
    g = torch.Generator().manual_seed(1)
    draws = torch.cat([balanced_draw(y, 4, g) for _ in range(40)])  # 40 epochs of 1,000 draws
    n = len(draws)
    per_class = torch.bincount(y[draws], minlength=4).double()
    # Binomial(n, 1/4) per class: within 5 standard deviations
    assert (per_class - n / 4).abs().max() < 5 * (n * 0.25 * 0.75) ** 0.5, per_class
    # within the class of 9: each example 1/(4*9) of the draws
    nine = torch.nonzero(y == 2).flatten()
    hits = torch.stack([(draws == i).sum() for i in nine]).double()
    p = 1 / 36
    assert (hits - n * p).abs().max() < 5 * (n * p * (1 - p)) ** 0.5, hits
    assert (draws >= 0).all() and (draws < len(y)).all()


def test_the_balanced_draw_repeats_from_its_generator_and_skips_absent_classes():
    y = imbalanced_labels([5, 0, 3])
    a = balanced_draw(y, 3, torch.Generator().manual_seed(7))
    b = balanced_draw(y, 3, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and len(a) == len(y)
    assert set(y[a].tolist()) <= {0, 2}
    order = BatchOrder(len(y), 4, labels=y, num_classes=3)
    assert torch.equal(order.permutation(torch.Generator().manual_seed(7)), a)
    assert len(BatchOrder(len(y), 4).permutation(torch.Generator().manual_seed(7)).unique()) == len(y)


# ----------------------------------------------------------------------------- in the loop


QUICK = {"data.limit": 300, "train.epochs": 3, "train.progress": False, "train.plots": False, "model.name": "mlp",
         "model.width": 32}


def test_a_balanced_run_resumed_mid_epoch_equals_the_uninterrupted_one(tmp_path):
    cfg = dict(QUICK, **{"data.sampler": "balanced", "loss.class_weights": [1, 2, 1, 1, 3, 1, 1, 1, 1, 0.5],
                         "mix.mixup_alpha": 0.2, "train.checkpoint_every": 3, "train.keep_checkpoints": 100})
    run = trainwell.train(cfg, out=tmp_path / "r", quiet=True)
    assert run.summary["class_weights"] == cfg["loss.class_weights"] and run.summary["sampler"] == "balanced"
    rows = (run.dir / "metrics.jsonl").read_text().splitlines()
    weights = load_file(run.dir / "model.safetensors")
    as_if_killed_in_epoch_two(run.dir, run.summary["steps"], 3)
    resumed = trainwell.train(resume=run.dir, quiet=True)
    again = load_file(resumed.dir / "model.safetensors")
    assert all(torch.equal(weights[k], again[k]) for k in weights)

    def untimed(lines):
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]

    assert untimed((resumed.dir / "metrics.jsonl").read_text().splitlines()) == untimed(rows)
    # and each remedy changes the training: neither is silently ignored
    plain = trainwell.train(QUICK, out=tmp_path / "plain", quiet=True)
    for key, value in (("data.sampler", "balanced"), ("loss.class_weights", "balanced")):
        other = trainwell.train(dict(QUICK, **{key: value}), out=tmp_path / key, quiet=True)
        assert other.summary["test_loss"] != plain.summary["test_loss"]


def test_wrong_class_weights_are_refused_before_the_run_folder_is_made(tmp_path):
    with pytest.raises(ConfigError, match=r"has 2 weight\(s\) but the data has 10 classes"):
        trainwell.train(dict(QUICK, **{"loss.class_weights": [1, 2]}), out=tmp_path / "r", quiet=True)
    assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match="loss.class_weights must be finite numbers >= 0"):
        trainwell.resolve({"loss.class_weights": [1, -1]})
    with pytest.raises(ConfigError, match="data.sampler"):
        trainwell.resolve({"data.sampler": "oversample"})


# ----------------------------------------------------------------------------- the claim


def test_on_digits_made_imbalanced_either_remedy_raises_the_macro_f1(tmp_path):
    # Classes 5-9 keep 6 training examples each, 0-4 all theirs (~130); the test set stays balanced.
    digits = load_digits()
    x, y = digits.images.astype(np.float32), digits.target
    order = np.random.default_rng(0).permutation(len(y))
    test, train = order[:500], order[500:]
    keep = np.concatenate([np.flatnonzero(y[train] == c)[: (1000 if c < 5 else 6)] for c in range(10)])
    path = tmp_path / "imbalanced.npz"
    np.savez(path, x=x[train][keep], y=y[train][keep], x_test=x[test], y_test=y[test])
    base = {"data.name": "npz", "data.path": str(path), "model.name": "mlp", "train.epochs": 10,
            "train.progress": False, "train.plots": False}
    f1 = {}
    for name, extra in (("plain", {}), ("weights", {"loss.class_weights": "balanced"}),
                        ("sampler", {"data.sampler": "balanced"})):
        f1[name] = trainwell.train(dict(base, **extra), out=tmp_path / name, quiet=True).summary["test_macro_f1"]
    # measured (seeds 0, 1): plain 0.82, weights 0.87-0.88, sampler 0.85-0.87 (docs/after-training.md)
    assert f1["weights"] > f1["plain"] + 0.02 and f1["sampler"] > f1["plain"] + 0.02, f1
