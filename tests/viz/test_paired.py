"""difference_figure: paired differences in percentage points with asymmetric CI bars."""

from __future__ import annotations

import pandas as pd
import pytest

from introspect_mi.viz import difference_figure


def test_difference_figure_points_bars_and_mdd_band() -> None:
    frame = pd.DataFrame({"label": ["primary", "split: empty", "all cells"], "diff": [0.05, float("nan"), -0.02],
                          "diff_ci_low": [-0.01, float("nan"), -0.10], "diff_ci_high": [0.15, float("nan"), 0.04], "n_pairs": [100, 0, 120]})
    fig = difference_figure(frame, mdd=0.08)
    (trace,) = fig.data
    assert list(trace.y) == ["primary (n = 100)", "all cells (n = 120)"]  # the comparison without pairs is left out
    assert list(trace.x) == pytest.approx([5.0, -2.0])
    assert list(trace.error_x.array) == pytest.approx([10.0, 6.0]) and list(trace.error_x.arrayminus) == pytest.approx([6.0, 8.0])
    band = [s for s in fig.layout.shapes if s.type == "rect"]
    assert len(band) == 1 and (band[0].x0, band[0].x1) == pytest.approx((-8.0, 8.0))
    with pytest.raises(ValueError, match="missing columns"):
        difference_figure(frame.drop(columns=["n_pairs"]))
