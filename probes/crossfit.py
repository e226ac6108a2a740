"""Cross-fitting: every vector is tested once, by probes that never saw its fold.

With a few dozen items a single train/test split tests a dozen vectors (a CI some ±25 points
wide); k-fold cross-fitting over items (or leave-one-task-out) tests all of them and pools the
predictions. Each fold fits, in one batched solve (`fit_probes`), every target's probe, its
shuffled-label control and its control task; the scores are pooled over folds.

The vectors scored may differ from those trained on (`test=`: transfer, e.g. a probe trained on
object-level activations scored on hypothetical ones): fold f's probes score the test vectors of
fold f, so with folds by item an item is never on both sides.

Controls: each fold's shuffled labels are a seeded permutation of that fold's training labels
(a permutation over all folds would hand a leave-one-task-out fold the held-out task's labels);
the control task gives each key (train and test keys together) one label for all folds, drawn
from the training label frequencies.

Where the vectors carry their task (`Pool.tasks`), `task_constant` adds the per-task majority:
pooled tasks whose vectors know the task (a final token does) are fairly compared with knowing
the task, not with the pooled majority; `score` also gives each task's accuracy and bar.

Baselines differ from `probe_cell`'s in two ways, both because of cross-fitting on few items:
- majority = accuracy of the best constant answer on the tested labels (the most common tested
  label's share). Each fold's training mode scores less, by construction: a class
  over-represented in the training folds is under-represented in the test fold (balanced
  classes give the training mode ~40%, below chance). The best constant is the conservative bar.
- selectivity = (acc − majority) − max(0, control-task acc − control majority): the probe's gain
  over its best constant minus the control probe's. With many keys (Hewitt & Liang's word types)
  the control labels follow the label frequencies, the two majorities coincide and this is
  acc − control acc. With few keys (e.g. answer letters, one answer on nearly every item) the
  control labels are nearly constant: their trivial accuracy is not memorisation and is not
  charged to the probe; nor does a control probe below its constant (e.g. transferred to
  other vectors) count in the probe's favour.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from probes.config import ProbeConfig
from probes.controls import control_task_labels, selectivity, shuffled_labels
from probes.logistic import fit_probes
from introspect_mi.metrics import most_common
from probes.metrics import accuracy, accuracy_ci, as_labels, balanced_accuracy


@dataclass(frozen=True)
class Pool:
    """Vectors with one or more label sets ("targets") over the same rows."""

    X: np.ndarray | torch.Tensor
    """[n, d] features."""
    labels: Mapping[str, Sequence]
    """target name → one label per vector (no missing labels: drop those rows first)."""
    fold: Sequence[int]
    """Fold per vector (e.g. from `probes.group_folds` over items, or a task code)."""
    groups: Sequence
    """Item per vector: inner CV folds and the bootstrap resample whole items."""
    keys: Mapping[str, Sequence] | None = None
    """target name → control-task key per vector (None: no control task, NaN columns)."""
    tasks: Sequence | None = None
    """Task per vector: the per-task majority bar and within-task accuracies (None: one pooled constant)."""

    def __post_init__(self) -> None:
        n = len(self.X)
        columns = [*self.labels.values(), self.fold, self.groups, *(self.keys or {}).values(), *([] if self.tasks is None else [self.tasks])]
        if any(len(c) != n for c in columns):
            raise ValueError(f"every label, fold, group and key column needs {n} entries (one per vector)")
        if self.keys is not None and set(self.keys) != set(self.labels):
            raise ValueError(f"control keys for {sorted(self.keys)} but targets {sorted(self.labels)}")


def frequent_classes(labels: Sequence, groups: Sequence, min_items: int, top_k: int | None = None) -> np.ndarray:
    """Mask of the vectors whose label has at least `min_items` distinct groups (items), keeping
    only the `top_k` most frequent such labels when given (ties: label order). A probe cannot
    learn, nor a fold test, a class seen on one or two items."""
    frame = pd.DataFrame({"label": as_labels(labels), "group": np.asarray(groups, dtype=str)})
    counts = frame.groupby("label")["group"].nunique()
    counts = counts[counts >= min_items].sort_index().sort_values(ascending=False, kind="stable")
    if top_k is not None:
        counts = counts.head(top_k)
    return frame["label"].isin(counts.index).to_numpy()


def best_constant(labels: Sequence) -> float:
    """Accuracy of always answering the most common of `labels` (their largest class share)."""
    return float(np.unique(as_labels(labels), return_counts=True)[1].max() / len(labels))


@dataclass(frozen=True)
class CrossFit:
    """One target's pooled out-of-fold predictions, kept for the scores and the nested layer choice."""

    y: np.ndarray
    """Tested labels."""
    pred: dict[str, np.ndarray]
    """probe / shuffled / control → prediction per tested vector."""
    control: np.ndarray | None
    """Control-task labels of the tested vectors (None: no control task)."""
    constant: np.ndarray
    """Per tested vector, the training folds' majority label of its task (`task_constant`)."""
    fold: np.ndarray
    groups: np.ndarray
    tasks: np.ndarray | None
    inner_loss: dict[int, float]
    """Outer fold → the probe's held-out cross-entropy in inner folds over that fold's training items (NaN: not run)."""
    n_train: int
    n_classes: int
    seen: float
    C: float
    converged: bool
    null_acc: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """Cross-fitted accuracy of each within-task label permutation (empty: none asked for)."""


