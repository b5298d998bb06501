"""Mixup and CutMix: soft targets sum to 1, lam follows Beta(alpha, alpha), pairing by permutation."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from trainwell.config import MixConfig
from trainwell.errors import ConfigError
from trainwell.train.mix import apply_mix, mixing_enabled, sample_mix, smooth_targets

CPU = torch.device("cpu")


def test_smooth_targets_closed_form():
    y = torch.tensor([0, 2, 1])
    t = smooth_targets(y, 4, 0.2)
    expected = torch.full((3, 4), 0.05)
    expected[torch.arange(3), y] = 0.85
    torch.testing.assert_close(t, expected)


@pytest.mark.parametrize("shape", [(7, 5), (7, 1, 20), (7, 3, 8, 8)])
def test_mixup_targets_sum_to_one_and_inputs_are_convex_combinations(shape):
    rng = np.random.default_rng(0)
    x = torch.randn(shape)
    y = torch.randint(0, 3, (shape[0],))
    target = smooth_targets(y, 3, 0.1)
    params = sample_mix(x.shape, MixConfig(mixup_alpha=0.4), rng, CPU)
    xm, tm = apply_mix(x, target, params)
    torch.testing.assert_close(tm.sum(1), torch.ones(shape[0]))
    torch.testing.assert_close(xm, params.lam * x + (1 - params.lam) * x[params.perm])
    assert sorted(params.perm.tolist()) == list(range(shape[0]))


def test_mixup_lambda_follows_beta():
    rng = np.random.default_rng(1)
    lams = [sample_mix((4, 2), MixConfig(mixup_alpha=0.4), rng, CPU).lam for _ in range(2000)]
    assert stats.kstest(lams, stats.beta(0.4, 0.4).cdf).pvalue > 0.001


@pytest.mark.parametrize("shape", [(5, 3, 16, 16), (5, 1, 40)])
def test_cutmix_lambda_equals_the_kept_area(shape):
    rng = np.random.default_rng(2)
    x = torch.zeros(shape)
    x_other = torch.ones(shape)
    for _ in range(20):
        params = sample_mix(x.shape, MixConfig(cutmix_alpha=1.0), rng, CPU)
        both = torch.cat([x[:1], x_other[1:]])  # example 0 is zeros, the rest ones
        perm_src = both
        xm, tm = apply_mix(perm_src, smooth_targets(torch.zeros(shape[0], dtype=torch.long), 2, 0.0), params)
        pasted = (xm[0] != perm_src[0]).float().mean() if params.perm[0] != 0 else None
        if pasted is not None:
            assert float(pasted) == pytest.approx(1 - params.lam, abs=1e-6)
        torch.testing.assert_close(tm.sum(1), torch.ones(shape[0]))


def test_switch_probability_chooses_between_ops():
    rng = np.random.default_rng(3)
    cfg = MixConfig(mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.25)
    ops = [sample_mix((8, 1, 8, 8), cfg, rng, CPU).op for _ in range(2000)]
    assert ops.count("cutmix") / len(ops) == pytest.approx(0.25, abs=0.04)


def test_prob_zero_never_mixes_and_disabled_config_is_off():
    rng = np.random.default_rng(4)
    assert all(sample_mix((4, 3), MixConfig(mixup_alpha=1.0, prob=0.0), rng, CPU) is None for _ in range(50))
    assert not mixing_enabled(MixConfig())


def test_same_generator_state_replays_the_same_mix():
    a = sample_mix((6, 1, 8, 8), MixConfig(cutmix_alpha=1.0), np.random.default_rng(5), CPU)
    b = sample_mix((6, 1, 8, 8), MixConfig(cutmix_alpha=1.0), np.random.default_rng(5), CPU)
    assert a.lam == b.lam and a.box == b.box and torch.equal(a.perm, b.perm)


def test_bad_mix_settings_are_rejected():
    with pytest.raises(ConfigError):
        MixConfig(mixup_alpha=-1)
    with pytest.raises(ConfigError):
        MixConfig(prob=1.5)
    with pytest.raises(ConfigError, match="tabular"):
        sample_mix((4, 3), MixConfig(cutmix_alpha=1.0), np.random.default_rng(0), CPU)


# ----------------------------------------------------------------------------- targets and boxes against references


def replayed_draws(seed, cfg, n, spatial):
    """The scalars sample_mix draws, in its documented order, from a generator in the same state:
    the mix-or-not draw, lam ~ Beta(alpha, alpha), the pairing, then the box centre (cutmix only)."""
    rng = np.random.default_rng(seed)
    rng.random()
    alpha = cfg.cutmix_alpha or cfg.mixup_alpha  # one op on at a time here: no switch draw
    lam = float(rng.beta(alpha, alpha))
    perm = rng.permutation(n)
    centre = [int(rng.integers(size)) for size in spatial] if cfg.cutmix_alpha else []
    return lam, perm, centre


def onehot_mix(y, partner, weight_own, k):
    """weight_own * onehot(y) + (1 - weight_own) * onehot(partner), built element by element (numpy)."""
    out = np.zeros((len(y), k))
    for i, (a, b) in enumerate(zip(y, partner)):
        out[i, a] += weight_own[i]
        out[i, b] += 1 - weight_own[i]
    return torch.tensor(out, dtype=torch.float32)


@pytest.mark.parametrize("seed", range(5))
def test_mixup_targets_weight_each_example_by_the_drawn_lambda(seed):
    # lam * y_a + (1 - lam) * y_b with the lam the generator drew: swapping lam and 1 - lam also sums to 1
    cfg, n, k = MixConfig(mixup_alpha=0.4), 9, 5
    lam, perm, _ = replayed_draws(seed, cfg, n, [])
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3])
    x = torch.randn(n, 3)
    params = sample_mix(x.shape, cfg, np.random.default_rng(seed), CPU)
    assert params.lam == lam and params.perm.tolist() == perm.tolist()
    xm, tm = apply_mix(x, smooth_targets(y, k, 0.0), params)
    torch.testing.assert_close(tm, onehot_mix(y.tolist(), y[perm].tolist(), [lam] * n, k))
    torch.testing.assert_close(xm, torch.stack([lam * x[i] + (1 - lam) * x[perm[i]] for i in range(n)]))


@pytest.mark.parametrize("shape", [(6, 2, 12, 10), (6, 1, 30)])
def test_cutmix_targets_weight_each_example_by_the_pixels_it_kept(shape):
    # the weight of an example's own label is the fraction of its pixels still its own in the output
    x = torch.arange(shape[0], dtype=torch.float32).view(-1, *[1] * (len(shape) - 1)).expand(shape).clone()
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    for seed in range(10):
        params = sample_mix(x.shape, MixConfig(cutmix_alpha=1.0), np.random.default_rng(seed), CPU)
        xm, tm = apply_mix(x, smooth_targets(y, 4, 0.0), params)
        kept = [float((xm[i] == i).float().mean()) if params.perm[i] != i else 1.0 for i in range(shape[0])]
        own = [kept[i] if params.perm[i] != i else params.lam for i in range(shape[0])]
        torch.testing.assert_close(tm, onehot_mix(y.tolist(), y[params.perm].tolist(), own, 4))


@pytest.mark.parametrize("spatial", [(16, 12), (40,)])
def test_cutmix_box_is_the_drawn_area_around_the_drawn_centre_clipped_to_the_image(spatial):
    # side sqrt(1 - lam) per dimension for images, 1 - lam of the length for signals (Yun et al. 2019)
    cfg = MixConfig(cutmix_alpha=1.0)
    for seed in range(30):
        lam, _, centre = replayed_draws(seed, cfg, 4, spatial)
        ratio = math.sqrt(1 - lam) if len(spatial) == 2 else 1 - lam
        spans = []
        for size, c in zip(spatial, centre):
            side = int(size * ratio)
            start = c - side // 2  # the box [start, start + side) before clipping
            spans.append((max(start, 0), min(start + side, size)))
        params = sample_mix((4, 1, *spatial), cfg, np.random.default_rng(seed), CPU)
        if len(spatial) == 2:
            (top, bottom), (left, right) = spans
            assert params.box == (top, left, bottom, right)
            area = (bottom - top) * (right - left) / (spatial[0] * spatial[1])
        else:
            ((top, bottom),) = spans
            assert params.box == (top, 0, bottom, 1)  # a segment: the column span is a placeholder
            area = (bottom - top) / spatial[0]
        assert params.lam == pytest.approx(1 - area)


def test_mixing_is_on_only_with_a_positive_probability_and_some_alpha():
    assert mixing_enabled(MixConfig(mixup_alpha=0.2, prob=0.5))
    assert mixing_enabled(MixConfig(cutmix_alpha=0.2, prob=0.5))
    assert not mixing_enabled(MixConfig(mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.0))
    assert not mixing_enabled(MixConfig(prob=1.0))


def test_cutmix_on_tabular_data_says_which_key_and_what_to_use():
    with pytest.raises(ConfigError, match=r"^mix\.cutmix_alpha needs signals or images \(N, C, \.\.\.\); use "
                                          r"mix\.mixup_alpha for tabular data\.$"):
        sample_mix((4, 3), MixConfig(cutmix_alpha=1.0), np.random.default_rng(0), CPU)
