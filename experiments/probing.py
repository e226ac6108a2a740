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
or more tasks, also leave-one-task-out) and comes with its majority baseline, the per-task
majority (the fair bar where tasks are pooled: the final token knows the task) with within-task
accuracies, a shuffled-label probe and a control-task probe (a random label per P's last word,
an input feature). E's L2 strength is chosen in inner folds (nested CV). Each curve's reported
layer is chosen per outer fold in inner folds over its training items (`probes.nested`), so its
accuracy is not inflated by the choice; its p-value (does it beat the per-task majority?) is
Holm-adjusted within its family: confirmatory = A and B on the item split (the object property
before and at the self-prediction), exploratory = everything else. With --permutations P, each
curve without transfer also gets its best layer's accuracy with a max-over-layers null (labels
permuted within task, refitted at every layer), Holm-adjusted the same way. Output:
runs/<capture>/probing/{results.jsonl, curves.jsonl, metrics.json, config.json, provenance.json, report.html};
the explorer (`introspect-mi explore runs/<capture>`) links the report.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import pandas as pd

from experiments.common import config_main
from experiments.mech import SUBJECTS, StudyChoice, StudyView, capture_stores, open_capture, open_study, resolved
from introspect_mi import config as cfg
from introspect_mi.actstore import ActivationStore
from introspect_mi.errors import UserError
from introspect_mi.paths import runs_dir
from introspect_mi.store import RunDir
from introspect_mi.timing import StageClock, cpu_seconds
from experiments.probing_fit import Fits, fit_all, rows_of
from experiments.probing_plan import M1_SUBJECTS, Cell, Labels, Planner
from probes import ProbeConfig
from probes.crossfit import CrossFit
from introspect_mi.multiplicity import CONFIRMATORY, EXPLORATORY, holm
from introspect_mi.paired import compare_paired
from probes.nested import aligned_hits, max_over_layers_p, nested_summary, subset_summary

