"""report.html of a behavioural run, built from the files the run saved (never from models)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

from experiments import behavioral_prompt_regime as pr
from experiments.behavioral_endpoint import KEY, comparison_line, mdd_text
from introspect_mi.store import RunDir
from introspect_mi.viz import (
    Section, Table, accuracy_figure, calibration_figure, compliance_figure, difference_figure, loss_figure, write_report,
)

TABLE_COLUMNS = ["task", "property", "n_items", "n_dropped_object", "object_compliance", "hypothetical_compliance",
                 "accuracy", "accuracy_ci_low", "accuracy_ci_high", "mode_value", "mode_baseline"]


COMPARISON_COLUMNS = ["n_pairs", "n_items", "first_accuracy", "second_accuracy", "diff", "diff_ci_low", "diff_ci_high",
                      "macro_diff", "macro_diff_ci_low", "macro_diff_ci_high", "only_first", "only_second", "p_value", "z", "mdd",
                      "design_effect"]
POINT_COLUMNS = ["first_accuracy", "second_accuracy", "diff", "diff_ci_low", "diff_ci_high", "macro_diff", "macro_diff_ci_low",
                 "macro_diff_ci_high", "mdd"]


def comparison_text(c: dict) -> str:
    """One sentence of a paired comparison (behavioral_eval.compare)."""
    return f"{c['first']} minus {c['second']} on the same pairs: {comparison_line(c)}."


def _comparison_frame(named: list[tuple[str, dict[str, Any]]]) -> pd.DataFrame:
    """One row per (name, paired comparison); a comparison without pairs shows n_pairs 0."""
    return pd.DataFrame([{"comparison": name, **{k: c.get(k, float("nan")) for k in COMPARISON_COLUMNS}} for name, c in named])


def write_report_for(run: RunDir) -> None:
    metrics = run.read_json("metrics.json")
    predictors = metrics["predictors"]
    tables = {label: run.read_table(f"table_{p['slug']}") for label, p in predictors.items()}
    endpoint = metrics.get(KEY)
    baseline = (endpoint or metrics.get("comparison", {})).get("first")  # self vs cross share their target
    sections = [_endpoint_section(run, endpoint, metrics.get("finetunes", {}))] if endpoint else []
    sections.append(Section(
        "Accuracy vs mode baseline",
        figures=[accuracy_figure(tables, baseline_from=baseline)],
        tables=[Table(t[TABLE_COLUMNS], caption=label) for label, t in tables.items()],
        text="Hypothetical accuracy per held-out task × property with 95% bootstrap CIs. The dash is the mode "
             f"baseline of {baseline or 'the first predictor'}'s target (always guessing its most common property "
             "value); each table below has its own target's baseline.",
    ))
    if pr.KEY in metrics:
        sections.append(_prompt_regime_section(metrics[pr.KEY]))
    if "comparison" in metrics:
        c = metrics["comparison"]
        sections.append(Section("Comparison", text=comparison_text(c)))
    sections.append(Section("Target behaviour", figures=[compliance_figure(t) for t in tables.values()],
                            text="Object-level compliance and mode baseline of each predictor's target per task × property."))
    if "training_tasks" in metrics:
        train_tables = {label: run.read_table(f"table_{p['slug']}") for label, p in metrics["training_tasks"].items()}
        comparison = metrics.get("training_tasks_comparison")
        test = " " + comparison_text(comparison) if comparison else ""
        sections.append(Section(
            "Training tasks (val items, never trained on)",
            figures=[accuracy_figure(train_tables, baseline_from=baseline, title="Accuracy on the training tasks' val items")],
            text="Untrained and self-trained M1 on items of the training tasks' val split: does self-prediction training "
                 "raise accuracy in distribution?" + test))
    if "changed" in metrics:
        sections.append(Section("Finetuning changes behaviour", tables=[Table(pd.DataFrame(metrics["changed"]), percent_columns=["fraction_changed"])],
                                text="Share of object-level answers (T=0) that differ after each finetune, on the held-out tasks and on the training tasks' val items."))
    if metrics.get("calibration"):
        sections.append(_calibration_section(run, metrics))
    losses = {name: run.read_table(f"loss_{name}") for name in metrics.get("finetunes", {}) if run.exists(f"loss_{name}.jsonl")}
    if losses:
        sections.append(Section("Training", figures=[loss_figure(losses)],
                                tables=[Table(pd.DataFrame([{"finetune": k, **v} for k, v in metrics["finetunes"].items()]))],
                                text="Training loss per optimizer step (answer tokens only) and validation loss per epoch."))
    if "behaviour_change" in metrics:
        sections.append(_behaviour_change_section(metrics["behaviour_change"]))
    if endpoint:  # everything after the primary endpoint is secondary, and says so
        for section in sections[1:]:
            section.title = f"Exploratory: {section.title}"
    write_report(run.path("report.html"), f"Behavioural study · {metrics['run']}", sections)


def _calibration_section(run: RunDir, metrics: dict) -> Section:
    curves, mads, rows = {}, {}, []
    for label, cal in metrics["calibration"].items():
        slug = metrics["predictors"][label]["slug"]
        for variant in () if "skipped" in cal else ("sampled", "exact"):
            key = f"{label} ({variant})"
            curves[key] = run.read_table(f"calibration_{slug}_{variant}")
            mads[key] = cal[f"mad_{variant}"]
        rows.append({"predictor → target": label, "n_prompts": cal["n_prompts"], **({"skipped": cal["skipped"]} if "skipped" in cal else {}),
                     **{k: cal.get(k, float("nan")) for k in ("mad_sampled", "mad_sampled_ci_low", "mad_sampled_ci_high", "noise_floor",
                                                              "noise_floor_ci_low", "noise_floor_ci_high", "mad_exact",
                                                              "mad_exact_ci_low", "mad_exact_ci_high")}})
    return Section("Calibration", figures=[calibration_figure(curves, mads)] if curves else [], tables=[Table(pd.DataFrame(rows), percent_columns=[])],
                   text="Object-level vs hypothetical probability of the target's top-3 property values, 10 equal-frequency "
                        "bins; MAD × 100, lower is better (PROTOCOL.md). 'sampled': T=1 samples; 'exact': first-token probabilities. "
                        "95% CIs resample prompts. Noise floor: the sampled MAD between two independent sample sets of the target's "
                        "own object-level answers, what a perfect predictor would score with this many samples; a sampled MAD within "
                        "its floor says nothing about calibration. The exact variant has no sampling noise.")


def _endpoint_section(run: RunDir, e: dict[str, Any], finetunes: dict[str, Any]) -> Section:
    """The primary endpoint (experiments/behavioral_endpoint.py): the declared comparison first, then
    the same with the excluded cells kept, the exploratory splits, the cells and the exclusions."""
    p = e["primary"]
    named = [("PRIMARY: self − cross, excluded cells left out", p), ("self − cross, every cell", e["all_cells"])]
    for split, parts in e["splits"].items():
        named += [(f"exploratory · {split}: {part}", c) for part, c in parts.items() if isinstance(c, dict)]
    named += [(f"exploratory · self − {label}", c) for label, c in e["others"].items()]
    frame = _comparison_frame(named)
    tables = [Table(frame, caption="Paired comparisons on the same (item, property) pairs (first = self, second = cross or the named "
                                   "predictor); CIs resample items within tasks", percent_columns=POINT_COLUMNS)]
    if e["excluded_cells"]:
        tables.append(Table(pd.DataFrame(e["excluded_cells"]), caption=f"Cells excluded by the rule (target mode baseline > {e['max_target_mode']:.0%})",
                            percent_columns=["mode_baseline"]))
    if run.exists("primary_cells.jsonl"):
        cells = run.read_table("primary_cells")
        tables.append(Table(cells, caption="Per task × property (every cell; 'excluded' marks those the rule left out)",
                            percent_columns=[c for c in cells.columns if c in POINT_COLUMNS or "accuracy" in c or c == "target_mode_baseline"]))
    text = [f"Declared before the results were read (experiments/behavioral_endpoint.py): {e['definition']}.",
            f"First: {e['first']}. Second: {e['second']}."]
    if p.get("n_pairs"):
        text.append(f"Self − cross: {comparison_line(p, 'self', 'cross')}. Macro-average over {p['n_strata']} tasks: "
                    f"{p['macro_diff'] * 100:+.1f} pts ({p['macro_diff_ci_low'] * 100:+.1f} to {p['macro_diff_ci_high'] * 100:+.1f}). "
                    f"Minimum detectable difference at 80% power (two-sided α 0.05): {mdd_text(p)}, from {p['n_pairs']} pairs with "
                    f"{p['discordance']:.0%} discordant and a design effect of {p['design_effect']:.2f} (intra-item correlation {p['icc']:.2f}); "
                    "a difference smaller than that is not measured, not absent."
                    + (f" The paper's {e['paper_effect'] * 100:.1f}-point gap would need about {e['pairs_for_paper_effect']} pairs at "
                       "this discordance and clustering." if e["pairs_for_paper_effect"] else ""))
    text.append("Excluded cells: " + ("; ".join(f"{c['task']} × {c['property']} — {c['reason']}" for c in e["excluded_cells"])
                                      if e["excluded_cells"] else "none") + ".")
    stale = [f"{name}: {ft['stale_labels']['n_stale']} of {ft['stale_labels']['n_labels']} ({ft['stale_labels']['share']:.0%})"
             for name, ft in finetunes.items() if isinstance(ft.get("stale_labels"), dict)]
    if stale:
        text.append("Stale self labels (training labels from the behaviour before the finetune that the finetuned model's own "
                    "behaviour on the same training items contradicts): " + "; ".join(stale) + ".")
    text.append("Everything below the primary row is exploratory: 'self_finetune' splits the primary pairs by whether the self "
                "finetune changed the pair's property value (untrained vs self-trained M1); 'm2_behaviour' by whether cross-trained "
                "M2's own object-level property value equals the target's (where it does, cross can be right by predicting itself).")
    return Section("Primary endpoint", figures=[difference_figure(frame.rename(columns={"comparison": "label"}), mdd=p.get("mdd"))],
                   tables=tables, text="\n\n".join(text))


def _prompt_regime_section(r: dict[str, Any]) -> Section:
    """experiments/behavioral_prompt_regime.py: 0-shot vs k-shot object behaviour, the endpoint's comparison
    against the 0-shot behaviour, and the untrained predictor's prompt effect."""
    k, kh = f"{r['k']}-shot", f"{r['k_hypothetical']}-shot"
    frame = _comparison_frame([(f"self − cross against {r['truth_model']}'s 0-shot behaviour", r["zero_shot_truth"]),
                               (f"untrained M1 asked 0-shot − {kh} (same target)", r["untrained_prompt_effect"])])
    agreement = pr.as_frame(r)
    return Section("Prompt regime", tables=[
        Table(agreement, caption=f"Object-level answers under the 0-shot and the {k} prompt on the held-out pairs; agreement: share of "
                                 "pairs compliant under both whose property value is the same (95% CI resamples items within tasks)",
              percent_columns=[c for c in agreement.columns if "compliant" in c and c != "n_both_compliant" or c.startswith("agreement")]),
        Table(frame, caption="Paired comparisons (CIs resample items within tasks)", percent_columns=POINT_COLUMNS)],
        text=f"The ground truth is each target's answer to the {k} object-level prompt; the finetuned predictors are asked 0-shot "
             f"and the untrained one {kh}. Where the two prompts give different behaviour, a hypothetical question about 'your "
             "response' refers to one of them only: the first table measures how often they differ, the second scores self and "
             "cross against the 0-shot behaviour instead (same hypothetical answers) and separates the untrained predictor's "
             "prompt effect from the training effect.")


