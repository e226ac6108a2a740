"""Activation and attribution patching: identities, an independent per-cell oracle, batching.

Exactness: a cell that copies the target's own vectors is answered from the clean run, and
patching every position of a layer recomputes the layers above with the source run's very
shapes: both are held bit for bit. A cell run through a KV-cache prefix (a shorter suffix) or
in one batch with other cells goes through matrices of other shapes, and MKL picks kernels by
shape, so it matches to float rounding (measured ≤ 3e-7 on logits of size ~1; another CPU picks
other kernels): those comparisons use the shared `tests.tolerance.BATCHED`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from introspect_mi.hooks import editing, recording
from introspect_mi.models import load
from introspect_mi.patching import (
    Cell,
    Patch,
    Run,
    align_ends,
    attribution,
    clean_run,
    kl_to_clean,
    logit_diff,
    patch,
    prob,
    sweep,
    unchanged,
)
from introspect_mi.places import Place, PlaceKind, resid_post
from tests.tolerance import BATCHED

LOGITS = lambda values, _targets: values  # noqa: E731  (the metric that keeps the logits)
CLOSE = BATCHED
KINDS = [PlaceKind.RESID_PRE, PlaceKind.ATTN_OUT, PlaceKind.MLP_OUT, PlaceKind.RESID_POST]


def token_ids(n: int, seed: int) -> list[int]:
    return torch.randint(5, 300, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def all_places(model: torch.nn.Module) -> list[Place]:
    n = model.config.num_hidden_layers
    return [Place(k, l) for l in range(n) for k in KINDS] + [Place(PlaceKind.FINAL_NORM)]


@pytest.fixture(scope="module")
def llama(tiny_llama_dir: Path) -> torch.nn.Module:
    return load(tiny_llama_dir).model


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def model(request: pytest.FixtureRequest, tiny_llama_dir: Path, tiny_gemma_dir: Path) -> torch.nn.Module:
    """Both tiny models: Llama keeps its KV cache (prefix reuse); the Gemma-3's 16-token sliding
    window is shorter than the prompts, so it recomputes from the first token."""
    return load(tiny_llama_dir if request.param == "llama" else tiny_gemma_dir).model


def runs(model: torch.nn.Module, *lengths: int) -> list[Run]:
    return [clean_run(model, token_ids(n, seed), all_places(model)) for seed, n in enumerate(lengths)]


@torch.no_grad()
def reference(model: torch.nn.Module, target: Run, source: Run, cell: Cell) -> torch.Tensor:
    """The oracle: one plain full forward per cell, the source vectors written by a hook."""
    vectors = source.act(cell.place)[list(cell.source_positions)]

    def write(x: torch.Tensor, _pos: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[0, list(cell.positions)] = vectors
        return x

    with editing(model, [(cell.place, write)]):
        return model(torch.tensor([target.ids])).logits[0, -1]


def test_patching_a_run_with_itself_changes_nothing(model: torch.nn.Module) -> None:
    (run,) = runs(model, 30)
    # Positions from the first (no cached prefix) to the last (a prefix of all but one token); on
    # the Gemma-3, suffixes longer and shorter than its 16-token sliding window.
    cells = [Patch(run, run, Cell(p, (t,))) for p in all_places(model) for t in (0, 5, 13, 14, 15, 22, 29)]
    cells.append(Patch(run, run, Cell(resid_post(1), tuple(range(len(run))))))
    # The engine sees identical vectors and answers from the clean run.
    assert all(torch.equal(v, run.logits) for v in patch(model, cells, LOGITS))
    # Forced through the forward, one cell at a time and batched, with the clean cache standing in
    # for the layers below and the tokens before each cell: other shapes, so to float rounding.
    for batch_size in (1, 64):
        forced = patch(model, cells, LOGITS, skip_identical=False, batch_size=batch_size)
        for v in forced:
            torch.testing.assert_close(v, run.logits, **CLOSE)


def test_patching_every_position_of_resid_post_gives_the_source_logits(model: torch.nn.Module) -> None:
    target, source = runs(model, 30, 30)
    assert not torch.allclose(target.logits, source.logits)
    for layer in range(model.config.num_hidden_layers):
        cell = Cell(resid_post(layer), tuple(range(30)))
        (got,) = patch(model, [Patch(target, source, cell)], LOGITS)
        assert torch.equal(got, source.logits), f"layer {layer}"


def test_batched_cells_equal_one_cell_at_a_time_and_the_plain_forward_oracle(model: torch.nn.Module) -> None:
    target, source = runs(model, 30, 30)
    cells = [Cell(p, (t,)) for p in all_places(model) for t in range(0, 30, 3)]
    cells += [Cell(resid_post(0), (4, 20, 29), (29, 4, 20)), Cell(Place(PlaceKind.ATTN_OUT, 1), (25, 26))]
    patches = [Patch(target, source, c) for c in cells]
    batched = patch(model, patches, LOGITS, batch_size=16)
    single = torch.stack([patch(model, [p], LOGITS, batch_size=1)[0] for p in patches])
    oracle = torch.stack([reference(model, target, source, c) for c in cells])
    torch.testing.assert_close(batched, single, **CLOSE)
    torch.testing.assert_close(single, oracle, **CLOSE)
    # Batches cut by rows × tokens computed instead (the default cap on the attention scores).
    forwards: list[int] = []
    hook = model.lm_head.register_forward_hook(lambda _m, args, _o: forwards.append(args[0].shape[0]))
    try:
        torch.testing.assert_close(patch(model, patches, LOGITS, batch_tokens=60), oracle, **CLOSE)
    finally:
        hook.remove()
    assert len(forwards) > 3 and sum(forwards) <= len(cells)
    assert (oracle - target.logits).abs().amax(1).max() > 1e-2  # the patches do change the logits
    # The cache shortcuts change nothing either: no prefix reuse / every cell forced.
    torch.testing.assert_close(patch(model, patches, LOGITS, reuse_prefix=False), oracle, **CLOSE)


def test_the_prefix_is_reused_only_where_a_patch_cannot_reach(llama: torch.nn.Module) -> None:
    """Tokens before the first patched one come from the KV cache: only the rest is recomputed."""
    target, source = runs(llama, 40, 40)
    cells = [Cell(resid_post(1), (35,)), Cell(resid_post(1), (39,))]
    seen: list[int] = []
    hook = llama.model.layers[2].register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    try:
        got = torch.stack([patch(llama, [Patch(target, source, c)], LOGITS)[0] for c in cells])
    finally:
        hook.remove()
    assert seen == [5, 1]
    torch.testing.assert_close(got, torch.stack([reference(llama, target, source, c) for c in cells]), **CLOSE)


def test_each_row_joins_the_batch_at_its_own_layer(model: torch.nn.Module) -> None:
    """A block runs only the rows whose patch lies at or below it; the others keep the clean
    stream, and the results equal one plain forward per cell."""
    target, source = runs(model, 30, 30)
    n = model.config.num_hidden_layers
    cells = [Cell(p, (t,)) for p in all_places(model) for t in (20, 21)]  # one batch: every layer and kind
    rows: dict[int, list[int]] = {}
    hooks = [model.model.layers[l].mlp.register_forward_hook(lambda _m, args, _o, l=l: rows.setdefault(l, []).append(args[0].shape[0]))
             for l in range(n)]
    try:
        got = patch(model, [Patch(target, source, c) for c in cells], LOGITS, batch_size=len(cells))
    finally:
        for h in hooks:
            h.remove()
    # Cells through mlp_out[l] need block l; final_norm, and the last block's attn_out, mlp_out and
    # resid_post at these non-final tokens, need none (the final token cannot see them).
    need = lambda l: [c for c in cells if not unchanged(Patch(target, source, c), n) and c.place.kind is not PlaceKind.FINAL_NORM  # noqa: E731
                      and (c.place.layer < l or (c.place.layer == l and c.place.kind is not PlaceKind.RESID_POST))]
    assert rows == {l: [len(need(l))] for l in range(n) if need(l)}
    oracle = torch.stack([reference(model, target, source, c) for c in cells])
    torch.testing.assert_close(got, oracle, **CLOSE)


def test_sliding_window_layers_see_the_cached_prefix_through_their_window(tiny_gemma_dir: Path) -> None:
    """Gemma-3 (a 16-token sliding window on layer 0): the clean run keeps every token's keys and
    values, and a suffix longer or shorter than the window, after a prefix longer or shorter than
    it, attends to what a plain forward attends to."""
    gemma = load(tiny_gemma_dir).model
    assert gemma.config.sliding_window == 16 and gemma.config.layer_types[0] == "sliding_attention"
    target, source = runs(gemma, 48, 48)
    assert target.kv[0][0].shape[1] == 48
    cells = [Cell(p, (t,)) for p in all_places(gemma) for t in (3, 10, 20, 30, 40, 47)]
    oracle = torch.stack([reference(gemma, target, source, c) for c in cells])
    assert (oracle - target.logits).abs().amax(1).max() > 1e-2
    for batch_size in (1, 7, 64):
        torch.testing.assert_close(patch(gemma, [Patch(target, source, c) for c in cells], LOGITS, batch_size=batch_size), oracle, **CLOSE)


def test_a_shared_prefix_is_answered_from_the_clean_run_even_when_its_last_bits_differ(llama: torch.nn.Module) -> None:
    """Another CPU may give two prompts' common prefix other last bits (other lengths, other
    kernels): same tokens at the same positions and vectors equal to float rounding still count
    as the target's own; a real difference, or another token before the cell, does not."""
    head = token_ids(12, 3)
    target, source = clean_run(llama, head + [40, 41], all_places(llama)), clean_run(llama, head + [50], all_places(llama))

    def nudged(run: Run, scale: float) -> Run:
        acts = {p: a + scale * a.abs().amax() * torch.randn(a.shape, generator=torch.Generator().manual_seed(0)) for p, a in run.acts.items()}
        return Run(run.ids, run.logits, acts, run.kv)

    place, rounded, moved = resid_post(1), nudged(source, 1e-7), nudged(source, 1e-2)
    for t in (0, 11):
        cell = Cell(place, (t,))
        assert unchanged(Patch(target, rounded, cell), 3)
        assert torch.equal(patch(llama, [Patch(target, rounded, cell)], LOGITS)[0], target.logits)
        assert not unchanged(Patch(target, moved, cell), 3)
        torch.testing.assert_close(patch(llama, [Patch(target, moved, cell)], LOGITS)[0], reference(llama, target, moved, cell), **CLOSE)
    other = clean_run(llama, [7] + head[1:] + [50], all_places(llama))  # another first token
    assert not unchanged(Patch(target, other, Cell(place, (11,))), 3)


