"""Left-padded batches compute exactly what each prompt computes alone."""

from __future__ import annotations

import pytest
import torch

from introspect_mi.batching import left_pad, prefix_batches, shared_prefix_len
from introspect_mi.engines import run_hf
from introspect_mi.generate import user_prompt
from introspect_mi.models import ModelHandle, load
from introspect_mi.places import Place, PlaceKind, resid_post

PROMPTS = ["cat", "What is the next 5 animals in the following text? cat dog fox owl bee", "even odd 7"]


def test_left_pad_masks_come_from_lengths_not_pad_ids() -> None:
    pad = 9
    batch = left_pad([[1, 2, 3], [9, 4]], pad_id=pad)  # row 2 starts with a real token equal to pad
    assert batch.input_ids.tolist() == [[1, 2, 3], [pad, 9, 4]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [0, 1, 1]]
    assert batch.position_ids.tolist() == [[0, 1, 2], [0, 0, 1]]
    assert batch.real_slice(1) == slice(1, 3)
    with pytest.raises(ValueError):
        left_pad([[1], []], pad_id=0)


def assert_batched_equals_single(handle: ModelHandle, places: list[Place], rel_tol: float) -> None:
    seqs = [handle.prompt_format.encode(user_prompt(handle, p)) for p in PROMPTS]
    batch = left_pad(seqs, handle.pad_token_id)
    batched = run_hf(handle, batch.input_ids, places, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
    for row, seq in enumerate(seqs):
        single = run_hf(handle, torch.tensor([seq]), places)
        for place in places:
            got, want = batched[place][row, batch.real_slice(row)], single[place][0]
            err = ((got - want).norm(dim=-1) / want.norm(dim=-1)).max()
            assert err <= rel_tol, f"{place} row {row}: relative error {err:.2e}"


def test_tiny_model_batched_equals_single(tiny_llama_dir) -> None:
    handle = load(tiny_llama_dir)
    kinds = [PlaceKind.RESID_PRE, PlaceKind.RESID_POST, PlaceKind.ATTN_OUT]
    assert_batched_equals_single(handle, [Place(k, l) for k in kinds for l in range(handle.n_layers)], rel_tol=1e-6)


@pytest.mark.slow
def test_embedded_smollm2_batched_equals_single() -> None:
    # fp32 matmuls of different shapes reduce in different orders: measured ≤ 2.4e-6 of the
    # token norm here, while a padding/position bug gives errors of order 1.
    handle = load("smollm2-135m-instruct")
    assert_batched_equals_single(handle, [resid_post(l) for l in (0, 14, 29)], rel_tol=1e-5)


def test_prefix_batches_keep_rows_of_one_prefix_together() -> None:
    a, b = list(range(100, 130)), list(range(200, 230))  # two 30-token "demonstrations"
    seqs = [a + [1, 2], b + [1], a + [3], b + [2, 2, 2], a + [4, 5, 6], b + [3], a + [7], b + [9, 9]]
    batches = prefix_batches(seqs, max_batch=8)
    assert sorted(k for batch in batches for k in batch) == list(range(len(seqs)))
    assert sorted(map(sorted, batches)) == [[0, 2, 4, 6], [1, 3, 5, 7]]  # not one batch of 8 sharing nothing
    assert [shared_prefix_len([seqs[k] for k in batch]) for batch in batches] == [30, 30]
    assert all(len(batch) <= 3 for batch in prefix_batches(seqs, max_batch=3))
    assert prefix_batches([[1, 2, 3]], max_batch=4) == [[0]]
    # a bound on the suffix grid (rows × padded suffix) splits the groups, never mixes them
    bounded = prefix_batches(seqs, max_batch=8, max_tokens=9)
    assert len(bounded) > 2 and all(len({seqs[k][0] for k in batch}) == 1 for batch in bounded)
    for batch in bounded:
        rows = [seqs[k] for k in batch]
        assert len(rows) == 1 or len(rows) * (max(map(len, rows)) - shared_prefix_len(rows)) <= 9
    # no shared prefix worth a pass: as few batches as allowed
    assert len(prefix_batches([[k, 1, 2] for k in range(10)], max_batch=4)) == 3


def test_shared_prefix_len_leaves_each_row_its_own_tokens() -> None:
    base = list(range(20))
    assert shared_prefix_len([base + [1], base + [2]]) == 20
    assert shared_prefix_len([base, base + [5]]) == 19  # the shorter row keeps its last token
    assert shared_prefix_len([base + [1], base + [2]], keep=3) == 18
    assert shared_prefix_len([base[:5] + [1], base[:5] + [2]]) == 0  # below MIN_SHARED_PREFIX
    assert shared_prefix_len([base + [1]]) == 0
