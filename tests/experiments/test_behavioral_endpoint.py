"""The primary endpoint on a hand-built table: the exclusion rule, paired counts, micro vs macro, splits, printout."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from experiments.behavioral_endpoint import KEY, PRIMARY_ENDPOINT, align, endpoint_text, excluded_cells, primary_endpoint
from introspect_mi.store import RunDir


def rows(cells: list[tuple[str, str, list[str], list[str | None], list[bool]]]) -> pd.DataFrame:
    """score_rows-like rows: per (task, property), item ids, object values, correct."""
    out = []
    for task, prop, items, values, correct in cells:
        out += [{"item_id": i, "task": task, "property": prop, "object_value": v, "correct": c} for i, v, c in zip(items, values, correct)]
    return pd.DataFrame(out)


T1 = [f"t1-{k}" for k in range(10)]
T2 = [f"t2-{k}" for k in range(6)]
# target (self-trained M1): t1 × p is degenerate (8 of 10 'x' > 0.7), t1 × q sits on the bar (7 of 10: kept),
# t2 × p is balanced and its sixth answer is non-compliant (no pair)
TARGET = {("t1", "p"): ["x"] * 8 + ["y"] * 2, ("t1", "q"): ["a"] * 7 + ["b"] * 3, ("t2", "p"): ["a", "a", "b", "b", "a", None]}
ITEMS = {("t1", "p"): T1, ("t1", "q"): T1, ("t2", "p"): T2}
SELF = {("t1", "p"): [True] * 10, ("t1", "q"): [k < 6 for k in range(10)], ("t2", "p"): [k < 2 for k in range(6)]}
CROSS = {("t1", "p"): [False] * 10, ("t1", "q"): [k < 3 for k in range(10)], ("t2", "p"): [k < 4 for k in range(6)]}


def table(correct: dict, values: dict = TARGET) -> pd.DataFrame:
    return rows([(t, p, ITEMS[(t, p)], values[(t, p)], correct[(t, p)]) for t, p in ITEMS])


def run_with(tmp_path: Path) -> tuple[RunDir, dict]:
    run = RunDir.create(tmp_path, "r", {"x": 1}, seed=0)
    # untrained M1's values: t1 × q differs on items 5–9 (item 9 non-compliant), t2 × p on item 0
    untrained = {("t1", "p"): TARGET[("t1", "p")], ("t1", "q"): ["a"] * 5 + ["c"] * 4 + [None], ("t2", "p"): ["b", "a", "b", "b", "a", "a"]}
    predictors = {}
    for slug, (label, frame) in enumerate([("untrained", table(SELF, untrained)), ("self", table(SELF)), ("cross", table(CROSS))]):
        run.write_table(f"rows_{slug}", frame)
        predictors[label] = {"slug": str(slug)}
    return run, {"predictors": predictors}


def test_align_keeps_pairs_whose_targets_both_comply() -> None:
    paired = align(table(SELF), table(CROSS))
    assert len(paired) == 10 + 10 + 5 and paired["target"].notna().all()
    assert list(paired.columns) == ["task", "item_id", "property", "target", "correct_first", "correct_second"]


def test_the_exclusion_rule_drops_cells_above_the_bar_only() -> None:
    dropped = excluded_cells(align(table(SELF), table(CROSS)))
    assert [(c["task"], c["property"], c["mode_value"], c["n_pairs"]) for c in dropped] == [("t1", "p", "x", 10)]
    assert dropped[0]["mode_baseline"] == pytest.approx(0.8) and "80%" in dropped[0]["reason"]


def test_primary_endpoint_hand_counts(tmp_path: Path) -> None:
    run, metrics = run_with(tmp_path)
    m2 = pd.DataFrame([{"task": t, "item_id": i, "property": p, "value": v}
                       for (t, p) in ITEMS for i, v in zip(ITEMS[(t, p)], ["a", None, "b"] + ["z"] * 7)])
    e = primary_endpoint(run, metrics, first="self", second="cross", untrained="untrained", m2_values=m2, n_boot=200, seed=0)
    p, a = e["primary"], e["all_cells"]
    # kept: t1 × q (self 6, cross 3 of 10) and t2 × p (self 2, cross 4 of 5): 15 pairs on 15 items
    assert (p["n_pairs"], p["n_items"], p["n_strata"]) == (15, 15, 2)
    assert (p["first_accuracy"], p["second_accuracy"], p["diff"]) == (pytest.approx(8 / 15), pytest.approx(7 / 15), pytest.approx(1 / 15))
    assert (p["only_first"], p["only_second"]) == (3, 2)
    assert p["macro_diff"] == pytest.approx(((6 - 3) / 10 + (2 - 4) / 5) / 2)  # +0.3 and −0.4 → −0.05, sign opposite to micro
    # with the degenerate cell: 25 pairs, self 18, cross 7; t1's 10 items now carry two pairs each
    assert (a["n_pairs"], a["n_items"], a["diff"]) == (25, 15, pytest.approx(11 / 25))
    assert e["definition"] == PRIMARY_ENDPOINT and e["max_target_mode"] == 0.7
    changed, unchanged = e["splits"]["self_finetune"]["changed"], e["splits"]["self_finetune"]["unchanged"]
    assert (changed["n_pairs"], unchanged["n_pairs"]) == (5 + 1, 5 + 4)  # t1 × q items 5–9 (one non-compliant) and t2 item 0
    # of those, t1-5 only self gets right, t2-0 both do, the rest neither: self 2, cross 1 of 6
    assert (changed["first_accuracy"], changed["diff"]) == (pytest.approx(2 / 6), pytest.approx(1 / 6))
    agrees, differs = e["splits"]["m2_behaviour"]["agrees"], e["splits"]["m2_behaviour"]["differs"]
    # M2 says 'a', None, 'b', 'z'…: agrees with the target on t1-0 ('a'), t2-0 ('a') and t2-2 ('b'); its non-compliant
    # answers on the kept pairs (t1-1 × q, t2-1; t1 × p is excluded) count as differing
    assert (agrees["n_pairs"], differs["n_pairs"], e["splits"]["m2_behaviour"]["n_other_noncompliant"]) == (3, 12, 2)
    cells = run.read_table("primary_cells")
    assert list(zip(cells["task"], cells["property"], cells["excluded"])) == [("t1", "p", True), ("t1", "q", False), ("t2", "p", False)]
    assert cells["diff"].tolist() == pytest.approx([1.0, 0.3, -0.4])


def test_the_printout_starts_with_the_endpoint_and_labels_the_rest_exploratory(tmp_path: Path) -> None:
    run, metrics = run_with(tmp_path)
    m2 = pd.DataFrame(columns=["task", "item_id", "property", "value"])
    text = endpoint_text(primary_endpoint(run, metrics, first="self", second="cross", untrained="untrained", m2_values=m2,
                                          n_boot=50, seed=0))
    lines = text.splitlines()
    assert lines[0].startswith("PRIMARY ENDPOINT") and KEY == "primary_endpoint"
    assert "+6.7 pts" in lines[2] and "n = 15 pairs / 15 items" in lines[2]
    assert "t1 × p" in text and "with the excluded cells kept" in text and "+44.0 pts" in text
    explore = next(i for i, line in enumerate(lines) if line.startswith("EXPLORATORY"))
    assert explore > 4 and all("self_finetune" in line or "m2_behaviour" in line for line in lines[explore + 1:])
