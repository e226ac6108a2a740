"""The patching experiments' report (report.html), built from the saved tables and metrics.json
of runs/<capture>/patching/ alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from introspect_mi.concepts import CONFIRMATORY_POSITIONS
from introspect_mi.multiplicity import CONFIRMATORY
from introspect_mi.patching_experiments import EXPERIMENTS
from introspect_mi.patching_pairs import GROUPS
from introspect_mi.patching_summary import LEVEL
from introspect_mi.steering_experiments import POSITION_SETS
from introspect_mi.store import RunDir
from introspect_mi.viz import Section, Table, write_report as write_html
from introspect_mi.viz.patching import (
    attribution_heatmap, attribution_scatter, concept_bars, group_heatmap, pair_curves, steering_bars, steering_sweep_figure,
)

GROUP_NAMES = {"P": "P's tokens", "question": "the question's tokens", "final": "the final token"}
ALPHA = 0.05
"""Level at which a (Holm-adjusted, when confirmatory) paired test is called significant in the text."""
C_CAVEAT = ("C at the last layers: the final token's last resid_post is what the final norm and unembedding read, so patching it "
            "replaces the hypothetical run's next-token logits by the object run's; late-layer C measures the object-level output's "
            "preference between the two value tokens, not a self-prediction (A's final group reaches 1 there for the same reason).")


def _f(x: object, fmt: str = ".2f") -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, fmt)


def _median_iqr(rows: list[dict], experiment: str, group: str, layer: int) -> str:
    hit = [r for r in rows if (r["experiment"], r["group"], r["layer"]) == (experiment, group, layer)]
    return f"{_f(hit[0]['median'])} [IQR {_f(hit[0]['q25'])}–{_f(hit[0]['q75'])}, n {hit[0]['n']}]" if hit else "–"


def contrast_lines(contrasts: list[dict], name: str) -> list[str]:
    """One line per declared layer of a contrast: median [bootstrap CI] over pairs, mean, sign-flip p (and Holm p)."""
    out = []
    for r in (r for r in contrasts if r["contrast"] == name):
        holm = f", Holm p {_f(r['p_holm'], '.3f')}" if r["status"] == CONFIRMATORY else ""
        out.append(f"  layer {r['layer']}: median {_f(r['median'])} [95% CI {_f(r['ci_low'])}, {_f(r['ci_high'])}], mean {_f(r['mean'])}, "
                   f"n {r['n']} pairs, one-sided sign-flip p {_f(r['p'], '.4f')}{holm}")
    return out


def patching_text(label: str, m: dict) -> str:
    """What A, B and C show for one subject: per-layer medians, the confirmatory B − control family, C − control."""
    p = m["patching"]
    rows, contrasts = p["layer_summary"], p["contrasts"]
    groups = ", ".join(f"{g} {n}" for g, n in p["pairs_per_group"].items())
    lines = [f"{label} ({m['model']['model']}{' + adapter' if m['model']['adapters'] else ''}): {p['pairs']} token-aligned pairs "
             f"({groups}), {p['normalisable_pairs']} normalisable, chosen by the clean gap of {p['screened_prompts']} screened prompts. "
             f"B and C patched at layers {', '.join(map(str, p['layers_patched']))}; A's groups at {', '.join(map(str, p['group_layers_patched']))}."]
    b = [r for r in contrasts if r["contrast"] == "B − B-control"]
    hits = [r["layer"] for r in b if r["p_holm"] is not None and r["p_holm"] < LEVEL]
    lines.append(f"CONFIRMATORY — {p['confirmatory_family']} (layers {', '.join(map(str, p['contrast_layers']))}; H1: B > control): "
                 + (f"B exceeds its control at layer(s) {', '.join(map(str, hits))} (Holm p < {LEVEL:g}): P_a's object-level P states carry "
                    "P_a's property into the other hypothetical run beyond what object-level context does by itself."
                    if hits else f"at no declared layer does B exceed its control at Holm p < {LEVEL:g}."))
    lines += contrast_lines(contrasts, "B − B-control")
    lines.append("Exploratory — C − C-control (same layers, not adjusted):")
    lines += contrast_lines(contrasts, "C − C-control")
    last = p["layers_patched"][-1]
    mid = p["group_layers_patched"][len(p["group_layers_patched"]) // 2]
    lines.append(f"Exploratory — A, median normalised effect [IQR] at layers 0 / {mid} / {last}: "
                 + "; ".join(f"{GROUP_NAMES[g]} " + " / ".join(_median_iqr(rows, "A", g, layer) for layer in (0, mid, last)) for g in GROUPS)
                 + ". At layer 0, patching P's differing tokens is swapping the input tokens.")
    return "\n".join(lines)


def steering_text(label: str, m: dict, sweep: pd.DataFrame) -> str:
    s = m["steering"]
    if "skipped" in s:
        return f"{label}: skipped — {s['skipped']}."
    x, y = s["values"]
    head = (f"{label}: {s['task']} / {s['property']}, X = {x!r} vs Y = {y!r}, {s['items']} items, layer {s['layer']}, scale {s['scale']:g} "
            f"(vector norms {', '.join(f'{v:.1f}' for v in s['vector_norms'].values())}; median residual norm at the site "
            f"{s.get('residual_norm', float('nan')):.1f}, so the chosen push is {s.get('dose', float('nan')):.2f} of it). "
            f"Pattern: {s['pattern'].upper()}.")
    return "\n".join([head, "Sweep at P's tokens (every scale; moved toward the pushed value, steering vector / random vector; "
                             "random: share of object answers changed at all):", *sweep_lines(sweep[sweep["subject"] == label]),
                       *sweep_test_lines(s), *s["sentences"]])


def _effect(r: dict | object, prefix: str) -> str:
    """mean [95% CI], one-sided sign-flip p of a paired effect's columns `<prefix>_mean` etc."""
    get = r.get if isinstance(r, dict) else lambda k: getattr(r, k)
    return (f"{_f(get(f'{prefix}_mean'), '+.2f')} [{_f(get(f'{prefix}_ci_low'), '+.2f')}, {_f(get(f'{prefix}_ci_high'), '+.2f')}], "
            f"p {_f(get(f'{prefix}_p'), '.3f')}")


