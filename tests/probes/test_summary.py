"""Specification of probes.summary: the best layer of each curve and the onset layer."""

from __future__ import annotations

import pandas as pd

from probes.summary import best_rows, onset_layer, onsets


def _curve(name: str, accs: list[float], lo: list[float], majority: float = 0.5) -> pd.DataFrame:
    return pd.DataFrame({"curve": name, "layer": range(len(accs)), "acc": accs, "acc_lo": lo, "majority": majority})


def test_best_rows_take_the_highest_accuracy_and_the_lowest_layer_on_ties() -> None:
    table = pd.concat([_curve("x", [0.5, 0.8, 0.8, 0.6], [0] * 4), _curve("y", [0.9, float("nan"), 0.2], [0] * 3)])
    best = best_rows(table, ["curve"])
    assert best[["curve", "layer", "acc"]].values.tolist() == [["x", 1, 0.8], ["y", 0, 0.9]]


def test_onset_is_the_first_layer_whose_ci_clears_the_majority() -> None:
    assert onset_layer(_curve("x", [0.6, 0.7, 0.9, 0.95], [0.45, 0.5, 0.55, 0.7])) == 2  # 0.5 is not above 0.5
    assert onset_layer(_curve("x", [0.6, 0.7], [0.4, 0.45])) is None
    table = pd.concat([_curve("x", [0.9, 0.9], [0.4, 0.6]), _curve("y", [0.9], [0.8])])
    assert onsets(table, ["curve"]).values.tolist() == [["x", 1], ["y", 0]]
