"""Specification of probes.sweep: one cell with its controls, and the tidy sweep table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from probes.config import ProbeConfig
from probes.controls import control_task_labels
from probes.metrics import majority_baseline
from probes.splits import task_split
from probes.sweep import COLUMNS, probe_cell, sweep
from tests.probes.planted import planted

CFG = ProbeConfig(c_grid=(1e-4, 1e-2, 1.0), folds=3, n_boot=200)
FIXED_C = ProbeConfig(c_grid=(1.0,), n_boot=200)


def _two_groups_of_keys(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Keys k0 ×30, k1 ×10 carry property "x"; k2 ×30, k3 ×10 carry "y"."""
    keys = np.repeat(["k0", "k1", "k2", "k3"], [30, 10, 30, 10])
    return keys, np.where(np.isin(keys, ["k0", "k1"]), "x", "y")


def test_selectivity_hand_example_property_encoded_not_identity() -> None:
    """X is one feature, the property (±3, jittered), and says nothing about the key within it.

    control_task_labels(seed 0) maps k0→y, k1→x, k2→x, k3→x (asserted below). The control
    probe can only tell x-keys from y-keys, so it answers the majority control label of each
    group: x-group → y (k0's 30 beat k1's 10), right on 30 of 40; y-group → x, right on 40 of 40.
    Control accuracy = 70/80 = 0.875; the property probe is perfect, so selectivity = 0.125.
    """
    np.testing.assert_array_equal(control_task_labels(["k0", "k1", "k2", "k3"], ["x", "y"], seed=0), ["y", "x", "x", "x"])
    rng = np.random.default_rng(0)
    keys, y = _two_groups_of_keys(rng)
    keys, y = np.r_[keys, keys], np.r_[y, y]  # the same 80 on the train and on the test side
    x = (np.where(y == "x", 3.0, -3.0) + 0.1 * rng.normal(size=160))[:, None]
    train = np.arange(160) < 80
    row = probe_cell(x.astype(np.float32), y, train, ~train, FIXED_C, keys=keys)
    assert row["acc"] == 1.0
    assert row["control_task_acc"] == pytest.approx(0.875)
    assert row["selectivity"] == pytest.approx(0.125)
    assert row["control_seen"] == 1.0
    assert (row["n_train"], row["n_test"], row["n_classes"]) == (80, 80, 2)


def test_selectivity_is_zero_when_x_encodes_the_identity() -> None:
    """One-hot key features: any key → label map is linearly readable, so the control task is
    solved as well as the property (Hewitt & Liang's non-selective probe)."""
    rng = np.random.default_rng(1)
    keys, y = _two_groups_of_keys(rng)
    keys, y = np.r_[keys, keys], np.r_[y, y]
    x = 3.0 * (keys[:, None] == np.array(["k0", "k1", "k2", "k3"])) + 0.1 * rng.normal(size=(160, 4))
    train = np.arange(160) < 80
    row = probe_cell(x.astype(np.float32), y, train, ~train, FIXED_C, keys=keys)
    assert row["acc"] == 1.0 and row["control_task_acc"] == 1.0 and row["selectivity"] == 0.0


def test_empty_side_gives_a_nan_row_and_overlap_is_an_error() -> None:
    x, y = planted(20, d=4)
    row = probe_cell(x, y, np.ones(20, bool), np.zeros(20, bool), CFG)
    assert (row["n_train"], row["n_test"]) == (20, 0) and np.isnan(row["acc"])
    with pytest.raises(ValueError, match="both sides"):
        probe_cell(x, y, np.ones(20, bool), np.ones(20, bool), CFG)


def _fake_store(n_items: int = 300) -> tuple[dict, pd.DataFrame, np.ndarray]:
    """Two vectors per item; label planted at layer 1 only; "sparse" has no label on 1 in 3 items."""
    rng = np.random.default_rng(0)
    x, y = planted(n_items, d=16, k=2, strength=4.0, seed=1)
    meta = pd.DataFrame({
        "item_id": np.repeat([f"i{i}" for i in range(n_items)], 2),
        "task": np.repeat(rng.choice(["t_train_a", "t_train_b", "t_test"], n_items), 2),
        "label": np.repeat(y, 2),
        "sparse": np.repeat([None if i % 3 == 0 else v for i, v in enumerate(y)], 2),
        "answer": np.repeat(rng.choice([f"w{i}" for i in range(15)], n_items), 2),
    })
    signal = np.repeat(x, 2, axis=0) + 0.3 * rng.normal(size=(2 * n_items, 16)).astype(np.float32)
    noise = rng.normal(size=signal.shape).astype(np.float32)
    return {0: noise, 1: signal}, meta, y


def test_sweep_table() -> None:
    layers_x, meta, _ = _fake_store()
    calls = []

    def load(layer: int, position: str) -> tuple[np.ndarray, pd.DataFrame]:
        calls.append((layer, position))
        return layers_x[layer], meta

    table = sweep(load, [0, 1], ["final", "p_last"], {"label": "label", "sparse": lambda m: m["sparse"]},
                  split=lambda m: task_split(m["task"], ["t_train_a", "t_train_b"], ["t_test"]), cfg=CFG,
                  control_key="answer", progress=False)
    assert tuple(table.columns) == COLUMNS
    assert len(table) == 8 and calls == [(0, "final"), (0, "p_last"), (1, "final"), (1, "p_last")]
    train_rows, test_rows = (meta["task"] != "t_test").to_numpy(), (meta["task"] == "t_test").to_numpy()
    labeled = meta["sparse"].notna().to_numpy()
    full = table[table.property == "label"]
    assert (full.n_train == train_rows.sum()).all() and (full.n_test == test_rows.sum()).all()
    sparse = table[table.property == "sparse"]
    assert (sparse.n_train == (train_rows & labeled).sum()).all() and (sparse.n_test == (test_rows & labeled).sum()).all()
    assert (table[table.layer == 1].acc > 0.9).all()
    # Chance is 1/2 with ~100 test items (2 vectors each, so ~100 independent draws): SD ≈ 0.05,
    # and 0.2 is 4 SD; shuffled labels stay at chance even where the signal is.
    assert ((table[table.layer == 0].acc - 0.5).abs() < 0.2).all()
    assert ((table.shuffled_acc - 0.5).abs() < 0.2).all()
    assert (table.acc_lo <= table.acc).all() and (table.acc <= table.acc_hi).all()
    np.testing.assert_allclose(table.selectivity, table.acc - table.control_task_acc)
    expected_majority = majority_baseline(meta.label[train_rows], meta.label[test_rows])
    np.testing.assert_allclose(full.majority, expected_majority)
    assert table.control_seen.between(0.9, 1.0).all()  # 15 answer words recur on both sides
