"""Linear probes on the captured activations of the study's held-out items (issue 6).

    python -m experiments.probing --preset quick

Per layer (resid_post), for untrained M1, self-trained M1 and cross-trained M2 (each subject
whose store `python -m experiments.capture` wrote):

  A  object-level prompt, last token of P → property of the model's own object answer
  B  hypothetical prompt, P's aligned last token and the final token → the same property
  C  transfer: A's probe scored on B's vectors (is it the same representation?)
  D  hypothetical final token → identity of the object answer's first token (top-k); self-
     simulation predicts it becomes decodable at an earlier layer than the property (B)
  E  input only: a probe on the bag of P's tokens and its last token (no model state)
  F  whose behaviour: M1's activations → M2's property values vs M1's own, on the same items

Every accuracy is cross-fitted (k folds over items; for A, B and E, where a property spans two
or more tasks, also leave-one-task-out) and comes with its majority baseline, a shuffled-label
probe and a control-task probe (a random label per object answer's first word). Output:
runs/<capture>/probing/{results.jsonl, metrics.json, config.json, provenance.json, report.html};
the explorer (`introspect-mi explore runs/<capture>`) links the report.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from experiments.common import config_main
from experiments.mech import SUBJECTS, StudyChoice, StudyView, capture_stores, open_capture, open_study, resolved
from introspect_mi import config as cfg
from introspect_mi.actstore import ActivationStore
from introspect_mi.errors import UserError
from introspect_mi.paths import runs_dir
from introspect_mi.store import RunDir
from probes import ProbeConfig, group_folds
from probes.crossfit import Pool, cross_fit, frequent_classes
from probes.inputs import bag_of_tokens

EXPERIMENTS = ("A", "B", "C", "D", "E", "F")
M1_SUBJECTS = ("untrained", "self")
"""Subjects whose activations are M1's: F (M1's activations → M2's behaviour) applies to them."""
LABEL_SOURCE = {"untrained": "untrained", "self": "self", "cross": "self"}
"""Whose object answers a subject's labels are (cross-trained M2 predicts self-trained M1)."""
PLACE = "resid_post"
CAPTURE_COMMAND = "python -m experiments.capture --preset quick"
TABLE_COLUMNS = ("experiment", "subject", "property", "target", "split", "train_run", "test_run", "layer",
                 "n_train", "n_test", "n_classes", "acc", "acc_lo", "acc_hi", "balanced_acc", "majority",
                 "shuffled_acc", "control_task_acc", "control_majority", "selectivity", "control_seen", "C", "converged", "agreement")


@dataclass(frozen=True)
class ProbingConfig(StudyChoice, ProbeConfig):
    capture: str = ""
    """Capture run under runs/ holding <subject>/store (empty: mech-<study>)."""
    subjects: tuple[str, ...] = SUBJECTS
    """Subjects to probe (those without a store are listed and skipped): untrained, self, cross."""
    experiments: tuple[str, ...] = EXPERIMENTS
    """Experiments to run: A B C D E F (see the module docstring)."""
    properties: tuple[str, ...] = ()
    """Properties to probe (empty: every property the store holds)."""
    layer_stride: int = 1
    """Probe every n-th layer, plus the last."""
    object_positions: tuple[str, ...] = ("p_last",)
    """Positions of the object-level prompt for A, C and F: p_last, final."""
    hypothetical_positions: tuple[str, ...] = ("p_last", "final")
    """Positions of the hypothetical prompt for B, C and F: p_last (P's aligned last token), final."""
    item_folds: int = 5
    """Cross-fitting folds over items (every item is tested once)."""
    by_task: bool = True
    """Also cross-fit leave-one-task-out (A, B, E) where a property spans two or more tasks."""
    min_class_items: int = 5
    """A label value is kept when at least this many items have it (rarer values' items are dropped); a property needs two such values."""
    top_k: int = 5
    """D: decode the object answer's first token among its top_k most frequent values."""
    identity_min_items: int = 3
    """D: a first answer token is decoded when at least this many items have it."""
    input_last_tokens: int = 1
    """E: besides the bag of P's tokens, indicator features for the token at each of P's last n positions."""
    name: str = "probing"
    """Output folder inside the capture run."""

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [s for s in self.subjects if s not in SUBJECTS] + [e for e in self.experiments if e not in EXPERIMENTS]
        if bad:
            raise UserError(f"unknown subject(s) or experiment(s) {', '.join(bad)}",
                            f"subjects: {', '.join(SUBJECTS)}; experiments: {', '.join(EXPERIMENTS)}")
        positions = [p for p in (*self.object_positions, *self.hypothetical_positions) if p not in ("p_last", "final")]
        if positions:
            raise UserError(f"position(s) {', '.join(positions)} cannot be probed here", "use p_last and/or final")
        floors = {"layer_stride": 1, "min_class_items": 1, "identity_min_items": 1, "item_folds": 2, "top_k": 2, "input_last_tokens": 0}
        low = [name for name, floor in floors.items() if getattr(self, name) < floor]
        if low:
            raise UserError(f"{', '.join(f'{n}={getattr(self, n)}' for n in low)} is too small",
                            "; ".join(f"--{n.replace('_', '-')} takes at least {floors[n]}" for n in low))


