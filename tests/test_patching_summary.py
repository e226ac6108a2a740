"""Patching summaries over pairs: per-layer median / IQR / every pair's value, the declared
B − control family (bootstrap CI, sign-flip p, Holm only where confirmatory), attribution vs exact."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from introspect_mi.multiplicity import CONFIRMATORY, EXPLORATORY, holm, sign_flip_p
from introspect_mi.patching_summary import (
    attribution_agreement, contrast_differences, contrast_layers, contrast_tests, layer_summary, median_ci, pearson,
)


def cells(n_pairs: int = 8, layers: tuple[int, ...] = (0, 4, 8, 11), b_gain: float = 0.3) -> pd.DataFrame:
    """B = control + b_gain + noise per pair; C = its control (no effect); A's final group rises with depth."""
    rng = np.random.default_rng(0)
    rows = []
    for k in range(n_pairs):
        for layer in layers:
            base = rng.normal(0.2, 0.05)
            for exp, group, value in (("B", "P", base + b_gain + rng.normal(0, 0.05)), ("B-control", "P", base),
                                      ("C", "final", base), ("C-control", "final", base), ("A", "final", layer / 11 + k / 100)):
                rows.append({"pair": f"p{k}", "experiment": exp, "group": group, "layer": layer, "normalised": value, "delta": 2 * value})
    return pd.DataFrame(rows)


def test_layer_summary_gives_median_quartiles_and_every_pair() -> None:
    c = cells()
    c.loc[(c["pair"] == "p0") & (c["experiment"] == "A"), "normalised"] = np.nan  # a pair that is not normalisable
    s = layer_summary(c).set_index(["experiment", "group", "layer"])
    row = s.loc[("A", "final", 11)]
    expected = np.array([1 + k / 100 for k in range(1, 8)])
    assert row["n"] == 7 and row["median"] == pytest.approx(np.median(expected))
    assert (row["q25"], row["q75"]) == pytest.approx(tuple(np.quantile(expected, [0.25, 0.75])))
    assert set(row["values"]) == {f"p{k}" for k in range(8)} and math.isnan(row["values"]["p0"])
    assert (s["status"] == EXPLORATORY).all() and "peak_normalised" not in s.columns


def test_contrast_layers_are_the_middle_and_last_third() -> None:
    assert contrast_layers(12, [0, 2, 4, 6, 8, 10, 11]) == [4, 6, 8, 10, 11]
    assert contrast_layers(30, range(0, 30, 2)) == list(range(10, 30, 2))


def test_b_minus_control_is_confirmatory_and_holm_adjusted_c_is_exploratory() -> None:
    c = cells()
    diffs = contrast_differences(c, "B", "B-control")
    assert len(diffs) == 8 * 4
    t = contrast_tests(c, n_layers=12)
    b, cc = t[t["contrast"] == "B − B-control"], t[t["contrast"] == "C − C-control"]
    assert list(b["layer"]) == [4, 8, 11] and (b["status"] == CONFIRMATORY).all() and (cc["status"] == EXPLORATORY).all()
    np.testing.assert_allclose(b["p_holm"], holm(b["p"]))
    assert cc["p_holm"].isna().all()
    for r in b.itertuples():  # an independent recomputation from the pair differences
        d = diffs.loc[diffs["layer"] == r.layer, "difference"]
        assert r.median == pytest.approx(d.median()) and r.ci_low <= r.median <= r.ci_high and r.n == 8
        assert r.p == pytest.approx(sign_flip_p(d, n_perm=10000, seed=0)) and r.p < 0.01 and r.p_holm < 0.05
    assert (cc["median"] == 0).all() and (cc["p"] > 0.5).all()  # no effect: C equals its control


def test_median_ci() -> None:
    lo, hi = median_ci(np.arange(20.0))
    assert lo < 9.5 < hi and lo >= 0 and hi <= 19
    assert all(math.isnan(x) for x in median_ci([1.0]))


def test_attribution_agreement_per_pair_and_pooled() -> None:
    c = cells().assign(attribution=lambda d: np.where(d["experiment"] == "A", 3 * d["delta"] + 1, np.nan))
    exact = pd.DataFrame({"pair": ["p0"] * 4 + ["p1"] * 4, "exact": [0.0, 1, 2, 3, 0, 1, 2, 3], "attribution": [0.0, 1, 2, 3, 3, 2, 1, 0]})
    per_pair, pooled = attribution_agreement(c, exact)
    assert len(per_pair) == 8 and per_pair["r_group_cells"].to_numpy() == pytest.approx(1.0)
    got = per_pair.set_index("pair")
    assert got.loc["p0", "r_single_cells"] == pytest.approx(1.0) and got.loc["p1", "r_single_cells"] == pytest.approx(-1.0)
    assert math.isnan(got.loc["p2", "r_single_cells"]) and got.loc["p2", "single_cells"] == 0
    assert pooled["pairs_single_cells"] == 2 and pooled["r_single_cells_pooled"] == pytest.approx(0.0)
    assert pooled["r_single_cells_median"] == pytest.approx(0.0) and pooled["r_group_cells_pooled"] == pytest.approx(1.0)


def test_pearson_ignores_non_finite_pairs() -> None:
    assert pearson([1, 2, 3, np.nan], [2, 4, 6, 1]) == pytest.approx(1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))
