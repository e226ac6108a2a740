"""Probe figures from a hand-made results table (no model, no probe fit)."""

from __future__ import annotations

import pandas as pd
import pytest

from introspect_mi.viz.probes import input_only_figure, layer_figure


def _table() -> pd.DataFrame:
    rows = []
    for subject in ("untrained", "self"):
        for prop in ("second_character", "ethical_stance"):
            for position in ("p_last", "final"):
                for layer in (0, 4, 8):
                    acc = 0.3 + 0.05 * layer + (0.1 if subject == "self" else 0.0)
                    rows.append({"subject": subject, "property": prop, "test_run": f"hypothetical@{position}", "split": "items",
                                 "layer": layer, "acc": acc, "acc_lo": acc - 0.1, "acc_hi": acc + 0.1, "majority": 0.4,
                                 "shuffled_acc": 0.35, "control_task_acc": 0.5, "n_test": 50})
    return pd.DataFrame(rows)


def _traces(fig, name: str) -> list:
    return [t for t in fig.data if t.name == name]


def test_layer_figure_has_a_panel_per_property_and_variant_and_every_line_per_curve() -> None:
    table = _table()
    fig = layer_figure(table, "B", variant=["test_run"])
    assert [a.text for a in fig.layout.annotations] == ["second_character", "ethical_stance", "hypothetical@p_last", "hypothetical@final"]
    # 2 subjects × 2 properties × 2 positions curves, each: CI band, probe, majority, shuffled, control task
    assert len(fig.data) == 8 * 5
    probes = _traces(fig, "self: probe")
    assert len(probes) == 4 and sum(bool(t.showlegend) for t in probes) == 1  # one legend entry per line kind
    first = table[(table["subject"] == "untrained") & (table["property"] == "second_character") & (table["test_run"] == "hypothetical@p_last")]
    band, probe, majority, shuffled, control = fig.data[:5]
    assert list(band.y) == pytest.approx(list(first["acc_hi"]) + list(first["acc_lo"])[::-1])  # the CI band's outline
    assert list(probe.y) == pytest.approx(list(first["acc"]))
    assert list(majority.y) == [0.4] * 3 and list(shuffled.y) == [0.35] * 3 and list(control.y) == [0.5] * 3
    assert (probe.xaxis, probe.yaxis) == ("x", "y")  # top-left panel
    assert fig.data[-1].xaxis == "x4"  # the last curve sits in the fourth panel


def test_input_only_lines_go_to_their_matching_panels() -> None:
    ref = pd.DataFrame({"subject": ["self"], "property": ["ethical_stance"], "split": ["items"], "acc": [0.77]})
    fig = layer_figure(_table(), "A", variant=["test_run", "split"], input_only=ref)
    lines = _traces(fig, "self: input only (E)")
    assert len(lines) == 2  # both positions' panels of ethical_stance, only the self curves
    assert all(list(t.y) == [0.77, 0.77] and list(t.x) == [0, 8] for t in lines)
    assert {t.xaxis for t in lines} == {"x2", "x4"}


def test_layer_figure_rejects_bad_tables() -> None:
    with pytest.raises(ValueError, match="missing columns"):
        layer_figure(_table().drop(columns=["control_task_acc"]), "x")
    with pytest.raises(ValueError, match="empty"):
        layer_figure(_table().iloc[:0], "x")


def test_input_only_figure_bars_with_ci_and_baseline_markers() -> None:
    table = _table()[lambda t: (t["layer"] == 8) & (t["test_run"] == "hypothetical@final")]
    fig = input_only_figure(table, "E")
    bars = [t for t in fig.data if t.type == "bar"]
    assert [t.name for t in bars] == ["untrained: probe", "self: probe"]
    assert list(bars[0].x) == ["second_character · items", "ethical_stance · items"]
    assert list(bars[1].y) == pytest.approx([0.8, 0.8]) and list(bars[1].error_y.array) == pytest.approx([0.1, 0.1])
    assert len(_traces(fig, "untrained: majority baseline")) == 1
