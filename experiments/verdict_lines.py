"""The verdict's rules: for each line of evidence, what each account predicts, how the saved
result is summarised (n, estimate, interval, control) and which account it supports.

Each rule reads one experiment's saved metrics (`Results`) and returns a `Line`; a rule whose
results are missing says "not measured" and why. The rules are declared before any number is read
and are tested on hand-made metrics (tests/experiments/test_verdict_lines.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CONFIRMATORY, EXPLORATORY, CONTEXT = "confirmatory", "exploratory", "behavioural context"
ALPHA = 0.05
UNDECIDED = "cannot decide"


@dataclass(frozen=True)
class Line:
    """One line of evidence: the three accounts' predictions, the measurement, what it supports."""

    evidence: str
    family: str
    state: str
    """What "reads an internal state" predicts."""
    resimulation: str
    """What "re-simulates P" predicts."""
    input: str
    """What "reads the input" predicts."""
    measured: str
    supports: str
    source: str
    """The results file the measurement was read from."""


@dataclass(frozen=True)
class Results:
    """The saved results a verdict reads (None where that experiment has not run)."""

    study: Mapping[str, Any] | None
    probing: Mapping[str, Any] | None
    patching: Mapping[str, Any] | None
    sae: Mapping[str, Any] | None
    lens: Mapping[str, list[dict[str, Any]]]
    """subject → its logit-lens summary rows (one per layer)."""
    sources: Mapping[str, str]
    """Each file read → the sha256 of its bytes (the verdict says which results it was made from)."""


# --- formatting ------------------------------------------------------------------------------------


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


def pct(x: Any) -> str:
    return "–" if math.isnan(_num(x)) else f"{100 * float(x):.0f}%"


def pts(x: Any) -> str:
    return "–" if math.isnan(_num(x)) else f"{100 * float(x):+.1f}"


def pval(x: Any) -> str:
    return "–" if math.isnan(_num(x)) else (f"{float(x):.2g}" if float(x) >= 0.001 else "<0.001")


def missing(evidence: str, family: str, predictions: tuple[str, str, str], why: str, source: str) -> Line:
    return Line(evidence, family, *predictions, f"not measured: {why}", "—", source)


# --- the lines of evidence -------------------------------------------------------------------------

BEHAVIOUR = ("self > cross", "self > cross", "self = cross (= a predictor that reads only P)")


def behaviour_line(r: Results) -> Line:
    """The behavioural primary endpoint: self − cross on the same pairs (the study's declared test)."""
    name, source = "Behaviour: self − cross prediction accuracy (primary endpoint)", "study metrics.json primary_endpoint"
    if not r.study or "primary_endpoint" not in r.study:
        return missing(name, CONTEXT, BEHAVIOUR, "no finished behavioural study", source)
    p = r.study["primary_endpoint"]["primary"]
    measured = (f"{pts(p['diff'])} points [{pts(p['diff_ci_low'])}, {pts(p['diff_ci_high'])}], p = {pval(p['p_value'])}, "
                f"{p['n_pairs']} pairs of {p['n_items']} items; detectable at 80% power: {pts(p['mdd'])}")
    if p["diff_ci_low"] > 0:
        supports = "state or re-simulation (privileged access)"
    elif p["diff_ci_high"] < 0:
        supports = "not privileged access: cross predicts M1 better than M1 does"
    else:
        supports = f"no privileged access shown (the design detects {pts(p['mdd']).lstrip('+')} points with 80% power): consistent with reading the input"
    return Line(name, CONTEXT, *BEHAVIOUR, measured, supports, source)


LENS = ("the property surfaces without the object answer surfacing first",
        "the object answer's first token surfaces (rank ≤ 100) before its property",
        "as for a state: the lens cannot tell a read state from the input")


def first_layer(rows: Sequence[Mapping[str, Any]], key: str, rank: float = 100) -> int | None:
    return next((int(row["layer"]) for row in rows if row[key] <= rank), None)