def sweep_test_lines(s: dict) -> list[str]:
    """The sweep's paired tests: object answers (confirmatory, Holm over scales), self-predictions (exploratory)."""
    tests = s.get("sweep_tests", [])
    if not tests:
        return []
    lines = [f"Paired tests, per item steer − random (1/0/−1 on 'equals the pushed value'). Confirmatory family: {s['sweep_family']}."]
    for r in tests:
        holm = f", Holm p {_f(r['p_holm'], '.3f')}" if r["status"] == CONFIRMATORY else ""
        lines.append(f"  [{r['status']}] ×{r['scale']:g}, {r['kind']} answers: {_effect(r, 'gain')}{holm} (n = {r['n']} items)")
    return lines


def sweep_lines(sweep: pd.DataFrame) -> list[str]:
    """One line per scale of a subject's steering sweep."""
    by = {(r["scale"], r["vector"]): r for _, r in sweep.iterrows()}
    lines = []
    for scale in sorted(sweep["scale"].unique()):
        st, rd = by[(scale, "steer")], by[(scale, "random")]
        dose = f", dose {st['dose']:.2f}" if "dose" in st and np.isfinite(st["dose"]) else ""
        hyp = (f"; self-prediction {st['hyp_to_target']:+.2f} / {rd['hyp_to_target']:+.2f}" if "hyp_to_target" in st else "")
        lines.append(f"  ×{scale:g}{dose}: object {st['object_to_target']:+.2f} / {rd['object_to_target']:+.2f}{hyp}; "
                     f"random changed {rd['object_changed']:.0%} of object answers")
    return lines


