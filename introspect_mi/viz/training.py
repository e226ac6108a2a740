"""Training-loss curves from saved logs (one DataFrame per run)."""

from __future__ import annotations

from typing import Mapping

import pandas as pd
import plotly.graph_objects as go

from introspect_mi.viz._common import TEMPLATE, color, require_columns, require_nonempty


def loss_figure(curves: Mapping[str, pd.DataFrame], *, log_y: bool = False,
                title: str = "Training loss") -> go.Figure:
    """Loss against optimizer step, one colour per run (key of `curves`).

    Each DataFrame has `step` and `loss`, optionally `val_loss` (typically logged once per
    epoch, NaN elsewhere) and `epoch`. Training loss is a solid line over the rows where `loss`
    is set; validation loss is a dashed line with markers, same colour, over the rows where
    `val_loss` is set (no trace if it never is). Legend names: "<run> train", "<run> val".
    """
    require_nonempty(curves, "loss_figure")
    fig = go.Figure()
    for i, (label, df) in enumerate(curves.items()):
        require_columns(df, ("step", "loss"), f"loss_figure[{label!r}]")
        df = df.sort_values("step", kind="stable")
        has_epoch = "epoch" in df.columns
        hover = "<b>%{fullData.name}</b><br>step %{x}<br>loss %{y:.4f}"
        hover += "<br>epoch %{customdata}" if has_epoch else ""
        hover += "<extra></extra>"
        for col, suffix, style in (("loss", "train", dict(mode="lines", dash="solid")),
                                   ("val_loss", "val", dict(mode="lines+markers", dash="dash"))):
            if col not in df.columns:
                continue
            part = df[df[col].notna()]
            if part.empty:
                continue
            fig.add_trace(go.Scatter(
                name=f"{label} {suffix}", legendgroup=label, x=part["step"].tolist(),
                y=part[col].tolist(), mode=style["mode"],
                line=dict(color=color(i), dash=style["dash"], width=2),
                customdata=part["epoch"].tolist() if has_epoch else None,
                hovertemplate=hover))
    fig.update_layout(template=TEMPLATE, title=title, hovermode="closest")
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="loss", type="log" if log_y else "linear")
    return fig
