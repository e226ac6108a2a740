"""Scores of a probe on test vectors: accuracy (with a bootstrap CI), balanced accuracy, and the
majority baseline. Labels are compared as strings, so a test label the probe never saw in
training simply never matches (it counts as wrong).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from introspect_mi.metrics import bootstrap_ci, most_common
from probes.splits import group_codes


def as_labels(y: Sequence) -> np.ndarray:
    """Labels as a 1-d array of strings; a missing label (None/NaN) is an error, not a class."""
    y = np.asarray(y, dtype=object).reshape(-1)
    if pd.isna(y).any():
        raise ValueError("labels contain None/NaN: drop the vectors without a label first")
    return y.astype(str)


def hits(y_true: Sequence, y_pred: Sequence) -> np.ndarray:
    """Boolean array: prediction equals the true label."""
    t, p = as_labels(y_true), as_labels(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"{t.size} true labels but {p.size} predictions")
    return t == p


def accuracy(y_true: Sequence, y_pred: Sequence) -> float:
    """Share of correct predictions."""
    return float(hits(y_true, y_pred).mean())


def balanced_accuracy(y_true: Sequence, y_pred: Sequence) -> float:
    """Mean over the classes present in `y_true` of the recall of that class."""
    t, correct = as_labels(y_true), hits(y_true, y_pred)
    return float(np.mean([correct[t == c].mean() for c in np.unique(t)]))


def majority_baseline(y_train: Sequence, y_test: Sequence) -> float:
    """Test accuracy of always answering the most common *training* label (ties: smallest)."""
    return float(np.mean(as_labels(y_test) == most_common(as_labels(y_train).tolist())))


def accuracy_ci(y_true: Sequence, y_pred: Sequence, groups: Sequence | None = None, *,
                n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of accuracy, resampling whole groups (e.g. items) when given.

    Resampling groups keeps the interval honest when one item contributes several vectors;
    without groups every vector is its own group. The statistic of a resample is its pooled
    accuracy (hits / vectors), which is the plain accuracy when each group has one vector.
    """
    correct = hits(y_true, y_pred)
    codes, n_groups = group_codes(np.arange(correct.size) if groups is None else groups)
    if codes.size != correct.size:
        raise ValueError(f"{codes.size} groups for {correct.size} predictions")
    k = np.bincount(codes, weights=correct, minlength=n_groups)
    n = np.bincount(codes, minlength=n_groups)

    def pooled(idx: np.ndarray, axis: int) -> np.ndarray:
        idx = idx.astype(np.int64)
        return k[idx].sum(axis) / n[idx].sum(axis)

    return bootstrap_ci(np.arange(n_groups), stat=pooled, n_boot=n_boot, seed=seed, level=level)
