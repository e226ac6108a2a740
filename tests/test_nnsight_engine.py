"""The nnsight engine computes what the raw-hook engine computes, through traces that also run on
NDIF: bit for bit where both run the same forward (capture; patching one cell per forward without
cache reuse), to float rounding where batch shapes differ; `remote="local"` (nnsight's dry run of
the remote path: the trace serialised and run with this project's modules hidden) gives the same.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from introspect_mi.capture import CapturePrompt, CaptureSpec, capture, encode, forward
from introspect_mi.models import ModelHandle, load
from introspect_mi.nnsight_engine import NnsightEngine
from introspect_mi.patching import Cell, Patch, align_ends, clean_run, kl_to_clean, logit_diff, patch
from introspect_mi.places import Place, PlaceKind, resid_post
from tests.tolerance import BATCHED

TEXTS = ["cat dog fox owl bee", "hello world 0 1 2 3 4 5 6 7", "Q: A: true false"]


def every_kind(handle: ModelHandle) -> list[Place]:
    kinds = (PlaceKind.RESID_PRE, PlaceKind.ATTN_OUT, PlaceKind.MLP_OUT, PlaceKind.RESID_POST)
    return [Place(k, l) for k in kinds for l in range(handle.n_layers)] + [Place(PlaceKind.FINAL_NORM)]


@pytest.fixture(scope="module", params=["llama", "gemma"])
def handle(request: pytest.FixtureRequest, tiny_llama_dir: Path, tiny_gemma_dir: Path) -> ModelHandle:
    return load(tiny_llama_dir if request.param == "llama" else tiny_gemma_dir)


@pytest.mark.parametrize("remote", [False, "local"])
def test_capture_forward_equals_raw_hooks_bit_for_bit(handle: ModelHandle, remote: bool | str) -> None:
    encoded = [encode(handle, CapturePrompt(t, (0, 3))) for t in TEXTS]
    places = every_kind(handle)
    ref = forward(handle, encoded, places, answer_step=True)
    got = forward(handle, encoded, places, answer_step=True, nnsight=NnsightEngine.of(handle, remote))
    assert got.answer_ids == ref.answer_ids and got.width == ref.width
    for place in places:
        assert torch.equal(got.acts[place], ref.acts[place]), place


def test_capture_store_equals_raw_hooks(tiny_llama_dir: Path, tmp_path: Path) -> None:
    handle = load(tiny_llama_dir)
    prompts = [CapturePrompt(t, (0, 3), {"item_id": str(i)}) for i, t in enumerate(TEXTS * 2)]
    # nnsight runs the plain batches in input order (no shared prefix): the same forward as the hooks without prefix reuse
    spec = CaptureSpec(places=("resid_post[0]", "resid_post[2]", "attn_out[1]"), batch_size=4, shard_records=4, prefix_reuse=False)
    hooks = capture(handle, prompts, spec, tmp_path / "hooks", progress=False)
    traced = capture(handle, prompts, spec, tmp_path / "nnsight", progress=False, nnsight=NnsightEngine.of(handle))
    assert traced.info["engine"] == "nnsight" and "engine" not in hooks.info
    assert traced.records.equals(hooks.records)
    for place in map(Place.parse, spec.places):
        for position in spec.positions:
            x, _ = traced.load(place, position=position)
            y, _ = hooks.load(place, position=position)
            assert torch.equal(torch.as_tensor(x), torch.as_tensor(y)), (place, position)


def runs_pair(handle: ModelHandle, engine: NnsightEngine | None, places: list[Place]):
    a = handle.prompt_format.encode("cat dog fox owl bee hello world 0 1")
    b = handle.prompt_format.encode("cat dog fox A: B: hello world 0 1")
    make = (lambda ids: clean_run(handle.model, ids, places)) if engine is None else (lambda ids: engine.clean_run(ids, places))
    return make(a), make(b)


def test_patching_equals_raw_hooks(handle: ModelHandle) -> None:
    assert_patching_equal(handle, NnsightEngine.of(handle), every_kind(handle))


def test_patching_runs_through_the_remote_path(tiny_llama_dir: Path) -> None:
    """nnsight's local simulation of NDIF (serialised trace, this project's modules hidden)."""
    handle = load(tiny_llama_dir)
    assert_patching_equal(handle, NnsightEngine.of(handle, remote="local"), [resid_post(1), Place(PlaceKind.ATTN_OUT, 2)])


def assert_patching_equal(handle: ModelHandle, engine: NnsightEngine, places: list[Place]) -> None:
    (ra, rb), (na, nb) = runs_pair(handle, None, places), runs_pair(handle, engine, places)
    assert torch.equal(na.logits, ra.logits) and all(torch.equal(na.act(p), ra.act(p)) for p in places)
    pairs = align_ends(ra.ids, rb.ids)
    cells = [Cell(p, (t,), (s,)) for p in places for s, t in pairs] + [Cell.aligned(resid_post(1), pairs)]  # and every token at once
    metric = logit_diff(5, 7)
    # The same forward (one cell, every token recomputed): bit for bit.
    raw = patch(handle.model, [Patch(rb, ra, c) for c in cells], metric, batch_size=1, reuse_prefix=False)
    got = engine.patch([Patch(nb, na, c) for c in cells], metric, batch_size=1)
    assert torch.equal(got, raw)
    assert (got != metric(rb.logits[None], [rb])).sum() >= 5  # cells after the first differing token change it
    # Batched with the raw engine's defaults (cache reuse, other shapes): to float rounding.
    torch.testing.assert_close(engine.patch([Patch(nb, na, c) for c in cells], metric, batch_size=8),
                               patch(handle.model, [Patch(rb, ra, c) for c in cells], metric, batch_size=8), **BATCHED)
    # Reading a place instead of logits.
    read = resid_post(handle.n_layers - 1)
    assert torch.equal(engine.patch([Patch(nb, na, c) for c in cells[:4]], lambda v, _t: v.sum(-1), batch_size=1, read=read),
                       patch(handle.model, [Patch(rb, ra, c) for c in cells[:4]], lambda v, _t: v.sum(-1), batch_size=1,
                             reuse_prefix=False, read=read))


@pytest.mark.slow
def test_embedded_smollm2_nnsight_engine_equals_raw_hooks() -> None:
    handle = load("smollm2-135m-instruct")
    engine = NnsightEngine.of(handle)
    n = handle.n_layers
    encoded = [encode(handle, CapturePrompt(t, (0, 3))) for t in TEXTS]
    places = [resid_post(l) for l in range(n)] + [Place(PlaceKind.ATTN_OUT, n // 2), Place(PlaceKind.MLP_OUT, n - 1), Place(PlaceKind.FINAL_NORM)]
    ref = forward(handle, encoded, places, answer_step=True)
    got = forward(handle, encoded, places, answer_step=True, nnsight=engine)
    assert got.answer_ids == ref.answer_ids
    assert all(torch.equal(got.acts[p], ref.acts[p]) for p in places)
    # Patching: 12 single cells spread over layers and the tokens after the prompts differ, and one
    # cell over every aligned token.
    (ra, rb), (na, nb) = runs_pair(handle, None, []), runs_pair(handle, engine, [])
    pairs = align_ends(ra.ids, rb.ids)
    first = next(i for i, (x, y) in enumerate(zip(ra.ids, rb.ids)) if x != y)
    grid = [(l, s, t) for l in range(0, n, 3) for s, t in pairs if t >= first]
    cells = [Cell(resid_post(l), (t,), (s,)) for l, s, t in grid[:: max(1, len(grid) // 12)][:12]] + [Cell.aligned(resid_post(n // 2), pairs)]
    metric = kl_to_clean()  # 0 at the clean target, > 0 wherever a patch changes the prediction
    raw = patch(handle.model, [Patch(rb, ra, c) for c in cells], metric, batch_size=1, reuse_prefix=False)
    traced = engine.patch([Patch(nb, na, c) for c in cells], metric, batch_size=1)
    assert torch.equal(traced, raw) and (raw > 0).all()
