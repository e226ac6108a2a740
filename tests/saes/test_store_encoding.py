"""Stored vectors through SAEs: the same-token overlap control and the differential latents, on hand-made encodings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from introspect_mi.alignment import Alignment
from introspect_mi.saes.store_encoding import StoreActs, differential_table, overlap_pairs, overlap_rows, overlap_summary, own_prompt_acts


def store_acts() -> StoreActs:
    """Items a, b, c (objects, then one hypothetical each). P's last token: 'x' for a and b, 'y' for c
    (no partner); item b's hypothetical p_last is not aligned with its object's. Final tokens all '\\n'."""
    def alignment(aligned: bool) -> dict:
        return Alignment([(3, 9)] if aligned else [], [], [], 3, 9).to_dict()

    def meta(position: str) -> pd.DataFrame:
        p_last = ["x", "x", "y", "x", "x", "y"]
        return pd.DataFrame({
            "record": range(6), "kind": ["object"] * 3 + ["hypothetical"] * 3, "item_id": ["a", "b", "c"] * 2, "property": [None] * 3 + ["p"] * 3,
            "positions": [{"p_last": [3]}] * 3 + [{"p_last": [9]}] * 3,
            "alignment": [None] * 3 + [alignment(True), alignment(False), alignment(True)],
            "tokens": [[t] if position == "p_last" else ["\n"] for t in p_last], "token_index": 0})

    acts = {(1, "p_last"): torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]),
            (1, "final"): torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])}
    return StoreActs(acts, {"p_last": meta("p_last"), "final": meta("final")})


def test_the_control_partner_ends_in_the_same_token_and_belongs_to_another_item() -> None:
    sacts = store_acts()
    assert overlap_pairs(sacts.meta["p_last"], "p_last", 8, 0) == ([3], [0], [[1]])  # b: not aligned; c: no other item ends in 'y'
    assert overlap_pairs(sacts.meta["final"], "final", 8, 0) == ([3, 4, 5], [0, 1, 2], [[1, 2], [0, 2], [0, 1]])
    hyp, own, capped = overlap_pairs(sacts.meta["final"], "final", 1, 0)  # at most one partner each, still another item
    assert hyp == [3, 4, 5] and all(len(c) == 1 and c[0] != o for c, o in zip(capped, own))
    assert overlap_pairs(sacts.meta["final"], "final", 1, 0) == (hyp, own, capped)


def test_overlap_rows_and_summary_by_hand() -> None:
    rows = overlap_rows("untrained", store_acts(), [1]).set_index(["position", "item_id"])
    a = rows.loc[("p_last", "a")]
    assert a["jaccard_same"] == pytest.approx(1 / 2) and a["jaccard_other"] == 0.0 and a["token"] == "x" and a["partners"] == 1
    b = rows.loc[("final", "b")]  # b's hypothetical {0, 1} vs its object {1}; vs a {0} and c {0, 1}: mean of 1/2 and 1
    assert b["jaccard_same"] == pytest.approx(1 / 2) and b["jaccard_other"] == pytest.approx(3 / 4)
    summary = overlap_summary(rows.reset_index(), n_boot=200, seed=0).set_index("position")
    assert summary.loc["p_last", "n"] == 1 and summary.loc["final", "n"] == 3 and summary.loc["final", "items"] == 3
    final = rows.xs("final", level="position")
    assert summary.loc["final", "jaccard_diff"] == pytest.approx((final["jaccard_same"] - final["jaccard_other"]).mean())
    assert summary.loc["final", "diff_ci_low"] <= summary.loc["final", "jaccard_diff"] <= summary.loc["final", "diff_ci_high"]


def test_identical_runs_overlap_fully_for_the_same_item() -> None:
    sacts = store_acts()
    for key in list(sacts.acts):
        acts = sacts.acts[key]
        acts[3:] = acts[:3]  # each hypothetical run encodes exactly as its object-level run
    rows = overlap_rows("self", sacts, [1])
    assert np.allclose(rows["jaccard_same"], 1.0) and np.allclose(rows["pearson_same"], 1.0)


def test_own_prompt_differential_pairs_the_same_item_and_property() -> None:
    a = store_acts()
    b = StoreActs({k: v.flip(0) for k, v in a.acts.items()}, {k: m.iloc[::-1].reset_index(drop=True) for k, m in a.meta.items()})
    same = differential_table(*own_prompt_acts(a, b), "own prompts")
    assert same["n"].iloc[0] == 3 and np.allclose(same["diff"], 0.0) and (same["inputs"] == "own prompts").all()
    b.acts[1, "final"][0, 2] = 3.0  # item c's hypothetical (row 0 after the flip) gains latent 2
    changed = differential_table(*own_prompt_acts(a, b), "own prompts")
    assert changed.iloc[0]["feature"] == 2 and changed.iloc[0]["diff"] == pytest.approx(1.0) and changed.iloc[0]["rank"] == 1
