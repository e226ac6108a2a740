"""Specification of introspect_mi.paired: cluster bootstrap, exact sign-flip test, power; numbers by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from introspect_mi.paired import (
    clustered_mean, compare_paired, detectable_difference, item_differences, pairs_needed, sign_flip_test,
)


def test_resampling_items_widens_the_interval_when_an_items_pairs_move_together() -> None:
    # 10 items × 3 properties; an item is right on all its properties or on none: accuracy 0.5.
    # Resampling pairs treats 30 pairs as independent: SE = sqrt(.25 / 30) = 0.0913.
    # Resampling items sees 10 independent units: SE = sqrt(.25 / 10) = 0.158, sqrt(3) × wider.
    items = np.repeat(np.arange(10), 3)
    hits = (items < 5).astype(float)
    by_pair = clustered_mean(hits, clusters=np.arange(30), n_boot=4000, seed=1)
    by_item = clustered_mean(hits, clusters=items, n_boot=4000, seed=1)
    assert by_pair.value == by_item.value == 0.5
    ratio = (by_item.ci_high - by_item.ci_low) / (by_pair.ci_high - by_pair.ci_low)
    assert ratio == pytest.approx(math.sqrt(3), rel=0.15)
    assert by_pair.ci_high - by_pair.ci_low == pytest.approx(2 * 1.96 * math.sqrt(0.25 / 30), rel=0.15)


def test_one_pair_per_item_resamples_exactly_as_pairs() -> None:
    hits = np.array([1, 0, 1, 1, 0, 1, 0, 1], dtype=float)
    assert clustered_mean(hits, clusters=[f"i{k}" for k in range(8)], seed=3) == clustered_mean(hits, clusters=range(8), seed=3)


def test_macro_averages_strata_and_resamples_within_them() -> None:
    # task A: 4 pairs, 3 right (0.75); task B: 2 pairs, none right (0). Micro 3/6, macro (0.75 + 0) / 2.
    values = [1, 1, 1, 0, 0, 0]
    items, tasks = ["a1", "a2", "a3", "a4", "b1", "b2"], ["A"] * 4 + ["B"] * 2
    assert clustered_mean(values, items, tasks).value == pytest.approx(0.5)
    macro = clustered_mean(values, items, tasks, macro=True, n_boot=500)
    assert macro.value == pytest.approx(0.375)
    assert macro.ci_high <= 0.5  # B's items are always drawn from B: its mean stays 0, so macro ≤ 1/2
    with pytest.raises(ValueError, match="spans two strata"):
        clustered_mean(values, ["a1", "a2", "a3", "a4", "a1", "b2"], tasks)


def brute_force_p(a: np.ndarray, b: np.ndarray, items: list[str]) -> float:
    """Swap the two predictors' labels on every subset of items; share of swaps at least as extreme."""
    names = sorted(set(items))
    observed = abs(a.mean() - b.mean())
    extreme = 0
    for swapped in itertools.product([False, True], repeat=len(names)):
        flip = np.array([swapped[names.index(i)] for i in items])
        x, y = np.where(flip, b, a), np.where(flip, a, b)
        extreme += abs(x.mean() - y.mean()) >= observed - 1e-12
    return extreme / 2 ** len(names)


def test_sign_flip_matches_brute_force_enumeration_of_label_swaps() -> None:
    rng = np.random.default_rng(0)
    items = [f"i{k}" for k in rng.integers(0, 9, size=24)]  # 9 items, uneven sizes
    for trial in range(5):
        a, b = rng.random(24) < 0.6, rng.random(24) < 0.4 + 0.05 * trial
        assert sign_flip_test(a, b, items).p_value == pytest.approx(brute_force_p(a, b, items), rel=1e-9, abs=1e-12)


