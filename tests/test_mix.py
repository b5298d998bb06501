"""Mixup and CutMix: soft targets sum to 1, lam follows Beta(alpha, alpha), pairing by permutation."""

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