def lens_line(r: Results) -> Line:
    """Logit lens at the hypothetical final token: does the object answer appear before the property?"""
    name, source = "Logit lens at the question's final token", "<subject>/logit_lens_summary.jsonl"
    if not r.lens:
        return missing(name, EXPLORATORY, LENS, "no logit-lens summary in the capture", source)
    parts, early = [], []
    for subject, rows in r.lens.items():
        answer, prop = first_layer(rows, "answer_median_rank"), first_layer(rows, "property_median_rank")
        parts.append(f"{subject}: answer rank ≤ 100 from {'layer ' + str(answer) if answer is not None else 'no layer'}, "
                     f"property from {'layer ' + str(prop) if prop is not None else 'no layer'} (n = {rows[0]['n']} prompts)")
        early.append(answer is not None and (prop is None or answer < prop))
    supports = ("re-simulation" if all(early) else "mixed across subjects" if any(early)
                else "not re-simulation (a weak instrument on small models: the lens reads only the last layers well)")
    return Line(name, EXPLORATORY, *LENS, "; ".join(parts), supports, source)


PROBES = ("the object property decodable at P's tokens of the hypothetical run (where the state sits), beyond the input-only probe",
          "decodable at the question's final token, after P has been re-read, not at P",
          "no more than the input-only probe (E) decodes from P's tokens")


def _curves(r: Results, **where: Any) -> list[Mapping[str, Any]]:
    best = (r.probing or {}).get("best", [])
    return [c for c in best if all(c.get(k) == v for k, v in where.items())]


def _significant(c: Mapping[str, Any]) -> bool:
    """Holm-adjusted p below ALPHA (a missing or NaN p_holm never is)."""
    return not math.isnan(_num(c.get("p_holm"))) and c["p_holm"] < ALPHA


def _curve_text(c: Mapping[str, Any]) -> str:
    return (f"{c['subject']} {c['property']} {c['test_run'].split('@')[1]}: {pct(c['nested_acc'])} [{pct(c['nested_lo'])}–{pct(c['nested_hi'])}] "
            f"vs per-task bar {pct(c['task_majority'])}, Holm p = {pval(c['p_holm'])}, n = {c['n_test']}")


def probes_line(r: Results) -> Line:
    """B (hypothetical run) at P's aligned last token vs the final token, confirmatory family, against E."""
    name, source = "Probes: object property at P vs at the question's final token (B)", "probing metrics.json best"
    curves = _curves(r, experiment="B", split="items", family=CONFIRMATORY)
    if not curves:
        return missing(name, CONFIRMATORY, PROBES, "no probing results (B)", source)
    at_p = [c for c in curves if c["test_run"].endswith("p_last") and _significant(c)]
    at_final = [c for c in curves if c["test_run"].endswith("final") and _significant(c)]
    shown = at_p + at_final or sorted(curves, key=lambda c: _num(c["p_holm"]))[:2]
    measured = f"{len(curves)} curves; " + ("significant: " if at_p + at_final else "none significant; smallest p: ") + "; ".join(map(_curve_text, shown))
    wrong = [c for c in at_final if _num(c.get("wrong_n")) > 0]
    measured += "".join(f"; on the {int(c['wrong_n'])} items whose self-prediction was wrong: {pct(c['wrong_acc'])} vs bar "
                        f"{pct(c['wrong_bar'])}, p = {pval(c['wrong_p'])} (exploratory)" for c in wrong)
    beyond_output = [c for c in wrong if _num(c["wrong_p"]) < ALPHA and c["wrong_acc"] > c["wrong_bar"]]
    if at_p:
        supports = "a state at P to be read (state); check against E and M1 vs M2"
    elif beyond_output:
        supports = ("at the question's final token only, and there even where the self-prediction was wrong, so not only the "
                    "trained output: re-simulation, or a state formed at the question")
    elif at_final:
        supports = ("decodable only at the question's final token: re-simulation, or the trained output itself "
                    "(a final-token probe of a model trained to say the property decodes the output) — cannot tell these apart")
    else:
        supports = UNDECIDED + " (nothing decodable beyond the per-task bar)"
    return Line(name, CONFIRMATORY, *PROBES, measured, supports, source)