def _behaviour_change_section(bc: dict) -> Section:
    fig = go.Figure(go.Bar(
        x=["predicts new behaviour", "predicts old behaviour"], y=[bc["new"]["value"], bc["old"]["value"]],
        error_y={"type": "data", "symmetric": False,
                 "array": [bc["new"]["ci_high"] - bc["new"]["value"], bc["old"]["ci_high"] - bc["old"]["value"]],
                 "arrayminus": [bc["new"]["value"] - bc["new"]["ci_low"], bc["old"]["value"] - bc["old"]["ci_low"]]},
    ))
    fig.update_layout(title=f"Behaviour change: M_C's self-predictions on {bc['n_changed']} items whose property changed",
                      yaxis={"tickformat": ".0%", "range": [0, 1]})
    return Section("Behaviour change", figures=[fig], text=(
        f"M_C = self-trained M1 finetuned on {bc['n_train']} object-level answers of {bc['source']}. On {bc['n_changed']} held-out "
        f"(item, property) pairs whose property value changed, M_C's hypothetical answers match its new behaviour "
        f"{bc['new']['value']:.1%} of the time and its old behaviour {bc['old']['value']:.1%}."
        + (f" Exact McNemar test of new vs old on the same pairs: {bc['mcnemar']['new_only']} pairs match only the new behaviour, "
           f"{bc['mcnemar']['old_only']} only the old, p = {bc['mcnemar']['p_value']:.3g}." if "mcnemar" in bc else "")))