def layers_of(n_layers: int, stride: int) -> list[int]:
    """Every `stride`-th layer from 0, plus the last."""
    return sorted({*range(0, n_layers, stride), n_layers - 1})


def first_word(answer: Any) -> str:
    """The control task's key: the first word of an object answer ('' for none); it recurs across items."""
    return str(answer).split()[0] if isinstance(answer, str) and answer.split() else ""


def run_name(kind: str, position: str) -> str:
    return f"{kind}@{position}"


# --- the cells to fit ---------------------------------------------------------------------------


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
    features: np.ndarray | None = None
    """Fixed features (E), used instead of a layer's activations."""

    @property
    def position(self) -> str | None:
        return None if self.features is not None else self.run.split("@")[1]

    def pool(self, vectors: Mapping[str, torch.Tensor] | None) -> Pool:
        """The probe's input: the fixed features, or this side's rows of `vectors` (position → [records, d])."""
        X = self.features if vectors is None or self.position is None else vectors[self.position][torch.as_tensor(self.rows)]
        return Pool(X, self.labels, self.fold, self.groups, self.keys)


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
    """The store's records plus `key` (control-task key), `identity` (the label source's object
    answer first token) and, for M1 subjects with M2's answers, `m2_key`."""
    item_fold: dict[str, int]
    task_fold: dict[str, int]

    @classmethod
    def build(cls, subject: str, store: ActivationStore, identity: Mapping[str, str], item_folds: int, seed: int) -> Labels:
        records = store.records.copy()
        records["key"] = records["object_answer"].map(first_word)
        records["identity"] = records["item_id"].map(identity)
        items = sorted(records["item_id"].unique())
        return cls(subject, records, dict(zip(items, group_folds(items, item_folds, seed).tolist())),
                   {t: i for i, t in enumerate(sorted(records["task"].unique()))})

    def value(self, rows: np.ndarray, prop: str) -> np.ndarray:
        """Each row's object-answer value of `prop` (object records: from `values`; hypothetical: `object_value`)."""
        r = self.records.iloc[rows]
        from_values = r["values"].map(lambda v: v.get(prop) if isinstance(v, dict) else None)
        return np.where(r["kind"] == "object", from_values, r["object_value"]).astype(object)

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
                    self.records["item_id"].to_numpy()[rows], features)

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
        """B: the hypothetical run at each position."""
        hyp = self.property_rows("hypothetical")
        if not self.usable("B", hyp, self.labels.value(hyp, self.prop)):
            return []
        return [self.cell("B", split, self.property_side(run_name("hypothetical", p), hyp, split))
                for split in self.labels.splits(hyp, self.config.by_task) for p in self.config.hypothetical_positions]

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
        m2_key = self.labels.records["m2_key"].to_numpy()
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
                                    {"own": self.key[rows], "m2": m2_key[rows]}, "items")
            cells.append(self.cell("F", "items", side, agreement=float(np.mean(own.astype(str) == theirs.astype(str)))))
        return cells