IDENTITY = ("no earlier onset of the answer's identity than of its property",
            "the answer's identity decodable at an earlier layer than its property",
            "neither decodable beyond the input")


def identity_line(r: Results) -> Line:
    """D: onset layer of the object answer's identity vs its property at the final token."""
    name, source = "Probes: answer identity before property (D)", "probing metrics.json onsets"
    onsets = (r.probing or {}).get("onsets", [])
    if not onsets:
        return missing(name, EXPLORATORY, IDENTITY, "too few items per answer for D", source)

    def layer(x: Any) -> str:
        return "never" if math.isnan(_num(x)) else f"L{int(x)}"

    parts = [f"{o['subject']} {o['property']}: identity {layer(o['identity_onset'])}, property {layer(o['property_onset'])}" for o in onsets]
    earlier = [o for o in onsets if not math.isnan(_num(o["identity_onset"])) and
               (math.isnan(_num(o["property_onset"])) or o["identity_onset"] < o["property_onset"])]
    supports = (f"re-simulation in {len(earlier)} of {len(onsets)} (exploratory; few items per answer)" if earlier
                else "no re-simulation signature (exploratory; few items per answer)")
    return Line(name, EXPLORATORY, *IDENTITY, "; ".join(parts), supports, source)


TRANSFER = ("A's probe (object run) reads the hypothetical run at P: the same state",
            "transfers too (the re-simulated state is the same computation)",
            "transfers only as far as the input does")


def transfer_line(r: Results) -> Line:
    """C: A's probe scored on the hypothetical run."""
    name, source = "Probes: transfer from the object run to the hypothetical run (C)", "probing metrics.json best"
    curves = _curves(r, experiment="C", split="items")
    if not curves:
        return missing(name, EXPLORATORY, TRANSFER, "no transfer curves", source)
    above = [c for c in curves if c["nested_lo"] > c["task_majority"]]
    measured = f"{len(curves)} curves, {len(above)} with the CI above the per-task bar" + (": " + "; ".join(map(_curve_text, above)) if above else "")
    supports = "state or re-simulation (a shared representation)" if above else UNDECIDED + " (no transfer above the bar)"
    return Line(name, EXPLORATORY, *TRANSFER, measured, supports, source)


M1_VS_M2 = ("M1's activations decode its behaviour better than cross-trained M2's on the same prompts",
            "M1's better too (only M1 can re-run M1)",
            "M1's = M2's (both read the same input)")


def m1_vs_m2_line(r: Results) -> Line:
    """The mechanistic analogue of cross-prediction: B on M1's vs cross-trained M2's activations, paired by item."""
    name, source = "Probes: M1's vs cross-trained M2's activations, same prompts and labels", "probing metrics.json m1_vs_m2"
    rows = (r.probing or {}).get("m1_vs_m2") or []
    if not rows:
        return missing(name, CONFIRMATORY, M1_VS_M2, "no cross store (capture --subjects cross)", source)
    parts = [f"{x['property']} {x['run'].split('@')[1]}: self {pct(x['self_acc'])} vs M2 {pct(x['cross_acc'])}, "
             f"{pts(x['diff'])} [{pts(x['diff_lo'])}, {pts(x['diff_hi'])}], Holm p = {pval(x['p_holm'])}, n = {x['n_items']}" for x in rows]
    wins = [x for x in rows if x["diff"] > 0 and _significant(x)]
    losses = [x for x in rows if x["diff"] < 0 and _significant(x)]
    if wins and not losses:
        supports = "state or re-simulation: M1's own state carries more than the input gives M2"
    elif losses and not wins:
        supports = "reads the input (M2's state carries M1's behaviour at least as well)"
    else:
        supports = UNDECIDED + f" (no Holm-significant difference in {len(rows)} comparisons)" if not wins else "mixed"
    return Line(name, CONFIRMATORY, *M1_VS_M2, "; ".join(parts), supports, source)


