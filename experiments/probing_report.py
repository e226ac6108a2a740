"""The probing run's summary, report and printout, built from its saved results table only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from introspect_mi.store import RunDir
from introspect_mi.viz import Section, Table, write_report
from introspect_mi.viz.probes import input_only_figure, layer_figure
from experiments.probing import CURVE, FAMILIES, M1_VS_M2_COLUMNS, M1_VS_M2_FAMILY
from introspect_mi.multiplicity import EXPLORATORY
from probes.summary import onsets

AT_LAYER = ["majority", "shuffled_acc", "control_task_acc", "control_majority", "selectivity", "control_seen", "agreement"]
"""Per-layer columns shown beside a curve's nested line, read at the layer most folds chose (no choice is made on them)."""
SHOWN = [*CURVE, "family", "layer", "layers_chosen", "n_test", "nested_acc", "nested_lo", "nested_hi", "task_majority", "bar", "gain",
         "p_value", "p_holm", "wrong_n", "wrong_acc", "wrong_bar", "wrong_p", "max_acc", "max_layer", "p_max", "p_max_holm", *AT_LAYER]
PERCENT = ["nested_acc", "nested_lo", "nested_hi", "task_majority", "bar", "gain", "wrong_acc", "wrong_bar", "max_acc", *AT_LAYER]
NO_FITS = ("no probe was fitted: every cell was skipped, none had two label values on enough items (see Skipped) — "
           "probe a study with more items per task (--eval-items), or lower --min-class-items")

TITLES = {
    "A": "A · object-level run: last token of P → property of the model's own answer",
    "B": "B · hypothetical run: P's aligned last token and final token → the object answer's property",
    "C": "C · transfer: A's probe (object-level run) scored on the hypothetical run",
    "D": "D · self-simulation signature: answer identity vs property at the hypothetical final token",
    "E": "E · input only: bag of P's tokens → the property",
    "F": "F · whose behaviour: M1's activations → M1's own vs M2's property values",
}
TEXTS = {
    "A": "Is the future answer's property represented before the answer is produced? Probes on the object-level prompt, "
         "labels = the property of this subject's label source's own greedy object answer.",
    "B": "Is the property present when the model is asked about itself? Probes on the hypothetical prompt (the same P "
         "quoted) at P's aligned last token and at the final token.",
    "C": "Is it the same representation? Each fold's A probe (trained on object-level vectors of the other folds' items) "
         "scores the hypothetical vectors of its own fold's items. Compare with B at the same position.",
    "D": "Identity = the first token of the object answer, decoded among the top-k most frequent first tokens. "
         "Self-simulation predicts the identity becomes decodable at an earlier layer than the property (B, final token). "
         "Onset = first layer whose 95% CI lies above the majority baseline. The control task keys on P's last word "
         "(an input feature), as for every experiment.",
    "E": "How much is readable from P's tokens alone, with no model state: the same probe on token counts of P plus "
         "the identity of P's last token(s), its L2 strength chosen in inner folds within each outer training fold. A layer's probe shows computation beyond the input only where it beats this "
         "(drawn as a flat line in A and B).",
    "F": "Privileged self-information or generic task information? On the same items, probes for M1's own property "
         "values and for M2's (gemma3-270m, untrained: its own object answers). agreement = share of items where the two "
         "values coincide (where they agree the two probes have the same labels).",
}
M1_VS_M2_TITLE = "M1 vs M2 · the same prompts through the model that behaves and through the model trained to predict it"
M1_VS_M2_TEXT = ("The mechanistic analogue of cross-prediction (issue 15): cross-trained M2's labels are self-trained M1's object "
                 "answers, so B's nested probe decodes the same labels from the same hypothetical prompts in both models. If M1's "
                 "own state carries its behaviour beyond what reading the input gives, self beats cross. diff = self − cross "
                 "accuracy on the items both tested (item-bootstrap 95% CI), p_value: exact two-sided item sign-flip test, "
                 "p_holm: Holm over every row (one confirmatory family), mdd: the smallest difference this n detects at 80% power. "
                 "Needs the cross store (the quick preset captures it).")
