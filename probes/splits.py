"""Train/test splits of activation vectors, as boolean masks over the rows of `meta`.

Vectors of one item (several positions, or object and hypothetical records) share one side of
every split, so a probe is never tested on an item it saw. Seeds make every split reproducible.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from introspect_mi.errors import UserError

Split = tuple[np.ndarray, np.ndarray]
"""(train mask, test mask), boolean arrays over the vectors."""


def task_split(tasks: Sequence[str], train_tasks: Sequence[str], test_tasks: Sequence[str]) -> Split:
    """Train on the vectors of `train_tasks`, test on those of `test_tasks` (other tasks: neither)."""
    both = sorted(set(train_tasks) & set(test_tasks))
    if both:
        raise UserError(f"task(s) {', '.join(both)} are both train and held-out tasks", "give each task to one side only")
    tasks = np.asarray(tasks, dtype=object)
    present = set(tasks.tolist())
    missing = sorted(set(train_tasks) - present) + sorted(set(test_tasks) - present)
    if missing:
        raise UserError(f"task(s) {', '.join(missing)} have no vectors", f"tasks present: {', '.join(sorted(present))}")
    return np.isin(tasks, list(train_tasks)), np.isin(tasks, list(test_tasks))


def group_codes(groups: Sequence) -> tuple[np.ndarray, int]:
    """Integer code per vector (groups sorted by name, so codes do not depend on row order)."""
    names, codes = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    return codes.reshape(-1), len(names)


def group_split(groups: Sequence, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Random split of whole groups (e.g. item_id): about `test_fraction` of the groups are test."""
    if not 0 < test_fraction < 1:
        raise UserError(f"test_fraction={test_fraction} is not between 0 and 1", "use e.g. 0.2")
    codes, n_groups = group_codes(groups)
    n_test = int(round(test_fraction * n_groups))
    if not 0 < n_test < n_groups:
        raise UserError(f"{n_groups} group(s) cannot be split {1 - test_fraction:.0%}/{test_fraction:.0%}", "use more items or another test_fraction")
    test_groups = np.random.default_rng([seed, 1]).permutation(n_groups)[:n_test]
    test = np.isin(codes, test_groups)
    return ~test, test


def group_folds(groups: Sequence, n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold index per vector for k-fold cross-validation over whole groups (shuffled, round robin).

    Uses min(n_folds, number of groups) folds; fewer than two groups cannot be cross-validated.
    """
    codes, n_groups = group_codes(groups)
    if n_groups < 2:
        raise UserError(f"{n_groups} training group(s) cannot be cross-validated", "train on at least two items")
    order = np.random.default_rng([seed, 2]).permutation(n_groups)
    fold_of_group = np.empty(n_groups, dtype=np.int64)
    fold_of_group[order] = np.arange(n_groups) % min(n_folds, n_groups)
    return fold_of_group[codes]
