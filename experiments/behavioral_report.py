"""report.html of a behavioural run, built from the files the run saved (never from models)."""

from __future__ import annotations

from introspect_mi.store import RunDir
from introspect_mi.viz import Section, Table, accuracy_figure, calibration_figure, compliance_figure, write_report

TABLE_COLUMNS = ["task", "property", "n_items", "n_dropped_object", "object_compliance", "hypothetical_compliance",
                 "accuracy", "accuracy_ci_low", "accuracy_ci_high", "mode_value", "mode_baseline"]


def write_evaluate_report(run: RunDir) -> None:
    metrics = run.read_json("metrics.json")
    predictors = metrics["predictors"]
    tables = {label: run.read_table(f"table_{p['slug']}") for label, p in predictors.items()}
    first = next(iter(tables.values()))
    sections = [Section(
        "Accuracy vs mode baseline",
        figures=[accuracy_figure(tables)],
        tables=[Table(t[TABLE_COLUMNS], caption=label) for label, t in tables.items()],
        text="Hypothetical accuracy per held-out task × property with 95% bootstrap CIs; the dash is "
             "the target's mode baseline (always guessing its most common property value).",
    )]
    if "comparison" in metrics:
        c = metrics["comparison"]
        sections.append(Section("Comparison", text=(
            f"{c['first']} minus {c['second']}: {c['diff']:+.1%} (95% CI {c['diff_ci_low']:+.1%} to {c['diff_ci_high']:+.1%}), "
            f"two-proportion z = {c['z']:.2f}, p = {c['p_value']:.3g}.")))
    sections.append(Section("Target behaviour", figures=[compliance_figure(first)],
                            text="Object-level compliance and mode baseline of the target per task × property."))
    if metrics["calibration"]:
        curves, mads = {}, {}
        for label, cal in metrics["calibration"].items():
            slug = predictors[label]["slug"]
            for variant in ("sampled", "exact"):
                key = f"{label} ({variant})"
                curves[key] = run.read_table(f"calibration_{slug}_{variant}")
                mads[key] = cal[f"mad_{variant}"]
        sections.append(Section("Calibration", figures=[calibration_figure(curves, mads)],
                                text="Object-level vs hypothetical probability of the target's top-3 property values, "
                                     "10 equal-frequency bins; MAD × 100, lower is better (PROTOCOL.md)."))
    write_report(run.path("report.html"), f"Behavioural evaluation · {metrics['run']}", sections)
