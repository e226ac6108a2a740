"""SAE-analysis figures on hand-made result tables (no model is loaded)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from introspect_mi.viz.saes import (
    ablation_figure,
    activation_histogram,
    attribution_split_figure,
    differential_figure,
    logit_effect_figure,
    overlap_figure,
)


def overlap_table() -> pd.DataFrame:
    rows = []
    for subject in ("untrained", "self"):
        for layer in (8, 16):
            for position in ("p_last", "final"):
                rows.append({"subject": subject, "layer": layer, "position": position, "n": 10, "jaccard_same": 0.8 + layer / 100,
                             "jaccard_other": 0.3 + layer / 100, "diff_ci_low": 0.4, "diff_ci_high": 0.6})
    return pd.DataFrame(rows)


def effects_table() -> pd.DataFrame:
    rows = []
    for layer in (8, 16):
        for measure, top, rnd in (("logit_difference", -1.0, -0.1), ("compliance", -0.25, 0.0), ("accuracy", -0.5, 0.0)):
            rows.append({"subject": "untrained", "layer": layer, "measure": measure, "top_k": top, "matched_random": rnd,
                         "top_minus_random": top - rnd, "ci_low": top - rnd - 0.1, "ci_high": top - rnd + 0.1, "p_value": 0.01,
                         "family": "confirmatory" if measure == "logit_difference" else "exploratory"})
    return pd.DataFrame(rows)


def test_overlap_figure_has_one_bar_trace_per_subject_position_and_pairing() -> None:
    fig = overlap_figure(overlap_table())
    assert len(fig.data) == 2 * 2 * 2
    first, control = fig.data[0], fig.data[1]
    assert first.name == "p_last, same item" and list(first.x) == ["L8", "L16"]
    np.testing.assert_allclose(first.y, [0.88, 0.96])
    assert control.name == "p_last, other item, same token"
    np.testing.assert_allclose(control.y, [0.38, 0.46])
    assert sum(t.showlegend for t in fig.data) == 4  # legend entries once, not per panel


def test_attribution_split_figure_bars_are_the_p_and_question_means() -> None:
    summary = pd.DataFrame({"subject": ["untrained"] * 2, "layer": [8, 16], "abs_p": [1.0, 2.0], "abs_q": [3.0, 4.0],
                            "attr_p": [0.1, -0.2], "attr_q": [0.3, 0.4], "abs_p_per_token": [0.01, 0.02], "abs_q_per_token": [0.1, 0.2]})
    fig = attribution_split_figure(summary)
    assert [t.name for t in fig.data] == ["P's tokens", "question tokens"]
    np.testing.assert_allclose(fig.data[0].y, [1.0, 2.0])
    np.testing.assert_allclose(fig.data[1].y, [3.0, 4.0])
    with pytest.raises(ValueError, match="missing columns"):
        attribution_split_figure(summary.drop(columns=["abs_q"]))


def test_ablation_figure_shows_top_k_and_matched_random_per_measure() -> None:
    fig = ablation_figure(effects_table())
    by_name: dict[str, list] = {}
    for t in fig.data:
        by_name.setdefault(t.name, []).append(t)
    top, rnd = by_name["top-k attributed"], by_name["matched random (mean over draws)"]
    assert len(top) == len(rnd) == 2  # logit difference and compliance rows; accuracy is not drawn
    assert list(top[0].y) == [-1.0, -1.0] and list(top[1].y) == [-0.25, -0.25]
    np.testing.assert_allclose(rnd[0].y, [-0.1, -0.1])
    with pytest.raises(ValueError, match="missing columns"):
        ablation_figure(effects_table().drop(columns=["matched_random"]))


def test_differential_figure_shows_the_top_latents_per_layer() -> None:
    diff = pd.DataFrame({"layer": [8] * 3 + [16] * 3, "feature": [5, 9, 1, 2, 3, 4], "mean_a": 0.0, "mean_b": 1.0,
                         "diff": [0.9, -0.5, 0.1, 2.0, 1.0, -0.1]})
    fig = differential_figure(diff, top=2)
    assert len(fig.data) == 2
    assert list(fig.data[0].y) == ["#9", "#5"]  # largest at the top of the horizontal bars
    np.testing.assert_allclose(fig.data[1].x, [1.0, 2.0])


def test_histogram_counts_only_active_values_and_logit_effect_sorts() -> None:
    fig = activation_histogram({"a": np.array([0.0, 1.0, 2.0, 0.0])})
    assert list(fig.data[0].x) == [1.0, 2.0] and "active 50% of 4" in fig.data[0].name
    with pytest.raises(ValueError, match="nothing to plot"):
        activation_histogram({})
    effect = logit_effect_figure(pd.DataFrame({"token": [" a", " b", " c"], "logit": [2.0, -1.0, 0.5]}))
    assert list(effect.data[0].x) == [-1.0, 0.5, 2.0] and list(effect.data[0].y) == ["' b'", "' c'", "' a'"]
