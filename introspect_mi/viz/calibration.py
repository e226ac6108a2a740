"""Calibration plot from `introspect_mi.metrics.calibration_curve` DataFrames."""

from __future__ import annotations

import math
from typing import Mapping

import pandas as pd
import plotly.graph_objects as go

from introspect_mi.viz._common import TEMPLATE, color, require_columns, require_nonempty

CURVE_COLUMNS = ("object_mean", "hypothetical_mean")


def calibration_label(label: str, mads: Mapping[str, float]) -> str:
    """Legend name: "label (MAD 12.3)" when `mads` has a finite value for it, else label."""
    value = mads.get(label)
    if value is None or not math.isfinite(float(value)):
        return label
    return f"{label} (MAD {float(value):.1f})"


def calibration_figure(curves: Mapping[str, pd.DataFrame], mads: Mapping[str, float] | None = None,
                       *, title: str = "Calibration: object vs hypothetical probability"
                       ) -> go.Figure:
    """Object-level probability (x) vs hypothetical probability (y), one line per label.

    Each curve is a `calibration_curve` output (one row per equal-frequency bin; `object_mean`,
    `hypothetical_mean`, and for the hover `n`, `object_min`, `object_max` if present), plotted
    in bin order. `mads` (from `metrics.mad`, already ×100) go into the legend names. The first
    trace is the y = x diagonal (perfect calibration).
    """
    require_nonempty(curves, "calibration_figure")
    mads = mads or {}
    fig = go.Figure()
    fig.add_trace(go.Scatter(name="perfect calibration (y = x)", x=[0.0, 1.0], y=[0.0, 1.0],
                             mode="lines", line=dict(color="#888888", dash="dash", width=1.5),
                             hoverinfo="skip"))
    for i, (label, df) in enumerate(curves.items()):
        require_columns(df, CURVE_COLUMNS, f"calibration_figure[{label!r}]")
        if "bin" in df.columns:
            df = df.sort_values("bin", kind="stable")
        extra = [c for c in ("n", "object_min", "object_max") if c in df.columns]
        custom = df[extra].to_numpy().tolist() if extra else None
        lines = ["<b>%{fullData.name}</b>", "object %{x:.1%}", "hypothetical %{y:.1%}"]
        for j, c in enumerate(extra):
            fmt = "" if c == "n" else ":.1%"
            lines.append(f"{c} %{{customdata[{j}]{fmt}}}")
        fig.add_trace(go.Scatter(
            name=calibration_label(label, mads), x=df["object_mean"].tolist(),
            y=df["hypothetical_mean"].tolist(), mode="lines+markers",
            line=dict(color=color(i), width=2), marker=dict(size=8, color=color(i)),
            customdata=custom, hovertemplate="<br>".join(lines) + "<extra></extra>"))
    fig.update_layout(template=TEMPLATE, title=title,
                      legend=dict(yanchor="top", y=0.99, xanchor="left", x=0.01))
    fig.update_xaxes(title_text="object-level probability (bin mean)", range=[0, 1],
                     tickformat=".0%", constrain="domain")
    fig.update_yaxes(title_text="hypothetical probability (bin mean)", range=[0, 1],
                     tickformat=".0%", scaleanchor="x", scaleratio=1, constrain="domain")
    return fig