def concept_text(label: str, m: dict, summary: pd.DataFrame) -> str:
    """E for one subject: the confirmatory after-P family's verdict, the every-token cells beside it, and every cell's numbers."""
    c, own = m["concepts"], summary[summary["subject"] == label]
    confirm = own[own["status"] == CONFIRMATORY]
    passed = confirm[(confirm["p_holm"] < ALPHA) & (confirm["vs_random_mean"] > 0)]
    lines = [f"{label}: injected at layer {c['layer']} into {c['items']} hypothetical prompts ({c['prompts_run']} prompts run). "
             f"Confirmatory family: {c['family']}. {len(passed)} of {len(confirm)} cells beat their random vectors at Holm p < {ALPHA}."]
    for where, g in own.groupby("positions", sort=False):
        hits = int(((g["vs_random_p"] < ALPHA) & (g["vs_random_mean"] > 0)).sum())
        lines.append(f"{POSITION_SETS[where]}: {hits} of {len(g)} cells with own − random > 0 at unadjusted p < {ALPHA}.")
    for r in own.itertuples():
        holm = f", Holm p {_f(r.p_holm, '.3f')}" if r.status == CONFIRMATORY else ""
        lines.append(f"  [{r.status}] {r.positions}, {r.concept} → {r.value!r} (×{r.scale:g}, n = {r.n}): shift of log P(value | valid) "
                     f"{r.shift_own:+.2f} vs random {r.shift_random:+.2f} (SD over items × vectors {_f(r.shift_random_sd)}, max of vectors "
                     f"{_f(r.shift_random_max, '+.2f')}) and other concepts {_f(r.shift_other, '+.2f')} (max {_f(r.shift_other_max, '+.2f')}); "
                     f"own − random {_effect(r, 'vs_random')}{holm}; own − other {_effect(r, 'vs_other')} (exploratory). Chance: clean report "
                     f"= {r.value!r} {r.clean_report_rate:.0%}, clean P(value | valid) {r.clean_prob:.3f} (uniform {r.uniform:.3f}). Report "
                     f"= {r.value!r} {r.report_rate_own:.0%} (random {r.report_rate_random:.0%}), flipped to it {r.flips_own:.0%} (random "
                     f"{r.flips_random:.0%}); log P(a valid value) shift {r.valid_mass_own:+.2f} (random {r.valid_mass_random:+.2f}).")
    return "\n".join(lines)


def _representative(pairs: pd.DataFrame, label: str) -> str | None:
    own = pairs[pairs["subject"] == label]
    if not len(own):
        return None
    good = own[own["normalisable"]]
    return str((good if len(good) else own).iloc[0]["pair"])


