"""Choosing the layer without inflating the reported accuracy, testing it, and correcting for many tests.

Reporting the layer with the highest cross-fitted accuracy reports a maximum: over 20 layers of
pure noise it sits well above chance. `nested_layers` chooses, for each outer fold, the layer
whose probe has the lowest held-out loss in *inner* folds over that fold's training items only
(`cross_predict(..., inner=True)`), and scores the fold at that layer: the chosen layer never saw
the fold's labels, so the pooled accuracy is an unbiased estimate of "probe at the layer this
procedure picks".

`max_over_layers_p` is the other honest reading of a sweep: the best layer's accuracy with a
permutation null that takes the same maximum over layers. `nested_summary` is a curve's reported line; its p-value tests whether those nested predictions beat a baseline predicting the same vectors
(per-task majority): a paired, item-clustered sign-flip test on each item's mean hit difference
(`introspect_mi.multiplicity`, which also holds the Holm adjustment the probing families use).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from introspect_mi.multiplicity import sign_flip_p
from probes.crossfit import CrossFit
from probes.metrics import accuracy_ci


def nested_layers(fits: Mapping[int, CrossFit]) -> tuple[np.ndarray, dict[int, int]]:
    """(hit per tested vector at the layer chosen for its fold, outer fold → chosen layer).

    `fits` maps layer → the same cell's `cross_predict(..., inner=True)` result at that layer;
    each fold takes the layer with the lowest inner loss (ties: the lowest layer).
    """
    layers = sorted(fits)
    first = fits[layers[0]]
    if any(len(fits[layer].y) != len(first.y) or not (fits[layer].fold == first.fold).all() for layer in layers):
        raise ValueError("every layer's fit must test the same vectors in the same folds")
    hits = np.zeros(len(first.y), dtype=bool)
    chosen = {}
    for f in np.unique(first.fold):
        losses = [fits[layer].inner_loss.get(int(f), float("nan")) for layer in layers]
        if np.isnan(losses).all():
            raise ValueError(f"fold {f} has no inner loss: fit with cross_predict(..., inner=True)")
        chosen[int(f)] = layers[int(np.nanargmin(losses))]
        rows = first.fold == f
        pick = fits[chosen[int(f)]]
        hits[rows] = pick.pred["probe"][rows] == pick.y[rows]
    return hits, chosen


def _hits_by_group(fits: Mapping[int, CrossFit]) -> dict[str, tuple[bool, str]]:
    """group → (nested hit, task) of a curve that tests each group once."""
    hits, _ = nested_layers(fits)
    first = fits[min(fits)]
    groups = np.asarray(first.groups).astype(str)
    if len(set(groups)) != groups.size:
        raise ValueError("pairing two curves by item needs one tested vector per item in each")
    tasks = np.asarray(first.tasks if first.tasks is not None else [""] * groups.size).astype(str)
    return {g: (bool(h), t) for g, h, t in zip(groups, hits, tasks)}


def aligned_hits(fits_a: Mapping[int, CrossFit], fits_b: Mapping[int, CrossFit]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two curves' nested hits on the items both tested, paired by item: (hits_a, hits_b, items,
    tasks). Items only one curve tested are left out."""
    a, b = _hits_by_group(fits_a), _hits_by_group(fits_b)
    common = sorted(set(a) & set(b))
    return (np.array([a[g][0] for g in common], dtype=bool), np.array([b[g][0] for g in common], dtype=bool),
            np.array(common, dtype=str), np.array([a[g][1] for g in common], dtype=str))


def max_over_layers_p(fits: Mapping[int, CrossFit]) -> tuple[float, int, float]:
    """(the highest cross-fitted accuracy over layers, its layer (ties: lowest), the permutation
    p-value of that maximum): each within-task label permutation is refitted at every layer and
    its maximum over layers taken, so the null carries the same selection; (1 + ≥) / (1 + P)."""
    layers = sorted(fits)
    acc = [float(np.mean(fits[layer].pred["probe"] == fits[layer].y)) for layer in layers]
    null = np.stack([fits[layer].null_acc for layer in layers])
    if null.shape[1] == 0:
        raise ValueError("no permutations: fit with cross_predict(..., permutations=P)")
    best = int(np.argmax(acc))
    return acc[best], layers[best], float((1 + np.sum(null.max(axis=0) >= acc[best] - 1e-12)) / (1 + null.shape[1]))


