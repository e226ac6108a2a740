"""The study's primary endpoint, its exclusion rule and its planned splits (METHODS.md, issue 14).

Declared here, in code, before any number is read (`PRIMARY_ENDPOINT`); metrics.json holds it
under `primary_endpoint` (`KEY`), the study prints it first, and everything else the study
reports is exploratory. Keys of `metrics["primary_endpoint"]`:

- `definition`, `first` / `second` (the self and cross predictors' labels), `max_target_mode`;
- `primary`: the endpoint — a paired comparison (`paired_stats`) over the included cells;
- `all_cells`: the same comparison with the excluded cells kept (the result shown both ways);
- `excluded_cells`: each cell the rule dropped, with its target mode value and mode baseline;
- `splits` (exploratory, on the primary pairs): `self_finetune` → `changed` / `unchanged` (did
  the self finetune change the pair's property value: untrained M1's value vs self-trained M1's;
  an untrained non-compliant answer counts as changed), `m2_behaviour` → `agrees` / `differs`
  (cross-trained M2's own object-level property value equals the target's or not; a
  non-compliant M2 answer counts as differs — cross cannot be right by predicting itself there);
- `others`: self vs each further predictor of the same target (e.g. an input-only one), same pairs;
- `paper_effect`, `pairs_for_paper_effect`: pairs needed to detect the paper's self − cross
  effect at 80% power with this run's discordance and design effect.

A paired comparison's keys (introspect_mi.paired.PairedComparison.to_dict): `first_accuracy`,
`second_accuracy`, `diff` (first − second, micro over pairs), `macro_*` (mean over tasks), each
with `_ci_low` / `_ci_high` (items resampled within tasks), `only_first` / `only_second`
(discordant pairs), `p_value` (exact cluster permutation), `z` (clustered McNemar), `mdd`
(minimum detectable difference, 80% power, α 0.05), `design_effect`, `icc`, `n_pairs`, `n_items`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from introspect_mi import evaluation as ev
from introspect_mi.paired import compare_paired, pairs_needed
from introspect_mi.store import RunDir

KEY = "primary_endpoint"
PRIMARY_ENDPOINT = (
    "held-out self − cross accuracy on the same (item, property) pairs against the same target behaviour (self-trained M1's "
    "T=0 object-level answers): micro-average over the pairs of the held-out tasks, excluding cells (task × property) whose "
    "target mode baseline exceeds 0.7; 95% CI from a bootstrap that resamples items within tasks, p from an exact cluster "
    "permutation test that swaps the self/cross labels of whole items")
MAX_TARGET_MODE = 0.7
"""Pre-specified exclusion: a cell whose target answers one property value more often than this is degenerate."""
PAPER_EFFECT = 0.485 - 0.318
"""The paper's held-out self − cross gap: Llama-3.1-70B on itself 48.5% vs GPT-4o trained on Llama 31.8% (PROTOCOL.md)."""
CELL = ["task", "property"]


def align(first: pd.DataFrame, second: pd.DataFrame) -> pd.DataFrame:
    """Two predictors' rows (evaluation.score_rows) on the same pairs, both targets compliant:
    task, item_id, property, target (first's object value), correct_first, correct_second."""
    keys = ["task", "item_id", "property"]
    a = first[first["object_value"].notna()][[*keys, "object_value", "correct"]]
    b = second[second["object_value"].notna()][[*keys, "correct"]]
    out = a.merge(b, on=keys, suffixes=("_first", "_second"), validate="one_to_one")
    return out.rename(columns={"object_value": "target"}).reset_index(drop=True)


def paired_stats(paired: pd.DataFrame, n_boot: int, seed: int, strata: bool = True) -> dict[str, Any]:
    """The paired, item-clustered comparison of `align`'s rows ({"n_pairs": 0} for none)."""
    if paired.empty:
        return {"n_pairs": 0}
    items = (paired["task"] + "\x00" + paired["item_id"]).tolist()
    return compare_paired(paired["correct_first"].astype(bool).tolist(), paired["correct_second"].astype(bool).tolist(), items,
                          paired["task"].tolist() if strata else None, n_boot=n_boot, seed=seed).to_dict()