def write_report(run: RunDir) -> Path:
    """report.html of a finished patching run folder."""
    metrics = run.read_json("metrics.json")
    t = {name: run.read_table(name) if run.exists(f"{name}.jsonl") else pd.DataFrame()
         for name in ("pairs", "cells", "grid", "exact", "steering_sweep", "steering_sweep_tests", "steering_summary", "concept_summary")}
    subjects = list(metrics["subjects"])
    per_subject = ", ".join(f"{s}: {m['seconds']}" for s, m in metrics["subjects"].items())
    overview = (f"Study {metrics['study']}, capture {metrics['capture']}; subjects {', '.join(subjects)}. Wall time {metrics['seconds']:.0f} s "
                f"(seconds per stage: {per_subject}), {metrics['torch_threads']} torch thread(s), "
                f"1-minute load average {metrics['load_average_1min_start']:.1f} at the start and "
                f"{metrics['load_average_1min']:.1f} at the end (the machine's other jobs slow the run down).\n\n"
                "Metric: logit difference between the source item's and the target item's property-value first tokens at the "
                "hypothetical prompt's final token, normalised so that 0 = clean target run and 1 = clean source run (pairs whose clean "
                "runs differ by less than min_gap keep only the raw change).")
    pair_cols = ["subject", "pair", "source_value", "target_value", "clean_source", "clean_target", "gap", "normalisable", "tokens",
                 "first_difference", "p_tokens", "b_tokens_aligned", "exact_checked"]
    layer_rows = pd.DataFrame([{"subject": s, **{k: v for k, v in r.items() if k != "values"}}
                               for s, m in metrics["subjects"].items() for r in m["patching"]["layer_summary"]])
    contrast_rows = pd.DataFrame([{"subject": s, **{k: v for k, v in r.items() if k != "values"}}
                                  for s, m in metrics["subjects"].items() for r in m["patching"]["contrasts"]])
    sections = [
        Section("Overview", text=overview, tables=[Table(t["pairs"][pair_cols], caption="Pairs (source > target)")]),
        Section("A, B, C: where does the property decision flow?",
                figures=[f for s in subjects for f in (pair_curves(t["cells"], s), group_heatmap(t["cells"], s))],
                tables=[Table(contrast_rows, caption="B − B-control (confirmatory: Holm within each subject) and C − C-control (exploratory), "
                                                     "normalised, per pair, at the declared layers: median with a bootstrap CI over pairs, "
                                                     "one-sided paired sign-flip p"),
                        Table(layer_rows, caption="Every experiment × group × layer (exploratory): median and quartiles of the normalised "
                                                  "effect over pairs; each pair's value is in metrics.json and the figure")],
                text="\n\n".join([*(patching_text(s, m) for s, m in metrics["subjects"].items()), C_CAVEAT])),
    ]
    r_text = "\n".join(f"{s}: Pearson r (attribution vs exact), pooled / median over pairs: {_f(a['r_group_cells_pooled'], '.3f')} / "
                       f"{_f(a['r_group_cells_median'], '.3f')} over the A group cells of {a['pairs_group_cells']} pairs, "
                       f"{_f(a['r_single_cells_pooled'], '.3f')} / {_f(a['r_single_cells_median'], '.3f')} over the single cells of "
                       f"{a['pairs_single_cells']} pairs." for s, m in metrics["subjects"].items() if (a := m["patching"]["attribution"]))
    r_pairs = pd.DataFrame([{"subject": s, **r} for s, m in metrics["subjects"].items() for r in m["patching"]["attribution"]["per_pair"]])
    grids = [attribution_heatmap(t["grid"], s, p) for s in subjects if (p := _representative(t["pairs"], s))]
    sections.append(Section("Attribution patching over every layer × token", figures=[*grids, attribution_scatter(t["cells"], t["exact"])],
                            tables=[Table(r_pairs, caption="Attribution vs exact patching per pair (Pearson r)")],
                            text=r_text + "\n\nGroup cells: the attribution estimate of a multi-position cell is the sum of its tokens' estimates."))
    summary = t["steering_summary"]
    steer_cols = ["subject", "label", "n", "object_to_target", "random_object_to_target_mean", "random_object_to_target_max", "hyp_to_target",
                  "random_hyp_to_target_mean", "random_hyp_to_target_max", "n_object_moved", "follows_new", "new_before", "follows_old",
                  "old_before", "hyp_readable"]
    gain_cols = ["subject", "label", "status", *(f"{k}_gain_{s}" for k in ("object", "hyp") for s in ("mean", "ci_low", "ci_high", "p"))]
    sections.append(Section(
        "D: steering — does the self-prediction follow the steered behaviour?",
        figures=[steering_bars(summary), steering_sweep_figure(t["steering_sweep"])] if len(summary) else [],
        tables=[Table(summary[steer_cols], caption="Steering at the chosen scale (shares of items; random: mean and max over controls)",
                      percent_columns=[c for c in steer_cols if c not in ("subject", "label", "n", "n_object_moved")]),
                Table(summary[[c for c in gain_cols if c in summary]], caption="Steering at the chosen scale: per item, steered minus the "
                      "random vectors' mean on 'equals the pushed value' (exploratory: the scale was chosen on the sweep)"),
                Table(t["steering_sweep"], caption="The scale sweep at P's tokens, every scale (dose: ‖scale × v‖ / median ‖residual‖ at the site)",
                      percent_columns=[c for c in t["steering_sweep"].columns if c.startswith(("object_", "hyp_"))]),
                Table(t["steering_sweep_tests"], caption="Paired tests per sweep scale: per item, steer − random on 'equals the pushed value' "
                      "(object: confirmatory, Holm over scales per subject; hypothetical: exploratory)")] if len(summary) else [],
        text=("Predictions: reading P's state and re-computing both predict that (i) moves the object answer and the self-prediction "
              "with it; a shortcut at the question predicts that (ii) moves the self-prediction while the object answer stays.\n\n"
              + "\n\n".join(steering_text(s, m, t["steering_sweep"]) for s, m in metrics["subjects"].items())),
    ))
    cs = t["concept_summary"]
    sections.append(Section(
        "E: concept injection — priming (every token) vs reading (after P only)",
        figures=[concept_bars(g).update_layout(title=f"Concept injection, {POSITION_SETS[where]}",
                                               yaxis_title="mean change of log P(value | valid value)")
                 for where, g in cs.groupby("positions", sort=False)] if len(cs) else [],
        tables=[Table(cs, caption="Concept injection per position set × scale × concept (shifts: injected − clean log P(value | valid value))")],
        text=(f"Predictions: priming (the vector acts through P's tokens as if the word were in the input) moves the report only when P's "
              f"tokens are hit (every token); reading an internal state at the question moves it when only the tokens after P are hit "
              f"({CONFIRMATORY_POSITIONS}, the confirmatory family). Metric: per item, injected minus clean log P(the concept's value | "
              f"the answer is a valid value), so a vector that only breaks the format does not count.\n\n"
              + "\n\n".join(concept_text(s, m, cs) for s, m in metrics["subjects"].items()))))
    sections.append(Section("Position sets and groups", text=(
        "Position groups of a hypothetical prompt (A): " + ", ".join(f"{g} = {GROUP_NAMES[g]}" for g in GROUPS) + ". "
        "Steering position sets (D): " + "; ".join(f"{k} = {v}" for k, v in POSITION_SETS.items()) + ".")))
    return write_html(run.path("report.html"), "Patching, steering and concept injection", sections)