def test_left_padded_targets_of_different_lengths_equal_unpadded(model: torch.nn.Module) -> None:
    long, mid, short = runs(model, 30, 24, 19)
    patches = [Patch(t, s, Cell(p, (k,))) for t, s in [(long, mid), (mid, short), (short, long)]
               for p in all_places(model)[::3] for k in (0, 9, 18)]
    for reuse in (True, False):
        mixed = patch(model, patches, LOGITS, batch_size=64, reuse_prefix=reuse)
        alone = torch.stack([patch(model, [p], LOGITS, reuse_prefix=reuse)[0] for p in patches])
        torch.testing.assert_close(mixed, alone, **CLOSE)


def test_read_stops_the_forward_at_the_place_it_reads(llama: torch.nn.Module) -> None:
    target, source = runs(llama, 30, 30)
    cell, read = Cell(resid_post(0), (7,)), Place(PlaceKind.MLP_OUT, 1)
    calls: list[int] = []
    hook = llama.model.layers[2].register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        (got,) = patch(llama, [Patch(target, source, cell)], LOGITS, read=read, skip_identical=False)
    finally:
        hook.remove()
    assert calls == []
    vectors = source.act(cell.place)[7]
    with torch.no_grad(), editing(llama, [(cell.place, lambda x, _p: torch.cat([x[:, :7], vectors[None, None], x[:, 8:]], 1))]):
        with recording(llama, [read]) as acts:
            llama(torch.tensor([target.ids]))
    torch.testing.assert_close(got, acts[read][0, -1], **CLOSE)