# --- fitting ---------------------------------------------------------------------------------------


def load_vectors(store: ActivationStore, layer: int, positions: Iterable[str]) -> dict[str, torch.Tensor]:
    """position → [records, d] at `layer`, one vector per record in record order."""
    out = {}
    for position in positions:
        x, meta = store.load(PLACE, layer, position, as_="torch")
        if len(meta) != len(store.records) or not (meta["record"].to_numpy() == store.records["record"].to_numpy()).all():
            raise UserError(f"{store.folder} holds other than one {position} vector per record", "capture again with positions p_last final")
        out[position] = x
    return out


def rows_of(cell: Cell, layer: int | None, result: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    test_run = (cell.test or cell.train).run
    return [{"experiment": cell.experiment, "subject": cell.subject, "property": cell.property, "target": target,
             "split": cell.split, "train_run": cell.train.run, "test_run": test_run, "layer": layer, **metrics, **cell.extra}
            for target, metrics in result.items()]


def fit_cell(cell: Cell, vectors: Mapping[str, torch.Tensor] | None, probe_config: ProbeConfig) -> dict[str, dict[str, Any]]:
    return cross_fit(cell.train.pool(vectors), probe_config, None if cell.test is None else cell.test.pool(vectors))


def run_cells(cells: Sequence[Cell], stores: Mapping[str, ActivationStore], layers: Sequence[int], config: ProbingConfig,
              progress: bool = True) -> pd.DataFrame:
    """The results table: each layered cell at every layer (one load per subject × layer), each fixed-feature cell once."""
    layered = [c for c in cells if c.layered]
    fixed = [c for c in cells if not c.layered]
    rows: list[dict[str, Any]] = []
    with tqdm(total=len(layered) * len(layers) + len(fixed), desc="probes", unit="cell", disable=not progress) as bar:
        for cell in fixed:
            rows += rows_of(cell, None, fit_cell(cell, None, config))
            bar.update()
        for subject, store in stores.items():
            mine = [c for c in layered if c.subject == subject]
            positions = sorted({s.position for c in mine for s in (c.train, c.test) if s is not None and s.position})
            for layer in layers if mine else []:
                vectors = load_vectors(store, layer, positions)
                for cell in mine:
                    bar.set_postfix(subject=subject, layer=layer, cell=f"{cell.experiment}/{cell.property}")
                    rows += rows_of(cell, layer, fit_cell(cell, vectors, config))
                    bar.update()
    table = pd.DataFrame(rows)
    return table.reindex(columns=list(TABLE_COLUMNS))


# --- inputs: stores and M2's answers ------------------------------------------------------------


def m2_object_values(view: StudyView) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """(item → {property: value of M2's own object answer}, item → M2's answer): M2 untrained, from the answer cache."""
    from introspect_mi.answers import CallCounter
    from introspect_mi.evaluation import object_answers, object_value
    from introspect_mi.inference import Engine
    from introspect_mi.models import load

    counter = CallCounter()
    handle = load(view.config.m2, device=view.config.device or None)
    answers = object_answers(Engine(handle, progress=False), view.items, view.object_config, runs_dir() / "cache", counter)
    print(f"M2 ({view.config.m2}) object answers: {counter.cached} from the cache, {counter.model_calls} new model calls", flush=True)
    first = {item: got[0] for item, got in answers.items()}
    values: dict[str, dict[str, Any]] = {}
    for pair in view.pairs:
        values.setdefault(pair.item.item_id, {})[pair.prop.name] = object_value(pair.prop, first[pair.item.item_id], pair.item.target)
    return values, first


def identity_of(stores: Mapping[str, ActivationStore], subject: str) -> dict[str, str] | None:
    """item → first token of the label source's object answer (None when that store is not here)."""
    source = stores.get(LABEL_SOURCE[subject])
    if source is None:
        return None
    obj = source.records[source.records["kind"] == "object"]
    return dict(zip(obj["item_id"], obj["answer_token"]))


def subject_labels(stores: Mapping[str, ActivationStore], config: ProbingConfig, m2_answers: Mapping[str, str] | None,
                   skipped: list[dict[str, str]]) -> dict[str, Labels]:
    out = {}
    for label, store in stores.items():
        identity = identity_of(stores, label)
        if identity is None:
            skipped.append({"experiment": "D", "subject": label, "property": "*",
                            "reason": f"the {LABEL_SOURCE[label]} store (whose answers {label}'s labels are) is missing"})
        lab = Labels.build(label, store, identity or {}, config.item_folds, config.seed)
        if m2_answers is not None:
            lab.records["m2_key"] = lab.records["item_id"].map(lambda i: first_word(m2_answers.get(i)))
        out[label] = lab
    return out


def store_properties(stores: Mapping[str, ActivationStore], wanted: Sequence[str]) -> list[str]:
    held = sorted({p for s in stores.values() for p in s.records["property"].dropna().unique()})
    unknown = [p for p in wanted if p not in held]
    if unknown:
        raise UserError(f"property(ies) {', '.join(unknown)} are not in the stores", f"stored: {', '.join(held)}")
    return list(wanted) or held


def main_probing(config: ProbingConfig, preset: str) -> dict[str, Any]:
    from experiments.probing_report import print_summary, summary_metrics, write_probing_report

    torch.set_num_threads(1)  # small matrices: threads cost more than they give on a shared CPU
    start, cpu_start = time.perf_counter(), time.process_time()
    view = open_study(preset, config)
    capture = open_capture(config.capture or f"mech-{view.name}", preset)
    stores, missing = capture_stores(capture, view, config.subjects)
    for label, why in missing.items():
        print(f"missing subject {label}: {why}. Make it with: {CAPTURE_COMMAND}" + (" --subjects cross" if label == "cross" else ""), flush=True)
    if not stores:
        raise UserError(f"no finished activation store of {', '.join(config.subjects)} in {capture.folder}", f"capture first: {CAPTURE_COMMAND}")
    run = RunDir.create(capture.folder, config.name, cfg.to_dict(resolved(config, view)), seed=config.seed)
    m2_values = m2_answers = None
    if "F" in config.experiments and set(stores) & set(M1_SUBJECTS):
        m2_values, m2_answers = m2_object_values(view)
    skipped: list[dict[str, str]] = []
    labels = subject_labels(stores, config, m2_answers, skipped)
    props = store_properties(stores, config.properties)
    cells = [c for lab in labels.values() for p in props for c in Planner(lab, p, config, skipped).cells(m2_values)]
    n_layers = {int(s.info["n_layers"]) for s in stores.values()}
    if len(n_layers) != 1:
        raise UserError(f"the stores have different layer counts {sorted(n_layers)}", "probe one model family per run (--subjects)")
    layers = layers_of(n_layers.pop(), config.layer_stride)
    print(f"probing {', '.join(stores)} at layers {layers}: {len(cells)} cells, {len(skipped)} skipped", flush=True)
    table = run_cells(cells, stores, layers, config)
    run.write_table("results", table)
    timing = {"wall_s": round(time.perf_counter() - start, 1), "cpu_s": round(time.process_time() - cpu_start, 1),
              "load_average_1min_at_end": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count()}
    metrics = summary_metrics(run.read_table("results"), skipped, missing, layers, timing)
    run.write_json("metrics.json", metrics)
    write_probing_report(run, metrics)
    print_summary(run, metrics)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    return config_main(argv, prog="python -m experiments.probing", doc=__doc__, config=ProbingConfig, section="probing", run=main_probing)


if __name__ == "__main__":
    sys.exit(main())
