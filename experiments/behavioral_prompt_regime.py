"""Does the prompt regime change the behaviour a hypothetical question refers to? (issue 14, point 3)

The study's ground truth is each target's T=0 answer to the k-shot object-level prompt
(`object_shots`: 2 in the presets, so the small models answer in format), while the finetuned
predictors answer 0-shot hypothetical questions about "the response you would give" to P, and the
untrained predictor answers k-shot hypotheticals. Three measurements tell how much that matters
(metrics.json `prompt_regime`, exploratory; the primary endpoint keeps its declared ground truth):

- `agreement`: for each model, its compliance under the 0-shot and the k-shot object prompt, and
  on the held-out pairs where both answers comply, the share whose property value is the same
  (95% CI resampling items within tasks);
- `zero_shot_truth`: the primary comparison (self vs cross, same pairs, same exclusion rule)
  scored against self-trained M1's *0-shot* behaviour: the same hypothetical answers (from the
  cache), the ground truth of the regime the finetuned predictors are asked in;
- `untrained_prompt_effect`: untrained M1 asked 0-shot vs k-shot hypothetical questions about its
  k-shot behaviour, paired on the same pairs: the effect of the prompt alone, to set beside the
  untrained → self-trained comparison (which changes prompt and weights together).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from experiments.behavioral_endpoint import align, comparison_line, pair_values, paired_stats, primary_pairs
from experiments.behavioral_eval import write_scored
from introspect_mi import evaluation as ev
from introspect_mi.paired import clustered_mean
from introspect_mi.store import RunDir

KEY = "prompt_regime"


def agreement(pairs: Sequence[ev.Pair], k_shot: Mapping[str, list[str]], zero_shot: Mapping[str, list[str]],
              n_boot: int, seed: int) -> dict[str, Any]:
    """One model's object-level behaviour under the two prompts: compliance of each, and the share
    of pairs (both compliant) whose property value agrees, with its item-clustered CI."""
    k, z = pair_values(pairs, k_shot), pair_values(pairs, zero_shot)
    both = k.assign(zero=z["value"])
    both = both[both["value"].notna() & both["zero"].notna()]
    out: dict[str, Any] = {"n_pairs": len(k), "k_shot_compliant": float(k["value"].notna().mean()),
                           "zero_shot_compliant": float(z["value"].notna().mean()), "n_both_compliant": len(both)}
    if len(both):
        est = clustered_mean((both["value"] == both["zero"]).astype(float).tolist(), (both["task"] + "\x00" + both["item_id"]).tolist(),
                             both["task"].tolist(), n_boot=n_boot, seed=seed)
        out.update(agreement=est.value, agreement_ci_low=est.ci_low, agreement_ci_high=est.ci_high)
    return out


def zero_shot_truth(run: RunDir, pairs: Sequence[ev.Pair], truth: Mapping[str, list[str]], hypotheticals: Mapping[str, list[list[str]]],
                    n_boot: int, seed: int) -> dict[str, Any]:
    """Each predictor's hypothetical answers scored against `truth` (written as rows_zero_shot_truth_<i>),
    and the first two compared as the primary endpoint compares them (exclusion rule applied anew)."""
    rows = {label: ev.score_rows(pairs, dict(truth), answers) for label, answers in hypotheticals.items()}
    overall = {label: write_scored(run, f"zero_shot_truth_{i}", r, n_boot, seed) for i, (label, r) in enumerate(rows.items())}
    first, second = list(rows)[:2]
    kept, excluded = primary_pairs(align(rows[first], rows[second]))
    return {"first": first, "second": second, "overall": overall, "excluded_cells": excluded, **paired_stats(kept, n_boot, seed)}


def untrained_prompt_effect(pairs: Sequence[ev.Pair], truth: Mapping[str, list[str]], zero_shot_answers: list[list[str]],
                            k_shot_answers: list[list[str]], n_boot: int, seed: int) -> dict[str, Any]:
    """Untrained M1 asked 0-shot minus asked k-shot, about the same (its k-shot) behaviour, paired."""
    zero, k = (ev.score_rows(pairs, dict(truth), a) for a in (zero_shot_answers, k_shot_answers))
    return {"first": "0-shot hypothetical", "second": "k-shot hypothetical", **paired_stats(align(zero, k), n_boot, seed)}


def regime_text(r: Mapping[str, Any]) -> str:
    """The printout's block on the prompt regime (exploratory)."""
    lines = [f"PROMPT REGIME (exploratory): object-level answers 0-shot vs {r['k']}-shot on the held-out pairs"]
    for model, a in r["agreement"].items():
        share = (f"property value agrees on {a['agreement']:.1%} [{a['agreement_ci_low']:.1%}–{a['agreement_ci_high']:.1%}]"
                 if "agreement" in a else "no pair compliant under both")
        lines.append(f"  {model}: compliant {a['zero_shot_compliant']:.0%} 0-shot / {a['k_shot_compliant']:.0%} {r['k']}-shot; "
                     f"{share} of {a['n_both_compliant']} pairs compliant under both")
    z = r["zero_shot_truth"]
    lines.append(f"  self − cross against {r['truth_model']}'s 0-shot behaviour (exclusion rule applied anew): {comparison_line(z, 'self', 'cross')}")
    u, k = r["untrained_prompt_effect"], f"{r['k_hypothetical']}-shot"
    lines.append(f"  untrained M1, hypothetical asked 0-shot − {k} (same target): {comparison_line(u, '0-shot', k)}")
    return "\n".join(lines)


def as_frame(r: Mapping[str, Any]) -> pd.DataFrame:
    """The agreement block as a table (one row per model) for the report."""
    return pd.DataFrame([{"model": m, **a} for m, a in r["agreement"].items()])
