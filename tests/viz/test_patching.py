"""Patching figures on hand-made tables: what each figure shows is checked against the table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from introspect_mi.viz.patching import (
    COLUMN_LABELS, attribution_heatmap, attribution_scatter, concept_bars, group_heatmap, pair_curves, steering_bars, steering_sweep_figure,
)


def cells() -> pd.DataFrame:
    rows = []
    for subject in ("untrained", "self"):
        for pair in ("p1", "p2"):
            for layer in (0, 2):
                for exp, group in (("A", "P"), ("A", "final"), ("C", "final")):
                    norm = np.nan if pair == "p2" and subject == "self" else layer / 2 + (0.1 if pair == "p1" else 0.3)
                    rows.append({"subject": subject, "pair": pair, "experiment": exp, "group": group, "layer": layer,
                                 "normalised": norm, "delta": 2 * layer, "attribution": 2 * layer + 0.1})
    return pd.DataFrame(rows)


def test_group_heatmap_shows_the_median_normalised_effect_per_layer_and_column() -> None:
    fig = group_heatmap(cells(), "untrained")
    heat = fig.data[0]
    assert list(heat.x) == [COLUMN_LABELS[("A", "P")], COLUMN_LABELS[("A", "final")], COLUMN_LABELS[("C", "final")]]
    assert list(heat.y) == [0, 2]
    np.testing.assert_allclose(np.array(heat.z, dtype=float), [[0.2] * 3, [1.2] * 3])
    assert "2 normalisable pair(s) of 2" in heat.customdata[0][0]
    own = group_heatmap(cells(), "self").data[0]  # only p1 normalisable
    np.testing.assert_allclose(np.array(own.z, dtype=float)[0], [0.1] * 3)


def test_pair_curves_show_every_pair_the_median_and_the_b_minus_control_panel() -> None:
    c = cells()
    b = c[c["experiment"] == "C"].assign(experiment="B", group="P")
    control = b.assign(experiment="B-control", normalised=b["normalised"] - 0.5)
    fig = pair_curves(pd.concat([c, b, control]), "untrained")
    titles = [a.text for a in fig.layout.annotations]
    assert titles[-1] == "B − B-control" and COLUMN_LABELS[("A", "P")].replace("<br>", " ") in titles
    medians = [t for t in fig.data if t.name == "median over pairs"]
    assert len(medians) == len(titles) == 6  # A P, A final, B, B-control, C, B − B-control
    np.testing.assert_allclose(np.array(medians[0].y, dtype=float), [0.2, 1.2])  # pairs at 0.1 / 0.3 and 1.1 / 1.3
    np.testing.assert_allclose(np.array(medians[-1].y, dtype=float), [0.5, 0.5])
    assert sum(t.name is None and t.mode == "lines" for t in fig.data) == 2 * len(titles)  # one grey line per pair and panel


def test_attribution_heatmap_labels_tokens_and_shades_groups() -> None:
    grid = pd.DataFrame([{"subject": "s", "pair": "p", "layer": l, "position": t, "token": f"t{t}", "attribution": l * t,
                          "group": "P" if t < 5 else "question" if t < 7 else "final"} for l in range(3) for t in range(3, 8)])
    fig = attribution_heatmap(grid, "s", "p")
    assert list(fig.data[0].x) == ["3:'t3'", "4:'t4'", "5:'t5'", "6:'t6'", "7:'t7'"]
    np.testing.assert_allclose(np.array(fig.data[0].z)[2], [6, 8, 10, 12, 14])
    bands = [(s.name, s.x0, s.x1) for s in fig.layout.shapes if s.type == "rect"]
    assert bands == [("group P", -0.5, 1.5), ("group question", 1.5, 3.5), ("group final", 3.5, 4.5)]
    assert [s.x0 for s in fig.layout.shapes if s.type == "line"] == [1.5, 3.5]
    assert [a.text for a in fig.layout.annotations] == ["P", "question", "final"]


def test_attribution_scatter_has_group_and_single_cells_per_subject() -> None:
    exact = pd.DataFrame({"subject": ["untrained", "self"], "exact": [0.5, -0.2], "attribution": [0.4, -0.1]})
    fig = attribution_scatter(cells(), exact)
    names = [t.name for t in fig.data]
    assert names == ["untrained: group cells", "untrained: single cells", "self: group cells", "self: single cells", "attribution = exact"]
    a = cells().query("experiment == 'A' and subject == 'untrained'")
    assert list(fig.data[0].x) == list(a["delta"]) and list(fig.data[0].y) == list(a["attribution"])


def steering_summary() -> pd.DataFrame:
    return pd.DataFrame([{"subject": "s", "label": lab, "object_to_target": 0.5, "hyp_to_target": 0.25, "follows_new": 0.6,
                          "follows_old": 0.4, "new_before": 0.1, "old_before": 0.9, "random_object_to_target_mean": 0.1, "random_object_to_target_max": 0.2,
                          "random_hyp_to_target_mean": 0.0, "random_hyp_to_target_max": 0.05} for lab in ("(i)", "(ii)", "(iii)")])


def test_steering_bars_show_the_vector_against_random_controls() -> None:
    fig = steering_bars(steering_summary())
    names = [t.name for t in fig.data]
    assert names[:4] == ["object answer: steering vector", "object answer: random (equal norm)",
                         "self-prediction: steering vector", "self-prediction: random (equal norm)"]
    assert list(fig.data[1].y) == [0.1] * 3 and list(fig.data[1].error_y.array) == pytest.approx([0.1] * 3)
    assert [list(fig.data[k].y) for k in (4, 5, 6, 7)] == [[0.6] * 3, [0.1] * 3, [0.4] * 3, [0.9] * 3]


def test_sweep_and_concept_figures() -> None:
    sweep = pd.DataFrame([{"subject": "s", "position_set": p, "vector": v, "scale": sc, "object_to_target": sc / 10}
                          for sc in (4.0, 8.0) for p, v in (("P", "steer"), ("all", "steer"), ("P", "random"))])
    fig = steering_sweep_figure(sweep)
    assert [t.name for t in fig.data] == ["s: P", "s: all", "s: P (random)"] and list(fig.data[0].y) == [0.4, 0.8]
    concepts = pd.DataFrame({"subject": "s", "scale": 4.0, "concept": ["zebra", "tiger"], "value": ["z", "t"], "shift_own": [1.0, 0.5],
                             "shift_random": [0.1, 0.2], "shift_random_max": [0.3, 0.2], "shift_other": [0.0, -0.1]})
    fig = concept_bars(concepts)
    assert list(fig.data[0].y) == [1.0, 0.5] and list(fig.data[1].error_y.array) == pytest.approx([0.2, 0.0])
    with pytest.raises(ValueError, match="missing columns"):
        concept_bars(concepts.drop(columns="shift_other"))