def test_metrics_on_hand_computed_values() -> None:
    values = torch.tensor([[1.0, 3.0, 0.0], [2.0, 2.0, 2.0]])
    run = Run((1, 2), torch.tensor([2.0, 2.0, 2.0]), {}, None)
    assert logit_diff(1, 0)(values, [run, run]).tolist() == [2.0, 0.0]
    torch.testing.assert_close(prob(2)(values, [run, run]), torch.tensor([1 / (torch.e + torch.e**3 + 1), 1 / 3]))
    kl = kl_to_clean()(values, [run, run])
    p = torch.softmax(values[0], 0)
    torch.testing.assert_close(kl, torch.stack([(torch.full((3,), 1 / 3) * (torch.full((3,), 1 / 3).log() - p.log())).sum(), torch.tensor(0.0)]))


def test_attribution_is_exact_where_the_metric_is_linear(model: torch.nn.Module) -> None:
    """final_norm feeds the unembedding directly: a logit difference is linear in it."""
    target, source = runs(model, 30, 30)
    metric = logit_diff(int(source.logits.argmax()), int(target.logits.argmax()))
    final = [Place(PlaceKind.FINAL_NORM)]
    exact = sweep(model, target, source, final, metric) - metric(target.logits[None], [target])
    estimate = attribution(model, target, source, final, metric)
    assert exact[0, -1].abs() > 0.1
    torch.testing.assert_close(estimate, exact, rtol=1e-4, atol=1e-5)