INTRO = ("Every accuracy is cross-fitted: k folds over items (every item is tested once by a probe that never saw it), "
         "and where a property spans two or more tasks also leave-one-task-out (split = tasks). Each comes with its "
         "majority baseline (the best constant answer: the most common tested label's share), a shuffled-label probe "
         "(same pipeline, permuted training labels: at or below the majority unless something leaks) and a control-task "
         "probe (Hewitt & Liang: a random fixed label per P's last word, an input feature — the object answer's first word "
         "would be the self-simulation signal under test; control_seen = share of tested items whose word occurs in training). "
         "Where tasks are pooled, task_majority is the fair bar (the final token knows the task): per task, a constant label, "
         "the training folds' majority of the task or, where it scores higher (balanced classes push a cross-fitted constant "
         "below chance), the task's mode in hindsight (column bar says which); within_task in results.jsonl gives each task's accuracy and bar. Selectivity = (accuracy − majority) − max(0, control-task "
         "accuracy − control majority): the probe's gain over its best constant minus the control probe's; with many "
         "distinct answer words it is accuracy − control accuracy, and with few (answer letters) a near-constant control "
         "task is not counted as memorisation. The reported layer of a curve is chosen per outer fold by the probe's "
         "held-out loss in inner folds over that fold's training items only (nested: nested_acc is not inflated by the "
         "choice; layers_chosen lists every fold's pick, layer the commonest). p_value: one-sided item sign-flip test of "
         "nested accuracy against the per-task majority on the same vectors; p_holm: Holm-adjusted within its family. "
         "B is also scored on the items whose self-prediction was wrong (wrong_n, wrong_acc against wrong_bar, wrong_p: "
         "exploratory): a probe that only decoded the trained output would fail there; B's target prediction decodes the "
         "model's own self-prediction instead of its object answer's property (exploratory). "
         "With permutations (--permutations P), max_acc is the best layer's accuracy (max_layer) and p_max its p-value against "
         "P within-task label permutations refitted at every layer, each taking the same maximum (p_max_holm: Holm within family). "
         + "; ".join(f"{k}: {v}" for k, v in FAMILIES.items()) + ". E's L2 strength is chosen in inner folds (nested CV). Items whose label value is rare are dropped per experiment; the Skipped "
         "section lists cells without two frequent values.")


