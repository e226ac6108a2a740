"""A probe with both controls per (layer, position, property) cell, as one tidy DataFrame.

`probe_cell` fits the probe, the shuffled-label control and the control task on one set of
vectors (one batched solve) and scores them; `sweep` loads each (layer, position) once and runs
`probe_cell` for every target property, dropping the vectors that have no label for it.
"""

from __future__ import annotations

from itertools import product
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from introspect_mi.errors import UserError
from probes.config import ProbeConfig
from probes.controls import control_task_labels, selectivity, shuffled_labels
from probes.logistic import fit_probes
from probes.metrics import accuracy, accuracy_ci, as_labels, balanced_accuracy, majority_baseline
from probes.splits import Split

Column = str | Callable[[pd.DataFrame], Sequence]
"""A column of `meta`, or a function of `meta` giving one value per vector (None/NaN: no label)."""
Loader = Callable[[int, str], tuple[np.ndarray | torch.Tensor, pd.DataFrame]]
"""(layer, position) -> (X [n, d], meta with one row per vector), e.g. a wrapper of ActivationStore.load."""

COLUMNS = ("layer", "position", "property", "n_train", "n_test", "n_classes", "acc", "acc_lo", "acc_hi",
           "balanced_acc", "majority", "shuffled_acc", "control_task_acc", "selectivity", "control_seen",
           "C", "converged")
_NAN_METRICS = {c: float("nan") for c in COLUMNS[5:]}


def probe_cell(X: np.ndarray | torch.Tensor, labels: Sequence, train: np.ndarray, test: np.ndarray,
               cfg: ProbeConfig, *, groups: Sequence | None = None, keys: Sequence | None = None) -> dict[str, Any]:
    """Fit and score the probe and its controls on `X[train]`, tested on `X[test]`.

    `groups` (e.g. item ids) keep an item's vectors in one CV fold and are resampled whole by the
    bootstrap; `keys` (e.g. the object-level answer) define the control task (None: skip it, NaN).
    Returns the metric columns of COLUMNS (from n_train on).
    """
    train, test = np.asarray(train, dtype=bool), np.asarray(test, dtype=bool)
    if (train & test).any():
        raise ValueError("the split puts some vectors on both sides")
    y = as_labels(labels)
    if not train.any() or not test.any():
        return {**_NAN_METRICS, "n_train": int(train.sum()), "n_test": int(test.sum())}
    x = torch.as_tensor(X)
    x_train, x_test = x[torch.as_tensor(train)], x[torch.as_tensor(test)]
    g = np.arange(y.size) if groups is None else np.asarray(groups, dtype=object)
    ys = [y[train], shuffled_labels(y[train], cfg.seed)]
    if keys is not None:
        k = as_labels(keys)
        control = control_task_labels(np.concatenate([k[train], k[test]]), y[train], cfg.seed)
        ys.append(control[:train.sum()])
    probe, shuffled, *control_probe = fit_probes(x_train, ys, cfg, g[train])
    pred = probe.predict(x_test)
    acc = accuracy(y[test], pred)
    lo, hi = accuracy_ci(y[test], pred, g[test], n_boot=cfg.n_boot, seed=cfg.seed)
    control_acc = seen = float("nan")
    if keys is not None:
        control_acc = accuracy(control[train.sum():], control_probe[0].predict(x_test))
        seen = float(np.isin(k[test], k[train]).mean())
    return {"n_train": int(train.sum()), "n_test": int(test.sum()), "n_classes": len(probe.classes),
            "acc": acc, "acc_lo": lo, "acc_hi": hi, "balanced_acc": balanced_accuracy(y[test], pred),
            "majority": majority_baseline(y[train], y[test]),
            "shuffled_acc": accuracy(y[test], shuffled.predict(x_test)),
            "control_task_acc": control_acc, "selectivity": selectivity(acc, control_acc),
            "control_seen": seen, "C": probe.C, "converged": probe.converged}


def sweep(load: Loader, layers: Sequence[int], positions: Sequence[str], targets: Mapping[str, Column],
          split: Callable[[pd.DataFrame], Split], cfg: ProbeConfig, *, group_column: str | None = "item_id",
          control_key: Column | None = None, progress: bool = True) -> pd.DataFrame:
    """One row per (layer, position, property): the probe, its controls and baselines.

    `targets` maps a property name to its label column; vectors whose label is None/NaN are
    dropped for that property before `split(meta) -> (train mask, test mask)` runs.
    `group_column` names the item column (None: every vector is its own item); `control_key`
    gives the control task's keys (None: no control task).
    """
    rows = []
    with tqdm(total=len(layers) * len(positions) * len(targets), desc="probes", unit="cell",
              disable=not progress) as bar:
        for layer, position in product(layers, positions):
            X, meta = load(layer, position)
            x = torch.as_tensor(X)
            if len(meta) != len(x):
                raise ValueError(f"loader gave {len(x)} vectors but {len(meta)} meta rows at {layer}/{position}")
            for name, target in targets.items():
                bar.set_postfix(layer=layer, position=position, property=name)
                values = _values(meta, target)
                keep = ~pd.isna(values)
                m = meta[keep].reset_index(drop=True)
                train, test = split(m)
                rows.append({"layer": layer, "position": position, "property": name, **probe_cell(
                    x[torch.as_tensor(keep)], values[keep], train, test, cfg,
                    groups=None if group_column is None else _values(m, group_column),
                    keys=None if control_key is None else _values(m, control_key))})
                bar.update()
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _values(meta: pd.DataFrame, column: Column) -> np.ndarray:
    """The column's values as an object array, one per row of `meta`."""
    if isinstance(column, str):
        if column not in meta.columns:
            raise UserError(f"no column {column!r} in the vectors' metadata", f"columns: {', '.join(map(str, meta.columns))}")
        values = meta[column].to_numpy(dtype=object)
    else:
        values = pd.Series(list(column(meta)), dtype=object).to_numpy()
    if values.shape != (len(meta),):
        raise ValueError(f"{values.shape} values for {len(meta)} vectors")
    return values
