"""report.html of a behavioural run, built from the files the run saved (never from models)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from introspect_mi.store import RunDir
from introspect_mi.viz import Section, Table, accuracy_figure, calibration_figure, compliance_figure, loss_figure, write_report

TABLE_COLUMNS = ["task", "property", "n_items", "n_dropped_object", "object_compliance", "hypothetical_compliance",
                 "accuracy", "accuracy_ci_low", "accuracy_ci_high", "mode_value", "mode_baseline"]


def comparison_text(c: dict) -> str:
    """One sentence of a two-proportion comparison (behavioral_eval.compare)."""
    return (f"{c['first']} minus {c['second']}: {c['diff']:+.1%} (95% CI {c['diff_ci_low']:+.1%} to {c['diff_ci_high']:+.1%}), "
            f"two-proportion z = {c['z']:.2f}, p = {c['p_value']:.3g}.")


def write_report_for(run: RunDir) -> None:
    metrics = run.read_json("metrics.json")
    predictors = metrics["predictors"]
    tables = {label: run.read_table(f"table_{p['slug']}") for label, p in predictors.items()}
    baseline = metrics.get("comparison", {}).get("first")  # self vs cross share their target
    sections = [Section(
        "Accuracy vs mode baseline",
        figures=[accuracy_figure(tables, baseline_from=baseline)],
        tables=[Table(t[TABLE_COLUMNS], caption=label) for label, t in tables.items()],
        text="Hypothetical accuracy per held-out task × property with 95% bootstrap CIs. The dash is the mode "
             f"baseline of {baseline or 'the first predictor'}'s target (always guessing its most common property "
             "value); each table below has its own target's baseline.",
    )]
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
    write_report(run.path("report.html"), f"Behavioural study · {metrics['run']}", sections)


def _calibration_section(run: RunDir, metrics: dict) -> Section:
    curves, mads = {}, {}
    for label, cal in metrics["calibration"].items():
        slug = metrics["predictors"][label]["slug"]
        for variant in ("sampled", "exact"):
            key = f"{label} ({variant})"
            curves[key] = run.read_table(f"calibration_{slug}_{variant}")
            mads[key] = cal[f"mad_{variant}"]
    return Section("Calibration", figures=[calibration_figure(curves, mads)],
                   text="Object-level vs hypothetical probability of the target's top-3 property values, 10 equal-frequency "
                        "bins; MAD × 100, lower is better (PROTOCOL.md). 'sampled': T=1 samples; 'exact': first-token probabilities.")


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
        f"{bc['new']['value']:.1%} of the time and its old behaviour {bc['old']['value']:.1%}."))