EXPERIMENTS = ("A", "B", "C", "D", "E", "F")
LABEL_SOURCE = {"untrained": "untrained", "self": "self", "cross": "self"}
"""Whose object answers a subject's labels are (cross-trained M2 predicts self-trained M1)."""
CAPTURE_COMMAND = "python -m experiments.capture --preset quick"
TABLE_COLUMNS = ("experiment", "subject", "property", "target", "split", "train_run", "test_run", "layer",
                 "n_train", "n_test", "n_classes", "acc", "acc_lo", "acc_hi", "balanced_acc", "majority", "task_majority",
                 "within_task", "shuffled_acc", "control_task_acc", "control_majority", "selectivity", "control_seen", "C", "converged", "agreement")


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
    input_c_grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)
    """E: L2 strengths tried in inner folds over the items of each outer training fold (nested CV; not --c-grid)."""
    sign_flips: int = 2000
    """Random sign flips of the item-clustered test of each curve's nested accuracy against the per-task majority."""
    permutations: int = 0
    """Within-task label permutations refitted at every layer for the max-over-layers null of each curve without transfer (0: none; e.g. 99)."""
    name: str = "probing"
    """Output folder inside the capture run."""
    workers: int = 0
    """Processes fitting subject × layer groups at once (0: one per CPU core on Linux, 1 elsewhere; 1: in this process). Results do not depend on it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [s for s in self.subjects if s not in SUBJECTS] + [e for e in self.experiments if e not in EXPERIMENTS]
        if bad:
            raise UserError(f"unknown subject(s) or experiment(s) {', '.join(bad)}",
                            f"subjects: {', '.join(SUBJECTS)}; experiments: {', '.join(EXPERIMENTS)}")
        positions = [p for p in (*self.object_positions, *self.hypothetical_positions) if p not in ("p_last", "final")]
        if positions:
            raise UserError(f"position(s) {', '.join(positions)} cannot be probed here", "use p_last and/or final")
        if not self.input_c_grid or any(not c > 0 for c in self.input_c_grid) or self.sign_flips < 1 or self.permutations < 0:
            raise UserError("input_c_grid needs positive numbers, sign_flips at least 1, permutations at least 0",
                            "e.g. --input-c-grid 0.01 0.1 1 --sign-flips 2000 --permutations 99")
        floors = {"layer_stride": 1, "min_class_items": 1, "identity_min_items": 1, "item_folds": 2, "top_k": 2, "input_last_tokens": 0, "workers": 0}
        low = [name for name, floor in floors.items() if getattr(self, name) < floor]
        if low:
            raise UserError(f"{', '.join(f'{n}={getattr(self, n)}' for n in low)} is too small",
                            "; ".join(f"--{n.replace('_', '-')} takes at least {floors[n]}" for n in low))


def layers_of(n_layers: int, stride: int) -> list[int]:
    """Every `stride`-th layer from 0, plus the last."""
    return sorted({*range(0, n_layers, stride), n_layers - 1})


# --- fitting ---------------------------------------------------------------------------------------


CURVE = ("experiment", "subject", "property", "target", "split", "train_run", "test_run")
"""The columns that tell one curve (a value per layer) from another."""
FAMILIES = {CONFIRMATORY: "A and B on the item split for M1 (untrained, self-trained): the object property before and at the self-prediction",
            EXPLORATORY: "every other curve (transfer, identity, input only, whose behaviour, leave-one-task-out)"}


def family(experiment: str, split: str, subject: str, target: str = "property") -> str:
    """Declared before results are read: which claims the probing experiment is run to test (M1's
    object-property curves; cross-trained M2's B curves are tested only against M1's, in
    `m1_vs_m2`'s own family; probes of the model's own self-prediction are exploratory)."""
    confirmatory = experiment in ("A", "B") and split == "items" and subject in M1_SUBJECTS and target == "property"
    return CONFIRMATORY if confirmatory else EXPLORATORY


def curve_table(cells: Sequence[Cell], fits: Mapping[tuple[int, str], Mapping[int, CrossFit]], config: ProbingConfig) -> pd.DataFrame:
    """One row per layered curve: `nested_summary`, its family, and its p-value Holm-adjusted
    within the family (over subjects × properties × positions × experiments; layers are chosen, not
    tested); with permutations, also the best layer's accuracy and its max-over-layers p (Holm-adjusted the same way)."""
    rows = []
    for (index, target), by_layer in fits.items():
        cell = cells[index]
        permuted = all(fit.null_acc.size for fit in by_layer.values())
        wrong = cell.train.wrong if cell.test is None else None
        on_wrong = subset_summary(by_layer, wrong, config.sign_flips, config.seed) if wrong is not None else {}
        rows.append({**rows_of(cell, None, {target: {}})[0], "family": family(cell.experiment, cell.split, cell.subject, target),
                     **nested_summary(by_layer, config.n_boot, config.sign_flips, config.seed),
                     **{f"wrong_{k}": v for k, v in on_wrong.items()},
                     **(dict(zip(("max_acc", "max_layer", "p_max"), max_over_layers_p(by_layer))) if permuted else {})})
    table = pd.DataFrame(rows, columns=[*CURVE, "family", "layer", "layers_chosen", "n_test", "nested_acc", "nested_lo", "nested_hi",
                                        "task_majority", "gain", "p_value", "p_holm", "max_acc", "max_layer", "p_max", "p_max_holm",
                                        "wrong_n", "wrong_acc", "wrong_bar", "wrong_p"])
    for name in FAMILIES:
        mine = table["family"] == name
        table.loc[mine, "p_holm"] = holm(table.loc[mine, "p_value"].to_numpy(dtype=float))
        table.loc[mine, "p_max_holm"] = holm(table.loc[mine, "p_max"].to_numpy(dtype=float))
    return table


class ProbeRun(NamedTuple):
    table: pd.DataFrame
    """Each layered cell at every layer, each fixed-feature cell once."""
    curves: pd.DataFrame
    """Each layered curve at the layer chosen in inner folds (`curve_table`)."""
    m1_vs_m2: pd.DataFrame
    """Self-trained M1's B probes against cross-trained M2's on the same items (`m1_vs_m2`)."""