def excluded_cells(paired: pd.DataFrame, max_mode: float = MAX_TARGET_MODE) -> list[dict[str, Any]]:
    """Cells whose target mode baseline exceeds `max_mode`, with the reason."""
    out = []
    for (task, prop), g in paired.groupby(CELL, sort=True):
        counts = g["target"].value_counts()
        share = float(counts.iloc[0] / len(g))
        if share > max_mode:
            mode = str(min(counts[counts == counts.iloc[0]].index))
            out.append({"task": task, "property": prop, "n_pairs": len(g), "mode_value": mode, "mode_baseline": share,
                        "reason": f"the target answers {mode!r} in {share:.0%} of its {len(g)} pairs (> {max_mode:.0%})"})
    return out


def primary_pairs(paired: pd.DataFrame, max_mode: float = MAX_TARGET_MODE) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """`align`'s rows of the cells the exclusion rule keeps, and the cells it excluded."""
    excluded = excluded_cells(paired, max_mode)
    dropped = {(c["task"], c["property"]) for c in excluded}
    kept = paired[[(t, p) not in dropped for t, p in zip(paired["task"], paired["property"])]]
    return kept.reset_index(drop=True), excluded


def cell_table(paired: pd.DataFrame, excluded: Sequence[Mapping[str, Any]], n_boot: int, seed: int,
               others: Mapping[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """Per task × property: n, target mode baseline, excluded?, both accuracies, their paired difference
    with its CI and exact p, and each further predictor's accuracy on the same pairs."""
    dropped = {(c["task"], c["property"]) for c in excluded}
    rows = []
    for (task, prop), g in paired.groupby(CELL, sort=True):
        counts = g["target"].value_counts()
        st = paired_stats(g, n_boot, seed, strata=False)
        row = {"task": task, "property": prop, "n_pairs": len(g), "target_mode_baseline": float(counts.iloc[0] / len(g)),
               "excluded": (task, prop) in dropped, **{k: st[k] for k in ("first_accuracy", "second_accuracy", "diff", "diff_ci_low",
                                                                          "diff_ci_high", "p_value", "only_first", "only_second")}}
        for label, frame in (others or {}).items():
            hits = g.merge(frame, on=["task", "item_id", "property"])["correct"]
            row[f"accuracy: {label}"] = float(hits.mean()) if len(hits) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def pair_values(pairs: Sequence[ev.Pair], objects: Mapping[str, list[str]]) -> pd.DataFrame:
    """task, item_id, property, value: the property of a model's T=0 answer to each pair (None: non-compliant)."""
    return pd.DataFrame([{"task": p.spec.name, "item_id": p.item.item_id, "property": p.prop.name,
                          "value": ev.object_value(p.prop, objects[p.item.item_id][0], p.item.target)} for p in pairs])


def _split(paired: pd.DataFrame, values: pd.DataFrame, same: str, different: str, n_boot: int, seed: int) -> dict[str, Any]:
    """The comparison on pairs where `values` equal the target, and where they do not."""
    joined = paired.merge(values, on=["task", "item_id", "property"], how="left", validate="one_to_one")
    equal = (joined["value"] == joined["target"]).to_numpy()
    return {same: paired_stats(paired[equal], n_boot, seed), different: paired_stats(paired[~equal], n_boot, seed),
            "n_other_noncompliant": int(joined["value"].isna().sum())}


def primary_endpoint(run: RunDir, metrics: Mapping[str, Any], *, first: str, second: str, untrained: str,
                     m2_values: pd.DataFrame, others: Sequence[str] = (), n_boot: int, seed: int) -> dict[str, Any]:
    """metrics.json's `primary_endpoint` (module docstring) from the rows the study's scoring wrote to `run`
    (predictor labels of metrics["predictors"]); also writes the per-cell table `primary_cells`."""
    rows = {label: run.read_table(f"rows_{metrics['predictors'][label]['slug']}") for label in (first, second, untrained, *others)}
    paired = align(rows[first], rows[second])
    kept, excluded = primary_pairs(paired)
    untrained_values = rows[untrained][["task", "item_id", "property", "object_value"]].rename(columns={"object_value": "value"})
    primary = paired_stats(kept, n_boot, seed)
    out: dict[str, Any] = {
        "definition": PRIMARY_ENDPOINT, "first": first, "second": second, "max_target_mode": MAX_TARGET_MODE,
        "primary": primary, "all_cells": paired_stats(paired, n_boot, seed), "excluded_cells": excluded,
        "splits": {"self_finetune": _split(kept, untrained_values, "unchanged", "changed", n_boot, seed),
                   "m2_behaviour": _split(kept, m2_values, "agrees", "differs", n_boot, seed)},
        "others": {label: {"second": label, **paired_stats(align(rows[first], rows[label]).merge(kept[["task", "item_id", "property"]]),
                                                           n_boot, seed)} for label in others},
        "paper_effect": PAPER_EFFECT,
        "pairs_for_paper_effect": (pairs_needed(PAPER_EFFECT, primary["discordance"], primary["design_effect"])
                                   if primary["n_pairs"] and primary["discordance"] > 0 else None),
    }
    run.write_table("primary_cells", cell_table(paired, excluded, n_boot, seed, {label: rows[label] for label in others}), csv=True)
    return out


def _pct(v: float) -> str:
    return f"{v:.1%}"


def comparison_line(c: Mapping[str, Any], first: str = "first", second: str = "second") -> str:
    """`first` minus `second` of one paired comparison, with its CI, p and n, on one line."""
    if not c.get("n_pairs"):
        return "no pairs"
    return (f"{first} {_pct(c['first_accuracy'])} vs {second} {_pct(c['second_accuracy'])}: {c['diff'] * 100:+.1f} pts "
            f"(95% CI {c['diff_ci_low'] * 100:+.1f} to {c['diff_ci_high'] * 100:+.1f}, items resampled), exact cluster permutation "
            f"p = {c['p_value']:.3g}, n = {c['n_pairs']} pairs / {c['n_items']} items")


def mdd_text(c: Mapping[str, Any]) -> str:
    """A comparison's minimum detectable difference in points, or why there is none."""
    return "not estimable (no discordant pairs)" if c.get("mdd") is None else f"{c['mdd'] * 100:.1f} pts"


def endpoint_text(e: Mapping[str, Any]) -> str:
    """The printout's first block: the primary endpoint, then its exploratory splits, labelled so."""
    p = e["primary"]
    lines = [f"PRIMARY ENDPOINT — {e['definition']}", f"  {e['first']} (self) vs {e['second']} (cross)"]
    if not p.get("n_pairs"):
        return "\n".join([*lines, "  no pairs left after the exclusion rule"])
    lines += [
        f"  self − cross: {comparison_line(p, 'self', 'cross')}",
        f"  macro-average over {p['n_strata']} tasks: {p['macro_diff'] * 100:+.1f} pts (95% CI {p['macro_diff_ci_low'] * 100:+.1f} "
        f"to {p['macro_diff_ci_high'] * 100:+.1f}); clustered McNemar z = {p['z']:.2f}",
        f"  minimum detectable difference (80% power, two-sided α = 0.05): {mdd_text(p)} "
        f"(discordant pairs {p['discordance']:.0%}, design effect {p['design_effect']:.2f}, intra-item correlation {p['icc']:.2f})"
        + (f"; the paper's {e['paper_effect'] * 100:.1f}-pt gap needs ≈ {e['pairs_for_paper_effect']} pairs" if e["pairs_for_paper_effect"] else ""),
    ]
    if e["excluded_cells"]:
        lines.append(f"  excluded (target mode baseline > {e['max_target_mode']:.0%}): "
                     + "; ".join(f"{c['task']} × {c['property']} ({c['reason']})" for c in e["excluded_cells"]))
        lines.append(f"  with the excluded cells kept: {comparison_line(e['all_cells'], 'self', 'cross')}")
    else:
        lines.append(f"  no cell excluded (every target mode baseline ≤ {e['max_target_mode']:.0%})")
    lines.append("EXPLORATORY (splits of the primary pairs; not the endpoint):")
    for name, split in e["splits"].items():
        for part, c in split.items():
            if isinstance(c, dict):
                lines.append(f"  {name} {part}: {comparison_line(c, 'self', 'cross')}")
    for label, c in e["others"].items():
        lines.append(f"  self vs {label}: {comparison_line(c, 'self', 'other')}")
    return "\n".join(lines)
