"""Figures and the HTML report, on hand-made result tables (no model is loaded)."""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs

from introspect_mi.metrics import calibration_curve, evaluate_table, mad
from introspect_mi.viz import (
    Section, Table, accuracy_figure, calibration_figure, compliance_figure, loss_figure,
    write_report,
)
from introspect_mi.viz._common import ALL_LABEL
from introspect_mi.viz.report import format_cell, guess_percent_columns

COLUMNS = ["task", "property", "n_items", "n_dropped_object", "object_compliance",
           "hypothetical_compliance", "n_correct", "accuracy", "accuracy_ci_low",
           "accuracy_ci_high", "accuracy_sem_low", "accuracy_sem_high", "mode_value",
           "mode_baseline", "mode_baseline_ci_low", "mode_baseline_ci_high",
           "mode_baseline_sem_low", "mode_baseline_sem_high"]


def _row(task, prop, n, acc, lo, hi, mode_value, mode, obj_comp=1.0, hyp_comp=1.0):
    return {"task": task, "property": prop, "n_items": n, "n_dropped_object": 0,
            "object_compliance": obj_comp, "hypothetical_compliance": hyp_comp,
            "n_correct": round(acc * n), "accuracy": acc, "accuracy_ci_low": lo,
            "accuracy_ci_high": hi, "accuracy_sem_low": max(0.0, acc - 0.1),
            "accuracy_sem_high": min(1.0, acc + 0.1), "mode_value": mode_value,
            "mode_baseline": mode, "mode_baseline_ci_low": mode - 0.05,
            "mode_baseline_ci_high": mode + 0.05, "mode_baseline_sem_low": mode - 0.04,
            "mode_baseline_sem_high": mode + 0.04}


@pytest.fixture()
def self_table() -> pd.DataFrame:
    return pd.DataFrame([
        _row("animals", "second_character", 40, 0.50, 0.35, 0.65, "a", 0.30, obj_comp=0.9),
        _row("mmlu", "among_a_or_c", 20, 0.75, 0.55, 0.90, "false", 0.55, obj_comp=0.6),
        _row("ALL", "ALL", 60, 0.5833, 0.46, 0.70, None, 0.3833),
    ], columns=COLUMNS)


@pytest.fixture()
def cross_table() -> pd.DataFrame:
    return pd.DataFrame([
        _row("animals", "second_character", 40, 0.25, 0.125, 0.40, "a", 0.30),
        _row("mmlu", "among_a_or_c", 20, 0.60, 0.40, 0.80, "false", 0.55),
        _row("ALL", "ALL", 60, 0.3667, 0.25, 0.48, None, 0.3833),
    ], columns=COLUMNS)


def test_hand_made_columns_match_evaluate_table(self_table: pd.DataFrame) -> None:
    tiny = pd.DataFrame({"task": ["t", "t", "u"], "property": ["p", "p", "q"],
                         "object_value": ["x", None, "y"], "hypothetical_value": ["x", "y", None]})
    real = evaluate_table(tiny, n_boot=20)
    assert list(real.columns) == COLUMNS == list(self_table.columns)
    assert tuple(real.iloc[-1][["task", "property"]]) == ("ALL", "ALL")
    # A real evaluate_table output plots too.
    fig = accuracy_figure({"real": real})
    assert list(fig.data[0].x) == ["t / p", "u / q", ALL_LABEL]


def test_accuracy_figure_bars_errors_and_order(self_table, cross_table) -> None:
    fig = accuracy_figure({"M1 → M1": self_table, "M2 → M1": cross_table})
    assert len(fig.data) == 3  # two predictors + mode baseline
    bars = [t for t in fig.data if isinstance(t, go.Bar)]
    assert [b.name for b in bars] == ["M1 → M1", "M2 → M1"]
    expected_x = ["animals / second_character", "mmlu / among_a_or_c", ALL_LABEL]
    for bar, df in zip(bars, (self_table, cross_table)):
        assert list(bar.x) == expected_x
        np.testing.assert_allclose(bar.y, df["accuracy"])
        assert bar.error_y.symmetric is False
        np.testing.assert_allclose(bar.error_y.array, df["accuracy_ci_high"] - df["accuracy"])
        np.testing.assert_allclose(bar.error_y.arrayminus,
                                   df["accuracy"] - df["accuracy_ci_low"])
        assert "n_items" in bar.hovertemplate and "compliance" in bar.hovertemplate
    assert fig.layout.barmode == "group"
    assert list(fig.layout.xaxis.categoryarray)[-1] == ALL_LABEL
    assert tuple(fig.layout.yaxis.range) == (0.0, 1.0)
    assert fig.layout.yaxis.tickformat == ".0%"
    # ALL is set apart: a separator just before the last group (category index 2).
    sep = [s for s in fig.layout.shapes if s.type == "line"]
    assert len(sep) == 1 and sep[0].x0 == sep[0].x1 == pytest.approx(1.5)

    mode = fig.data[2]
    assert isinstance(mode, go.Scatter) and "M1 → M1" in mode.name and "mode" in mode.name
    np.testing.assert_allclose(mode.y, self_table["mode_baseline"])
    assert [c[0] for c in mode.customdata] == ["a", "false", "per-group modes"]


