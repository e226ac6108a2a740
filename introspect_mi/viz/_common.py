"""Shared pieces of the figures: column checks, task×property grouping, colours, axes."""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

ALL = "ALL"  # task and property of evaluate_table's micro-average row
ALL_LABEL = "ALL (micro-average)"  # its x label in the figures
TEMPLATE = "plotly_white"
PALETTE: tuple[str, ...] = tuple(qualitative.Plotly)
BASELINE_COLOR = "#222222"


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def require_columns(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = sorted(set(columns) - set(df.columns))
    if missing:
        raise ValueError(f"{what}: missing columns {missing}")


def require_nonempty(mapping: Mapping[str, Any], what: str) -> None:
    if not mapping:
        raise ValueError(f"{what}: nothing to plot (empty mapping)")


def group_label(task: str, prop: str) -> str:
    """The x label of one evaluate_table row: "task / property", or ALL_LABEL."""
    if task == ALL and prop == ALL:
        return ALL_LABEL
    return f"{task} / {prop}"


def group_order(tables: Sequence[pd.DataFrame]) -> list[tuple[str, str]]:
    """Every (task, property) seen, in first-seen order, with (ALL, ALL) last if present."""
    seen: dict[tuple[str, str], None] = {}
    has_all = False
    for df in tables:
        for task, prop in zip(df["task"].astype(str), df["property"].astype(str)):
            if task == ALL and prop == ALL:
                has_all = True
            else:
                seen.setdefault((task, prop), None)
    return [*seen, *([(ALL, ALL)] if has_all else [])]


def index_rows(df: pd.DataFrame) -> dict[tuple[str, str], pd.Series]:
    """Rows keyed by (task, property); a duplicate key is an error (not an evaluate_table)."""
    out: dict[tuple[str, str], pd.Series] = {}
    for _, row in df.iterrows():
        key = (str(row["task"]), str(row["property"]))
        if key in out:
            raise ValueError(f"duplicate task×property row {key}")
        out[key] = row
    return out


def num(value: Any) -> float | None:
    """A finite float, or None (plotly leaves a gap) for NaN / None / missing."""
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def text(value: Any, missing: str = "–") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    try:
        if pd.isna(value):
            return missing
    except (TypeError, ValueError):
        pass
    return str(value)


def percent_yaxis(fig: go.Figure, title: str, top: float = 1.0) -> None:
    fig.update_yaxes(title_text=title, range=[0.0, top], tickformat=".0%", zeroline=True)


def separate_all_group(fig: go.Figure, groups: Sequence[tuple[str, str]]) -> None:
    """Shade the ALL group and draw a dashed separator before it (category-index coordinates)."""
    if not groups or groups[-1] != (ALL, ALL):
        return
    i = len(groups) - 1
    fig.add_shape(type="rect", xref="x", yref="paper", x0=i - 0.5, x1=i + 0.5, y0=0, y1=1,
                  fillcolor="rgba(120,120,120,0.12)", line_width=0, layer="below",
                  name="ALL group")
    if i > 0:
        fig.add_shape(type="line", xref="x", yref="paper", x0=i - 0.5, x1=i - 0.5, y0=0, y1=1,
                      line=dict(color="#555555", width=1.5, dash="dash"), name="ALL separator")


def category_xaxis(fig: go.Figure, labels: Sequence[str], title: str) -> None:
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=list(labels),
                     title_text=title, tickangle=-30 if len(labels) > 6 else 0)