def permuted_within(y: np.ndarray, tasks: np.ndarray | None, seed: int, index: int) -> np.ndarray:
    """The labels permuted within each task (all together when no tasks): a data set with no link
    between vectors and labels that keeps each task's label counts (the per-task bar stays)."""
    rng = np.random.default_rng([seed, 6, index])
    out = y.copy()
    for rows in ([np.arange(y.size)] if tasks is None else [np.flatnonzero(tasks == t) for t in np.unique(tasks)]):
        out[rows] = y[rng.permutation(rows)]
    return out


def task_constant(y_train: np.ndarray, tasks_train: np.ndarray | None, tasks_test: np.ndarray | None, n_test: int) -> np.ndarray:
    """Per tested vector, the most common training label of its task (ties: smallest); a task
    absent from training (leave-one-task-out) or no tasks given: the most common training label.

    A probe on pooled tasks whose vectors know the task scores this much by knowing the task
    alone: the fair bar (the pooled majority is too low)."""
    pooled = most_common(y_train.tolist())
    if tasks_test is None or tasks_train is None:
        return np.full(n_test, pooled, dtype=object).astype(str)
    modes = {t: most_common(y_train[tasks_train == t].tolist()) for t in np.unique(tasks_train)}
    return np.array([modes.get(t, pooled) for t in tasks_test], dtype=object).astype(str)


def cross_predict(train: Pool, cfg: ProbeConfig, test: Pool | None = None, inner: bool = False,
                  permutations: int = 0) -> dict[str, CrossFit]:
    """Out-of-fold predictions per target of the probe, its shuffled-label control and its control
    task; `inner` also cross-validates each fold's probe on its training items (one C: `cv_loss`),
    the score a nested layer choice reads. `permutations` > 0 (no `test` pool) also cross-fits
    that many label permutations within task (`permuted_within`, the same at every layer for a
    seed) in the controls' solve: `null_acc`, the permutation null of a max over layers."""
    if permutations and test is not None:
        raise ValueError("the permutation null permutes one pool's labels: give no test pool")
    test = train if test is None else test
    names = list(train.labels)
    if set(test.labels) != set(names) or (train.keys is None) != (test.keys is None):
        raise ValueError("train and test pools need the same targets and both (or neither) control keys")
    x_train, x_test = torch.as_tensor(train.X), torch.as_tensor(test.X)
    f_train, f_test = np.asarray(train.fold), np.asarray(test.fold)
    g_train, g_test = np.asarray(train.groups, dtype=object), np.asarray(test.groups, dtype=object)
    t_train, t_test = (None, None) if train.tasks is None or test.tasks is None else (as_labels(train.tasks), as_labels(test.tasks))
    y_train = {t: as_labels(train.labels[t]) for t in names}
    y_test = {t: as_labels(test.labels[t]) for t in names}
    control_train: dict[str, np.ndarray] = {}
    control_test: dict[str, np.ndarray] = {}
    if train.keys is not None and test.keys is not None:
        for t in names:
            drawn = control_task_labels(np.concatenate([as_labels(train.keys[t]), as_labels(test.keys[t])]), y_train[t], cfg.seed)
            control_train[t], control_test[t] = drawn[:len(f_train)], drawn[len(f_train):]
    null = {t: [permuted_within(y_train[t], t_train, cfg.seed, p) for p in range(permutations)] for t in names}
    kinds = ["probe", "shuffled", *(["control"] if control_train else []), *(f"null{p}" for p in range(permutations))]
    pred = {(t, k): np.empty(len(f_test), dtype=object) for t in names for k in kinds}
    constant = {t: np.empty(len(f_test), dtype=object) for t in names}
    seen = {t: np.zeros(len(f_test), dtype=bool) for t in names}
    chosen_c: dict[str, list[float]] = {t: [] for t in names}
    inner_loss: dict[str, dict[int, float]] = {t: {} for t in names}
    converged = {t: True for t in names}
    n_train = []
    for f in np.unique(f_test):
        tr, te = f_train != f, f_test == f
        if not tr.any():
            raise ValueError(f"fold {f} leaves no training vectors")
        n_train.append(int(tr.sum()))
        x_tr, g_tr = x_train[torch.as_tensor(tr)], g_train[tr]
        ctrl = {t: [shuffled_labels(y_train[t][tr], cfg.seed), *([control_train[t][tr]] if control_train else []), *(y[tr] for y in null[t])]
                for t in names}
        if inner:  # the probes with inner folds, their controls without (no layer is chosen on them)
            probes = fit_probes(x_tr, [y_train[t][tr] for t in names], cfg, g_tr, cross_validate=True)
            others = iter(fit_probes(x_tr, [y for t in names for y in ctrl[t]], cfg, g_tr))
            fitted = iter([p for probe in probes for p in (probe, *(next(others) for _ in kinds[1:]))])
        else:
            fitted = iter(fit_probes(x_tr, [y for t in names for y in (y_train[t][tr], *ctrl[t])], cfg, g_tr))
        x_fold = x_test[torch.as_tensor(te)]
        for t in names:
            constant[t][te] = task_constant(y_train[t][tr], None if t_train is None else t_train[tr], None if t_test is None else t_test[te], int(te.sum()))
            for kind in kinds:
                probe = next(fitted)
                pred[t, kind][te] = probe.predict(x_fold)
                if kind == "probe":
                    chosen_c[t].append(probe.C)
                    converged[t] &= probe.converged
                    inner_loss[t][int(f)] = float(np.nanmin(probe.cv_loss)) if inner else float("nan")
            if control_train:
                seen[t][te] = np.isin(as_labels(test.keys[t])[te], as_labels(train.keys[t])[tr])  # type: ignore[index]
    return {t: CrossFit(y_test[t], {k: pred[t, k].astype(str) for k in kinds if not k.startswith("null")}, control_test.get(t),
                        constant[t].astype(str), f_test, g_test, t_test, inner_loss[t], round(float(np.mean(n_train))),
                        len(np.unique(y_train[t])), float(seen[t].mean()) if control_train else float("nan"),
                        float(np.median(chosen_c[t])), converged[t],
                        np.array([accuracy(y, pred[t, f"null{p}"]) for p, y in enumerate(null[t])]))
            for t in names}


