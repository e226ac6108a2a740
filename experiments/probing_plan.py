"""The probing experiment's plan: which store rows, labels, control keys, tasks and folds each
cell (experiment × subject × property × split × run) fits. The control task's key is P's last
word (`probes.controls.p_last_word`), an input feature, for every experiment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from introspect_mi.actstore import ActivationStore
from probes import group_folds
from probes.controls import p_last_word
from probes.crossfit import Pool, frequent_classes
from probes.inputs import bag_of_tokens

if TYPE_CHECKING:
    from experiments.probing import ProbingConfig

M1_SUBJECTS = ("untrained", "self")
"""Subjects whose activations are M1's: F (M1's activations → M2's behaviour) applies to them."""


def run_name(kind: str, position: str) -> str:
    return f"{kind}@{position}"


@dataclass(frozen=True)
class Side:
    """The vectors one side of a cell uses: store rows (or fixed features), labels, folds."""

    run: str
    """`kind@position` whose vectors are read at each layer; `input` for fixed features."""
    rows: np.ndarray
    """Indices into the store's records."""
    labels: dict[str, np.ndarray]
    keys: dict[str, np.ndarray]
    fold: np.ndarray
    groups: np.ndarray
    tasks: np.ndarray
    """Task per row: the per-task majority bar where tasks are pooled."""
    features: np.ndarray | None = None
    """Fixed features (E), used instead of a layer's activations."""
    wrong: np.ndarray | None = None
    """Per row, whether the model's own self-prediction on it was wrong (B's property sides): the
    property probe is also scored on those rows alone, where decoding the trained output fails."""

    @property
    def position(self) -> str | None:
        return None if self.features is not None else self.run.split("@")[1]

    def pool(self, vectors: Mapping[str, torch.Tensor] | None) -> Pool:
        """The probe's input: the fixed features, or this side's rows of `vectors` (position → [records, d])."""
        X = self.features if vectors is None or self.position is None else vectors[self.position][torch.as_tensor(self.rows)]
        return Pool(X, self.labels, self.fold, self.groups, self.keys, self.tasks)


@dataclass(frozen=True)
class Cell:
    """One probe fit per layer (or once, for fixed features): rows of the results table."""

    experiment: str
    subject: str
    property: str
    split: str
    train: Side
    test: Side | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def layered(self) -> bool:
        return self.train.features is None


@dataclass(frozen=True)
class Labels:
    """One subject's records with the columns every experiment reads its labels from."""

    subject: str
    records: pd.DataFrame
    """The store's records plus `key` (control-task key: P's last word) and `identity` (the label
    source's object answer first token)."""
    item_fold: dict[str, int]
    task_fold: dict[str, int]

    @classmethod
    def build(cls, subject: str, store: ActivationStore, identity: Mapping[str, str], item_folds: int, seed: int) -> Labels:
        records = store.records.copy()
        records["key"] = [p_last_word(t, p) for t, p in zip(records["tokens"], records["p_tokens"])]
        records["identity"] = records["item_id"].map(identity)
        items = sorted(records["item_id"].unique())
        return cls(subject, records, dict(zip(items, group_folds(items, item_folds, seed).tolist())),
                   {t: i for i, t in enumerate(sorted(records["task"].unique()))})

    def value(self, rows: np.ndarray, prop: str) -> np.ndarray:
        """Each row's object-answer value of `prop` (object records: from `values`; hypothetical: `object_value`)."""
        r = self.records.iloc[rows]
        from_values = r["values"].map(lambda v: v.get(prop) if isinstance(v, dict) else None)
        return np.where(r["kind"] == "object", from_values, r["object_value"]).astype(object)

    def prediction(self, rows: np.ndarray) -> np.ndarray:
        """Each hypothetical row's own self-prediction (the value the model answered)."""
        return self.records["hypothetical_value"].iloc[rows].to_numpy(dtype=object)

    def wrong(self, rows: np.ndarray) -> np.ndarray:
        """Each hypothetical row: was the model's self-prediction wrong (False where unknown)?"""
        correct = self.records["correct"].iloc[rows] if "correct" in self.records else pd.Series([None] * len(rows))
        return correct.map(lambda c: c is False or c == 0).to_numpy(dtype=bool)

    def rows(self, kind: str, prop: str) -> np.ndarray:
        """Records of `kind` that carry `prop` (object records: every item of a task the property applies to)."""
        r = self.records
        mask = (r["kind"] == kind) & (r["property"] == prop) if kind == "hypothetical" else r["kind"] == "object"
        rows = np.flatnonzero(mask.to_numpy())
        return rows[pd.notna(self.value(rows, prop))]

    def folds(self, rows: np.ndarray, split: str) -> np.ndarray:
        r = self.records.iloc[rows]
        return (r["item_id"].map(self.item_fold) if split == "items" else r["task"].map(self.task_fold)).to_numpy()

    def side(self, run: str, rows: np.ndarray, labels: Mapping[str, np.ndarray], keys: Mapping[str, np.ndarray],
             split: str, features: np.ndarray | None = None) -> Side:
        return Side(run, rows, {t: np.asarray(v, dtype=object) for t, v in labels.items()},
                    {t: np.asarray(v, dtype=object) for t, v in keys.items()}, self.folds(rows, split),
                    self.records["item_id"].to_numpy()[rows], self.records["task"].to_numpy()[rows].astype(str), features)

    def splits(self, rows: np.ndarray, by_task: bool) -> list[str]:
        return ["items", "tasks"] if by_task and self.records["task"].iloc[rows].nunique() >= 2 else ["items"]


