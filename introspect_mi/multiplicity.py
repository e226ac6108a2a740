"""Tests over many cells, and the adjustment that keeps a family's error rate (METHODS.md).

Every mechanistic experiment tests many cells (layers × positions × properties × subjects). A
report marks each result *confirmatory* (in a family declared in code before the numbers, its
p-value Holm-adjusted within that family) or *exploratory* (shown, never adjusted into a claim).
`sign_flip_p` is the paired test used throughout (`paired_effect` adds the mean and its bootstrap CI): units (items, pairs) are exchangeable under the
null, so each unit's difference keeps or flips its sign at random. `holm` adjusts a family.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from introspect_mi.metrics import bootstrap_ci

CONFIRMATORY = "confirmatory"
EXPLORATORY = "exploratory"


def sign_flip_p(differences: Sequence[float] | np.ndarray, n_perm: int = 2000, seed: int = 0,
                two_sided: bool = False) -> float:
    """P-value that the mean unit difference is > 0 (or ≠ 0 with `two_sided`): the share of random
    sign flips whose sum reaches the observed one, (1 + hits) / (1 + n_perm). NaN with no units."""
    d = np.asarray(differences, dtype=float)
    d = d[~np.isnan(d)]
    if d.size == 0:
        return float("nan")
    signs = np.random.default_rng([seed, 5]).choice([-1.0, 1.0], size=(n_perm, d.size))
    sums, observed = signs @ d, d.sum()
    if two_sided:
        hits = np.sum(np.abs(sums) >= abs(observed) - 1e-12)
    else:
        hits = np.sum(sums >= observed - 1e-12)
    return float((1 + hits) / (1 + n_perm))


def paired_effect(differences: Sequence[float] | np.ndarray, seed: int = 0) -> dict[str, float]:
    """Mean of per-unit paired differences with its 95% bootstrap CI over units and the one-sided
    sign-flip p that it is > 0 (NaN with no units)."""
    d = np.asarray(differences, dtype=float)
    d = d[~np.isnan(d)]
    if not d.size:
        return {"n": 0, "mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "p": float("nan")}
    low, high = bootstrap_ci(d, seed=seed)
    return {"n": int(d.size), "mean": float(d.mean()), "ci_low": low, "ci_high": high, "p": sign_flip_p(d, seed=seed)}


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (NaN entries stay NaN and do not count toward the family)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = order.size
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out