def test_accuracy_figure_sem_baseline_from_and_missing_groups(self_table, cross_table) -> None:
    partial = cross_table.iloc[[1, 2]].reset_index(drop=True)  # no animals row
    fig = accuracy_figure({"self": self_table, "cross": partial}, ci="sem",
                          baseline_from="cross")
    cross_bar = fig.data[1]
    assert list(cross_bar.x)[-1] == ALL_LABEL
    assert cross_bar.y[0] is None  # the missing group has no bar
    np.testing.assert_allclose(cross_bar.y[1:], partial["accuracy"])
    np.testing.assert_allclose(fig.data[0].error_y.array,
                               self_table["accuracy_sem_high"] - self_table["accuracy"])
    assert "cross" in fig.data[2].name
    with pytest.raises(ValueError, match="baseline_from"):
        accuracy_figure({"self": self_table}, baseline_from="nope")
    with pytest.raises(ValueError, match="missing columns"):
        accuracy_figure({"bad": self_table.drop(columns=["accuracy_ci_low"])})
    with pytest.raises(ValueError):
        accuracy_figure({})


def test_accuracy_figure_nan_group(self_table) -> None:
    df = self_table.copy()
    df.loc[0, ["accuracy", "accuracy_ci_low", "accuracy_ci_high"]] = math.nan
    bar = accuracy_figure({"x": df}).data[0]
    assert bar.y[0] is None and bar.error_y.array[0] == 0.0
    np.testing.assert_allclose(bar.y[1:], df["accuracy"][1:])


def test_compliance_figure_thresholds_and_failures(self_table) -> None:
    fig = compliance_figure(self_table)
    assert [t.name for t in fig.data] == ["object compliance", "mode baseline"]
    np.testing.assert_allclose(fig.data[0].y, self_table["object_compliance"])
    np.testing.assert_allclose(fig.data[1].y, self_table["mode_baseline"])
    assert list(fig.data[0].x)[-1] == ALL_LABEL
    hlines = sorted(s.y0 for s in fig.layout.shapes if s.type == "line" and s.y0 == s.y1)
    assert hlines == [0.7, 0.8]
    # mmlu has object compliance 0.6 < 0.8: it fails, the others pass.
    assert [c[3] for c in fig.data[0].customdata] == ["yes", "no", "yes"]
    assert fig.data[0].marker.line.color[1] != fig.data[0].marker.line.color[0]
    assert len(compliance_figure(self_table, show_hypothetical=True).data) == 3


def test_calibration_figure_mad_in_legend() -> None:
    pairs = np.array([[0.1, 0.3], [0.2, 0.1], [0.6, 0.5], [0.9, 0.7]])
    curves = {"self": calibration_curve(pairs, n_bins=2),
              "cross": calibration_curve(pairs[:, ::-1], n_bins=2)}
    mads = {"self": mad(pairs, 2), "cross": 21.34}
    fig = calibration_figure(curves, mads)
    assert len(fig.data) == 3
    diag = fig.data[0]
    assert list(diag.x) == [0.0, 1.0] and list(diag.y) == [0.0, 1.0]
    assert fig.data[1].name == f"self (MAD {mads['self']:.1f})"
    assert fig.data[2].name == "cross (MAD 21.3)"
    np.testing.assert_allclose(fig.data[1].x, curves["self"]["object_mean"])
    np.testing.assert_allclose(fig.data[1].y, curves["self"]["hypothetical_mean"])
    assert fig.data[1].mode == "lines+markers"
    assert calibration_figure({"u": curves["self"]}).data[1].name == "u"  # no MAD given