def curve_summary(table: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """Every curve's nested line with its per-layer controls at the chosen layer, and E's single
    rows (its C chosen by nested CV; no layer, no test)."""
    layered = curves.merge(table[[*CURVE, "layer", *AT_LAYER]], how="left", on=[*CURVE, "layer"])
    e = table[table["layer"].isna()].rename(columns={"acc": "nested_acc", "acc_lo": "nested_lo", "acc_hi": "nested_hi"})
    e = e.assign(family=EXPLORATORY, gain=e["nested_acc"] - e["task_majority"])
    return pd.concat([df.reindex(columns=SHOWN) for df in (layered, e) if not df.empty] or [pd.DataFrame(columns=SHOWN)], ignore_index=True)


def onset_summary(table: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """D's comparison: per subject × property, the onset layer of the answer identity and of the
    property (B, final), each beside its curve's nested accuracy (layer chosen in inner folds)."""
    d_rows, d_curves = table[table["experiment"] == "D"], curves[curves["experiment"] == "D"]
    b_final = ((table["experiment"] == "B") & (table["test_run"] == "hypothetical@final") & (table["split"] == "items") & (table["target"] == "property"))
    b_curves = curves[(curves["experiment"] == "B") & (curves["test_run"] == "hypothetical@final") & (curves["split"] == "items")
                      & (curves["target"] == "property")]
    if d_rows.empty:
        return pd.DataFrame(columns=["subject", "property", "identity_onset", "property_onset", "identity_nested_acc", "property_nested_acc"])
    by = ["subject", "property"]
    out = onsets(d_rows, by).rename(columns={"onset": "identity_onset"})
    out = out.merge(onsets(table[b_final], by).rename(columns={"onset": "property_onset"}), how="left", on=by)
    for rows, name in ((d_curves, "identity_nested_acc"), (b_curves, "property_nested_acc")):
        out = out.merge(rows[[*by, "nested_acc"]].rename(columns={"nested_acc": name}), how="left", on=by)
    return out


def summary_metrics(table: pd.DataFrame, curves: pd.DataFrame, skipped: Sequence[Mapping[str, str]], missing: Mapping[str, str],
                    layers: Mapping[str, Sequence[int]], timing: Mapping[str, Any], m1_vs_m2: pd.DataFrame | None = None) -> dict[str, Any]:
    """metrics.json: `best` (every curve at its nested layer), `onsets` (D), `m1_vs_m2` (self-trained M1's
    B probes vs cross-trained M2's on the same items; empty without the cross store), and the run's facts."""
    table = _columns(table)
    curves = curves.reindex(columns=list(dict.fromkeys([*curves.columns, *SHOWN[:SHOWN.index("p_max_holm") + 1]])))
    versus = (m1_vs_m2 if m1_vs_m2 is not None else pd.DataFrame()).reindex(columns=list(M1_VS_M2_COLUMNS))
    return {"families": {**FAMILIES, "m1_vs_m2": M1_VS_M2_FAMILY}, "subjects": list(dict.fromkeys(table["subject"])),
            "missing_subjects": dict(missing), "layers": {k: list(v) for k, v in layers.items()},
            "timing": dict(timing), "n_fits": len(table), "no_fits": NO_FITS if table.empty else None, "skipped": list(skipped),
            "best": curve_summary(table, curves).to_dict(orient="records"), "onsets": onset_summary(table, curves).to_dict(orient="records"),
            "m1_vs_m2": versus.to_dict(orient="records")}


def _columns(table: pd.DataFrame) -> pd.DataFrame:
    """The results table with at least the shown columns: an empty one reads back without any."""
    return table.reindex(columns=list(dict.fromkeys([*CURVE, "layer", "n_test", "acc", "acc_lo", "acc_hi", "task_majority", *AT_LAYER, *table.columns])))


def _items(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["split"] == "items"]


def write_probing_report(run: RunDir, metrics: Mapping[str, Any]) -> None:
    table = _columns(run.read_table("results"))
    best = pd.DataFrame(metrics["best"], columns=SHOWN)
    e = table[table["experiment"] == "E"]
    sections = [Section("Summary", tables=[Table(best, "Every curve at the layer chosen in inner folds (nested), with its family and Holm-adjusted p-value", PERCENT)], text=INTRO + "\n\n" + _run_text(metrics))]
    variants = {"A": ["train_run", "split"], "B": ["test_run", "split", "target"], "C": ["test_run", "split"], "F": ["test_run", "target"]}
    for ex in ("A", "B", "C", "D", "E", "F"):
        rows = table[table["experiment"] == ex]
        if ex == "D" and not rows.empty:
            prop = _items(table[(table["experiment"] == "B") & (table["test_run"] == "hypothetical@final") & (table["target"] == "property")])
            onset = pd.DataFrame(metrics["onsets"])
            sections.append(Section(TITLES[ex], [layer_figure(pd.concat([rows, prop]), TITLES[ex], variant=["target"])],
                                    [Table(onset, "Onset layers (first layer whose CI clears the majority baseline)",
                                           ["identity_nested_acc", "property_nested_acc"])], TEXTS[ex]))
        elif ex == "E" and not rows.empty:
            sections.append(Section(TITLES[ex], [input_only_figure(rows, TITLES[ex])],
                                    [Table(best[best["experiment"] == "E"].drop(columns=["layer"]), "Input-only probes", PERCENT)], TEXTS[ex]))
        elif not rows.empty:
            sections.append(Section(TITLES[ex], [layer_figure(rows, TITLES[ex], variant=variants[ex],
                                                              input_only=e[["subject", "property", "split", "acc"]] if ex in ("A", "B") and not e.empty else None)],
                                    [Table(best[best["experiment"] == ex], "Per curve, at the layer chosen in inner folds", PERCENT)], TEXTS[ex]))
    if metrics.get("m1_vs_m2"):
        sections.append(Section(M1_VS_M2_TITLE, tables=[Table(pd.DataFrame(metrics["m1_vs_m2"]), "Same items, same labels, two models' states",
                                                              ["self_acc", "self_lo", "self_hi", "cross_acc", "cross_lo", "cross_hi",
                                                               "diff", "diff_lo", "diff_hi", "mdd"])], text=M1_VS_M2_TEXT))
    if metrics["skipped"]:
        sections.append(Section("Skipped", tables=[Table(pd.DataFrame(metrics["skipped"]), "Cells without enough data")]))
    write_report(run.path("report.html"), "Linear probes: is the answer's property represented, and whose?", sections)


def _run_text(metrics: Mapping[str, Any]) -> str:
    t = metrics["timing"]
    missing = "; ".join(f"{k}: {v}" for k, v in metrics["missing_subjects"].items()) or "none"
    layers = "; ".join(f"{s} {v}" for s, v in metrics["layers"].items())
    return (f"Subjects: {', '.join(metrics['subjects'])} (missing: {missing}). Layers: {layers}. "
            f"{metrics['n_fits']} cross-fitted probes in {t['wall_s']} s wall ({t['cpu_s']} s CPU; "
            f"1-min load average {t['load_average_1min_at_end']} on {t['cpu_count']} cores at the end)."
            + (f" {metrics['no_fits']}." if metrics.get("no_fits") else ""))


def _layer(x: Any) -> str:
    return "never" if x is None or pd.isna(x) else f"layer {int(x)}"


def _p(x: Any) -> str:
    return "–" if x is None or pd.isna(x) else f"p={float(x):.3g}"


def _pct(x: Any) -> str:
    return "–" if x is None or pd.isna(x) else f"{100 * float(x):.0f}%"


def print_summary(run: RunDir, metrics: Mapping[str, Any]) -> None:
    """One line per best-layer curve (items split), D's onsets, timing and where the report is."""
    best = pd.DataFrame(metrics["best"], columns=SHOWN)
    print("\nevery curve at its nested layer choice (acc [95% CI] | per-task majority | shuffled | control task | Holm p, family):")
    for r in best[best["split"] == "items"].itertuples():
        where = r.test_run if r.train_run == r.test_run else f"{r.train_run}→{r.test_run}"
        layer = "" if pd.isna(r.layer) else f" L{int(r.layer)}"
        print(f"  {r.experiment} {r.subject:9s} {r.property:17s} {r.target:8s} {where:38s}{layer:4s} "
              f"{_pct(r.nested_acc)} [{_pct(r.nested_lo)}, {_pct(r.nested_hi)}] | {_pct(r.task_majority)} | {_pct(r.shuffled_acc)} | "
              f"{_pct(r.control_task_acc)} | {_p(r.p_holm)} {r.family}  n={r.n_test}")
    for o in metrics["onsets"]:
        print(f"  D onset {o['subject']} {o['property']}: answer identity {_layer(o['identity_onset'])}, property {_layer(o['property_onset'])}")
    for r in metrics.get("m1_vs_m2", []):
        print(f"  M1 vs M2 {r['property']:17s} {r['run']:22s} self {_pct(r['self_acc'])} vs cross {_pct(r['cross_acc'])}: "
              f"{100 * r['diff']:+.0f} points [{100 * r['diff_lo']:+.0f}, {100 * r['diff_hi']:+.0f}] {_p(r['p_holm'])} (Holm) n={r['n_items']} items")
    print(f"\n{_run_text(metrics)}\nreport: {run.path('report.html')}")
