"""Scoring for self-prediction: accuracy, mode baseline, CIs, z-test, calibration (MAD with CI).

Pure functions over plain Python / numpy / pandas data; no model code. Conventions follow
PROTOCOL.md: a non-compliant *object* answer (None) drops the pair and is counted; a
non-compliant *hypothetical* answer (None) is kept and scored wrong. Property values are
compared as already-normalised strings (normalisation lives with the properties).

Calibration has two variants that feed the same `calibration_pairs` / `mad`:
- samples: build each prompt's dicts with `sample_distribution` from its T=1 samples;
- exact: pass next-token probability dicts ({value: prob}) directly.
`mad_interval` resamples prompts for a CI of either. Paired comparisons (two predictors on the
same pairs) belong to `introspect_mi.paired`; `two_proportion_ztest` is for independent samples.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

Z95 = 1.96
_MAX_BOOT_ELEMS = 1 << 22  # cap on resample-matrix size per chunk (memory), ~4M indices


@dataclass(frozen=True)
class Proportion:
    """k successes out of n, with two 95% intervals.

    `sem_low/sem_high` = value ± 1.96·sqrt(p(1-p)/n), clipped to [0, 1];
    `ci_low/ci_high` = bootstrap percentile interval of the mean (seeded).
    """

    k: int
    n: int
    value: float
    ci_low: float
    ci_high: float
    sem_low: float
    sem_high: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModeBaseline(Proportion):
    """Accuracy of always guessing `mode`, the most common value."""

    mode: str = ""


@dataclass(frozen=True)
class ZTest:
    """Two-sided two-proportion z-test of p1 - p2 (pooled SE); `diff_ci` uses unpooled SE."""

    z: float
    p_value: float
    diff: float
    diff_ci: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"z": self.z, "p_value": self.p_value, "diff": self.diff,
                "diff_ci_low": self.diff_ci[0], "diff_ci_high": self.diff_ci[1]}


def bootstrap_ci(values: np.ndarray, stat: Callable[..., Any] = np.mean, n_boot: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of `stat(values)`, reproducible for a given seed.

    Indices are drawn as one (chunk, n) array per chunk (chunks only bound memory for large n);
    `stat` is called with `axis=1` (np.mean, np.median, ...), else applied row by row.
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("bootstrap_ci needs a non-empty 1-d array")
    n = x.size
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, _MAX_BOOT_ELEMS // n))
    stats: list[np.ndarray] = []
    for start in range(0, n_boot, chunk):
        samples = x[rng.integers(0, n, size=(min(chunk, n_boot - start), n))]
        try:
            stats.append(np.asarray(stat(samples, axis=1), dtype=float))
        except TypeError:
            stats.append(np.array([stat(row) for row in samples], dtype=float))
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(np.concatenate(stats), [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _proportion(hits: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    n = int(hits.size)
    if n == 0:
        raise ValueError("cannot compute a proportion of zero items")
    k = int(hits.sum())
    p = k / n
    half = Z95 * math.sqrt(p * (1.0 - p) / n)
    lo, hi = bootstrap_ci(hits.astype(float), n_boot=n_boot, seed=seed)
    return dict(k=k, n=n, value=p, ci_low=lo, ci_high=hi,
                sem_low=max(0.0, p - half), sem_high=min(1.0, p + half))


def accuracy(correct: Sequence[bool], *, n_boot: int = 1000, seed: int = 0) -> Proportion:
    """Share of True in `correct`, with 1.96·SEM and bootstrap 95% intervals."""
    return Proportion(**_proportion(np.asarray(correct, dtype=bool), n_boot, seed))


def most_common(values: Sequence[str]) -> str:
    """Most common value; ties go to the lexicographically smallest (order-independent)."""
    counts = Counter(values)
    if not counts:
        raise ValueError("mode of an empty sequence")
    return min(counts, key=lambda v: (-counts[v], v))


def mode_baseline(values: Sequence[str], *, n_boot: int = 1000, seed: int = 0) -> ModeBaseline:
    """Accuracy of always guessing the most common of `values` (ties: smallest string)."""
    mode = most_common(values)
    hits = np.array([v == mode for v in values], dtype=bool)
    return ModeBaseline(**_proportion(hits, n_boot, seed), mode=mode)


def two_proportion_ztest(k1: int, n1: int, k2: int, n2: int) -> ZTest:
    """Two-sided z-test of k1/n1 vs k2/n2 for two *independent* samples (not for two predictors
    on the same pairs: see `introspect_mi.paired`).

    Degenerate inputs give an explicit no-evidence result instead of NaN: if either n is 0,
    z=0, p=1, diff=0 and diff_ci=(-1, 1) (nothing known); if the pooled variance is 0 (all
    successes or all failures on both sides), z=0, p=1 and diff=0 with CI (0, 0).
    """
    for k, n in ((k1, n1), (k2, n2)):
        if n < 0 or not 0 <= k <= n:
            raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n1 == 0 or n2 == 0:
        return ZTest(z=0.0, p_value=1.0, diff=0.0, diff_ci=(-1.0, 1.0))
    p1, p2 = k1 / n1, k2 / n2
    diff = p1 - p2
    pooled = (k1 + k2) / (n1 + n2)
    se_pooled = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2))
    se_diff = math.sqrt(p1 * (1.0 - p1) / n1 + p2 * (1.0 - p2) / n2)
    ci = (diff - Z95 * se_diff, diff + Z95 * se_diff)
    if se_pooled == 0.0:
        return ZTest(z=0.0, p_value=1.0, diff=diff, diff_ci=ci)
    z = diff / se_pooled
    return ZTest(z=z, p_value=math.erfc(abs(z) / math.sqrt(2.0)), diff=diff, diff_ci=ci)


def exact_mcnemar(first_only: int, second_only: int) -> float:
    """Two-sided exact McNemar p-value of paired binary outcomes: an exact binomial test (p = 1/2)
    of the discordant pairs (`first_only`: right for the first and wrong for the second, and vice
    versa); concordant pairs carry no information. No discordant pairs: p = 1."""
    if first_only < 0 or second_only < 0:
        raise ValueError(f"discordant counts must be >= 0, got {first_only}, {second_only}")
    n = first_only + second_only
    tail = sum(math.comb(n, i) for i in range(min(first_only, second_only) + 1))
    return min(1.0, 2.0 * tail / 2**n)


def _flat(prefix: str, prop: Proportion | None) -> dict[str, Any]:
    keys = ("value", "ci_low", "ci_high", "sem_low", "sem_high")
    names = (prefix, *(f"{prefix}_{k}" for k in keys[1:]))
    return {nm: (getattr(prop, k) if prop else float("nan")) for nm, k in zip(names, keys)}


def evaluate_table(df: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Score one row per (item, property): accuracy and mode baseline per task×property + ALL.

    Input columns: task, property, object_value, hypothetical_value (None/NaN = non-compliant).
    Object None → row dropped (counted in n_dropped_object); hypothetical None → wrong.
    object_compliance = retained / all rows; hypothetical_compliance = non-None hypothetical
    answers / all rows. The final row (task="ALL", property="ALL") micro-averages over all
    retained pairs; its mode baseline applies each task×property's own mode to that group's
    rows (the paper's rule), so its mode_value is None. A group with no retained rows gets NaN
    metrics. Filter `df` to held-out tasks beforehand for the headline number.
    """
    missing = {"task", "property", "object_value", "hypothetical_value"} - set(df.columns)
    if missing:
        raise ValueError(f"evaluate_table: missing columns {sorted(missing)}")
    rows: list[dict[str, Any]] = []
    all_hits: list[np.ndarray] = []
    all_mode_hits: list[np.ndarray] = []
    total = dropped = hyp_ok = 0
    for (task, prop), g in df.groupby(["task", "property"], sort=True):
        obj_ok = g["object_value"].notna().to_numpy()
        kept = g[obj_ok]
        obj = [str(v) for v in kept["object_value"]]
        hyp = [None if pd.isna(v) else str(v) for v in kept["hypothetical_value"]]
        hits = np.array([h is not None and h == o for o, h in zip(obj, hyp)], dtype=bool)
        n_hyp_ok = int(g["hypothetical_value"].notna().sum())
        acc = mode = None
        if obj:
            acc = accuracy(hits, n_boot=n_boot, seed=seed)
            mode = mode_baseline(obj, n_boot=n_boot, seed=seed)
            all_hits.append(hits)
            all_mode_hits.append(np.array([o == mode.mode for o in obj], dtype=bool))
        total, dropped, hyp_ok = total + len(g), dropped + int((~obj_ok).sum()), hyp_ok + n_hyp_ok
        rows.append({"task": str(task), "property": str(prop), "n_items": len(obj),
                     "n_dropped_object": int((~obj_ok).sum()),
                     "object_compliance": len(obj) / len(g),
                     "hypothetical_compliance": n_hyp_ok / len(g),
                     "n_correct": acc.k if acc else 0, **_flat("accuracy", acc),
                     "mode_value": mode.mode if mode else None, **_flat("mode_baseline", mode)})
    if total:
        hits = np.concatenate(all_hits) if all_hits else np.zeros(0, dtype=bool)
        acc = accuracy(hits, n_boot=n_boot, seed=seed) if hits.size else None
        mode = (Proportion(**_proportion(np.concatenate(all_mode_hits), n_boot, seed))
                if hits.size else None)
        rows.append({"task": "ALL", "property": "ALL", "n_items": int(hits.size),
                     "n_dropped_object": dropped, "object_compliance": hits.size / total,
                     "hypothetical_compliance": hyp_ok / total,
                     "n_correct": acc.k if acc else 0, **_flat("accuracy", acc),
                     "mode_value": None, **_flat("mode_baseline", mode)})
    return pd.DataFrame(rows)


