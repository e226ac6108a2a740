"""Paired, item-clustered statistics for two predictors scored on the same (item, property) pairs.

Self and cross answer the *same* pairs (paired data), and an item contributes one pair per
property (clustered data: an item that one predictor gets right on one property it tends to get
right on another). So (METHODS.md "The behavioural test"):

- **Cluster bootstrap** (`clustered_mean`): resample *items* with replacement — all of an item's
  pairs together — within each stratum (task), and recompute the statistic. For an accuracy the
  per-pair values are 0/1 hits; for a paired difference they are a − b ∈ {−1, 0, 1} on the same
  pairs, so one draw of items gives a, b and their difference coherently. Micro-average: mean over
  pairs; macro-average: mean over strata of each stratum's mean (every task counts once).
- **Cluster permutation test** (`sign_flip_test`): under H0 the two predictors' labels are
  exchangeable within an item, so swapping them for a whole item flips the sign of the item's
  summed difference d_i. The statistic T = Σ d_i (= n × micro difference); the null distribution
  of Σ s_i·d_i over all 2^k sign vectors is computed *exactly* by convolution over the integer
  sums (no Monte Carlo needed at any size). Two-sided p = P(|T*| ≥ |T|). Its normal
  approximation z = T / sqrt(Σ d_i²) is the clustered McNemar statistic of Durkalski et al.
  (2003): z² = (Σ_i (b_i − c_i))² / Σ_i (b_i − c_i)², b_i / c_i the item's discordant pairs.
- **Power** (`detectable_difference`): the minimum detectable difference at `power` (two-sided `alpha`) for a
  paired design of n pairs with discordance rate p_d (share of pairs where exactly one is
  right), inflated by the design effect of the clustering:

      MDD = (z_{1−α/2} + z_{power}) · sqrt(p_d · DEFF / n)
      DEFF = 1 + (Σ m_i² / n − 1) · ρ        (m_i: pairs of item i, Σ m_i = n)
      ρ = Σ_i Σ_{j≠k} e_ij·e_ik / (σ² · Σ_i m_i(m_i − 1)),  e = D − mean(D),  σ² = mean(e²)

  where D ∈ {−1, 0, 1} is the per-pair difference and ρ its intra-item correlation (pairwise
  moment estimator). Equivalently DEFF = Σ_i (Σ_j e_ij)² / Σ e²: the cluster-level variance of
  the summed difference over the variance it would have if pairs were independent. p_d is the
  variance of D under H0 (no difference): a planning approximation, exact as the effect → 0.
  `pairs_needed` inverts it: n = (z_{1−α/2} + z_{power})² · p_d · DEFF / effect². With no
  discordant pair there is no variance to plan with: the MDD is None (not estimable), not 0.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its percentile cluster-bootstrap interval."""

    value: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class SignFlip:
    """Exact cluster permutation (sign-flip) test of a paired difference, and its normal approximation."""

    statistic: int  # T = Σ (a − b) over pairs
    p_value: float
    z: float  # clustered McNemar (Durkalski): T / sqrt(Σ_i d_i²)


@dataclass(frozen=True)
class Power:
    """What the design can detect: MDD at the given power, with the clustering that sets it."""

    n_pairs: int
    n_items: int
    discordance: float  # share of pairs where exactly one predictor is right
    icc: float  # intra-item correlation of the per-pair difference
    design_effect: float
    mdd: float | None  # None: no discordant pairs, so no variance to plan with
    alpha: float
    power: float


def _codes(labels: Sequence[Hashable] | np.ndarray) -> np.ndarray:
    """Integer codes 0..k-1 of `labels` in first-seen order."""
    _, first, inverse = np.unique(np.asarray(labels, dtype=object).astype(str), return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse.reshape(-1)]


