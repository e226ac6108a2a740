"""Logit-lens figures: per layer, how high the object answer's first token and the property
token rank at the hypothetical prompt's final position (from `logit_lens.lens_summary`)."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
import plotly.graph_objects as go

from introspect_mi.viz._common import TEMPLATE, color, require_columns, require_nonempty

TARGET_NAMES = {"answer": "object answer's first token", "property": "correct property token"}


def lens_rank_figure(summaries: Mapping[str, pd.DataFrame], title: str = "Logit lens at the hypothetical final token") -> go.Figure:
    """Median rank (log scale, 1 = top) per layer of each target, one line style per target,
    one colour per subject."""
    require_nonempty(summaries, "lens_rank_figure")
    fig = go.Figure()
    for i, (label, summary) in enumerate(summaries.items()):
        for target, dash in (("answer", "solid"), ("property", "dot")):
            require_columns(summary, ["layer", f"{target}_median_rank", f"{target}_mean_prob"], "lens_rank_figure")
            fig.add_trace(go.Scatter(
                x=summary["layer"], y=summary[f"{target}_median_rank"] + 1, mode="lines+markers",
                name=f"{label}: {TARGET_NAMES[target]}", line={"color": color(i), "dash": dash},
                customdata=summary[f"{target}_mean_prob"],
                hovertemplate="layer %{x}<br>median rank %{y}<br>mean prob %{customdata:.3f}<extra></extra>",
            ))
    fig.update_layout(template=TEMPLATE, title=title, xaxis_title="layer (resid_post)",
                      yaxis={"title": "median rank (1 = top token)", "type": "log", "autorange": "reversed"})
    return fig
