"""Per task×property figures from `introspect_mi.metrics.evaluate_table` DataFrames."""

from __future__ import annotations

from typing import Literal, Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from introspect_mi.viz._common import (
    ALL, BASELINE_COLOR, TEMPLATE, category_xaxis, color, group_label, group_order, index_rows,
    num, percent_yaxis, require_columns, require_nonempty, separate_all_group, text,
)

ACCURACY_COLUMNS = ("task", "property", "n_items", "object_compliance",
                    "hypothetical_compliance", "accuracy", "accuracy_ci_low", "accuracy_ci_high",
                    "accuracy_sem_low", "accuracy_sem_high", "mode_value", "mode_baseline",
                    "mode_baseline_ci_low", "mode_baseline_ci_high")
COMPLIANCE_COLUMNS = ("task", "property", "n_items", "n_dropped_object", "object_compliance",
                      "hypothetical_compliance", "mode_value", "mode_baseline")

MIN_OBJECT_COMPLIANCE = 0.8  # quick preset acceptance: object-level compliance at least this
MAX_MODE_BASELINE = 0.7  # ... and the mode baseline at most this (a non-degenerate property)

_ACC_HOVER = ("<b>%{fullData.name}</b><br>%{x}<br>"
              "accuracy %{y:.1%} (95% CI %{customdata[0]:.1%} – %{customdata[1]:.1%})<br>"
              "n_items %{customdata[2]}<br>"
              "object compliance %{customdata[3]:.1%}<br>"
              "hypothetical compliance %{customdata[4]:.1%}<br>"
              "mode value %{customdata[5]} (baseline %{customdata[6]:.1%})<extra></extra>")
_MODE_HOVER = ("<b>mode baseline</b><br>%{x}<br>"
               "always guessing %{customdata[0]}: %{y:.1%} "
               "(95% CI %{customdata[1]:.1%} – %{customdata[2]:.1%})<br>"
               "n_items %{customdata[3]}<extra></extra>")


def _mode_text(row: pd.Series | None) -> str:
    if row is None:
        return "–"
    if str(row["task"]) == ALL and str(row["property"]) == ALL:
        return "per-group modes"
    return text(row["mode_value"])


