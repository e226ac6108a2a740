"""Specification of probes.metrics; expected numbers are computed by hand in each test."""

from __future__ import annotations

import numpy as np
import pytest

from probes.metrics import accuracy, accuracy_ci, as_labels, balanced_accuracy, majority_baseline


def test_accuracy_and_balanced_accuracy_hand_example() -> None:
    y_true = ["a", "a", "a", "a", "b", "b", "c"]
    y_pred = ["a", "a", "a", "b", "b", "a", "a"]
    assert accuracy(y_true, y_pred) == pytest.approx(4 / 7)
    # recall a = 3/4, b = 1/2, c = 0/1  →  (0.75 + 0.5 + 0) / 3
    assert balanced_accuracy(y_true, y_pred) == pytest.approx(1.25 / 3)
    # a predicted class absent from y_true adds no term: recall a = 1/2, b = 1/1
    assert balanced_accuracy(["a", "a", "b"], ["a", "z", "b"]) == pytest.approx(0.75)


def test_labels_compare_as_strings_and_unseen_labels_are_wrong() -> None:
    assert accuracy([1, 2, 3], ["1", "2", "x"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="None/NaN"):
        as_labels(["a", None])
    with pytest.raises(ValueError, match="3 true labels but 2"):
        accuracy(["a", "b", "c"], ["a", "b"])


def test_majority_baseline_uses_the_training_labels() -> None:
    y_train = ["a"] * 6 + ["b"] * 4  # train majority: a
    y_test = ["a"] * 2 + ["b"] * 8  # test majority would be b (0.8)
    assert majority_baseline(y_train, y_test) == pytest.approx(0.2)
    assert majority_baseline(["b", "a"], ["a", "b", "b"]) == pytest.approx(1 / 3)  # tie: smallest, "a"


def test_bootstrap_ci_contains_estimate_is_seeded_and_narrows_with_n() -> None:
    rng = np.random.default_rng(0)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.choice(["a", "b"], size=n)
        pred = np.where(rng.random(n) < 0.7, y, np.where(y == "a", "b", "a"))  # ~70% right
        return y, pred

    y, pred = sample(100)
    lo, hi = accuracy_ci(y, pred, seed=1)
    assert lo <= accuracy(y, pred) <= hi
    assert (lo, hi) == accuracy_ci(y, pred, seed=1)
    y_big, pred_big = sample(4000)
    lo_big, hi_big = accuracy_ci(y_big, pred_big, seed=1)
    assert lo_big <= accuracy(y_big, pred_big) <= hi_big
    # width ∝ 1/√n: 40× the data, about 1/6.3 of the width (2·1.96·√(.21/100) ≈ 0.18)
    assert 4 < (hi - lo) / (hi_big - lo_big) < 9
    assert accuracy_ci(["a"] * 5, ["a"] * 5) == (1.0, 1.0)


def test_group_bootstrap_resamples_whole_items() -> None:
    """20 items × 10 identical outcomes: really 20 observations, so the CI must be as wide as
    for 20 vectors, not for 200."""
    item_hits = np.r_[np.ones(14, bool), np.zeros(6, bool)]  # 70% of items right
    y = np.array(["a"] * 200)
    pred = np.where(np.repeat(item_hits, 10), "a", "b")
    groups = np.repeat([f"item{i}" for i in range(20)], 10)
    per_item = accuracy_ci(y, pred, groups, seed=0)
    per_vector = accuracy_ci(y, pred, seed=0)
    twenty = accuracy_ci(y[::10], pred[::10], seed=0)  # one vector per item
    assert per_item[0] <= 0.7 <= per_item[1]
    assert per_item[1] - per_item[0] > 2.5 * (per_vector[1] - per_vector[0])  # √10 ≈ 3.2 wider
    assert per_item == pytest.approx(twenty, abs=0.05)
