"""Summaries of the patching experiments over pairs (issue 15 point 2): per-layer distributions,
the declared contrast B − B-control, and attribution against exact patching.

No peak over layers is taken anywhere (a peak picks the layer on the number it reports). Every
layer gets the median, the interquartile range and each pair's value. The quantity of interest is
declared here, before any number is seen: per pair, B(normalised) − B-control(normalised) at the
patched layers in the middle and last third of the network (`contrast_layers`), one-sided
(B > control: P_a's object-level states carry P_a's property beyond what object-level context does
by itself); its tests are Holm-adjusted within each subject (`CONFIRMATORY_FAMILY`). Every other
summary (the A groups, C, C − control) is exploratory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from introspect_mi.multiplicity import CONFIRMATORY, EXPLORATORY, holm, sign_flip_p

CONFIRMATORY_FAMILY = "B − B-control (normalised) at the patched layers of the middle and last third, per subject"
CONTRASTS = {"B − B-control": ("B", "B-control", CONFIRMATORY), "C − C-control": ("C", "C-control", EXPLORATORY)}
"""Name → (experiment, its control, status). Only B − B-control is confirmatory."""
LEVEL = 0.05
"""Family-wise level at which a Holm-adjusted confirmatory p counts as a result."""
N_BOOT = 2000
N_PERM = 10000


def contrast_layers(n_layers: int, layers: Sequence[int]) -> list[int]:
    """The patched layers in the middle and last third of an `n_layers`-layer network (layer ≥ n_layers // 3)."""
    return [int(l) for l in layers if l >= n_layers // 3]


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson r over the finite pairs (NaN with fewer than 3 or no spread)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3 or x[keep].std() == 0 or y[keep].std() == 0:
        return float("nan")
    return float(np.corrcoef(x[keep], y[keep])[0, 1])


def median_ci(values: Sequence[float], n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the median over units (pairs resampled with replacement); NaN below 2 units."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return float("nan"), float("nan")
    draws = np.random.default_rng([seed, 15]).integers(0, v.size, size=(n_boot, v.size))
    medians = np.median(v[draws], axis=1)
    lo, hi = np.quantile(medians, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def layer_summary(cells: pd.DataFrame) -> pd.DataFrame:
    """Per experiment × group × layer: n normalisable pairs, median, quartiles of the normalised
    effect, the median raw change, and every pair's normalised value ({pair: value}, NaN kept)."""
    rows = []
    for (exp, group, layer), g in cells.groupby(["experiment", "group", "layer"], sort=False):
        v = g["normalised"].to_numpy(dtype=float)
        have = v[np.isfinite(v)]
        q25, med, q75 = np.quantile(have, [0.25, 0.5, 0.75]) if have.size else (np.nan,) * 3
        rows.append({"experiment": exp, "group": group, "layer": int(layer), "n": int(have.size), "median": float(med),
                     "q25": float(q25), "q75": float(q75), "median_delta": float(g["delta"].median()), "status": EXPLORATORY,
                     "values": dict(zip(g["pair"], map(float, v)))})
    return pd.DataFrame(rows)


def contrast_differences(cells: pd.DataFrame, experiment: str, control: str) -> pd.DataFrame:
    """Per pair × layer: normalised experiment − normalised control (layers where both were patched)."""
    own = cells[cells["experiment"].isin([experiment, control])].pivot_table(index=["pair", "layer"], columns="experiment",
                                                                             values="normalised", dropna=False)
    return (own[experiment] - own[control]).rename("difference").reset_index()


def contrast_tests(cells: pd.DataFrame, n_layers: int, seed: int = 0) -> pd.DataFrame:
    """Each contrast of `CONTRASTS` at each layer of the middle and last third: n pairs, median and
    its bootstrap CI over pairs, mean, a one-sided paired sign-flip p over pairs (mean > 0), the
    status, and the Holm-adjusted p within the confirmatory family (NaN for exploratory rows); each
    pair's difference ({pair: value})."""
    rows = []
    for name, (exp, control, status) in CONTRASTS.items():
        if not {exp, control} <= set(cells["experiment"]):
            continue
        diffs = contrast_differences(cells, exp, control)
        family = []
        for layer in contrast_layers(n_layers, sorted(diffs["layer"].unique())):
            d = diffs[diffs["layer"] == layer]
            v = d["difference"].to_numpy(dtype=float)
            have = v[np.isfinite(v)]
            lo, hi = median_ci(have, seed=seed)
            family.append({"contrast": name, "layer": layer, "n": int(have.size), "median": float(np.median(have)) if have.size else float("nan"),
                           "ci_low": lo, "ci_high": hi, "mean": float(have.mean()) if have.size else float("nan"),
                           "p": sign_flip_p(have, n_perm=N_PERM, seed=seed), "status": status,
                           "values": dict(zip(d["pair"], map(float, v)))})
        adjusted = holm([r["p"] for r in family]) if status == CONFIRMATORY else [float("nan")] * len(family)
        rows += [{**r, "p_holm": float(a)} for r, a in zip(family, adjusted)]
    return pd.DataFrame(rows)


def attribution_agreement(cells: pd.DataFrame, exact: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, float | int]]:
    """Attribution estimate vs exact patching: per pair, Pearson r over its A group cells and over
    its checked single cells; pooled r over all of them; the median per-pair r of each."""
    a = cells[cells["experiment"] == "A"]
    per_pair = []
    for pair, g in a.groupby("pair", sort=False):
        e = exact[exact["pair"] == pair] if len(exact) else exact
        per_pair.append({"pair": pair, "group_cells": len(g), "r_group_cells": pearson(g["delta"], g["attribution"]),
                         "single_cells": len(e), "r_single_cells": pearson(e["exact"], e["attribution"]) if len(e) else float("nan")})
    table = pd.DataFrame(per_pair)
    checked = table[table["single_cells"] > 0] if len(table) else table
    pooled = {"pairs_group_cells": len(table), "r_group_cells_pooled": pearson(a["delta"], a["attribution"]),
              "r_group_cells_median": float(table["r_group_cells"].median()) if len(table) else float("nan"),
              "pairs_single_cells": len(checked),
              "r_single_cells_pooled": pearson(exact["exact"], exact["attribution"]) if len(exact) else float("nan"),
              "r_single_cells_median": float(checked["r_single_cells"].median()) if len(checked) else float("nan")}
    return table, pooled