def _subjects(r: Results, stage: str) -> dict[str, Mapping[str, Any]]:
    """subject → its `stage` metrics in the patching run (patching, steering, concepts), where run."""
    subjects = (r.patching or {}).get("subjects") or {}
    return {k: v[stage] for k, v in subjects.items() if isinstance(v.get(stage), Mapping) and "skipped" not in v[stage]}


def _ci(x: Mapping[str, Any], mean: str = "median") -> str:
    return f"{x[mean]:+.2f} [{x['ci_low']:+.2f}, {x['ci_high']:+.2f}]"


PATCH_A = ("P's tokens decide the report until the final token has read them; the question's tokens carry little",
           "the question's or final token carries the decision from the middle layers (the answer is recomputed there)",
           "as for a state: P's token states encode P's text at every layer, so A cannot tell a state read at P from P read")


def patching_a_line(r: Results) -> Line:
    """A: hypothetical → hypothetical patching per position group; medians over pairs at the middle layer."""
    name, source = "Patching A: which tokens' states decide the self-prediction", "patching metrics.json subjects.*.patching.layer_summary"
    subjects = _subjects(r, "patching")
    if not subjects:
        return missing(name, EXPLORATORY, PATCH_A, "no patching results", source)
    parts, verdicts = [], []
    for label, m in subjects.items():
        rows = [x for x in m.get("layer_summary", []) if x["experiment"] == "A"]
        layers = sorted({x["layer"] for x in rows})
        if not layers:
            continue
        middle = min(layers, key=lambda layer: abs(layer - (max(layers) + 1) / 2))
        at = {x["group"]: x for x in rows if x["layer"] == middle}
        parts.append(f"{label}, layer {middle}: " + ", ".join(f"{g} median {at[g]['median']:+.2f} (IQR {at[g]['q25']:+.2f}..{at[g]['q75']:+.2f}, n = {at[g]['n']})"
                                                          for g in ("P", "question", "final") if g in at))
        p, q = at.get("P", {}).get("median", float("nan")), at.get("question", {}).get("median", float("nan"))
        verdicts.append("P" if p >= 0.5 and not q >= 0.5 else "question" if q >= 0.5 else "none")
    if not parts:
        return missing(name, EXPLORATORY, PATCH_A, "no A cells", source)
    supports = ("state or input, not re-simulation at the question: P's token states, not the question's, carry the decision "
                "at mid-depth (A cannot tell a state computed from P from P itself)" if set(verdicts) == {"P"}
                else "the question's tokens carry it: re-simulation at the question" if set(verdicts) == {"question"}
                else UNDECIDED + " (" + ", ".join(verdicts) + ")")
    return Line(name, EXPLORATORY, *PATCH_A, "; ".join(parts), supports, source)


PATCH_B = ("B − control > 0 at middle layers: P's state as computed when P is asked stands in for P as quoted",
           "B − control > 0 too: the re-simulation starts from P's states (B alone cannot tell the two apart)",
           "B − control > 0 too: P's states encode P's text at every layer; B rules out only a report that ignores P's states")


def layer_ranges(layers: Sequence[int], among: Sequence[int]) -> str:
    """Runs of consecutive entries of `among` (in order) that are in `layers`: "L10–L26, L29"."""
    runs: list[list[int]] = []
    for i, layer in enumerate(among):
        if layer in layers:
            if runs and among.index(runs[-1][-1]) == i - 1:
                runs[-1].append(layer)
            else:
                runs.append([layer])
    return ", ".join(f"L{r[0]}" if len(r) == 1 else f"L{r[0]}–L{r[-1]}" for r in runs) or "none"


