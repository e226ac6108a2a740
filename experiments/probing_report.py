"""The probing run's summary, report and printout, built from its saved results table only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from introspect_mi.store import RunDir
from introspect_mi.viz import Section, Table, write_report
from introspect_mi.viz.probes import input_only_figure, layer_figure
from probes.summary import best_rows, onsets

CURVE = ["experiment", "subject", "property", "target", "split", "train_run", "test_run"]
"""The columns that tell one curve (a value per layer) from another."""
SHOWN = [*CURVE, "layer", "n_test", "n_classes", "acc", "acc_lo", "acc_hi", "majority", "shuffled_acc",
         "control_task_acc", "control_majority", "selectivity", "control_seen", "agreement"]
PERCENT = SHOWN[SHOWN.index("acc"):]
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
         "Onset = first layer whose 95% CI lies above the majority baseline. The control task keys on the answer's first "
         "word, nearly the identity itself, so for identity the shuffled-label line is the control to read.",
    "E": "How much is readable from P's tokens alone, with no model state: the same probe on token counts of P plus "
         "the identity of P's last token(s). A layer's probe shows computation beyond the input only where it beats this "
         "(drawn as a flat line in A and B).",
    "F": "Privileged self-information or generic task information? On the same items, probes for M1's own property "
         "values and for M2's (gemma3-270m, untrained: its own object answers). agreement = share of items where the two "
         "values coincide (where they agree the two probes have the same labels).",
}
INTRO = ("Every accuracy is cross-fitted: k folds over items (every item is tested once by a probe that never saw it), "
         "and where a property spans two or more tasks also leave-one-task-out (split = tasks). Each comes with its "
         "majority baseline (the best constant answer: the most common tested label's share), a shuffled-label probe "
         "(same pipeline, permuted training labels: at or below the majority unless something leaks) and a control-task "
         "probe (Hewitt & Liang: a random fixed label per object answer's first word, e.g. 'lion' or 'A'; control_seen = "
         "share of tested items whose word occurs in training). Selectivity = (accuracy − majority) − max(0, control-task "
         "accuracy − control majority): the probe's gain over its best constant minus the control probe's; with many "
         "distinct answer words it is accuracy − control accuracy, and with few (answer letters) a near-constant control "
         "task is not counted as memorisation. The best layer is chosen on the reported accuracy (optimistic: read it "
         "next to its baseline and controls). Items whose label value is rare are dropped per experiment; the Skipped "
         "section lists cells without two frequent values.")


def curve_summary(table: pd.DataFrame) -> pd.DataFrame:
    """The best layer of every curve (E: its single row)."""
    return best_rows(table, CURVE)[SHOWN]


def onset_summary(table: pd.DataFrame) -> pd.DataFrame:
    """D's comparison: per subject × property, the onset layer of the answer identity and of the property (B, final)."""
    identity = table[table["experiment"] == "D"]
    prop = table[(table["experiment"] == "B") & (table["test_run"] == "hypothetical@final") & (table["split"] == "items")]
    if identity.empty:
        return pd.DataFrame(columns=["subject", "property", "identity_onset", "property_onset", "identity_best_acc", "property_best_acc"])
    by = ["subject", "property"]
    out = onsets(identity, by).rename(columns={"onset": "identity_onset"})
    out = out.merge(onsets(prop, by).rename(columns={"onset": "property_onset"}), how="left", on=by)
    for rows, name in ((identity, "identity_best_acc"), (prop, "property_best_acc")):
        out = out.merge(rows.groupby(by)["acc"].max().rename(name).reset_index(), how="left", on=by)
    return out


def summary_metrics(table: pd.DataFrame, skipped: Sequence[Mapping[str, str]], missing: Mapping[str, str],
                    layers: Sequence[int], timing: Mapping[str, Any]) -> dict[str, Any]:
    table = _columns(table)
    return {"subjects": list(dict.fromkeys(table["subject"])), "missing_subjects": dict(missing), "layers": list(layers),
            "timing": dict(timing), "n_fits": len(table), "no_fits": NO_FITS if table.empty else None, "skipped": list(skipped),
            "best": curve_summary(table).to_dict(orient="records"), "onsets": onset_summary(table).to_dict(orient="records")}


def _columns(table: pd.DataFrame) -> pd.DataFrame:
    """The results table with at least the shown columns: an empty one reads back without any."""
    return table.reindex(columns=list(dict.fromkeys([*SHOWN, *table.columns])))


