"""Figures of the SAE feature analyses, from their saved tables (experiments/sae_features.py).

Each figure takes the table the experiment writes (columns checked) and draws one panel per
subject (untrained M1, self-trained M1) where the comparison is per subject.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from introspect_mi.viz._common import BASELINE_COLOR, TEMPLATE, color, require_columns, require_nonempty


def _subjects(table: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(table["subject"]))


def _panels(subjects: Sequence[str], rows: int = 1, row_titles: Sequence[str] | None = None) -> go.Figure:
    return make_subplots(rows=rows, cols=len(subjects), subplot_titles=list(subjects) if rows == 1 else None,
                         shared_yaxes=True, row_titles=list(row_titles) if row_titles else None,
                         column_titles=list(subjects) if rows > 1 else None)


def _labels(layers: Sequence[float]) -> list[str]:
    """`L8` for layer 8 (also when a table read back made the layer column float)."""
    return [f"L{int(layer)}" for layer in layers]


def _layer_axis(fig: go.Figure, layers: Sequence[float]) -> None:
    present = [layer for layer in layers if pd.notna(layer)]
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=_labels(sorted(present)), title_text="layer")


def overlap_figure(overlap: pd.DataFrame) -> go.Figure:
    """Mean Jaccard overlap of active latents, object vs hypothetical run, per layer: at P's last
    token and at the final token, for the same item and for other items with the same token there
    (control), on the same records."""
    require_columns(overlap, ["subject", "layer", "position", "n", "jaccard_same", "jaccard_other", "diff_ci_low", "diff_ci_high"],
                    "overlap_figure")
    subjects = _subjects(overlap)
    fig = _panels(subjects)
    positions = list(dict.fromkeys(overlap["position"]))
    for col, subject in enumerate(subjects, 1):
        part = overlap[overlap["subject"] == subject]
        for i, position in enumerate(positions):
            rows = part[part["position"] == position].sort_values("layer")
            for pairing, control in (("same item", False), ("other item, same token", True)):
                fig.add_trace(go.Bar(
                    x=_labels(rows["layer"]), y=rows["jaccard_other" if control else "jaccard_same"], name=f"{position}, {pairing}",
                    legendgroup=f"{position}{pairing}", showlegend=col == 1,
                    marker={"color": color(i), "pattern": {"shape": "/" if control else ""}, "opacity": 0.55 if control else 1.0},
                    customdata=np.stack([rows["diff_ci_low"], rows["diff_ci_high"], rows["n"]], axis=-1),
                    hovertemplate="%{x}<br>Jaccard %{y:.3f}<br>same − other 95% CI [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
                                  "<br>n %{customdata[2]}<extra></extra>",
                ), row=1, col=col)
    fig.update_layout(template=TEMPLATE, barmode="group", title="Active-latent overlap: object-level run vs hypothetical run")
    fig.update_yaxes(title_text="mean Jaccard of active latents", range=[0, 1], row=1, col=1)
    _layer_axis(fig, overlap["layer"].unique())
    return fig


def attribution_split_figure(summary: pd.DataFrame) -> go.Figure:
    """Where the self-prediction logit's attribution sits: mean per item of the summed |attribution|
    over P's tokens vs the question's tokens, per layer (hover: signed sums and per-token means)."""
    need = ["subject", "layer", "abs_p", "abs_q", "attr_p", "attr_q", "abs_p_per_token", "abs_q_per_token"]
    require_columns(summary, need, "attribution_split_figure")
    subjects = _subjects(summary)
    fig = _panels(subjects)
    for col, subject in enumerate(subjects, 1):
        part = summary[summary["subject"] == subject].sort_values("layer")
        for i, (group, name) in enumerate((("p", "P's tokens"), ("q", "question tokens"))):
            fig.add_trace(go.Bar(
                x=_labels(part["layer"]), y=part[f"abs_{group}"], name=name, legendgroup=name,
                showlegend=col == 1, marker_color=color(i),
                customdata=np.stack([part[f"attr_{group}"], part[f"abs_{group}_per_token"]], axis=-1),
                hovertemplate=f"%{{x}} · {name}<br>|attribution| %{{y:.3f}}<br>signed %{{customdata[0]:.3f}}"
                              "<br>|attribution| per token %{customdata[1]:.4f}<extra></extra>",
            ), row=1, col=col)
    fig.update_layout(template=TEMPLATE, barmode="group",
                      title="Attribution of the correct property token's logit to SAE latents (gradient × activation)")
    fig.update_yaxes(title_text="mean Σ|attribution| per item", row=1, col=1)
    _layer_axis(fig, summary["layer"].unique())
    return fig


def ablation_figure(effects: pd.DataFrame, measures: Sequence[str] = ("logit_difference", "compliance")) -> go.Figure:
    """Per layer, the mean change from clean when the top-k attributed latents are ablated
    (diamonds) vs matched random latents (dashes), one row per measure; hover: top − random per
    item with its CI, p and family."""
    require_columns(effects, ["subject", "layer", "measure", "top_k", "matched_random", "top_minus_random", "ci_low", "ci_high",
                              "p_value", "family"], "ablation_figure")
    subjects = _subjects(effects)
    fig = _panels(subjects, rows=len(measures), row_titles=[f"Δ {m}" for m in measures])
    for col, subject in enumerate(subjects, 1):
        for row, measure in enumerate(measures, 1):
            part = effects[(effects["subject"] == subject) & (effects["measure"] == measure)].sort_values("layer")
            extra = np.stack([part["top_minus_random"], part["ci_low"], part["ci_high"], part["p_value"], part["family"]], axis=-1)
            for column, name, style in (("top_k", "top-k attributed", {"size": 13, "color": color(3), "symbol": "diamond"}),
                                        ("matched_random", "matched random (mean over draws)",
                                         {"symbol": "line-ew-open", "size": 22, "color": BASELINE_COLOR, "line": {"width": 2}})):
                fig.add_trace(go.Scatter(
                    x=_labels(part["layer"]), y=part[column], mode="markers", marker=style, name=name, legendgroup=column,
                    showlegend=col == 1 and row == 1, customdata=extra,
                    hovertemplate=f"%{{x}} · {name}<br>Δ {measure} %{{y:.3f}}<br>top − random %{{customdata[0]:.3f}} "
                                  "[%{customdata[1]:.3f}, %{customdata[2]:.3f}]<br>p %{customdata[3]:.3f} (%{customdata[4]})<extra></extra>",
                ), row=row, col=col)
    fig.update_layout(template=TEMPLATE, title="Ablating SAE latents at P's and the question's tokens", height=320 * len(measures))
    fig.add_hline(y=0, line={"color": "#999", "width": 1})
    _layer_axis(fig, effects["layer"].unique())
    return fig


def differential_figure(differential: pd.DataFrame, top: int = 10,
                        title: str = "Latents that self-prediction training changed most (hypothetical final token)") -> go.Figure:
    """Per layer, the latents whose mean activation at the hypothetical final token changed most
    from untrained to self-trained M1 (diff = self − untrained)."""
    require_columns(differential, ["layer", "feature", "mean_a", "mean_b", "diff"], "differential_figure")
    layers = sorted(differential["layer"].unique())
    fig = make_subplots(rows=1, cols=len(layers), subplot_titles=_labels(layers))
    for col, layer in enumerate(layers, 1):
        part = differential[differential["layer"] == layer].head(top).iloc[::-1]
        fig.add_trace(go.Bar(
            y=[f"#{f}" for f in part["feature"]], x=part["diff"], orientation="h", showlegend=False,
            marker_color=[color(0) if d > 0 else color(1) for d in part["diff"]],
            customdata=np.stack([part["mean_a"], part["mean_b"]], axis=-1),
            hovertemplate="latent %{y}<br>self − untrained %{x:.3f}<br>untrained %{customdata[0]:.3f} · self %{customdata[1]:.3f}<extra></extra>",
        ), row=1, col=col)
    fig.update_layout(template=TEMPLATE, title=title)
    fig.update_xaxes(title_text="mean activation: self − untrained")
    return fig


def activation_histogram(values: Mapping[str, np.ndarray], title: str = "Activations") -> go.Figure:
    """Overlaid histograms of one latent's nonzero activations, one per group (legend: how often
    it is active in that group)."""
    require_nonempty(values, "activation_histogram")
    fig = go.Figure()
    for i, (label, v) in enumerate(values.items()):
        v = np.asarray(v, dtype=float)
        active = v[v > 0]
        share = len(active) / len(v) if len(v) else float("nan")
        fig.add_trace(go.Histogram(x=active, name=f"{label} (active {share:.0%} of {len(v)})", marker_color=color(i), opacity=0.6,
                                   nbinsx=30))
    fig.update_layout(template=TEMPLATE, barmode="overlay", title=title, xaxis_title="activation (where > 0)", yaxis_title="count")
    return fig


def logit_effect_figure(effect: pd.DataFrame, title: str = "Logit effect of the decoder direction") -> go.Figure:
    """Tokens the latent's decoder direction promotes and suppresses most (through the final norm
    and unembedding), as horizontal bars."""
    require_columns(effect, ["token", "logit"], "logit_effect_figure")
    rows = effect.sort_values("logit")
    fig = go.Figure(go.Bar(
        y=[repr(t) for t in rows["token"]], x=rows["logit"], orientation="h",
        marker_color=[color(0) if v > 0 else color(1) for v in rows["logit"]],
        hovertemplate="%{y}<br>logit %{x:.3f}<extra></extra>",
    ))
    fig.update_layout(template=TEMPLATE, title=title, xaxis_title="logit of the normalised direction",
                      yaxis={"type": "category"}, height=max(360, 22 * len(rows) + 120))
    return fig