def sample_distribution(values: Sequence[str | None], *, drop_none: bool = False
                        ) -> dict[str, float]:
    """Frequencies of T=1 sample values. None (non-compliant) is never a key.

    Default: None stays in the denominator, as mass that can never match (the paper's
    hypothetical distribution = frequencies of all answers). `drop_none=True` renormalises over
    compliant samples only (an option for the object side); all-None then gives {}.
    """
    if len(values) == 0:
        raise ValueError("sample_distribution of no samples")
    counts = Counter(v for v in values if v is not None)
    denom = sum(counts.values()) if drop_none else len(values)
    return {v: c / denom for v, c in counts.items()} if denom else {}


def calibration_pairs(object_dists: list[dict[str, float]],
                      hypothetical_dists: list[dict[str, float]], top_k: int = 3) -> np.ndarray:
    """(object prob, hypothetical prob) for each prompt's top-1..k object values, shape (m, 2).

    Values are ranked by object prob, ties broken by the smallest string; values with prob 0
    are skipped, so a prompt with fewer than k values gives fewer pairs. A value absent from the
    hypothetical distribution pairs with 0.
    """
    if len(object_dists) != len(hypothetical_dists):
        raise ValueError("object_dists and hypothetical_dists differ in length")
    out: list[tuple[float, float]] = []
    for od, hd in zip(object_dists, hypothetical_dists):
        ranked = sorted((kv for kv in od.items() if kv[1] > 0), key=lambda kv: (-kv[1], kv[0]))
        out.extend((float(p), float(hd.get(v, 0.0))) for v, p in ranked[:top_k])
    return np.array(out, dtype=float).reshape(-1, 2)