def _items(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["split"] == "items"]


def write_probing_report(run: RunDir, metrics: Mapping[str, Any]) -> None:
    table = _columns(run.read_table("results"))
    best = pd.DataFrame(metrics["best"], columns=SHOWN)
    e = table[table["experiment"] == "E"]
    sections = [Section("Summary", tables=[Table(best, "Best layer of every curve", PERCENT)], text=INTRO + "\n\n" + _run_text(metrics))]
    variants = {"A": ["train_run", "split"], "B": ["test_run", "split"], "C": ["test_run", "split"], "F": ["test_run", "target"]}
    for ex in ("A", "B", "C", "D", "E", "F"):
        rows = table[table["experiment"] == ex]
        if ex == "D" and not rows.empty:
            prop = _items(table[(table["experiment"] == "B") & (table["test_run"] == "hypothetical@final")])
            onset = pd.DataFrame(metrics["onsets"])
            sections.append(Section(TITLES[ex], [layer_figure(pd.concat([rows, prop]), TITLES[ex], variant=["target"])],
                                    [Table(onset, "Onset layers (first layer whose CI clears the majority baseline)",
                                           ["identity_best_acc", "property_best_acc"])], TEXTS[ex]))
        elif ex == "E" and not rows.empty:
            sections.append(Section(TITLES[ex], [input_only_figure(rows, TITLES[ex])],
                                    [Table(best[best["experiment"] == "E"].drop(columns=["layer"]), "Input-only probes", PERCENT)], TEXTS[ex]))
        elif not rows.empty:
            sections.append(Section(TITLES[ex], [layer_figure(rows, TITLES[ex], variant=variants[ex],
                                                              input_only=e[["subject", "property", "split", "acc"]] if ex in ("A", "B") and not e.empty else None)],
                                    [Table(best[best["experiment"] == ex], "Best layer per curve", PERCENT)], TEXTS[ex]))
    if metrics["skipped"]:
        sections.append(Section("Skipped", tables=[Table(pd.DataFrame(metrics["skipped"]), "Cells without enough data")]))
    write_report(run.path("report.html"), "Linear probes: is the answer's property represented, and whose?", sections)


def _run_text(metrics: Mapping[str, Any]) -> str:
    t = metrics["timing"]
    missing = "; ".join(f"{k}: {v}" for k, v in metrics["missing_subjects"].items()) or "none"
    return (f"Subjects: {', '.join(metrics['subjects'])} (missing: {missing}). Layers {metrics['layers']}. "
            f"{metrics['n_fits']} cross-fitted probes in {t['wall_s']} s wall ({t['cpu_s']} s CPU; "
            f"1-min load average {t['load_average_1min_at_end']} on {t['cpu_count']} cores at the end)."
            + (f" {metrics['no_fits']}." if metrics.get("no_fits") else ""))


def _layer(x: Any) -> str:
    return "never" if x is None or pd.isna(x) else f"layer {int(x)}"


def _pct(x: Any) -> str:
    return "–" if x is None or pd.isna(x) else f"{100 * float(x):.0f}%"


def print_summary(run: RunDir, metrics: Mapping[str, Any]) -> None:
    """One line per best-layer curve (items split), D's onsets, timing and where the report is."""
    best = pd.DataFrame(metrics["best"], columns=SHOWN)
    print("\nbest layer per curve (acc [95% CI] | majority | shuffled | control task):")
    for r in best[best["split"] == "items"].itertuples():
        where = r.test_run if r.train_run == r.test_run else f"{r.train_run}→{r.test_run}"
        layer = "" if pd.isna(r.layer) else f" L{int(r.layer)}"
        print(f"  {r.experiment} {r.subject:9s} {r.property:17s} {r.target:8s} {where:38s}{layer:4s} "
              f"{_pct(r.acc)} [{_pct(r.acc_lo)}, {_pct(r.acc_hi)}] | {_pct(r.majority)} | {_pct(r.shuffled_acc)} | {_pct(r.control_task_acc)}  n={r.n_test}")
    for o in metrics["onsets"]:
        print(f"  D onset {o['subject']} {o['property']}: answer identity {_layer(o['identity_onset'])}, property {_layer(o['property_onset'])}")
    print(f"\n{_run_text(metrics)}\nreport: {run.path('report.html')}")