def test_sign_flip_hand_example() -> None:
    # item x: 2 pairs only a right → d=2; y: one only-a pair → 1; z: 1 (and a tie); w: one each way → 0.
    a = [1, 1, 1, 1, 0, 1, 0]
    b = [0, 0, 0, 0, 0, 0, 1]
    items = ["x", "x", "y", "z", "z", "w", "w"]
    assert list(item_differences(a, b, items)) == [2, 1, 1, 0]
    # ±2 ±1 ±1 → 4, 2, 2, 0, 0, −2, −2, −4: |T*| ≥ 4 in 2 of 8
    t = sign_flip_test(a, b, items)
    assert (t.statistic, t.p_value) == (4, pytest.approx(0.25))
    assert t.z == pytest.approx(4 / math.sqrt(4 + 1 + 1))  # Durkalski: (Σ d)² / Σ d² = 16 / 6
    none = sign_flip_test([1, 0], [1, 0], ["x", "y"])
    assert (none.p_value, none.z) == (1.0, 0.0)


def test_detectable_difference_hand_example() -> None:
    # D = a − b = [1, 1 | 0, −1 | 0] over items p, q, r; mean 0.2, e = [.8, .8, −.2, −1.2, −.2]
    a, b, items = [1, 1, 0, 0, 1], [0, 0, 0, 1, 1], ["p", "p", "q", "q", "r"]
    pw = detectable_difference(a, b, items)
    naive = 0.64 + 0.64 + 0.04 + 1.44 + 0.04  # Σ e² = 2.8
    clustered = 1.6 ** 2 + 1.4 ** 2 + 0.2 ** 2  # Σ_i (Σ_j e_ij)² = 4.56
    icc = (clustered - naive) / (naive / 5 * (2 + 2 + 0))  # Σ m_i(m_i − 1) = 4 → 1.76 / 2.24
    assert pw.icc == pytest.approx(icc) and icc == pytest.approx(0.785714, abs=1e-6)
    assert pw.design_effect == pytest.approx(1 + (9 / 5 - 1) * icc) and pw.design_effect == pytest.approx(clustered / naive)
    assert pw.discordance == pytest.approx(3 / 5)
    z = 1.959964 + 0.841621  # z_.975 + z_.80
    assert pw.mdd == pytest.approx(z * math.sqrt(0.6 * 1.628571 / 5), rel=1e-5)
    assert (pw.n_pairs, pw.n_items) == (5, 3)
    assert pairs_needed(0.1, 0.5, 1.2) == 471  # 2.801585² × 0.5 × 1.2 / 0.01 = 470.93


def test_independent_pairs_have_design_effect_one_and_the_textbook_mdd() -> None:
    a, b = [1, 0, 1, 0], [0, 1, 1, 0]
    pw = detectable_difference(a, b, ["1", "2", "3", "4"])
    assert pw.design_effect == pytest.approx(1.0) and pw.icc == 0.0
    assert pw.mdd == pytest.approx(2.801585 * math.sqrt(0.5 / 4), rel=1e-5)


def test_compare_paired_is_coherent() -> None:
    rng = np.random.default_rng(2)
    items = np.repeat([f"i{k}" for k in range(20)], 3)
    tasks = np.repeat(["t1", "t2"], 30)
    a, b = rng.random(60) < 0.6, rng.random(60) < 0.4
    c = compare_paired(a, b, items, tasks, n_boot=300)
    assert c.diff.value == pytest.approx(c.a.value - c.b.value) == pytest.approx((c.only_a - c.only_b) / 60)
    assert c.macro_diff.value == pytest.approx(c.macro_a.value - c.macro_b.value)
    for est in (c.a, c.b, c.diff, c.macro_a, c.macro_b, c.macro_diff):
        assert est.ci_low <= est.value <= est.ci_high
    d = c.to_dict()
    assert {"first_accuracy", "second_accuracy_ci_low", "diff", "diff_ci_low", "macro_diff_ci_high", "only_first", "p_value", "z",
            "mdd", "design_effect", "n_pairs"} <= set(d)
    assert d["n_pairs"] == 60 and d["n_items"] == 20 and d["n_strata"] == 2


def test_no_discordant_pair_leaves_the_mdd_not_estimable() -> None:
    pw = detectable_difference([1, 0, 1], [1, 0, 1], ["x", "y", "z"])
    assert pw.discordance == 0.0 and pw.mdd is None