def score(fit: CrossFit, cfg: ProbeConfig) -> dict[str, Any]:
    """The metric columns of `probes.COLUMNS` from n_train on, plus control_majority (the best
    constant's accuracy on the control labels), task_majority (accuracy of `task_constant`) and
    within_task (task → n, probe accuracy, task constant's accuracy; None for one task)."""
    y, probe = fit.y, fit.pred["probe"]
    acc = accuracy(y, probe)
    lo, hi = accuracy_ci(y, probe, fit.groups, n_boot=cfg.n_boot, seed=cfg.seed)
    has_control = fit.control is not None
    control_acc = accuracy(fit.control, fit.pred["control"]) if has_control else float("nan")
    control_majority = best_constant(fit.control) if has_control else float("nan")
    majority = best_constant(y)
    within = None
    if fit.tasks is not None and len(np.unique(fit.tasks)) >= 2:
        within = {str(t): {"n": int((fit.tasks == t).sum()), "acc": accuracy(y[fit.tasks == t], probe[fit.tasks == t]),
                           "majority": accuracy(y[fit.tasks == t], fit.constant[fit.tasks == t])} for t in np.unique(fit.tasks)}
    return {"n_train": fit.n_train, "n_test": len(y), "n_classes": fit.n_classes,
            "acc": acc, "acc_lo": lo, "acc_hi": hi, "balanced_acc": balanced_accuracy(y, probe),
            "majority": majority, "task_majority": accuracy(y, fit.constant), "within_task": within,
            "shuffled_acc": accuracy(y, fit.pred["shuffled"]),
            "control_task_acc": control_acc, "control_majority": control_majority,
            "selectivity": _selectivity(acc - majority, control_acc - control_majority),
            "control_seen": fit.seen, "C": fit.C, "converged": fit.converged}


def cross_fit(train: Pool, cfg: ProbeConfig, test: Pool | None = None) -> dict[str, dict[str, Any]]:
    """Pooled out-of-fold scores per target (`score` of `cross_predict`).

    `test` (default: `train` itself) must carry the same targets; every fold present in it is
    scored by probes fitted on the training vectors of the other folds. n_train is the mean
    number of training vectors per fold, n_test the number of vectors scored; C is the median
    of the folds' chosen C and `converged` says whether every fold's probe converged.
    """
    return {t: score(fit, cfg) for t, fit in cross_predict(train, cfg, test).items()}


def _selectivity(gain: float, control_gain: float) -> float:
    """The probe's gain over its best constant minus the control probe's, a negative one counted as 0 (NaN stays NaN)."""
    return selectivity(gain, control_gain if np.isnan(control_gain) else max(0.0, control_gain))
