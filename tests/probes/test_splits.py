"""Specification of probes.splits: task split, group split, group k-fold."""

from __future__ import annotations

import numpy as np
import pytest

from introspect_mi.errors import UserError
from probes.splits import group_folds, group_split, task_split


def test_task_split_masks_and_errors() -> None:
    tasks = np.array(["animals", "colours", "numbers", "animals", "colours"])
    train, test = task_split(tasks, ["colours"], ["animals"])
    np.testing.assert_array_equal(train, [False, True, False, False, True])
    np.testing.assert_array_equal(test, [True, False, False, True, False])  # numbers: neither
    with pytest.raises(UserError, match="both train and held-out"):
        task_split(tasks, ["animals", "colours"], ["animals"])
    with pytest.raises(UserError, match="wealth_seeking have no vectors"):
        task_split(tasks, ["wealth_seeking"], ["animals"])


def test_group_split_keeps_items_together_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    groups = rng.choice([f"item{i}" for i in range(50)], size=400)
    train, test = group_split(groups, test_fraction=0.2, seed=3)
    assert not (train & test).any() and (train | test).all()
    assert not set(groups[train]) & set(groups[test])
    assert len(set(groups[test])) == 10  # 20% of the 50 groups
    again = group_split(groups, test_fraction=0.2, seed=3)
    np.testing.assert_array_equal(test, again[1])
    assert set(groups[group_split(groups, 0.2, seed=4)[1]]) != set(groups[test])
    # Which groups are test depends on the names and seed, not on the row order.
    order = rng.permutation(400)
    assert set(groups[order][group_split(groups[order], 0.2, seed=3)[1]]) == set(groups[test])
    with pytest.raises(UserError, match="cannot be split"):
        group_split(["a", "a", "b"], test_fraction=0.1)


def test_group_folds_put_each_group_in_one_balanced_fold() -> None:
    groups = np.repeat([f"g{i}" for i in range(23)], 3)
    fold = group_folds(groups, n_folds=5, seed=0)
    for g in set(groups):
        assert len(set(fold[groups == g])) == 1
    per_fold = np.bincount(fold[::3])  # groups per fold
    assert per_fold.size == 5 and per_fold.max() - per_fold.min() <= 1
    np.testing.assert_array_equal(fold, group_folds(groups, 5, seed=0))
    assert set(group_folds(["a", "b", "a"], n_folds=5)) == {0, 1}  # at most one fold per group
    with pytest.raises(UserError, match="cannot be cross-validated"):
        group_folds(["a", "a"], n_folds=3)
