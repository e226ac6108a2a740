"""Patching experiments A–C: pair selection, position groups, the normalised metric and its
identities on a tiny model (patching a run with itself changes nothing; the final token at the
last layer carries the whole next-token distribution)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from introspect_mi.models import ModelHandle, load
from introspect_mi.nnsight_engine import NnsightEngine
from introspect_mi.patching import clean_run
from introspect_mi.patching_experiments import (
    GROUPS, ItemPrompts, Pair, compose, first_difference, flow_summary, group_cells, group_of, normalise, pearson,
    position_groups, run_pairs, select_pairs, tokenise,
)
from introspect_mi.prompts import RenderedPrompt
from tests.tolerance import BATCHED

TOKENS = {"a": 11, "b": 12, "c": 13, "d": 14, "e": 11}  # "e" shares "a"'s first token


def item(item_id: str, value: str | None, n_hyp: int = 20, task: str = "t", prop: str = "p", predicted: str | None = None,
         p_words: tuple[int, ...] = (40, 41, 42, 43)) -> ItemPrompts:
    """Object prompt [1, 2, 3, P, 5, 6]; hypothetical prompt [7, 8, 9, P, question..., 99] of `n_hyp` tokens."""
    p = list(p_words)
    obj = [1, 2, 3, *p, 5, 6]
    question = list(range(60, 60 + n_hyp - 4 - len(p)))
    hyp = [7, 8, 9, *p, *question, 99]
    return ItemPrompts(item_id, task, prop, value, None, predicted, tuple(obj), tuple(range(3, 3 + len(p))), tuple(hyp),
                       tuple(range(3, 3 + len(p))), tuple((3 + i, 3 + i) for i in range(len(p))))


def first(value: str) -> int | None:
    return TOKENS.get(value)


# ---------------------------------------------------------------------------- pairs


def test_pairs_have_differing_values_and_tokens_and_never_reuse_an_item() -> None:
    items = [item("i0", "a"), item("i1", "a"), item("i2", "b"), item("i3", "e"), item("i4", None), item("i5", "zz"), item("i6", "c")]
    pairs = select_pairs(items, first, per_group=5)
    assert pairs
    for p in pairs:
        assert p.source.value != p.target.value
        assert p.source_token != p.target_token == first(p.target.value)
        assert {"i4", "i5"}.isdisjoint({p.source.item_id, p.target.item_id})  # no value / no token
        assert {p.source.value, p.target.value} != {"a", "e"}  # same first token
    used = [i for p in pairs for i in (p.source.item_id, p.target.item_id)]
    assert len(used) == len(set(used))


def test_pairs_per_group_and_groups_in_first_seen_order() -> None:
    items = [item(f"x{i}", "abcd"[i], task="x") for i in range(4)] + [item(f"y{i}", "ab"[i % 2], task="y") for i in range(4)]
    pairs = select_pairs(items, first, per_group=1)
    assert [p.source.task for p in pairs] == ["x", "y"]
    assert len(select_pairs(items, first, per_group=2)) == 4


def test_equal_length_prompts_are_preferred_then_the_larger_clean_gap() -> None:
    items = [item("i0", "a", n_hyp=20), item("i1", "b", n_hyp=21), item("i2", "c", n_hyp=20), item("i3", "d", n_hyp=20)]
    (pair,) = select_pairs(items, first, 1)
    assert (pair.source.item_id, pair.target.item_id) == ("i0", "i2")  # i1's prompt is one token longer
    logits = {(i.item_id, i.property): torch.zeros(20) for i in items}
    logits[("i3", "p")][TOKENS["d"]] = 5.0  # i3's run prefers its own value: the largest gap is with i3
    (pair,) = select_pairs(items, first, 1, logits)
    assert (pair.source.item_id, pair.target.item_id) == ("i0", "i3")
    del logits[("i3", "p")]
    assert all("i3" not in (p.source.item_id, p.target.item_id) for p in select_pairs(items, first, 2, logits))


# ---------------------------------------------------------------------------- groups, alignment, metric


def test_position_groups_partition_the_tokens_from_p_on() -> None:
    groups = position_groups(12, [3, 4, 5])
    assert groups == {"P": [3, 4, 5], "question": [6, 7, 8, 9, 10], "final": [11]}
    assert tuple(groups) == GROUPS
    assert [group_of(t, groups) for t in (0, 3, 7, 11)] == ["context", "P", "question", "final"]
    with pytest.raises(ValueError, match="before the final token"):
        position_groups(6, [4, 5])


def test_group_cells_keep_aligned_tokens_from_the_start() -> None:
    groups = position_groups(10, [2, 3, 4])
    cells = group_cells(7, groups, {t: t + 1 for t in range(10) if t != 6}, start=3)
    assert cells["P"].positions == (3, 4) and cells["P"].source_positions == (4, 5)
    assert cells["question"].positions == (5, 7, 8)  # 6 has no partner
    assert cells["final"].positions == (9,) and str(cells["final"].place) == "resid_post[7]"
    assert "P" not in group_cells(0, groups, {9: 9}, start=0)


def test_compose_chains_alignments() -> None:
    assert compose([(0, 10), (1, 11), (2, 12)], [(10, 20), (12, 22)]) == [(0, 20), (2, 22)]
    assert first_difference([1, 2, 3], [1, 2, 4, 5]) == 2 and first_difference([1, 2], [1, 2, 3]) == 2


def test_normalise_maps_clean_target_to_0_and_clean_source_to_1() -> None:
    assert normalise(-1.0, -1.0, 3.0, 0.5) == 0.0
    assert normalise(3.0, -1.0, 3.0, 0.5) == 1.0
    assert normalise(1.0, -1.0, 3.0, 0.5) == 0.5
    assert normalise(2.0, 3.0, -1.0, 0.5) == 0.25  # a negative gap normalises the same way
    assert math.isnan(normalise(1.0, 0.0, 0.3, 0.5)) and math.isnan(normalise(1.0, 0.3, 0.3, 0.0))


def test_flow_summary_finds_the_peak_and_the_first_layer_at_half() -> None:
    cells = pd.DataFrame({"experiment": "A", "group": "final", "layer": [0, 0, 1, 1, 2, 2], "normalised": [0.0, 0.2, 0.6, 0.4, 1.0, np.nan],
                          "delta": [0.0, 0.1, 0.3, 0.2, 0.5, 0.4]})
    (row,) = flow_summary(cells).to_dict("records")
    assert row["peak_layer"] == 2 and row["peak_normalised"] == 1.0 and row["first_layer_at_0.5"] == 1 and row["pairs"] == 2
    assert row["mean_delta_at_peak"] == pytest.approx(0.45)


def test_pearson_ignores_non_finite_pairs() -> None:
    assert pearson([1, 2, 3, np.nan], [2, 4, 6, 1]) == pytest.approx(1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


# ---------------------------------------------------------------------------- on a tiny model


@pytest.fixture(scope="module")
def handle(tiny_llama_dir: Path) -> ModelHandle:
    return load(tiny_llama_dir)


def test_tokenise_aligns_identical_p_tokens(handle: ModelHandle) -> None:
    p = "cat dog fox owl bee"
    obj = RenderedPrompt(f"Q: {p}\nA:", (3, 3 + len(p)))
    hyp = RenderedPrompt(f'Previously "{p}" what is the second character?', (12, 12 + len(p)))
    it = tokenise(handle, "i", "animals", "second_character", obj, hyp, "a", None, "b")
    assert it.alignment and all(it.object_ids[o] == it.hyp_ids[h] for o, h in it.alignment)
    assert {o for o, _ in it.alignment} <= set(it.object_p_tokens) and {h for _, h in it.alignment} <= set(it.hyp_p_tokens)


def test_run_pairs_identities(handle: ModelHandle) -> None:
    a = item("a", "a", n_hyp=22, p_words=(40, 41, 42, 43, 44))
    b = item("b", "b", n_hyp=22, p_words=(40, 41, 50, 51, 52))
    layers = [0, 2]
    tables = run_pairs(handle, [Pair(a, b, TOKENS["a"], TOKENS["b"]), Pair(a, a, TOKENS["a"], TOKENS["b"])], layers,
                       min_gap=0.0, exact_cells=5, progress=False)
    pairs = tables.pairs.set_index("pair")
    model, last = handle.model, handle.n_layers - 1
    metric = lambda run: float(run.logits[TOKENS["a"]] - run.logits[TOKENS["b"]])  # noqa: E731
    hyp_a, obj_a = clean_run(model, a.hyp_ids), clean_run(model, a.object_ids)
    cross, itself = pairs.index
    assert pairs.loc[cross, "clean_source"] == pytest.approx(metric(hyp_a), abs=1e-5)
    assert pairs.loc[cross, "first_difference"] == 5 and pairs.loc[cross, "p_tokens_aligned"] == 5
    cells = tables.cells
    # 2 layers × (3 A groups + B + B-control + C + C-control)
    assert len(cells[cells["pair"] == cross]) == len(layers) * 7
    # patching a run with itself changes nothing: every A cell is the clean target (normalised 0)
    same = cells[(cells["pair"] == itself) & (cells["experiment"] == "A")]
    assert set(same["group"]) <= set(GROUPS) and (same["delta"] == 0).all()
    # the hypothetical final token at the last layer is the whole prediction: A → clean source (1), C → the object run's
    final = cells[(cells["pair"] == cross) & (cells["layer"] == last)].set_index("experiment")
    assert final.loc["A"].set_index("group").loc["final", "normalised"] == pytest.approx(1.0, abs=1e-4)
    assert final.loc["C", "value"] == pytest.approx(metric(obj_a), abs=1e-4)
    # the A P-group cell starts at the first differing token and has an attribution estimate
    p_cell = cells[(cells["pair"] == cross) & (cells["experiment"] == "A") & (cells["group"] == "P")]
    assert (p_cell["n_positions"] == 3).all() and p_cell["attribution"].notna().all()
    assert len(tables.exact) == 5 and set(tables.exact["pair"]) == {cross}
    grid = tables.grid[tables.grid["pair"] == cross]
    assert grid["position"].min() == 3 and grid["layer"].nunique() == handle.n_layers


def test_run_pairs_nnsight_engine_equals_raw_hooks(handle: ModelHandle) -> None:
    a = item("a", "a", n_hyp=22, p_words=(40, 41, 42, 43, 44))
    b = item("b", "b", n_hyp=22, p_words=(40, 41, 50, 51, 52))
    pairs = [Pair(a, b, TOKENS["a"], TOKENS["b"])]
    hooks = run_pairs(handle, pairs, [0, 2], min_gap=0.0, exact_cells=5, progress=False)
    traced = run_pairs(handle, pairs, [0, 2], min_gap=0.0, exact_cells=5, progress=False, nnsight=NnsightEngine.of(handle))
    assert traced.pairs.equals(hooks.pairs)  # clean runs: the same forward, bit for bit
    assert traced.grid.equals(hooks.grid)  # attribution: raw hooks on both sides
    for name in ("cells", "exact"):
        got, ref = getattr(traced, name), getattr(hooks, name)
        value = "value" if name == "cells" else "exact"
        assert got.drop(columns=[value, "delta", "normalised"], errors="ignore").equals(ref.drop(columns=[value, "delta", "normalised"], errors="ignore"))
        torch.testing.assert_close(torch.tensor(got[value].to_numpy()), torch.tensor(ref[value].to_numpy()), **BATCHED)
    assert (hooks.cells["delta"].abs() > 0).sum() >= 5  # the comparison covers cells that change the metric