class Planner:
    """The cells of one subject × property. Each experiment keeps the items whose label value
    is frequent enough (`frequent_classes`); one without two such values is noted in `skipped`."""

    def __init__(self, labels: Labels, prop: str, config: ProbingConfig, skipped: list[dict[str, str]]) -> None:
        self.labels, self.prop, self.config, self.skipped = labels, prop, config, skipped
        self.items = labels.records["item_id"].to_numpy()
        self.key = labels.records["key"].to_numpy()

    def frequent_mask(self, rows: np.ndarray, values: np.ndarray, min_items: int | None = None, top_k: int | None = None) -> np.ndarray:
        """Which rows have a value (one per row) that is kept."""
        if not len(rows):
            return np.zeros(0, bool)
        return frequent_classes(values, self.items[rows], min_items or self.config.min_class_items, top_k)

    def frequent(self, rows: np.ndarray, values: np.ndarray, min_items: int | None = None, top_k: int | None = None) -> np.ndarray:
        return rows[self.frequent_mask(rows, values, min_items, top_k)]

    def usable(self, experiment: str, rows: np.ndarray, *label_sets: np.ndarray) -> bool:
        if len(rows) and all(len(set(v)) >= 2 for v in label_sets):
            return True
        floor = self.config.identity_min_items if experiment == "D" else self.config.min_class_items
        note = {"experiment": experiment, "subject": self.labels.subject, "property": self.prop,
                "reason": f"fewer than two label values on ≥{floor} items each ({len(rows)} items kept)"}
        if note not in self.skipped:
            self.skipped.append(note)
        return False

    def property_rows(self, kind: str) -> np.ndarray:
        rows = self.labels.rows(kind, self.prop)
        return self.frequent(rows, self.labels.value(rows, self.prop))

    def property_side(self, run: str, rows: np.ndarray, split: str, features: np.ndarray | None = None) -> Side:
        return self.labels.side(run, rows, {"property": self.labels.value(rows, self.prop)}, {"property": self.key[rows]}, split, features)

    def cells(self, m2: Mapping[str, Mapping[str, Any]] | None) -> list[Cell]:
        ex = set(self.config.experiments)
        cells = self.object_cells(ex) + (self.hypothetical_cells() if "B" in ex else [])
        cells += self.identity_cells() if "D" in ex else []
        cells += self.whose_cells(m2) if "F" in ex and m2 is not None and self.labels.subject in M1_SUBJECTS else []
        return cells

    def cell(self, experiment: str, split: str, train: Side, test: Side | None = None, **extra: Any) -> Cell:
        return Cell(experiment, self.labels.subject, self.prop, split, train, test, extra)

    def object_cells(self, ex: set[str]) -> list[Cell]:
        """A (object-level run), C (A's probe on the hypothetical run) and E (bag of P's tokens)."""
        if not {"A", "C", "E"} & ex:
            return []
        obj = self.property_rows("object")
        if not self.usable("A/C/E", obj, self.labels.value(obj, self.prop)):
            return []
        hyp = self.property_rows("hypothetical") if "C" in ex else np.zeros(0, dtype=int)
        c_ok = "C" in ex and self.usable("C", hyp, self.labels.value(hyp, self.prop))
        records = self.labels.records.iloc[obj]
        bag = bag_of_tokens([[t[i] for i in p] for t, p in zip(records["tokens"], records["p_tokens"])], self.config.input_last_tokens)[0] if "E" in ex else None
        cells = []
        for split in self.labels.splits(obj, self.config.by_task):
            for position in self.config.object_positions:
                a = self.property_side(run_name("object", position), obj, split)
                cells += [self.cell("A", split, a)] if "A" in ex else []
                if c_ok and split == "items":
                    cells += [self.cell("C", split, a, self.property_side(run_name("hypothetical", p), hyp, split))
                              for p in self.config.hypothetical_positions]
            cells += [self.cell("E", split, self.property_side("input", obj, split, bag))] if bag is not None else []
        return cells

    def hypothetical_cells(self) -> list[Cell]:
        """B: the hypothetical run at each position, labelled with the object answer's property (also
        scored on the items whose self-prediction was wrong) and, on the item split, with the
        model's own self-prediction (what a probe of the trained output would decode)."""
        hyp = self.property_rows("hypothetical")
        if not self.usable("B", hyp, self.labels.value(hyp, self.prop)):
            return []
        cells = [self.cell("B", split, replace(self.property_side(run_name("hypothetical", p), hyp, split), wrong=self.labels.wrong(hyp)))
                 for split in self.labels.splits(hyp, self.config.by_task) for p in self.config.hypothetical_positions]
        rows = self.labels.rows("hypothetical", self.prop)
        rows = rows[pd.notna(self.labels.prediction(rows))]
        rows = self.frequent(rows, self.labels.prediction(rows))
        predicted = self.labels.prediction(rows)
        if len(rows) and len(set(predicted)) >= 2:
            cells += [self.cell("B", "items", self.labels.side(run_name("hypothetical", p), rows, {"prediction": predicted},
                                                               {"prediction": self.key[rows]}, "items"))
                      for p in self.config.hypothetical_positions]
        return cells

    def identity_cells(self) -> list[Cell]:
        """D: the object answer's first token (top-k frequent) at the hypothetical final token."""
        identity = self.labels.records["identity"].to_numpy()
        rows = self.labels.rows("hypothetical", self.prop)
        rows = rows[pd.notna(identity[rows])]
        rows = self.frequent(rows, identity[rows], self.config.identity_min_items, self.config.top_k)
        if "final" not in self.config.hypothetical_positions or not self.usable("D", rows, identity[rows]):
            return []
        side = self.labels.side(run_name("hypothetical", "final"), rows, {"identity": identity[rows]}, {"identity": self.key[rows]}, "items")
        return [self.cell("D", "items", side)]

    def whose_cells(self, m2: Mapping[str, Mapping[str, Any]]) -> list[Cell]:
        """F: the same rows labelled with M1's own values and with M2's, at every A run and the hypothetical final token."""
        runs = [("object", p) for p in self.config.object_positions] + [("hypothetical", "final")] * ("final" in self.config.hypothetical_positions)
        cells = []
        for kind, position in runs:
            rows = self.labels.rows(kind, self.prop)
            rows = rows[pd.notna([m2.get(i, {}).get(self.prop) for i in self.items[rows]])]
            while True:  # drop rare values of either label set until both are frequent
                own = self.labels.value(rows, self.prop)
                theirs = np.array([m2[i][self.prop] for i in self.items[rows]], dtype=object)
                keep = self.frequent_mask(rows, own) & self.frequent_mask(rows, theirs)
                if keep.all():
                    break
                rows = rows[keep]
            if not self.usable("F", rows, own, theirs):
                continue
            side = self.labels.side(run_name(kind, position), rows, {"own": own, "m2": theirs},
                                    {"own": self.key[rows], "m2": self.key[rows]}, "items")
            cells.append(self.cell("F", "items", side, agreement=float(np.mean(own.astype(str) == theirs.astype(str)))))
        return cells
