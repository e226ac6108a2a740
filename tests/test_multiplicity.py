"""introspect_mi.multiplicity: the paired sign-flip test holds its level and finds real gains; Holm adjusts a family."""
import numpy as np
import pytest

from introspect_mi.multiplicity import holm, paired_effect, sign_flip_p
from probes.nested import item_differences


def test_sign_flip_holds_its_level_without_signal() -> None:
    """Probe and baseline hits exchangeable (no signal): P(p < 0.05) ≈ 0.05 over 400 data sets."""
    rng = np.random.default_rng(0)
    rejections = []
    for seed in range(400):
        groups = np.repeat(np.arange(30), 2)
        probe, base = rng.random(60) < 0.6, rng.random(60) < 0.6
        rejections.append(sign_flip_p(item_differences(probe, base, groups), n_perm=199, seed=seed) < 0.05)
    assert 0.02 <= np.mean(rejections) <= 0.08


def test_sign_flip_detects_a_real_gain() -> None:
    d = np.r_[np.ones(15), np.zeros(15)]
    assert sign_flip_p(d, n_perm=999) < 0.01
    assert sign_flip_p(-d, n_perm=999) > 0.99


def test_two_sided_sign_flip_sees_both_directions_and_handles_no_units() -> None:
    d = np.r_[np.ones(15), np.zeros(15)]
    assert sign_flip_p(-d, n_perm=999, two_sided=True) < 0.01
    assert sign_flip_p(np.zeros(10), n_perm=99, two_sided=True) == 1.0
    assert np.isnan(sign_flip_p([], n_perm=99))


def test_holm_adjusts_by_rank_and_keeps_order() -> None:
    adjusted = holm([0.01, np.nan, 0.04, 0.03])
    assert adjusted[0] == pytest.approx(0.03) and np.isnan(adjusted[1])
    assert adjusted[3] == pytest.approx(0.06) and adjusted[2] == pytest.approx(0.06)  # monotone: max(2·0.03, 1·0.04)


def test_paired_effect_mean_ci_and_one_sided_p() -> None:
    d = np.array([1.0, 0.0, 1.0, 1.0, -1.0, 1.0, 1.0, 1.0, np.nan])
    got = paired_effect(d, seed=3)
    assert got["n"] == 8 and got["mean"] == pytest.approx(5 / 8)
    assert got["ci_low"] <= got["mean"] <= got["ci_high"]
    assert got["p"] == sign_flip_p(d[:-1], seed=3)
    assert paired_effect(-d, seed=3)["p"] > 0.9  # the test is one-sided: a negative effect is not evidence
    assert np.isnan(paired_effect([np.nan])["p"]) and paired_effect([np.nan])["n"] == 0
