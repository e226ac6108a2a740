"""One self-contained HTML report: header, sections of figures, tables and text.

plotly.js is embedded once, inline in <head> (the file opens offline; nothing is loaded from a
CDN), or, for families of pages (e.g. SAE feature pages), read from a local file next to them
(`plotly_src`); each figure is a `<div id="fig-<section>-<figure>">` (1-based) plus its newPlot call.
The file is written atomically (temporary file in the same folder, then os.replace).
"""

from __future__ import annotations

import html
import math
import numbers
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from introspect_mi.store import atomic_write_text

# Float columns whose name contains one of these, and whose values all lie in [0, 1], are
# shown as percentages (one decimal) unless a Table names its percent columns explicitly.
PERCENT_HINTS = ("accuracy", "compliance", "baseline", "rate", "share", "fraction", "prob")
FIGURE_HEIGHT = "520px"


@dataclass
class Table:
    """A DataFrame with an optional caption and an explicit list of percentage columns."""

    frame: pd.DataFrame
    caption: str = ""
    percent_columns: Sequence[str] | None = None  # None: guess from PERCENT_HINTS


@dataclass
class Section:
    title: str
    figures: list[go.Figure] = field(default_factory=list)
    tables: list[pd.DataFrame | Table] = field(default_factory=list)
    text: str = ""  # plain text, escaped; blank lines separate paragraphs
    links: list[tuple[str, str]] = field(default_factory=list)  # (href, text): a list of links after the tables


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def guess_percent_columns(df: pd.DataFrame) -> list[str]:
    out = []
    for col in df.columns:
        name = str(col).lower()
        if not any(h in name for h in PERCENT_HINTS):
            continue
        if not pd.api.types.is_float_dtype(df[col]):
            continue
        vals = df[col].dropna()
        if ((vals >= 0.0) & (vals <= 1.0)).all():
            out.append(col)
    return out


def format_cell(v: Any, percent: bool = False) -> str:
    """Text of one table cell: 12.3% for percentages, ints as is, other floats to 4 digits."""
    if _is_missing(v):
        return "–"
    if isinstance(v, (bool,)):
        return str(v)
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real):
        f = float(v)
        if percent:
            return f"{f * 100:.1f}%"
        if math.isfinite(f) and f == int(f) and abs(f) < 1e15:
            return f"{f:.1f}"
        return f"{f:.4g}"
    return str(v)


def table_html(table: pd.DataFrame | Table) -> str:
    t = table if isinstance(table, Table) else Table(table)
    df = t.frame
    pct = set(guess_percent_columns(df) if t.percent_columns is None else t.percent_columns)
    numeric = {c for c in df.columns if pd.api.types.is_numeric_dtype(df[c])}
    parts = ['<table class="data">']
    if t.caption:
        parts.append(f"<caption>{html.escape(t.caption)}</caption>")
    parts.append("<thead><tr>" + "".join(
        f'<th{" class=num" if c in numeric else ""}>{html.escape(str(c))}</th>'
        for c in df.columns) + "</tr></thead><tbody>")
    for row in df.itertuples(index=False, name=None):
        parts.append("<tr>" + "".join(
            f'<td{" class=num" if c in numeric else ""}>'
            f"{html.escape(format_cell(v, c in pct))}</td>"
            for c, v in zip(df.columns, row)) + "</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)


def figure_html(fig: go.Figure, div_id: str) -> str:
    """The figure's div and newPlot script, no plotly.js (the page's <head> has it)."""
    return pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id,
                       default_height=FIGURE_HEIGHT, default_width="100%",
                       config={"responsive": True, "displaylogo": False})


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #222; }
header { border-bottom: 1px solid #ccc; margin-bottom: 1.5rem; }
header .meta { color: #666; font-size: 0.9rem; }
section { margin-bottom: 2.5rem; }
nav ul { padding-left: 1.2rem; }
.figure { margin: 1rem 0; }
table.data { border-collapse: collapse; margin: 1rem 0; font-size: 0.88rem; }
table.data caption { text-align: left; font-weight: 600; padding: 0.3rem 0; }
table.data th, table.data td { border-bottom: 1px solid #ddd; padding: 0.25rem 0.6rem;
                               text-align: left; }
table.data th { background: #f4f4f4; }
table.data .num { text-align: right; font-variant-numeric: tabular-nums; }
"""


def render_report(title: str, sections: Sequence[Section], *,
                  generated: datetime | None = None, plotly_src: str | None = None) -> str:
    """The report as one HTML string (see `write_report`)."""
    generated = generated or datetime.now(timezone.utc)
    stamp = generated.isoformat(timespec="seconds")
    has_figures = any(s.figures for s in sections)
    head = [f"<meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
            f"<style>{_CSS}</style>"]
    if has_figures:
        head.append("<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>")
        head.append(f"<script type=\"text/javascript\" src=\"{html.escape(plotly_src)}\"></script>" if plotly_src
                    else f"<script type=\"text/javascript\">{get_plotlyjs()}</script>")
    body = [f"<header><h1>{html.escape(title)}</h1>"
            f"<p class=\"meta\">Generated {html.escape(stamp)}</p></header>"]
    if len(sections) > 1:
        body.append("<nav><ul>" + "".join(
            f'<li><a href="#section-{i}">{html.escape(s.title)}</a></li>'
            for i, s in enumerate(sections, 1)) + "</ul></nav>")
    for i, s in enumerate(sections, 1):
        body.append(f'<section id="section-{i}"><h2>{html.escape(s.title)}</h2>')
        for para in (p.strip() for p in s.text.split("\n\n")):
            if para:
                body.append(f"<p>{html.escape(para)}</p>")
        for j, fig in enumerate(s.figures, 1):
            body.append(f'<div class="figure">{figure_html(fig, f"fig-{i}-{j}")}</div>')
        body.extend(table_html(t) for t in s.tables)
        if s.links:
            body.append("<ul class=\"links\">" + "".join(
                f'<li><a href="{html.escape(href)}">{html.escape(label)}</a></li>' for href, label in s.links) + "</ul>")
        body.append("</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>" + "\n".join(head) + "</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def write_report(path: Path | str, title: str, sections: Sequence[Section], *,
                 generated: datetime | None = None, plotly_src: str | None = None) -> Path:
    """Write `sections` as one self-contained HTML file at `path`, atomically; returns the path.

    Figure divs are `fig-<i>-<j>` (section i, figure j, 1-based); sections are `section-<i>`.
    `generated` (default: now, UTC) is the time shown in the header. `plotly_src`: a URL
    (relative to the page) of plotly.js to load instead of inlining it (`write_plotlyjs`).
    """
    path = Path(path)
    text = render_report(title, sections, generated=generated, plotly_src=plotly_src)  # fail before touching disk
    atomic_write_text(path, text)
    return path


def write_plotlyjs(folder: Path | str) -> str:
    """Write plotly.min.js into `folder` for pages rendered with `plotly_src`; returns its file name."""
    path = Path(folder) / "plotly.min.js"
    atomic_write_text(path, get_plotlyjs())
    return path.name