def run_cells(cells: Sequence[Cell], stores: Mapping[str, ActivationStore], layers: Mapping[str, Sequence[int]], config: ProbingConfig,
              progress: bool = True) -> ProbeRun:
    """Fit every cell (`probing_fit.fit_all`: one load per subject × layer, in forked workers), then
    the curves at their nested layers and M1 vs M2."""
    rows, fits = fit_all(cells, stores, layers, config, progress)
    table = pd.DataFrame(rows).reindex(columns=list(TABLE_COLUMNS))
    return ProbeRun(table, curve_table(cells, fits, config), m1_vs_m2(cells, fits, config))


M1_VS_M2_FAMILY = ("confirmatory: self-trained M1's activations vs cross-trained M2's on the same hypothetical prompts "
                   "(B, item split, every property × position), one Holm family")
M1_VS_M2_COLUMNS = ("property", "run", "n_items", "self_acc", "self_lo", "self_hi", "cross_acc", "cross_lo", "cross_hi",
                    "diff", "diff_lo", "diff_hi", "only_self", "only_cross", "p_value", "p_holm", "mdd", "family")


def m1_vs_m2(cells: Sequence[Cell], fits: Fits, config: ProbingConfig) -> pd.DataFrame:
    """The mechanistic analogue of self- vs cross-prediction. Cross-trained M2's labels are
    self-trained M1's object answers (LABEL_SOURCE), so B's probe on each model's hypothetical run
    decodes the same labels from the same prompts: does M1's own state carry its behaviour better
    than the state of a model that read the same input? Per property × position, both curves'
    nested hits paired by item (`compare_paired`: item bootstrap, exact two-sided sign-flip test),
    Holm-adjusted over the rows."""
    curves = {(cells[i].subject, cells[i].property, cells[i].train.run): by_layer for (i, target), by_layer in fits.items()
              if cells[i].experiment == "B" and cells[i].split == "items" and target == "property"}
    rows = []
    for (subject, prop, run), mine in curves.items():
        theirs = curves.get(("cross", prop, run))
        if subject != "self" or theirs is None:
            continue
        a, b, items, tasks = aligned_hits(mine, theirs)
        if items.size == 0:
            continue
        c = compare_paired(a, b, items, tasks, n_boot=config.n_boot, seed=config.seed)
        rows.append({"property": prop, "run": run, "n_items": int(items.size),
                     "self_acc": c.a.value, "self_lo": c.a.ci_low, "self_hi": c.a.ci_high,
                     "cross_acc": c.b.value, "cross_lo": c.b.ci_low, "cross_hi": c.b.ci_high,
                     "diff": c.diff.value, "diff_lo": c.diff.ci_low, "diff_hi": c.diff.ci_high,
                     "only_self": c.only_a, "only_cross": c.only_b, "p_value": c.test.p_value, "mdd": c.power.mdd,
                     "family": CONFIRMATORY})
    table = pd.DataFrame(rows, columns=list(M1_VS_M2_COLUMNS))
    table["p_holm"] = holm(table["p_value"].to_numpy(dtype=float))
    return table


# --- inputs: stores and M2's answers ------------------------------------------------------------


def m2_object_values(view: StudyView) -> dict[str, dict[str, Any]]:
    """item → {property: value of M2's own object answer}: M2 untrained, from the answer cache."""
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
    return values


def identity_of(stores: Mapping[str, ActivationStore], subject: str) -> dict[str, str] | None:
    """item → first token of the label source's object answer (None when that store is not here)."""
    source = stores.get(LABEL_SOURCE[subject])
    if source is None:
        return None
    obj = source.records[source.records["kind"] == "object"]
    return dict(zip(obj["item_id"], obj["answer_token"]))