def patching_b_line(r: Results) -> Line:
    """B − B-control at the declared middle and late layers: the confirmatory patching family."""
    name, source = "Patching B − control: P's object-level states written into the hypothetical run", "patching metrics.json subjects.*.patching.contrasts"
    subjects = _subjects(r, "patching")
    rows = {label: [x for x in m.get("contrasts", []) if x["contrast"] == "B − B-control"] for label, m in subjects.items()}
    rows = {k: v for k, v in rows.items() if v}
    if not rows:
        return missing(name, CONFIRMATORY, PATCH_B, "no B − control contrast", source)
    parts, significant = [], {}
    for label, tests in rows.items():
        hits = [x for x in tests if x["median"] > 0 and _significant(x)]
        significant[label] = hits
        layers = [x["layer"] for x in tests]
        medians = [x["median"] for x in hits]
        span = f" (medians {min(medians):+.2f} to {max(medians):+.2f})" if hits else ""
        rest = [x["layer"] for x in tests if x not in hits]
        parts.append(f"{label}: Holm p < {ALPHA} at {layer_ranges([x['layer'] for x in hits], layers)}{span}"
                     + (f", not at {layer_ranges(rest, layers)}" if rest else "") + f"; n = {tests[0]['n']} pairs")
    if all(significant.values()):
        supports = ("does not discriminate: all three predict it. It shows that the state computed when P is asked carries the item's "
                    "property into the report (content, not context: the control writes the item's own object-level state), and rules "
                    "out a report that ignores P's states")
    elif any(significant.values()):
        supports = "in " + ", ".join(k for k, v in significant.items() if v) + " only: state or re-simulation there; " + UNDECIDED + " in the others"
    else:
        supports = UNDECIDED + " (no layer survives Holm)"
    return Line(name, CONFIRMATORY, *PATCH_B, "; ".join(parts), supports, source)


STEERING = ("steering the object behaviour at P moves the self-prediction with it",
            "the self-prediction follows only when P's processing in the hypothetical run is steered",
            "the self-prediction does not follow a changed behaviour")


def steering_line(r: Results) -> Line:
    """D: steering the object answer, against equal-norm random vectors, at doses that move behaviour."""
    name, source = "Steering the object answer (D)", "patching metrics.json subjects.*.steering"
    subjects = _subjects(r, "steering")
    if not subjects:
        return missing(name, CONFIRMATORY, STEERING, "no steering results", source)
    parts, moved = [], []
    for label, s in subjects.items():
        tests = [x for x in s.get("sweep_tests", []) if x["kind"] == "object"]
        wins = [x for x in tests if _significant(x) and x["gain_mean"] > 0]
        moved += wins
        best = max(tests, key=lambda x: _num(x["gain_mean"]), default=None)
        gain = "" if best is None else (f"; largest steer − random gain {pts(best['gain_mean'])} points [{pts(best['gain_ci_low'])}, "
                                        f"{pts(best['gain_ci_high'])}] at scale {best['scale']:g}")
        parts.append(f"{label}: {s['items']} items, chosen scale {s['scale']:g} (dose {s.get('dose', float('nan')):.2f} of the residual norm), "
                     f"{len(wins)} of {len(tests)} scales Holm p < {ALPHA}{gain}; pattern {s['pattern']}")
    supports = ("see the patching report: the object answer moved beyond random" if moved else
                UNDECIDED + ": the steering vector moved the object answer no more than equal-norm random vectors, so there is no changed behaviour to follow")
    return Line(name, CONFIRMATORY, *STEERING, "; ".join(parts), supports, source)


CONCEPTS = ("a concept injected after P (question and final tokens only) shifts the report toward it",
            "only injection that also hits P's tokens shifts it (P's processing re-run with the concept)",
            "neither shifts it beyond random vectors")


