"""Specification of probes.crossfit: every vector tested once by probes that never saw its fold,
transfer to another pool, the baselines, and the frequent-class filter."""

from __future__ import annotations

import numpy as np
import pytest

from probes.config import ProbeConfig
from probes.crossfit import Pool, best_constant, cross_fit, frequent_classes
from probes.logistic import fit_probes
from tests.probes.planted import planted

CFG = ProbeConfig(c_grid=(0.1,), n_boot=200, max_iter=60)


def _pool(x: np.ndarray, y: np.ndarray, folds: int = 4, keys: np.ndarray | None = None) -> Pool:
    groups = np.array([f"item{i}" for i in range(len(y))])
    return Pool(x, {"p": y}, np.arange(len(y)) % folds, groups, None if keys is None else {"p": keys})


def test_planted_signal_is_read_and_every_vector_is_tested_once() -> None:
    x, y = planted(120, d=16, k=3, strength=4.0)
    r = cross_fit(_pool(x, y), CFG)["p"]
    assert r["n_test"] == 120 and r["n_train"] == 90  # 4 folds of 30: each trains on 90
    assert r["acc"] > 0.9 and r["acc_lo"] <= r["acc"] <= r["acc_hi"]
    assert r["shuffled_acc"] < 0.55
    assert r["majority"] == best_constant(y) and r["n_classes"] == 3


def test_scores_are_the_pooled_predictions_of_per_fold_probes() -> None:
    """Oracle: fit each fold by hand with fit_probes and pool its test predictions."""
    x, y = planted(60, d=8, k=2, strength=1.0, seed=3)
    folds = np.arange(60) % 3
    correct = 0
    for f in range(3):
        probe = fit_probes(x[folds != f], [y[folds != f]], CFG, [f"item{i}" for i in np.flatnonzero(folds != f)])[0]
        correct += int((probe.predict(x[folds == f]) == y[folds == f]).sum())
    assert cross_fit(_pool(x, y, folds=3), CFG)["p"]["acc"] == pytest.approx(correct / 60)


def test_transfer_scores_the_training_pools_probe_on_the_test_pool() -> None:
    """The test pool's labels are the training direction's labels flipped: a probe trained on
    the training pool gets them all wrong; one refitted on the test pool would get them right."""
    x, y = planted(80, d=8, k=2, strength=4.0, seed=1)
    flipped = np.where(y == "c0", "c1", "c0")
    train, test = _pool(x, y), _pool(x + 0.01, flipped)
    assert cross_fit(train, CFG)["p"]["acc"] > 0.9
    assert cross_fit(train, CFG, test)["p"]["acc"] < 0.1


def test_an_item_is_never_on_both_sides() -> None:
    """Two vectors per item, identical, labels random per item: a probe can only score by
    memorising items, which folds by item forbid (folds by vector would let it)."""
    rng = np.random.default_rng(0)
    n_items = 40
    onehot = np.repeat(np.eye(n_items, dtype=np.float32) * 5, 2, axis=0)
    y = np.repeat(rng.choice(["a", "b"], n_items), 2)
    groups = np.repeat([f"item{i}" for i in range(n_items)], 2)
    by_item = Pool(onehot, {"p": y}, np.repeat(np.arange(n_items) % 4, 2), groups)
    by_vector = Pool(onehot, {"p": y}, np.arange(2 * n_items) % 2, groups)
    cfg = ProbeConfig(c_grid=(10.0,), n_boot=50)
    assert cross_fit(by_item, cfg)["p"]["acc"] < 0.7
    assert cross_fit(by_vector, cfg)["p"]["acc"] == 1.0


def test_targets_share_rows_and_are_scored_separately() -> None:
    x, y = planted(80, d=8, k=2, strength=4.0, seed=2)
    noise = np.random.default_rng(5).choice(["u", "v"], 80)
    pool = Pool(x, {"real": y, "noise": noise}, np.arange(80) % 4, np.arange(80).astype(str))
    out = cross_fit(pool, CFG)
    assert out["real"]["acc"] > 0.9 and out["noise"]["acc"] < 0.7


def test_control_task_with_one_key_is_constant_and_not_charged() -> None:
    """One key for every vector: the control labels are one value, the control probe scores
    100% = its best constant, so selectivity = acc − majority (the gain over the best constant)."""
    x, y = planted(60, d=8, k=2, strength=4.0, seed=4)
    r = cross_fit(_pool(x, y, keys=np.array(["A"] * 60)), CFG)["p"]
    assert r["control_task_acc"] == 1.0 and r["control_majority"] == 1.0 and r["control_seen"] == 1.0
    assert r["selectivity"] == pytest.approx(r["acc"] - r["majority"])


def test_control_task_with_unseen_keys() -> None:
    """Keys unique per vector never recur: control_seen is 0."""
    x, y = planted(40, d=8, k=2, strength=4.0, seed=6)
    r = cross_fit(_pool(x, y, keys=np.arange(40).astype(str)), CFG)["p"]
    assert r["control_seen"] == 0.0


def test_no_control_keys_gives_nan_controls() -> None:
    x, y = planted(40, d=8, k=2, seed=7)
    r = cross_fit(_pool(x, y), CFG)["p"]
    assert np.isnan(r["control_task_acc"]) and np.isnan(r["selectivity"]) and np.isnan(r["control_seen"])