def clustered_mean(values: Sequence[float] | np.ndarray, clusters: Sequence[Hashable], strata: Sequence[Hashable] | None = None, *,
                   macro: bool = False, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> Estimate:
    """Mean of per-pair `values` (micro, or `macro`: mean of the strata's means) with a percentile
    bootstrap CI that resamples `clusters` (items) with replacement within each stratum (task).

    A cluster must lie in one stratum. Pass `clusters=range(n)` to resample pairs instead.
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("clustered_mean needs a non-empty 1-d array of values")
    cl = _codes(clusters)
    st = np.zeros(x.size, dtype=int) if strata is None else _codes(strata)
    if cl.size != x.size or st.size != x.size:
        raise ValueError("values, clusters and strata differ in length")
    n_cl = int(cl.max()) + 1
    sums, sizes = np.bincount(cl, weights=x, minlength=n_cl), np.bincount(cl, minlength=n_cl).astype(float)
    stratum_of = np.full(n_cl, -1)
    stratum_of[cl] = st
    if np.any(stratum_of[cl] != st):
        raise ValueError("a cluster spans two strata")
    rng = np.random.default_rng(seed)
    boot_sums, boot_sizes = [], []
    for s in range(int(st.max()) + 1):
        members = np.flatnonzero(stratum_of == s)
        draws = members[rng.integers(0, members.size, size=(n_boot, members.size))]
        boot_sums.append(sums[draws].sum(axis=1))
        boot_sizes.append(sizes[draws].sum(axis=1))
    point_sums = [sums[stratum_of == s].sum() for s in range(len(boot_sums))]
    point_sizes = [sizes[stratum_of == s].sum() for s in range(len(boot_sums))]
    if macro:
        value = float(np.mean([a / b for a, b in zip(point_sums, point_sizes)]))
        stats = np.mean([a / b for a, b in zip(boot_sums, boot_sizes)], axis=0)
    else:
        value = float(sum(point_sums) / sum(point_sizes))
        stats = np.sum(boot_sums, axis=0) / np.sum(boot_sizes, axis=0)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return Estimate(value, float(lo), float(hi))


def item_differences(a: Sequence[bool], b: Sequence[bool], clusters: Sequence[Hashable]) -> np.ndarray:
    """d_i = Σ over item i's pairs of (a − b): each item's net count of pairs only `a` got right."""
    d = np.asarray(a, dtype=int) - np.asarray(b, dtype=int)
    return np.bincount(_codes(clusters), weights=d).astype(int)


def sign_flip_test(a: Sequence[bool], b: Sequence[bool], clusters: Sequence[Hashable]) -> SignFlip:
    """Exact two-sided cluster permutation test of mean(a) = mean(b) on the same pairs (module docstring)."""
    d = item_differences(a, b, clusters)
    t = int(d.sum())
    spread = int(np.abs(d).sum())
    # null distribution of Σ s_i d_i, s_i = ±1 with probability 1/2, over sums −spread..spread
    dist = np.zeros(2 * spread + 1)
    dist[spread] = 1.0
    for di in np.abs(d[d != 0]):
        dist = 0.5 * (np.roll(dist, di) + np.roll(dist, -di))  # no wrap-around: sums stay within ±spread
    sums = np.arange(-spread, spread + 1)
    p = float(min(1.0, dist[np.abs(sums) >= abs(t)].sum()))
    denom = float((d.astype(float) ** 2).sum())
    return SignFlip(t, p, t / np.sqrt(denom) if denom else 0.0)


def detectable_difference(a: Sequence[bool], b: Sequence[bool], clusters: Sequence[Hashable], *, alpha: float = 0.05,
                          power: float = 0.8) -> Power:
    """Minimum detectable difference of the paired, clustered design at hand (module docstring)."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if diff.size == 0:
        raise ValueError("power of no pairs")
    cl = _codes(clusters)
    n = diff.size
    sizes = np.bincount(cl).astype(float)
    e = diff - diff.mean()
    naive = float((e ** 2).sum())
    clustered = float((np.bincount(cl, weights=e) ** 2).sum())
    deff = clustered / naive if naive > 0 else 1.0
    within = float((sizes * (sizes - 1)).sum())
    icc = (clustered - naive) / (naive / n * within) if naive > 0 and within > 0 else 0.0
    discordance = float(np.mean(diff != 0))
    z = _z(alpha, power)
    mdd = z * float(np.sqrt(discordance * deff / n)) if discordance > 0 else None
    return Power(n, int(sizes.size), discordance, icc, deff, mdd, alpha, power)


def pairs_needed(effect: float, discordance: float, design_effect: float, *, alpha: float = 0.05, power: float = 0.8) -> int:
    """Pairs a paired, clustered design needs to detect `effect` (module docstring's MDD, inverted)."""
    if effect <= 0:
        raise ValueError("effect must be positive")
    return int(np.ceil(_z(alpha, power) ** 2 * discordance * design_effect / effect ** 2))


def _z(alpha: float, power: float) -> float:
    normal = NormalDist()
    return normal.inv_cdf(1.0 - alpha / 2.0) + normal.inv_cdf(power)


@dataclass(frozen=True)
class PairedComparison:
    """Two predictors on the same pairs: accuracies, their difference (micro and macro over
    strata), the paired test and the power of the design."""

    a: Estimate
    b: Estimate
    diff: Estimate
    macro_a: Estimate
    macro_b: Estimate
    macro_diff: Estimate
    only_a: int  # pairs only a got right
    only_b: int
    test: SignFlip
    power: Power
    n_strata: int

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-ready keys (a is "first", b "second"): first_accuracy, first_accuracy_ci_low, …,
        diff, diff_ci_low, …, macro_diff, …, only_first, only_second, p_value, z, mdd, design_effect, …"""
        names = {"a": "first_accuracy", "b": "second_accuracy", "diff": "diff", "macro_a": "macro_first_accuracy",
                 "macro_b": "macro_second_accuracy", "macro_diff": "macro_diff"}
        out: dict[str, Any] = {}
        for field, name in names.items():
            est = getattr(self, field)
            out.update({name: est.value, f"{name}_ci_low": est.ci_low, f"{name}_ci_high": est.ci_high})
        out.update(only_first=self.only_a, only_second=self.only_b, statistic=self.test.statistic, p_value=self.test.p_value,
                   z=self.test.z, n_strata=self.n_strata, **asdict(self.power))
        return out


def compare_paired(a: Sequence[bool], b: Sequence[bool], clusters: Sequence[Hashable], strata: Sequence[Hashable] | None = None, *,
                   n_boot: int = 1000, seed: int = 0) -> PairedComparison:
    """Everything a paired comparison reports; every interval from the same item draws (same seed)."""
    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if x.size != y.size or x.size == 0:
        raise ValueError("compare_paired needs two equally long, non-empty sequences of hits on the same pairs")

    def est(values: np.ndarray, macro: bool) -> Estimate:
        return clustered_mean(values, clusters, strata, macro=macro, n_boot=n_boot, seed=seed)

    d = x.astype(float) - y.astype(float)
    return PairedComparison(
        a=est(x, False), b=est(y, False), diff=est(d, False), macro_a=est(x, True), macro_b=est(y, True), macro_diff=est(d, True),
        only_a=int((x & ~y).sum()), only_b=int((~x & y).sum()), test=sign_flip_test(x, y, clusters),
        power=detectable_difference(x, y, clusters),
        n_strata=1 if strata is None else len(set(map(str, strata))))
