"""Figures of the patching experiments (issue 7), built from their saved tables: layer × position
heatmaps with the position groups labelled, attribution against exact patching, steering and
concept-injection bars with their random controls."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from introspect_mi.viz._common import TEMPLATE, color, require_columns

COLUMNS = [("A", "P"), ("A", "question"), ("A", "final"), ("B", "P"), ("B-control", "P"), ("C", "final"), ("C-control", "final")]
"""Heatmap columns: experiment and the target position group it patches."""
COLUMN_LABELS = {
    ("A", "P"): "A hyp→hyp<br>P tokens", ("A", "question"): "A hyp→hyp<br>question", ("A", "final"): "A hyp→hyp<br>final",
    ("B", "P"): "B object→hyp<br>P tokens", ("B-control", "P"): "B control<br>own object",
    ("C", "final"): "C object→hyp<br>final", ("C-control", "final"): "C control<br>own object",
}
GROUP_COLOURS = {"context": "#dddddd", "P": "#9ecae1", "question": "#fdd0a2", "final": "#a1d99b"}


def group_heatmap(cells: pd.DataFrame, subject: str) -> go.Figure:
    """Median normalised effect (0 = clean target, 1 = clean source) per layer × (experiment,
    position group) for one subject, over pairs whose clean runs differ enough to normalise."""
    require_columns(cells, ["subject", "experiment", "group", "layer", "normalised", "delta"], "group_heatmap")
    own = cells[cells["subject"] == subject]
    layers = sorted(own["layer"].unique())
    columns = [c for c in COLUMNS if ((own["experiment"] == c[0]) & (own["group"] == c[1])).any()]
    z, hover = np.full((len(layers), len(columns)), np.nan), np.empty((len(layers), len(columns)), dtype=object)
    for j, (exp, group) in enumerate(columns):
        g = own[(own["experiment"] == exp) & (own["group"] == group)].groupby("layer")
        for i, layer in enumerate(layers):
            if layer not in g.groups:
                hover[i, j] = ""
                continue
            rows = g.get_group(layer)
            n = int(rows["normalised"].notna().sum())
            z[i, j] = rows["normalised"].median() if n else np.nan
            hover[i, j] = f"{n} normalisable pair(s) of {len(rows)}<br>median raw change {rows['delta'].median():+.3f}"
    fig = go.Figure(go.Heatmap(
        z=z, x=[COLUMN_LABELS[c] for c in columns], y=layers, customdata=hover, zmid=0.0, colorscale="RdBu_r",
        colorbar={"title": "median"}, hovertemplate="%{x}<br>layer %{y}<br>median normalised %{z:.2f}<br>%{customdata}<extra></extra>",
    ))
    fig.update_layout(template=TEMPLATE, title=f"{subject}: median patching effect per layer and position group (1 = source's prediction)",
                      xaxis={"title": "experiment and patched position group", "type": "category"}, yaxis={"title": "layer (resid_post)"})
    return fig


def pair_curves(cells: pd.DataFrame, subject: str) -> go.Figure:
    """One panel per (experiment, position group), and one for B − B-control: each pair's
    normalised effect over layers (thin lines), the median over pairs (thick) and the band between
    the quartiles; no peak is picked."""
    require_columns(cells, ["subject", "pair", "experiment", "group", "layer", "normalised"], "pair_curves")
    own = cells[cells["subject"] == subject]
    panels = [(c, own[(own["experiment"] == c[0]) & (own["group"] == c[1])]) for c in COLUMNS]
    panels = [(COLUMN_LABELS[c].replace("<br>", " "), g.pivot_table(index="layer", columns="pair", values="normalised", dropna=False))
              for c, g in panels if len(g)]
    b = own[own["experiment"].isin(["B", "B-control"])].pivot_table(index=["layer", "pair"], columns="experiment", values="normalised", dropna=False)
    if {"B", "B-control"} <= set(b.columns):
        panels.append(("B − B-control", (b["B"] - b["B-control"]).unstack("pair")))
    cols = 4
    fig = make_subplots(rows=-(-len(panels) // cols), cols=cols, subplot_titles=[name for name, _ in panels], shared_yaxes=True)
    for k, (name, wide) in enumerate(panels):
        row, col = k // cols + 1, k % cols + 1
        layers = list(wide.index)
        for pair in wide.columns:
            fig.add_trace(go.Scatter(x=layers, y=wide[pair], mode="lines", line={"color": "#bbbbbb", "width": 1}, showlegend=False,
                                     hovertemplate=f"{pair}<br>layer %{{x}}<br>normalised %{{y:.2f}}<extra></extra>"), row=row, col=col)
        q = wide.quantile([0.25, 0.5, 0.75], axis=1).T
        fig.add_trace(go.Scatter(x=layers + layers[::-1], y=list(q[0.75]) + list(q[0.25])[::-1], fill="toself", line={"width": 0},
                                 fillcolor="rgba(31, 119, 180, 0.25)", name="quartiles", showlegend=k == 0, legendgroup="q",
                                 hoverinfo="skip"), row=row, col=col)
        fig.add_trace(go.Scatter(x=layers, y=q[0.5], mode="lines+markers", line={"color": color(0), "width": 3}, name="median over pairs",
                                 showlegend=k == 0, legendgroup="m", customdata=wide.notna().sum(axis=1),
                                 hovertemplate="layer %{x}<br>median %{y:.2f} (%{customdata} pairs)<extra></extra>"), row=row, col=col)
    fig.update_layout(template=TEMPLATE, height=300 * (-(-len(panels) // cols)),
                      title=f"{subject}: each pair's normalised effect per layer (grey), median and quartiles (1 = source's prediction)")
    fig.update_xaxes(title_text="layer (resid_post)")
    return fig


def attribution_heatmap(grid: pd.DataFrame, subject: str, pair: str) -> go.Figure:
    """Attribution-patching estimate of every layer × token of one pair (hypothetical prompt from
    P's first token on), with the position groups named in a band above the grid and dashed
    lines where a group starts."""
    require_columns(grid, ["subject", "pair", "layer", "position", "token", "group", "attribution"], "attribution_heatmap")
    g = grid[(grid["subject"] == subject) & (grid["pair"] == pair)]
    table = g.pivot(index="layer", columns="position", values="attribution")
    tokens = g.drop_duplicates("position").set_index("position").loc[table.columns]
    labels = [f"{p}:{t!r}" for p, t in zip(table.columns, tokens["token"])]
    fig = go.Figure(go.Heatmap(z=table.to_numpy(), x=labels, y=table.index, zmid=0.0, colorscale="RdBu_r", colorbar={"title": "estimate"},
                               hovertemplate="token %{x}<br>layer %{y}<br>estimated change %{z:+.3f}<extra></extra>"))
    columns = list(table.columns)
    for group, members in tokens.reset_index().groupby("group", sort=False):
        first, last = columns.index(members["position"].min()), columns.index(members["position"].max())
        fig.add_shape(type="rect", xref="x", yref="paper", x0=first - 0.5, x1=last + 0.5, y0=1.01, y1=1.07, line_width=0,
                      fillcolor=GROUP_COLOURS.get(group, "#ccc"), name=f"group {group}")
        fig.add_annotation(x=(first + last) / 2, y=1.04, xref="x", yref="paper", text=group, showarrow=False)
        if first:
            fig.add_shape(type="line", xref="x", yref="paper", x0=first - 0.5, x1=first - 0.5, y0=0, y1=1,
                          line={"color": "#555", "width": 1, "dash": "dash"}, name=f"start of {group}")
    fig.update_layout(template=TEMPLATE, title=f"{subject}: attribution patching, {pair}",
                      xaxis={"title": "target token (position: text)", "type": "category", "tickangle": -60}, yaxis={"title": "layer (resid_post)"})
    return fig


def attribution_scatter(cells: pd.DataFrame, exact: pd.DataFrame) -> go.Figure:
    """Attribution estimate against exact patching: the A group cells of every pair and the
    single cells checked, one colour per subject, with the identity line."""
    require_columns(cells, ["subject", "experiment", "delta", "attribution"], "attribution_scatter")
    fig = go.Figure()
    a = cells[cells["experiment"] == "A"]
    values = [a["delta"], a["attribution"]]
    for i, subject in enumerate(a["subject"].unique()):
        s = a[a["subject"] == subject]
        fig.add_trace(go.Scatter(x=s["delta"], y=s["attribution"], mode="markers", name=f"{subject}: group cells",
                                 marker={"color": color(i), "symbol": "circle"},
                                 customdata=np.stack([s["group"], s["layer"]], axis=-1),
                                 hovertemplate="%{customdata[0]} at layer %{customdata[1]}<br>exact %{x:+.3f}<br>attribution %{y:+.3f}<extra></extra>"))
        if len(exact):
            e = exact[exact["subject"] == subject]
            values += [e["exact"], e["attribution"]]
            fig.add_trace(go.Scatter(x=e["exact"], y=e["attribution"], mode="markers", name=f"{subject}: single cells",
                                     marker={"color": color(i), "symbol": "x"},
                                     hovertemplate="exact %{x:+.3f}<br>attribution %{y:+.3f}<extra></extra>"))
    finite = pd.concat(values).replace([np.inf, -np.inf], np.nan).dropna()
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="attribution = exact", line={"color": "#888", "dash": "dash"}))
    fig.update_layout(template=TEMPLATE, title="Attribution patching vs exact patching (change of the logit difference)",
                      xaxis_title="exact patching: change vs clean target", yaxis_title="attribution estimate")
    return fig


def steering_bars(summary: pd.DataFrame) -> go.Figure:
    """Per subject and position set: how far steering moved the object answer and the
    self-prediction toward the pushed value (bars), against the random controls (mean, error bar up
    to the largest); and, among moved object answers, the share of self-predictions naming the new
    vs the old answer, steered and (lighter) unsteered."""
    require_columns(summary, ["subject", "label", "object_to_target", "hyp_to_target", "follows_new", "follows_old", "new_before", "old_before",
                              "random_object_to_target_mean", "random_object_to_target_max", "random_hyp_to_target_mean",
                              "random_hyp_to_target_max"], "steering_bars")
    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4], subplot_titles=(
        "shift toward the pushed value (steered − unsteered share)", "self-prediction among moved object answers"))
    x = [f"{s}<br>{lab}" for s, lab in zip(summary["subject"], summary["label"])]
    for k, (what, name) in enumerate((("object_to_target", "object answer"), ("hyp_to_target", "self-prediction"))):
        fig.add_trace(go.Bar(x=x, y=summary[what], name=f"{name}: steering vector", marker_color=color(2 * k),
                             legendgroup=what), row=1, col=1)
        mean, top = summary[f"random_{what}_mean"], summary[f"random_{what}_max"]
        fig.add_trace(go.Bar(x=x, y=mean, name=f"{name}: random (equal norm)", marker_color=color(2 * k), opacity=0.35,
                             error_y={"type": "data", "symmetric": False, "array": (top - mean).clip(lower=0), "arrayminus": [0] * len(x)},
                             legendgroup=what), row=1, col=1)
    for k, (what, before, name) in enumerate((("follows_new", "new_before", "new"), ("follows_old", "old_before", "old"))):
        fig.add_trace(go.Bar(x=x, y=summary[what], name=f"names the {name} object answer", marker_color=color(5 + k)), row=1, col=2)
        fig.add_trace(go.Bar(x=x, y=summary[before], name=f"names the {name} object answer, unsteered", marker_color=color(5 + k),
                             opacity=0.35), row=1, col=2)
    fig.update_layout(template=TEMPLATE, barmode="group", title="Steering: does the self-prediction follow the steered behaviour?")
    fig.update_yaxes(tickformat=".0%")
    return fig


def steering_sweep_figure(sweep: pd.DataFrame) -> go.Figure:
    """Object answers moved toward the pushed value per scale (steering at P's tokens): the steering
    vector and the sweep's random vector, one colour per subject."""
    require_columns(sweep, ["subject", "position_set", "vector", "scale", "object_to_target"], "steering_sweep_figure")
    fig = go.Figure()
    dashes = {"P": "solid", "after_P": "dot", "all": "dash"}
    for i, subject in enumerate(sweep["subject"].unique()):
        for (name, vec), g in sweep[sweep["subject"] == subject].groupby(["position_set", "vector"], sort=False):
            random = vec != "steer"
            fig.add_trace(go.Scatter(x=g["scale"], y=g["object_to_target"], mode="lines+markers", name=f"{subject}: {name}" + (" (random)" if random else ""),
                                     line={"color": color(i), "dash": "longdashdot" if random else dashes.get(name, "solid"), "width": 1 if random else 2},
                                     marker={"symbol": "x" if random else "circle"}))
    fig.update_layout(template=TEMPLATE, title="Steering scale sweep (object-level runs, P's tokens)",
                      xaxis={"title": "scale (× the mean-difference vector)", "type": "log"},
                      yaxis={"title": "object answers moved toward the pushed value", "tickformat": ".0%"})
    return fig


def concept_bars(summary: pd.DataFrame) -> go.Figure:
    """Shift of log P(the concept's value) at the self-report: the concept's own vector, its
    equal-norm random controls (error bar to the largest) and the other concepts' vectors."""
    require_columns(summary, ["subject", "scale", "concept", "value", "shift_own", "shift_random", "shift_random_max", "shift_other"], "concept_bars")
    x = [f"{s}<br>{c} → {v!r} (×{sc:g})" for s, c, v, sc in zip(summary["subject"], summary["concept"], summary["value"], summary["scale"])]
    fig = go.Figure([
        go.Bar(x=x, y=summary["shift_own"], name="concept vector", marker_color=color(0)),
        go.Bar(x=x, y=summary["shift_random"], name="random vectors (equal norm)", marker_color=color(0), opacity=0.35,
               error_y={"type": "data", "symmetric": False, "array": (summary["shift_random_max"] - summary["shift_random"]).clip(lower=0),
                        "arrayminus": [0] * len(x)}),
        go.Bar(x=x, y=summary["shift_other"], name="other concepts' vectors", marker_color=color(3)),
    ])
    fig.update_layout(template=TEMPLATE, barmode="group", title="Concept injection: shift of the self-report toward the concept's value",
                      yaxis_title="mean change of log P(value token)")
    return fig
