"""Probe figures from a saved results table (one row per probe fit; the columns of
`probes.COLUMNS` plus `subject` and the columns that tell curves apart).

`layer_figure`: accuracy by layer with its CI band, one panel per property (columns) × variant
(rows: e.g. position, split), one colour per subject; each curve's majority baseline (dotted),
shuffled-label probe (dash-dot) and control-task probe (dashed) in the same colour, and an
optional input-only accuracy as a flat line. `input_only_figure`: bars for probes that have no
layer (e.g. on the prompt's tokens), with the same baselines as markers.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import hex_to_rgb
from plotly.subplots import make_subplots

from introspect_mi.viz._common import BASELINE_COLOR, TEMPLATE, color, num, require_columns

METRICS = ("layer", "subject", "acc", "acc_lo", "acc_hi", "majority", "shuffled_acc", "control_task_acc")
LINES = (("majority", "majority baseline", "dot"), ("shuffled_acc", "shuffled labels", "dashdot"),
         ("control_task_acc", "control task", "dash"))
PANEL_HEIGHT = 260


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = hex_to_rgb(hex_color)
    return f"rgba({r},{g},{b},{alpha})"


def _variant(row: pd.Series, columns: Sequence[str]) -> str:
    return " · ".join(str(row[c]) for c in columns)


def _hover(name: str) -> str:
    return (f"<b>{name}</b><br>layer %{{x}}<br>accuracy %{{y:.1%}} (95% CI %{{customdata[0]:.1%}} – %{{customdata[1]:.1%}})"
            "<br>majority %{customdata[2]:.1%} · control task %{customdata[3]:.1%}<br>n %{customdata[4]}<extra></extra>")


def layer_figure(table: pd.DataFrame, title: str, *, variant: Sequence[str] = (), facet: str = "property",
                 input_only: pd.DataFrame | None = None) -> go.Figure:
    """Accuracy by layer: panels `facet` × `variant` columns, a colour per subject.

    `input_only` (optional; an acc column) draws an input-only accuracy as a flat dark line in
    each panel, for the curve whose subject, `facet` and `variant` columns it shares agree.
    """
    require_columns(table, [*METRICS, facet, *variant, "n_test"], "layer_figure")
    if table.empty:
        raise ValueError("layer_figure: nothing to plot (empty table)")
    table = table.assign(_variant=table.apply(_variant, axis=1, columns=list(variant)) if variant else "")
    facets = list(dict.fromkeys(table[facet]))
    variants = list(dict.fromkeys(table["_variant"]))
    subjects = list(dict.fromkeys(table["subject"]))
    fig = make_subplots(rows=len(variants), cols=len(facets), shared_xaxes=True, shared_yaxes=True,
                        horizontal_spacing=0.03, vertical_spacing=0.06 if len(variants) > 1 else 0.0,
                        column_titles=[str(f) for f in facets], row_titles=[v for v in variants] if variant else None)
    match = [c for c in ("subject", facet, *variant) if input_only is not None and c in input_only.columns]
    shown: set[str] = set()

    def legend(group: str) -> bool:
        first = group not in shown
        shown.add(group)
        return first

    for (v, f, s), curve in table.groupby(["_variant", facet, "subject"], sort=False):
        curve = curve.sort_values("layer")
        pos = {"row": variants.index(v) + 1, "col": facets.index(f) + 1}
        c = color(subjects.index(s))
        x = curve["layer"].tolist()
        fig.add_trace(go.Scatter(x=x + x[::-1], y=curve["acc_hi"].tolist() + curve["acc_lo"].tolist()[::-1], mode="lines", fill="toself",
                                 fillcolor=_rgba(c, 0.15), line={"width": 0}, hoverinfo="skip", showlegend=False,
                                 legendgroup=f"{s}: probe", name=f"{s}: 95% CI"), **pos)
        custom = curve[["acc_lo", "acc_hi", "majority", "control_task_acc", "n_test"]].to_numpy().tolist()
        fig.add_trace(go.Scatter(x=x, y=curve["acc"], mode="lines+markers", line={"color": c, "width": 2}, marker={"size": 5},
                                 name=f"{s}: probe", legendgroup=f"{s}: probe", showlegend=legend(f"{s}: probe"),
                                 customdata=custom, hovertemplate=_hover(f"{s}: probe")), **pos)
        for column, label, dash in LINES:
            fig.add_trace(go.Scatter(x=x, y=[num(y) for y in curve[column]], mode="lines", name=f"{s}: {label}",
                                     line={"color": c, "dash": dash, "width": 1.3}, opacity=0.75, legendgroup=f"{s}: {label}",
                                     showlegend=legend(f"{s}: {label}"),
                                     hovertemplate=f"{s}: {label}<br>layer %{{x}}<br>%{{y:.1%}}<extra></extra>"), **pos)
        if input_only is not None:
            first = curve.iloc[0]
            ref = input_only[(input_only[match] == first[match]).all(axis=1)]
            if not ref.empty and num(ref["acc"].iloc[0]) is not None:
                fig.add_trace(go.Scatter(x=[min(x), max(x)], y=[ref["acc"].iloc[0]] * 2, mode="lines", name=f"{s}: input only (E)",
                                         line={"color": BASELINE_COLOR, "dash": "longdash", "width": 1}, opacity=0.6,
                                         legendgroup=f"{s}: input only", showlegend=legend(f"{s}: input only"),
                                         hovertemplate=f"{s}: input only<br>%{{y:.1%}}<extra></extra>"), **pos)
    height = 240 + PANEL_HEIGHT * len(variants)
    fig.update_layout(template=TEMPLATE, title=title, height=height, margin={"t": 90, "b": 150},
                      legend={"orientation": "h", "yanchor": "top", "y": -60 / (height - 240), "x": 0})
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    fig.update_yaxes(title_text="accuracy", col=1)
    fig.update_annotations(font_size=11)
    fig.update_xaxes(title_text="layer (resid_post)", row=len(variants))
    return fig


def input_only_figure(table: pd.DataFrame, title: str, *, category: Sequence[str] = ("property", "split")) -> go.Figure:
    """Bars of accuracy (95% CI) per `category` value, a colour per subject, with the majority
    baseline, shuffled-label and control-task accuracies as markers on each bar."""
    require_columns(table, [*METRICS[1:], *category], "input_only_figure")
    if table.empty:
        raise ValueError("input_only_figure: nothing to plot (empty table)")
    table = table.assign(_x=table.apply(_variant, axis=1, columns=list(category)))
    order = list(dict.fromkeys(table["_x"]))
    fig = go.Figure()
    markers = {"majority": "line-ew-open", "shuffled_acc": "circle-open", "control_task_acc": "x-thin-open"}
    for i, (s, rows) in enumerate(table.groupby("subject", sort=False)):
        rows = rows.set_index("_x").reindex(order)
        fig.add_trace(go.Bar(x=order, y=rows["acc"], name=f"{s}: probe", marker_color=color(i), offsetgroup=str(i),
                             error_y={"type": "data", "symmetric": False, "array": rows["acc_hi"] - rows["acc"],
                                      "arrayminus": rows["acc"] - rows["acc_lo"], "color": "#333"},
                             hovertemplate=f"{s}<br>%{{x}}<br>accuracy %{{y:.1%}}<extra></extra>"))
        for column, label, _ in LINES:
            fig.add_trace(go.Scatter(x=order, y=rows[column], mode="markers", name=f"{s}: {label}", offsetgroup=str(i),
                                     marker={"symbol": markers[column], "size": 14, "color": BASELINE_COLOR, "line": {"width": 2}},
                                     hovertemplate=f"{s}: {label}<br>%{{x}}<br>%{{y:.1%}}<extra></extra>"))
    fig.update_layout(template=TEMPLATE, title=title, barmode="group", scattermode="group",
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0})
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", title_text="accuracy (95% CI)")
    return fig