def test_bad_pools_are_errors() -> None:
    x, y = planted(20, d=4, k=2)
    with pytest.raises(ValueError, match="one per vector"):
        Pool(x, {"p": y[:10]}, np.zeros(20, int), np.arange(20))
    with pytest.raises(ValueError, match="no training vectors"):
        cross_fit(Pool(x, {"p": y}, np.zeros(20, int), np.arange(20).astype(str)), CFG)
    with pytest.raises(ValueError, match="same targets"):
        cross_fit(_pool(x, y), CFG, Pool(x, {"q": y}, np.zeros(20, int), np.arange(20)))


def test_frequent_classes_counts_items_not_vectors() -> None:
    labels = ["a", "a", "a", "b", "b", "b", "c", "c", "d"]
    groups = ["1", "1", "1", "2", "3", "4", "5", "6", "7"]  # a: 1 item (3 vectors), b: 3 items, c: 2, d: 1
    np.testing.assert_array_equal(frequent_classes(labels, groups, 2), [0, 0, 0, 1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(frequent_classes(labels, groups, 1, top_k=2), [0, 0, 0, 1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(frequent_classes(labels, groups, 1, top_k=1), [0, 0, 0, 1, 1, 1, 0, 0, 0])
    # ties keep label order: a, d both have one item
    np.testing.assert_array_equal(frequent_classes(["d", "a"], ["1", "2"], 1, top_k=1), [0, 1])


def test_shuffled_labels_stay_within_each_folds_training_labels() -> None:
    """Leave-one-task-out with disjoint label sets per task: no probe, shuffled or not, can
    answer a held-out task's label (a permutation across folds would leak them)."""
    x = np.random.default_rng(8).normal(size=(40, 6)).astype(np.float32)
    y = np.array(["a", "b"] * 10 + ["c", "d"] * 10)
    r = cross_fit(Pool(x, {"p": y}, np.repeat([0, 1], 20), np.arange(40).astype(str)), CFG)["p"]
    assert r["acc"] == 0.0 and r["shuffled_acc"] == 0.0 and r["majority"] == 0.25


def test_a_control_probe_below_its_constant_does_not_raise_selectivity() -> None:
    """Transfer to vectors where the control probe answers the wrong key's label: its gain is
    negative, counted as 0, so selectivity is the probe's own gain over the majority."""
    x, y = planted(80, d=8, k=2, strength=4.0, seed=9)
    keys = np.where(y == "c0", "k0", "k1")
    train = _pool(x, y, keys=keys)
    test = _pool(x, y, keys=np.where(keys == "k0", "k1", "k0"))  # each vector carries the other class's key
    r = cross_fit(train, CFG, test)["p"]
    assert r["control_task_acc"] < r["control_majority"]
    assert r["selectivity"] == pytest.approx(r["acc"] - r["majority"])


def test_per_task_majority_bar_on_a_hand_built_table() -> None:
    """Two tasks with opposite majorities: the pooled constant scores 50%, the per-task constant
    learned on the training folds 75% (the fair bar), and within-task accuracies are per task."""
    from probes.crossfit import CrossFit, score, task_constant

    y_train = np.array(["x", "x", "x", "y", "y", "y", "y", "x"])
    tasks_train = np.array(["t1", "t1", "t1", "t1", "t2", "t2", "t2", "t2"])
    assert list(task_constant(y_train, tasks_train, np.array(["t2", "t1", "t3"]), 3)) == ["y", "x", "x"]  # t3 unseen: pooled mode (tie: x)
    y = np.array(["x", "x", "x", "y", "y", "y", "y", "x"])
    probe = np.array(["x", "x", "y", "y", "y", "y", "x", "x"])
    fit = CrossFit(y, {"probe": probe, "shuffled": probe}, None, task_constant(y_train, tasks_train, tasks_train, 8), np.zeros(8, int),
                   np.arange(8).astype(str), tasks_train, {}, 8, 2, float("nan"), 1.0, True)
    r = score(fit, CFG)
    assert r["majority"] == 0.5 and r["task_majority"] == 0.75 and r["acc"] == 0.75
    assert r["within_task"] == {"t1": {"n": 4, "acc": 0.75, "majority": 0.75}, "t2": {"n": 4, "acc": 0.75, "majority": 0.75}}


def test_per_task_constant_is_learned_on_the_training_folds_only() -> None:
    """Task t's test fold holds the opposite class from its training folds: the bar is 0, not 100%."""
    x = np.zeros((16, 2), np.float32)
    y = np.array(["a"] * 6 + ["b"] * 2 + ["b"] * 6 + ["a"] * 2)
    tasks = np.array(["t"] * 8 + ["u"] * 8)
    fold = np.array([0] * 6 + [1] * 2 + [0] * 6 + [1] * 2)
    r = cross_fit(Pool(x, {"p": y}, fold, np.arange(16).astype(str), tasks=tasks), CFG)["p"]
    # fold 1 (b of t, a of u) is predicted by fold 0's task modes (a for t, b for u): wrong; fold 0 by fold 1's: wrong
    assert r["task_majority"] == 0.0 and set(r["within_task"]) == {"t", "u"}