def subject_labels(stores: Mapping[str, ActivationStore], config: ProbingConfig, skipped: list[dict[str, str]]) -> dict[str, Labels]:
    out = {}
    for label, store in stores.items():
        identity = identity_of(stores, label)
        if identity is None:
            skipped.append({"experiment": "D", "subject": label, "property": "*",
                            "reason": f"the {LABEL_SOURCE[label]} store (whose answers {label}'s labels are) is missing"})
        out[label] = Labels.build(label, store, identity or {}, config.item_folds, config.seed)
    return out


def store_properties(stores: Mapping[str, ActivationStore], wanted: Sequence[str]) -> list[str]:
    held = sorted({p for s in stores.values() for p in s.records["property"].dropna().unique()})
    unknown = [p for p in wanted if p not in held]
    if unknown:
        raise UserError(f"property(ies) {', '.join(unknown)} are not in the stores", f"stored: {', '.join(held)}")
    return list(wanted) or held


class Plan(NamedTuple):
    """What a probing run fits: the study, its capture, the stores found, the cells and each subject's layers."""

    view: StudyView
    capture: RunDir
    stores: dict[str, ActivationStore]
    missing: dict[str, str]
    cells: list[Cell]
    layers: dict[str, list[int]]
    skipped: list[dict[str, str]]


def plan(config: ProbingConfig, preset: str) -> Plan:
    """Open the study and its capture and lay out every cell (`main_probing`, `benchmark probing`)."""
    view = open_study(preset, config)
    capture = open_capture(config.capture or f"mech-{view.name}", preset)
    stores, missing = capture_stores(capture, view, config.subjects)
    for label, why in missing.items():
        print(f"missing subject {label}: {why}. Make it with: {CAPTURE_COMMAND}" + (" --subjects cross" if label == "cross" else ""), flush=True)
    if not stores:
        raise UserError(f"no finished activation store of {', '.join(config.subjects)} in {capture.folder}", f"capture first: {CAPTURE_COMMAND}")
    m2_values = m2_object_values(view) if "F" in config.experiments and set(stores) & set(M1_SUBJECTS) else None
    skipped: list[dict[str, str]] = []
    labels = subject_labels(stores, config, skipped)
    props = store_properties(stores, config.properties)
    cells = [c for lab in labels.values() for p in props for c in Planner(lab, p, config, skipped).cells(m2_values)]
    layers = {label: layers_of(int(store.info["n_layers"]), config.layer_stride) for label, store in stores.items()}
    return Plan(view, capture, dict(stores), dict(missing), cells, layers, skipped)


def main_probing(config: ProbingConfig, preset: str) -> dict[str, Any]:
    from experiments.probing_report import print_summary, summary_metrics, write_probing_report

    start, cpu_start = time.perf_counter(), cpu_seconds()
    p = plan(config, preset)
    run = RunDir.create(p.capture.folder, config.name, cfg.to_dict(resolved(config, p.view)), seed=config.seed)
    print(f"probing {', '.join(f'{s} at layers {l}' for s, l in p.layers.items())}: {len(p.cells)} cells, {len(p.skipped)} skipped", flush=True)
    clock = StageClock(run.folder)
    with clock.stage("probes"):
        probed = run_cells(p.cells, p.stores, p.layers, config)
    run.write_table("results", probed.table)
    run.write_table("curves", probed.curves)
    run.write_table("m1_vs_m2", probed.m1_vs_m2)
    timing = {"wall_s": round(time.perf_counter() - start, 1), "cpu_s": round(cpu_seconds() - cpu_start, 1),
              "load_average_1min_at_end": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count()}
    metrics = summary_metrics(run.read_table("results"), run.read_table("curves"), p.skipped, p.missing, p.layers, timing,
                              run.read_table("m1_vs_m2"))
    run.write_json("metrics.json", metrics)
    with clock.stage("report"):
        write_probing_report(run, metrics)
    clock.close()
    print_summary(run, metrics)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    return config_main(argv, prog="python -m experiments.probing", doc=__doc__, config=ProbingConfig, section="probing", run=main_probing)


if __name__ == "__main__":
    sys.exit(main())
