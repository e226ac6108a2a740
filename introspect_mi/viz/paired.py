"""Forest plot of paired differences (two predictors on the same pairs) with their CIs."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from introspect_mi.viz._common import BASELINE_COLOR, TEMPLATE, color, num, require_columns

DIFFERENCE_COLUMNS = ("label", "diff", "diff_ci_low", "diff_ci_high", "n_pairs")


def difference_figure(frame: pd.DataFrame, *, title: str = "Self − cross accuracy (percentage points)",
                      mdd: float | None = None) -> go.Figure:
    """One row of `frame` per comparison, top to bottom: its difference as a dot with an asymmetric
    95% CI bar, in percentage points, and a line at 0. `mdd` (a fraction) shades ±MDD around 0: a
    difference inside it could not have been detected at 80% power. Rows without pairs are skipped."""
    require_columns(frame, DIFFERENCE_COLUMNS, "difference_figure")
    rows = frame[frame["n_pairs"].fillna(0) > 0]
    labels = [f"{label} (n = {int(n)})" for label, n in zip(rows["label"], rows["n_pairs"])]
    diff = [num(v) * 100 for v in rows["diff"]]
    fig = go.Figure(go.Scatter(
        x=diff, y=labels, mode="markers", marker=dict(size=10, color=color(0)),
        error_x=dict(type="data", symmetric=False, array=[num(h) * 100 - d for h, d in zip(rows["diff_ci_high"], diff)],
                     arrayminus=[d - num(lo) * 100 for lo, d in zip(rows["diff_ci_low"], diff)]),
        hovertemplate="<b>%{y}</b><br>%{x:+.1f} pts<extra></extra>", name="difference"))
    if mdd:
        fig.add_vrect(x0=-mdd * 100, x1=mdd * 100, fillcolor="rgba(120,120,120,0.15)", line_width=0, layer="below",
                      annotation_text="± minimum detectable difference", annotation_position="top left")
    fig.add_vline(x=0, line=dict(color=BASELINE_COLOR, width=1))
    fig.update_layout(template=TEMPLATE, title=title, showlegend=False, height=max(320, 60 * len(labels) + 160))
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=labels[::-1], automargin=True)
    fig.update_xaxes(title_text="difference (percentage points, 95% CI: items resampled)", zeroline=False)
    return fig