def concepts_line(r: Results) -> Line:
    """E: concept injection after P (confirmatory family) vs at every token (priming, exploratory)."""
    name, source = "Concept injection (E): after P vs every token", "patching metrics.json subjects.*.concepts.summary"
    subjects = _subjects(r, "concepts")
    if not subjects:
        return missing(name, CONFIRMATORY, CONCEPTS, "no concept-injection results", source)
    parts, after, specific, every = [], [], [], []
    for label, c in subjects.items():
        rows = c.get("summary", [])
        a = [x for x in rows if x["positions"] == "after_P" and _significant(x) and x["vs_random_mean"] > 0]
        e = [x for x in rows if x["positions"] == "all" and _num(x.get("vs_random_p")) < ALPHA and x["vs_random_mean"] > 0]
        s = [x for x in a if _num(x.get("vs_other_p")) < ALPHA and x["vs_other_mean"] > 0]
        after, specific, every = after + a, specific + s, every + e
        n_after = sum(x["positions"] == "after_P" for x in rows)
        parts.append(f"{label}: after P {len(a)} of {n_after} concept × scale cells beat random (Holm p < {ALPHA}), {len(s)} of them "
                     f"also beat the other concepts (unadjusted); every token {len(e)} of {len(rows) - n_after} beat random (unadjusted); "
                     f"n = {rows[0]['n'] if rows else 0} items; chance: clean report rate {pct(_num(rows[0]['clean_report_rate'])) if rows else '–'}")
    if after and len(specific) * 2 > len(after):
        supports = "state: the report follows a concept written after P, specific to that concept"
    elif after:
        supports = ("weak support for reading after P: a shift beyond random vectors that is mostly not specific to the concept "
                    "(another concept's vector shifts it as much), so a generic direction, not the concept, is read")
    elif every:
        supports = "priming or re-simulation (only injection that hits P moved it; exploratory)"
    else:
        supports = UNDECIDED + ": no shift beyond random vectors in either variant"
    return Line(name, CONFIRMATORY, *CONCEPTS, "; ".join(parts), supports, source)


SAE = ("features active at P's tokens carry the attribution, and ablating the top ones moves the answer beyond matched random features",
       "features at the question's tokens carry it (the answer recomputed there)",
       "no small set of features beyond the input's own; ablation no worse than matched random")


def sae_line(r: Results) -> Line:
    """SAE ablation (confirmatory: top-k − matched random change in logit difference) with attribution shares and the error term."""
    name, source = "SAE features: attribution at P vs the question, top-k ablation vs matched random", "sae metrics.json ablation_effects, attribution"
    effects = {k: v for k, v in ((r.sae or {}).get("ablation_effects") or {}).items() if k.endswith("logit_difference")}
    if not effects:
        return missing(name, CONFIRMATORY, SAE, "no SAE ablation results", source)
    parts = [f"{k.removesuffix(' logit_difference')}: top − matched random {_ci(e, 'top_minus_random')} logit difference, "
             f"Holm p = {pval(e.get('p_holm'))}, n = {e['n_items']} items" for k, e in effects.items()]
    attribution = (r.sae or {}).get("attribution") or {}
    parts += [f"{k}: {pct(a['share_p'])} of the latents' attribution at P's tokens, error term {pct(a['error_share'])}" for k, a in attribution.items()]
    hits = [k for k, e in effects.items() if _significant(e) and e["top_minus_random"] < 0]
    supports = (f"a few features matter beyond matched random at {', '.join(k.removesuffix(' logit_difference') for k in hits)}: "
                "they locate the answer, and where they sit (P or the question, the attribution shares) says which account; "
                "a large error-term share means the SAE misses what the model uses") if hits else UNDECIDED + " (no ablation beyond matched random survives Holm)"
    return Line(name, CONFIRMATORY, *SAE, "; ".join(parts), supports, source)


LINES: tuple[Callable[[Results], Line], ...] = (behaviour_line, lens_line, probes_line, identity_line, transfer_line, m1_vs_m2_line,
                                               patching_a_line, patching_b_line, steering_line, concepts_line, sae_line)
"""Every line of the table, in the order shown."""


def verdict(r: Results) -> list[Line]:
    return [line(r) for line in LINES]


