"""introspect_mi.viz.scaling: accuracy vs training questions, from a hand-made replicates table."""

from __future__ import annotations

import pandas as pd
import pytest

from introspect_mi.viz import scaling_figure


def table() -> pd.DataFrame:
    rows = []
    for n, base in ((40, 0.2), (10, 0.1), (20, 0.15)):  # out of order on purpose
        rows.append({"n_self_questions": n, **{f"{who}{s}": base + d + off for who, d in (("self", 0.1), ("cross", 0.05), ("input_only", 0.0))
                                              for s, off in (("", 0.0), ("_ci_low", -0.05), ("_ci_high", 0.08))}})
    return pd.DataFrame(rows)


def test_one_line_per_predictor_in_order_of_size_with_asymmetric_error_bars() -> None:
    fig = scaling_figure(table())
    assert [t.name.split(" ")[0] for t in fig.data] == ["self-trained", "cross-trained", "input-only"]
    self_line = fig.data[0]
    assert list(self_line.x) == [10, 20, 40] and list(self_line.y) == pytest.approx([0.2, 0.25, 0.3])
    assert list(self_line.error_y.array) == pytest.approx([0.08] * 3) and list(self_line.error_y.arrayminus) == pytest.approx([0.05] * 3)
    assert fig.data[2].line.dash == "dot" and fig.layout.yaxis.tickformat == ".0%"


def test_a_missing_column_is_named() -> None:
    with pytest.raises(ValueError, match="cross_ci_low"):
        scaling_figure(table().drop(columns=["cross_ci_low"]))