def _bins(pairs: np.ndarray, n_bins: int) -> list[np.ndarray]:
    p = np.asarray(pairs, dtype=float).reshape(-1, 2)
    if p.shape[0] == 0:
        raise ValueError("no calibration pairs")
    order = np.argsort(p[:, 0], kind="stable")
    return np.array_split(p[order], min(n_bins, p.shape[0]))


def calibration_curve(pairs: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Bin pairs by object prob into equal-frequency bins; per-bin means, for plotting/MAD.

    Bins = np.array_split over a stable argsort of the object prob: sizes differ by at most
    one (earlier, lower-prob bins get the extra item) and tied probs keep input order, so they
    may straddle a bin edge. With fewer pairs than n_bins, each pair is its own bin.
    """
    return pd.DataFrame([{"bin": i, "n": len(b), "object_min": b[:, 0].min(),
                          "object_max": b[:, 0].max(), "object_mean": b[:, 0].mean(),
                          "hypothetical_mean": b[:, 1].mean()} for i, b in enumerate(_bins(pairs, n_bins))])


def mad(pairs: np.ndarray, n_bins: int = 10) -> float:
    """Mean absolute deviation ×100 between bin object and hypothetical means (lower = better)."""
    return float(np.mean([abs(b[:, 0].mean() - b[:, 1].mean()) for b in _bins(pairs, n_bins)]) * 100.0)


def mad_interval(object_dists: list[dict[str, float]], hypothetical_dists: list[dict[str, float]], *, top_k: int = 3,
                 n_bins: int = 10, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of `mad` that resamples *prompts* (each with its top-k pairs), the
    unit the calibration measurement samples; bins are recomputed in every draw."""
    per_prompt = [calibration_pairs([o], [h], top_k) for o, h in zip(object_dists, hypothetical_dists, strict=True)]
    if not any(len(p) for p in per_prompt):
        raise ValueError("no calibration pairs")
    rng = np.random.default_rng(seed)
    stats = []
    for draw in rng.integers(0, len(per_prompt), size=(n_boot, len(per_prompt))):
        pairs = np.concatenate([per_prompt[i] for i in draw])
        if len(pairs):
            stats.append(mad(pairs, n_bins))
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(lo), float(hi)