def item_differences(hits: np.ndarray, baseline_hits: np.ndarray, groups: Sequence) -> np.ndarray:
    """Per item (group), the mean over its vectors of hit − baseline hit."""
    names, codes = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    diff = hits.astype(float) - baseline_hits.astype(float)
    return np.bincount(codes, weights=diff, minlength=names.size) / np.bincount(codes, minlength=names.size)


def task_mode_hits(y: np.ndarray, tasks: np.ndarray | None) -> np.ndarray:
    """Hit per vector of its task's most common label among the tested vectors themselves (ties:
    the smallest label): the best a per-task constant can score, chosen in hindsight."""
    y = np.asarray(y).astype(str)
    keys = np.zeros(y.size, dtype=int) if tasks is None else np.unique(np.asarray(tasks, dtype=str), return_inverse=True)[1]
    hits = np.zeros(y.size, dtype=bool)
    for k in np.unique(keys):
        rows = keys == k
        labels, counts = np.unique(y[rows], return_counts=True)
        hits[rows] = y[rows] == labels[np.argmax(counts)]
    return hits


def strict_bar(fit: CrossFit) -> tuple[np.ndarray, str]:
    """The per-task constant a probe must beat, whichever scores higher on the tested vectors: the
    training folds' majority of each task (`constant`; with balanced classes, cross-fitting pushes it
    *below* chance, since a fold's training majority is the class its test part lacks) or the
    task's mode in hindsight (`task_mode_hits`)."""
    crossfitted, hindsight = fit.constant == fit.y, task_mode_hits(fit.y, fit.tasks)
    return (hindsight, "task mode in hindsight") if hindsight.mean() > crossfitted.mean() else (crossfitted, "training folds' task majority")


def subset_summary(fits: Mapping[int, CrossFit], mask: np.ndarray, n_flips: int = 2000, seed: int = 0) -> dict[str, Any]:
    """A curve's nested predictions scored on a subset of its tested vectors (`mask`, in test
    order), against the same per-task bar on those vectors: n, accuracy, bar and the one-sided
    item sign-flip p (NaN without vectors). The layer choice is the curve's own, made on all items."""
    hits, _ = nested_layers(fits)
    first = fits[min(fits)]
    bar, _ = strict_bar(first)
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return {"n": 0, "acc": float("nan"), "bar": float("nan"), "p": float("nan")}
    groups = np.asarray(first.groups)[mask]
    return {"n": int(mask.sum()), "acc": float(hits[mask].mean()), "bar": float(bar[mask].mean()),
            "p": sign_flip_p(item_differences(hits[mask], bar[mask], groups), n_flips, seed)}


def nested_summary(fits: Mapping[int, CrossFit], n_boot: int = 1000, n_flips: int = 2000, seed: int = 0) -> dict[str, Any]:
    """One curve (a cell's fits over layers) with its layer chosen in inner folds: the nested
    accuracy and its item-bootstrap CI, the per-task majority bar on the same vectors (`strict_bar`),
    the gain over it, the layer most folds chose (ties: lowest) with every fold's choice, and the
    one-sided sign-flip p-value that the nested probe beats that bar."""
    hits, chosen = nested_layers(fits)
    first = fits[min(fits)]
    bar, bar_kind = strict_bar(first)
    lo, hi = accuracy_ci(hits, np.ones(hits.size, dtype=bool), first.groups, n_boot=n_boot, seed=seed)
    picks = list(chosen.values())
    return {"n_test": int(hits.size), "nested_acc": float(hits.mean()), "nested_lo": lo, "nested_hi": hi,
            "task_majority": float(bar.mean()), "bar": bar_kind, "gain": float(hits.mean() - bar.mean()),
            "layer": min(set(picks), key=lambda layer: (-picks.count(layer), layer)), "layers_chosen": sorted(picks),
            "p_value": sign_flip_p(item_differences(hits, bar, first.groups), n_flips, seed)}