def test_attribution_correlates_with_exact_patching(model: torch.nn.Module) -> None:
    target, source = runs(model, 30, 30)
    metric = logit_diff(int(source.logits.argmax()), int(target.logits.argmax()))
    places = all_places(model)
    exact = sweep(model, target, source, places, metric) - metric(target.logits[None], [target])
    estimate = attribution(model, target, source, places, metric)
    assert exact.shape == estimate.shape == (len(places), 30)
    r = torch.corrcoef(torch.stack([exact.flatten(), estimate.flatten()]))[0, 1]
    assert r > 0.8, f"Pearson r = {r:.3f}"  # measured 0.90 (Gemma-3), 0.97 (Llama)


def test_cross_prompt_patching_follows_the_alignment(llama: torch.nn.Module) -> None:
    """Two prompts sharing a prefix and a suffix around a differing span of another length."""
    head, tail = token_ids(12, 7), token_ids(8, 8)
    src_ids, tgt_ids = head + [40, 41, 42] + tail, head + [50, 51] + tail
    pairs = align_ends(src_ids, tgt_ids)
    assert pairs == [(i, i) for i in range(12)] + [(15 + i, 14 + i) for i in range(8)]
    target, source = clean_run(llama, tgt_ids), clean_run(llama, src_ids)
    metric = logit_diff(3, 4)
    grid = sweep(llama, target, source, [resid_post(0), resid_post(1)], metric, alignment=pairs)
    assert grid[:, 12:14].isnan().all() and not grid[:, :12].isnan().any() and not grid[:, 14:].isnan().any()
    clean = metric(target.logits[None], [target])
    assert torch.equal(grid[:, :12], clean.expand(2, 12))  # the shared prefix: identical vectors
    (one,) = patch(llama, [Patch(target, source, Cell(resid_post(1), (16,), (17,)))], metric)
    torch.testing.assert_close(one, grid[1, 16], **CLOSE)
    estimate = attribution(llama, target, source, [resid_post(1)], metric, alignment=pairs)
    assert estimate[:, 12:14].isnan().all() and not estimate[:, 14:].isnan().any()
    aligned = Cell.aligned(resid_post(1), pairs)
    assert aligned.positions[-1] == 21 and aligned.source_positions[-1] == 22


def test_peft_adapter_toggled_off_equals_base_and_on_equals_merged(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from tests.test_models import make_adapter

    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter")
    base, merged = load(tiny_llama_dir).model, load(tiny_llama_dir, adapter=adapter).model
    peft = load(tiny_llama_dir, adapter=adapter, adapter_mode="peft").model
    places = [resid_post(l) for l in range(3)] + [Place(PlaceKind.MLP_OUT, 1)]

    def grid(model: torch.nn.Module) -> torch.Tensor:
        target, source = (clean_run(model, token_ids(24, s), places) for s in (0, 1))
        return sweep(model, target, source, places, logit_diff(3, 4))

    with peft.disable_adapter():
        off = grid(peft)
    on, want_on = grid(peft), grid(merged)
    # Not bitwise: MKL's result for the final-position slice differed between two loads of equal
    # weights (same values, other memory) by ~1e-8; the forward passes themselves agree exactly.
    torch.testing.assert_close(off, grid(base), **CLOSE)
    torch.testing.assert_close(on, want_on, rtol=1e-4, atol=1e-4)
    assert (on - off).abs().max() > 1e-2


def test_bad_cells_are_refused(llama: torch.nn.Module) -> None:
    target, source = runs(llama, 30, 20)
    with pytest.raises(ValueError, match="positions outside"):
        patch(llama, [Patch(target, source, Cell(resid_post(0), (25,)))], LOGITS)
    with pytest.raises(ValueError, match="layers 0..2"):
        patch(llama, [Patch(target, source, Cell(resid_post(3), (1,)))], LOGITS)
    with pytest.raises(ValueError, match="one source position per target position"):
        Cell(resid_post(0), (1, 2), (1,))
    with pytest.raises(ValueError, match="pass an alignment"):
        sweep(llama, target, source, [resid_post(0)], LOGITS)
    bare = clean_run(llama, token_ids(30, 0))
    with pytest.raises(ValueError, match="was not recorded"):
        patch(llama, [Patch(bare, bare, Cell(Place(PlaceKind.MLP_OUT, 0), (1,)))], LOGITS)