def accuracy_figure(tables: Mapping[str, pd.DataFrame], *, ci: Literal["bootstrap", "sem"] =
                    "bootstrap", baseline_from: str | None = None,
                    title: str = "Hypothetical accuracy per task × property") -> go.Figure:
    """Grouped bars: one bar per predictor (key of `tables`) per task × property.

    Each value of `tables` is one `evaluate_table` output. Groups are every task×property seen
    (first-seen order), the ALL micro-average last, shaded and behind a dashed separator. Error
    bars are asymmetric: `accuracy_ci_high - accuracy` up, `accuracy - accuracy_ci_low` down
    (`ci="sem"` uses the 1.96·SEM columns). The mode baseline depends on the target behaviour
    only, so one table's is drawn (a black dash per group): `baseline_from` (default: the first
    key), named in the legend. A predictor missing a group, or with NaN accuracy, gets no bar.
    """
    require_nonempty(tables, "accuracy_figure")
    for label, df in tables.items():
        require_columns(df, ACCURACY_COLUMNS, f"accuracy_figure[{label!r}]")
    if ci not in ("bootstrap", "sem"):
        raise ValueError(f"ci must be 'bootstrap' or 'sem', got {ci!r}")
    lo_col, hi_col = ("accuracy_ci_low", "accuracy_ci_high") if ci == "bootstrap" else (
        "accuracy_sem_low", "accuracy_sem_high")
    baseline_from = next(iter(tables)) if baseline_from is None else baseline_from
    if baseline_from not in tables:
        raise ValueError(f"baseline_from={baseline_from!r} is not one of {list(tables)}")

    groups = group_order(list(tables.values()))
    labels = [group_label(t, p) for t, p in groups]
    fig = go.Figure()
    for i, (name, df) in enumerate(tables.items()):
        rows = index_rows(df)
        y, up, down, custom = [], [], [], []
        for key in groups:
            row = rows.get(key)
            acc = num(row["accuracy"]) if row is not None else None
            lo = num(row[lo_col]) if row is not None else None
            hi = num(row[hi_col]) if row is not None else None
            y.append(acc)
            up.append(hi - acc if acc is not None and hi is not None else 0.0)
            down.append(acc - lo if acc is not None and lo is not None else 0.0)
            custom.append([lo, hi,
                           int(row["n_items"]) if row is not None else 0,
                           num(row["object_compliance"]) if row is not None else None,
                           num(row["hypothetical_compliance"]) if row is not None else None,
                           _mode_text(row),
                           num(row["mode_baseline"]) if row is not None else None])
        fig.add_trace(go.Bar(
            name=name, x=labels, y=y, marker_color=color(i), customdata=custom,
            hovertemplate=_ACC_HOVER,
            error_y=dict(type="data", symmetric=False, array=up, arrayminus=down,
                         thickness=1.5, width=4, color="#333333")))

    rows = index_rows(tables[baseline_from])
    base = [rows.get(k) for k in groups]
    fig.add_trace(go.Scatter(
        name=f"mode baseline (target of {baseline_from})", x=labels,
        y=[num(r["mode_baseline"]) if r is not None else None for r in base],
        mode="markers",
        marker=dict(symbol="line-ew", size=max(14, min(60, 480 // max(1, len(groups)))),
                    line=dict(width=3, color=BASELINE_COLOR), color=BASELINE_COLOR),
        customdata=[[_mode_text(r), num(r["mode_baseline_ci_low"]) if r is not None else None,
                     num(r["mode_baseline_ci_high"]) if r is not None else None,
                     int(r["n_items"]) if r is not None else 0] for r in base],
        hovertemplate=_MODE_HOVER))

    fig.update_layout(template=TEMPLATE, title=title, barmode="group", bargap=0.25,
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    category_xaxis(fig, labels, "task / property")
    percent_yaxis(fig, "accuracy" + (" (bootstrap 95% CI)" if ci == "bootstrap"
                                     else " (±1.96·SEM)"))
    separate_all_group(fig, groups)
    return fig


def compliance_figure(df: pd.DataFrame, *, min_compliance: float = MIN_OBJECT_COMPLIANCE,
                      max_mode_baseline: float = MAX_MODE_BASELINE, show_hypothetical: bool = False,
                      title: str = "Object-level compliance and mode baseline") -> go.Figure:
    """Object compliance and mode baseline per task × property, with the acceptance thresholds.

    `df` is one `evaluate_table` output (the ALL row, if present, comes last and is set apart).
    Dashed lines mark `min_compliance` (object compliance must reach it) and
    `max_mode_baseline` (the mode baseline must not exceed it): the quick preset's acceptance.
    Bars of a group that fails either check get a red outline; the hover says pass/fail.
    `show_hypothetical` adds hypothetical compliance as a third bar.
    """
    require_columns(df, COMPLIANCE_COLUMNS, "compliance_figure")
    groups = group_order([df])
    labels = [group_label(t, p) for t, p in groups]
    rows = index_rows(df)
    ordered = [rows[k] for k in groups]
    comp = np.array([num(r["object_compliance"]) for r in ordered], dtype=float)
    mode = np.array([num(r["mode_baseline"]) for r in ordered], dtype=float)
    passes = [bool(c >= min_compliance and m <= max_mode_baseline)  # NaN fails
              for c, m in zip(comp, mode)]
    outline = ["#d62728" if not ok else "rgba(0,0,0,0)" for ok in passes]
    custom = [[int(r["n_items"]), int(r["n_dropped_object"]), _mode_text(r),
               "yes" if ok else "no"] for r, ok in zip(ordered, passes)]
    hover = ("<b>%{fullData.name}</b><br>%{x}<br>%{y:.1%}<br>n_items %{customdata[0]}, "
             "dropped %{customdata[1]}<br>mode value %{customdata[2]}<br>"
             "passes acceptance: %{customdata[3]}<extra></extra>")
    series = [("object compliance", "object_compliance", color(0)),
              ("mode baseline", "mode_baseline", color(1))]
    if show_hypothetical:
        series.append(("hypothetical compliance", "hypothetical_compliance", color(2)))
    fig = go.Figure()
    for name, col, c in series:
        fig.add_trace(go.Bar(name=name, x=labels, y=[num(r[col]) for r in ordered],
                             marker=dict(color=c, line=dict(color=outline, width=2.5)),
                             customdata=custom, hovertemplate=hover))
    fig.add_hline(y=min_compliance, line=dict(color=color(0), dash="dash", width=2),
                  annotation_text=f"min object compliance {min_compliance:.0%}",
                  annotation_position="top left", name="min object compliance")
    fig.add_hline(y=max_mode_baseline, line=dict(color=color(1), dash="dot", width=2),
                  annotation_text=f"max mode baseline {max_mode_baseline:.0%}",
                  annotation_position="bottom left", name="max mode baseline")
    fig.update_layout(template=TEMPLATE, title=title, barmode="group", bargap=0.25,
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    category_xaxis(fig, labels, "task / property")
    percent_yaxis(fig, "share of rows", top=1.05)
    separate_all_group(fig, groups)
    return fig
