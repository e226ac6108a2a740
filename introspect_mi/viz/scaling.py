"""Accuracy vs training-set size (data scaling), from a saved replicates table."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from introspect_mi.viz._common import TEMPLATE, color, percent_yaxis, require_columns

PREDICTORS = {"self": "self-trained M1 → itself", "cross": "cross-trained M2 → self-trained M1", "input_only": "input-only → self-trained M1"}


def scaling_figure(table: pd.DataFrame, *, title: str = "Held-out accuracy vs training questions") -> go.Figure:
    """One line per predictor (self, cross, input-only) over `n_self_questions`, with asymmetric
    95% CI error bars from `<who>_ci_low/_ci_high`. `table` has one row per training-set size
    (experiments.behavioral_replicates.flat); rows are drawn in order of size."""
    cols = ["n_self_questions"] + [f"{who}{suffix}" for who in PREDICTORS for suffix in ("", "_ci_low", "_ci_high")]
    require_columns(table, cols, "scaling_figure")
    t = table.sort_values("n_self_questions", kind="stable")
    fig = go.Figure()
    for i, (who, name) in enumerate(PREDICTORS.items()):
        fig.add_trace(go.Scatter(
            name=name, x=t["n_self_questions"].tolist(), y=t[who].tolist(), mode="lines+markers",
            line={"color": color(i), "dash": "dot" if who == "input_only" else "solid"},
            error_y={"type": "data", "symmetric": False, "array": (t[f"{who}_ci_high"] - t[who]).tolist(),
                     "arrayminus": (t[who] - t[f"{who}_ci_low"]).tolist()},
            hovertemplate=f"<b>{name}</b><br>%{{x}} training questions<br>accuracy %{{y:.1%}}<extra></extra>"))
    fig.update_layout(template=TEMPLATE, title=title, xaxis_title="self-prediction training questions (cross: the same)")
    percent_yaxis(fig, "held-out accuracy")
    return fig
