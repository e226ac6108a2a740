"""Plotly figures and self-contained HTML reports, built from saved results only.

Figures take DataFrames loaded from a run directory (`metrics.evaluate_table`,
`metrics.calibration_curve`, training logs); nothing here loads or runs a model.
"""

from introspect_mi.viz.accuracy import (
    MAX_MODE_BASELINE, MIN_OBJECT_COMPLIANCE, accuracy_figure, compliance_figure,
)
from introspect_mi.viz.calibration import calibration_figure
from introspect_mi.viz.paired import difference_figure
from introspect_mi.viz.report import Section, Table, render_report, write_report
from introspect_mi.viz.scaling import scaling_figure
from introspect_mi.viz.training import loss_figure

__all__ = [
    "MAX_MODE_BASELINE", "MIN_OBJECT_COMPLIANCE", "Section", "Table", "accuracy_figure",
    "calibration_figure", "compliance_figure", "difference_figure", "loss_figure", "render_report", "scaling_figure", "write_report",
]