def test_loss_figure_train_and_val() -> None:
    log = pd.DataFrame({"step": [1, 2, 3, 4], "loss": [2.0, 1.5, 1.2, 1.0],
                        "val_loss": [math.nan, 1.6, math.nan, 1.1], "epoch": [0, 0, 1, 1]})
    fig = loss_figure({"self": log, "cross": log[["step", "loss"]]})
    assert [t.name for t in fig.data] == ["self train", "self val", "cross train"]
    assert list(fig.data[1].x) == [2, 4] and list(fig.data[1].y) == [1.6, 1.1]
    assert fig.data[0].line.color == fig.data[1].line.color != fig.data[2].line.color
    with pytest.raises(ValueError, match="missing columns"):
        loss_figure({"x": log.drop(columns=["loss"])})


def test_table_formatting() -> None:
    df = pd.DataFrame({"accuracy": [0.4853, math.nan], "n_items": [10, 3], "mad": [8.72, 21.3],
                       "p_value": [0.00123, 0.5], "diff": [-0.05, 0.1]})
    assert guess_percent_columns(df) == ["accuracy"]
    assert format_cell(0.4853, percent=True) == "48.5%"
    assert format_cell(math.nan) == "–" and format_cell(None) == "–"
    assert format_cell(np.int64(7)) == "7"
    assert format_cell(0.00123) == "0.00123"


def test_write_report_self_contained(tmp_path: Path, self_table, cross_table) -> None:
    acc = accuracy_figure({"self": self_table, "cross": cross_table})
    comp = compliance_figure(self_table)
    cal = calibration_figure({"s": calibration_curve(np.array([[0.2, 0.1], [0.8, 0.6]]))},
                             {"s": 15.0})
    out = tmp_path / "run" / "report.html"
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    got = write_report(out, "Quick run <behavioural>", [
        Section("Accuracy", [acc, comp], [self_table], text="Held-out tasks.\n\nSecond para."),
        Section("Calibration", [cal], [Table(pd.DataFrame({"label": ["s"], "mad": [15.0]}),
                                             caption="MAD")]),
        Section("Empty"),
    ], generated=when)
    assert got == out
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    # plotly.js exactly once, inline; no external script at all.
    assert html.count("* plotly.js v") == 1
    assert html.count(get_plotlyjs()[:2000]) == 1
    assert not re.search(r"<script[^>]*\bsrc=", html)
    assert not re.search(r"src=[\"']?https?://", html)
    # The only "cdn.plot.ly" text is plotly.js's own topojsonURL default (geo maps; unused).
    assert html.count("cdn.plot.ly") == get_plotlyjs().count("cdn.plot.ly")
    for div in ("fig-1-1", "fig-1-2", "fig-2-1"):
        assert f'id="{div}"' in html
        assert re.search(rf'Plotly\.newPlot\(\s*"{div}"', html)
    assert html.count('class="plotly-graph-div"') == 3
    # Header, escaped title and text, formatted tables.
    assert "Quick run &lt;behavioural&gt;" in html and "2025-01-02T03:04:05+00:00" in html
    assert "<p>Held-out tasks.</p>" in html and "<p>Second para.</p>" in html
    assert "58.3%" in html and "50.0%" in html  # accuracy 0.5833 / 0.5 as percentages
    assert "<caption>MAD</caption>" in html and ">15.0<" in html
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temp files left


def test_write_report_failure_leaves_nothing(tmp_path: Path, self_table, monkeypatch) -> None:
    out = tmp_path / "report.html"
    out.write_text("old", encoding="utf-8")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("introspect_mi.durable.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_report(out, "t", [Section("s", [accuracy_figure({"x": self_table})])])
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
    assert out.read_text(encoding="utf-8") == "old"


def test_report_without_figures_has_no_plotlyjs(tmp_path: Path, self_table) -> None:
    out = write_report(tmp_path / "r.html", "tables only", [Section("t", tables=[self_table])])
    html = out.read_text(encoding="utf-8")
    assert "plotly.js v" not in html and "<table" in html


def test_report_links_and_shared_plotlyjs(tmp_path: Path, self_table) -> None:
    from introspect_mi.viz.report import write_plotlyjs

    name = write_plotlyjs(tmp_path)
    assert (tmp_path / name).read_text(encoding="utf-8") == get_plotlyjs()
    fig = accuracy_figure({"self": self_table})
    out = write_report(tmp_path / "r.html", "pages", [Section("s", figures=[fig], links=[("features/a&b.html", "latent <1>")])],
                       plotly_src=name)
    html = out.read_text(encoding="utf-8")
    assert f'<script type="text/javascript" src="{name}"></script>' in html and "plotly.js v" not in html
    assert '<a href="features/a&amp;b.html">latent &lt;1&gt;</a>' in html
