"""The patching experiments' report (report.html), built from the saved tables and metrics.json
of runs/<capture>/patching/ alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from introspect_mi.patching_experiments import EXPERIMENTS, GROUPS
from introspect_mi.concepts import CONFIRMATORY_POSITIONS
from introspect_mi.multiplicity import CONFIRMATORY
from introspect_mi.steering_experiments import POSITION_SETS
from introspect_mi.store import RunDir
from introspect_mi.viz import Section, Table, write_report as write_html
from introspect_mi.viz.patching import (
    attribution_heatmap, attribution_scatter, concept_bars, group_heatmap, steering_bars, steering_sweep_figure,
)

GROUP_NAMES = {"P": "P's tokens", "question": "the question's tokens", "final": "the final token"}
CLEAR = 0.25
"""How far (normalised) B or C must beat its control to be called item-specific in the text."""
ALPHA = 0.05
"""Level at which a (Holm-adjusted, when confirmatory) paired test is called significant in the text."""
C_CAVEAT = ("C at the last layers: the final token's last resid_post is what the final norm and unembedding read, so patching it "
            "replaces the hypothetical run's next-token logits by the object run's; late-layer C measures the object-level output's "
            "preference between the two value tokens, not a self-prediction (A's final group reaches 1 there for the same reason).")


def _f(x: object, fmt: str = ".2f") -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, fmt)


def _layer(x: object) -> str:
    """A layer number (JSON and tables turn them into floats)."""
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else str(int(x))


def flow_sentences(flow: list[dict]) -> list[str]:
    """One line per experiment × group: peak normalised effect, its layer, first layer at 0.5."""
    out = []
    for r in flow:
        where = EXPERIMENTS[r["experiment"]] + (f", {GROUP_NAMES[r['group']]}" if r["experiment"] == "A" else "")
        out.append(f"{where}: peak {_f(r['peak_normalised'])} at layer {_layer(r['peak_layer'])}, first layer ≥ 0.5: "
                   f"{_layer(r['first_layer_at_0.5'])} ({r['pairs']} normalisable pair(s)).")
    return out


def _peak(flow: list[dict], experiment: str, group: str) -> float:
    hit = [r["peak_normalised"] for r in flow if r["experiment"] == experiment and r["group"] == group]
    return float(hit[0]) if hit and hit[0] is not None else float("nan")


def patching_text(label: str, m: dict) -> str:
    """What A, B and C show for one subject, with numbers."""
    p = m["patching"]
    flow, layers = p["flow"], p["layers_patched"]
    lines = [f"{label} ({m['model']['model']}{' + adapter' if m['model']['adapters'] else ''}): {p['pairs']} pair(s), "
             f"{p['normalisable_pairs']} with a clean gap large enough to normalise; {len(layers)} layers patched "
             f"({', '.join(map(str, layers[:3]))}, …, {layers[-1]})."]
    lines += flow_sentences(flow)
    b, bc, c, cc = (_peak(flow, e, g) for e, g in (("B", "P"), ("B-control", "P"), ("C", "final"), ("C-control", "final")))
    lines.append(f"B vs its control (peak normalised): {_f(b)} vs {_f(bc)} — "
                 + ("P_a's object-level P states carry P_a's property into the other hypothetical run beyond what object-level context does by itself."
                    if _beats(b, bc) else f"no P-specific transfer beyond the control (difference below {CLEAR})."))
    lines.append(f"C vs its control: {_f(c)} vs {_f(cc)} — "
                 + ("the object run's final-token state carries the source item's property." if _beats(c, cc)
                    else f"no item-specific transfer beyond the control (difference below {CLEAR})."))
    return "\n".join(lines)


def _beats(effect: float, control: float) -> bool:
    return bool(np.isfinite(effect) and np.isfinite(control) and effect - control >= CLEAR)


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
    pair_cols = ["subject", "pair", "source_value", "target_value", "clean_source", "clean_target", "gap", "normalisable", "target_tokens",
                 "p_tokens", "p_tokens_aligned", "b_tokens_aligned"]
    flow = pd.DataFrame([{"subject": s, **r} for s, m in metrics["subjects"].items() for r in m["patching"]["flow"]])
    sections = [
        Section("Overview", text=overview, tables=[Table(t["pairs"][pair_cols], caption="Pairs (source > target)")]),
        Section("A, B, C: where does the property decision flow?",
                figures=[group_heatmap(t["cells"], s) for s in subjects],
                tables=[Table(flow, caption="Per experiment × group: peak of the mean normalised effect over layers")],
                text="\n\n".join([*(patching_text(s, m) for s, m in metrics["subjects"].items()), C_CAVEAT])),
    ]
    r_text = "\n".join(f"{s}: Pearson r (attribution vs exact) {_f(m['patching']['attribution_r_group_cells'], '.3f')} over the A group "
                       f"cells, {_f(m['patching']['attribution_r_single_cells'], '.3f')} over single cells." for s, m in metrics["subjects"].items())
    grids = [attribution_heatmap(t["grid"], s, p) for s in subjects if (p := _representative(t["pairs"], s))]
    sections.append(Section("Attribution patching over every layer × token", figures=[*grids, attribution_scatter(t["cells"], t["exact"])],
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
