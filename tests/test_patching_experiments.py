"""Patching experiments A–C on token-aligned pairs: group cells, the normalised metric and its
identities on a tiny model (patching a run with itself changes nothing; patching every token from
the first difference gives the source; the final token at the last layer carries the whole
next-token distribution), the layer grids, the pairs checked against exact patching, the cost."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from introspect_mi.models import ModelHandle, load
from introspect_mi.nnsight_engine import NnsightEngine
from introspect_mi.patching import Cell, Patch, clean_run, logit_diff, patch
from introspect_mi.patching_experiments import PairLayout, Runs, group_cells, normalise, run_pairs
from introspect_mi.patching_pairs import GROUPS, Pair, position_groups
from introspect_mi.places import resid_post
from tests.test_patching_pairs import TOKENS, item
from tests.tolerance import BATCHED


# ---------------------------------------------------------------------------- groups, alignment, metric


def test_group_cells_keep_aligned_tokens_from_the_start() -> None:
    groups = position_groups(10, [2, 3, 4])
    cells = group_cells(7, groups, {t: t + 1 for t in range(10) if t != 6}, start=3)
    assert cells["P"].positions == (3, 4) and cells["P"].source_positions == (4, 5)
    assert cells["question"].positions == (5, 7, 8)  # 6 has no partner
    assert cells["final"].positions == (9,) and str(cells["final"].place) == "resid_post[7]"
    assert "P" not in group_cells(0, groups, {9: 9}, start=0)


def test_normalise_maps_clean_target_to_0_and_clean_source_to_1() -> None:
    assert normalise(-1.0, -1.0, 3.0, 0.5) == 0.0
    assert normalise(3.0, -1.0, 3.0, 0.5) == 1.0
    assert normalise(1.0, -1.0, 3.0, 0.5) == 0.5
    assert normalise(2.0, 3.0, -1.0, 0.5) == 0.25  # a negative gap normalises the same way
    assert math.isnan(normalise(1.0, 0.0, 0.3, 0.5)) and math.isnan(normalise(1.0, 0.3, 0.3, 0.0))


# ---------------------------------------------------------------------------- on a tiny model


@pytest.fixture(scope="module")
def handle(tiny_llama_dir: Path) -> ModelHandle:
    return load(tiny_llama_dir)


def test_run_pairs_identities(handle: ModelHandle) -> None:
    a = item("a", "a", n_hyp=22, p_words=(40, 41, 42, 43, 44))
    b = item("b", "b", n_hyp=22, p_words=(40, 41, 50, 51, 52))
    layers, group_layers = [0, 2], [1]
    tables = run_pairs(handle, [Pair(a, b, TOKENS["a"], TOKENS["b"]), Pair(a, a, TOKENS["a"], TOKENS["b"])], layers,
                       group_layers=group_layers, min_gap=0.0, exact_pairs=1, exact_cells=5, progress=False)
    pairs = tables.pairs.set_index("pair")
    model = handle.model
    metric = lambda run: float(run.logits[TOKENS["a"]] - run.logits[TOKENS["b"]])  # noqa: E731
    hyp_a, obj_a = clean_run(model, a.hyp_ids), clean_run(model, a.object_ids)
    cross, itself = pairs.index
    assert pairs.loc[cross, "clean_source"] == pytest.approx(metric(hyp_a), abs=1e-5)
    assert pairs.loc[cross, "first_difference"] == 5 and pairs.loc[cross, "p_tokens"] == 5 and pairs.loc[cross, "b_tokens_aligned"] == 5
    cells = tables.cells
    mine = cells[cells["pair"] == cross]
    # A's three groups at the group layers only; B, B-control, C, C-control at the layers
    assert sorted(mine.loc[mine["experiment"] == "A", "layer"].unique()) == group_layers and (mine["experiment"] == "A").sum() == 3
    assert len(mine) == 3 + len(layers) * 4 and sorted(mine.loc[mine["experiment"] == "B", "layer"]) == layers
    # patching a run with itself changes nothing: every A cell is the clean target
    same = cells[(cells["pair"] == itself) & (cells["experiment"] == "A")]
    assert set(same["group"]) <= set(GROUPS) and (same["delta"] == 0).all()
    # C at the last layer is the object run's final state: its logits
    last = cells[(cells["pair"] == cross) & (cells["layer"] == 2)].set_index("experiment")
    assert last.loc["C", "value"] == pytest.approx(metric(obj_a), abs=1e-4)
    # the A P-group cell starts at the first differing token and has an attribution estimate
    p_cell = mine[(mine["experiment"] == "A") & (mine["group"] == "P")]
    assert (p_cell["n_positions"] == 3).all() and p_cell["attribution"].notna().all()
    # exact_pairs=1 of two pairs: the first; its cells from the first differing token on
    assert len(tables.exact) == 5 and set(tables.exact["pair"]) == {cross} and tables.exact["position"].min() >= 5
    grid = tables.grid[tables.grid["pair"] == cross]
    assert grid["position"].min() == 3 and grid["layer"].nunique() == handle.n_layers
    # cost: every row of cells and exact counted once, as a forward or as answered from the clean run
    cost = tables.cost
    assert cost["patched_cells"] + cost["cells_answered_clean"] == len(cells) + len(tables.exact)
    assert cost["cells_answered_clean"] >= len(same) and cost["attribution_passes"] == 2 and cost["exact_cells"] == 5
    assert cost["clean_runs"] == 4 + 2  # the cross pair: 2 hypothetical + 2 object runs; the self pair: one of each


def test_group_cells_of_a_pair_cover_every_differing_token_and_give_the_source(handle: ModelHandle) -> None:
    """The oracle for alignment: the A groups of a token-aligned pair, patched together at any layer,
    overwrite every token from the first difference on, so the target becomes the source exactly."""
    a = item("a", "a", n_hyp=24, p_words=(40, 41, 42, 43, 44))
    b = item("b", "b", n_hyp=24, p_words=(45, 41, 50, 51, 52))
    pair = Pair(a, b, TOKENS["a"], TOKENS["b"])
    runs = Runs(lambda ids: clean_run(handle.model, ids))
    layout = PairLayout.of(pair, runs)
    metric = logit_diff(TOKENS["a"], TOKENS["b"])
    source = float(metric(layout.hyp_a.logits[None], [layout.hyp_a])[0])
    for layer in range(handle.n_layers):
        cells = group_cells(layer, layout.groups, layout.identity, layout.start)
        union = sorted(t for c in cells.values() for t in c.positions)
        assert union == list(range(layout.start, len(layout.hyp_b)))
        whole = Cell(resid_post(layer), tuple(union))
        got = patch(handle.model, [Patch(layout.hyp_b, layout.hyp_a, whole)], metric)
        torch.testing.assert_close(got, torch.tensor([source]), **BATCHED)


def test_a_pair_not_aligned_token_for_token_is_refused(handle: ModelHandle) -> None:
    a, b = item("a", "a", n_hyp=22), item("b", "b", n_hyp=23)
    with pytest.raises(ValueError, match="not aligned token for token"):
        run_pairs(handle, [Pair(a, b, TOKENS["a"], TOKENS["b"])], [0], progress=False)


def test_exact_pairs_are_spread_over_the_list(handle: ModelHandle) -> None:
    items = [item(k, v, n_hyp=14, p_words=(40 + i, 41, 42)) for i, (k, v) in enumerate(zip("wxyz", "abcd"))]
    pairs = [Pair(items[i], items[i + 1], TOKENS["abcd"[i]], TOKENS["abcd"[i + 1]]) for i in range(3)]
    tables = run_pairs(handle, pairs, [1], exact_pairs=2, exact_cells=3, progress=False)
    assert list(tables.exact["pair"].unique()) == [pairs[0].id, pairs[2].id]
    assert tables.pairs["exact_checked"].tolist() == [True, False, True]


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
