"""Imported by the fork server only: draws one small figure of each kind the reports draw.

plotly builds its validators and imports its trace classes on first use (about 1 s of CPU);
done here once, every victim that writes a report (patching) inherits them instead of paying it.
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

_fig = make_subplots(rows=1, cols=2)
for trace in (go.Heatmap(z=[[0.0, 1.0]]), go.Scatter(x=[0], y=[0]), go.Bar(x=["a"], y=[1]), go.Histogram(x=[0.0])):
    _fig.add_trace(trace, row=1, col=1)
_fig.update_layout(title="warm-up", height=100)
_fig.to_html(include_plotlyjs=False, full_html=False)
