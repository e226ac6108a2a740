"""Edits at a place: the right site for every kind of place, exact identities, position masks."""

from __future__ import annotations

import pytest
import torch

from introspect_mi.batching import left_pad
from introspect_mi.hooks import recording
from introspect_mi.places import Place, PlaceKind
from introspect_mi.saes.splice import SpliceLeaves, editing, error_kept_edit, masked_edit, positions_mask, reconstruction_edit
from tests.saes.builders import random_topk

PLACES = [Place(PlaceKind.RESID_PRE, 1), Place(PlaceKind.RESID_POST, 1), Place(PlaceKind.ATTN_OUT, 1),
          Place(PlaceKind.MLP_OUT, 2), Place(PlaceKind.FINAL_NORM)]


def logits(handle, batch) -> torch.Tensor:
    with torch.no_grad():
        return handle.model(**batch.model_inputs()).logits


@pytest.fixture(scope="module")
def batch(tiny, token_lists):
    return left_pad(token_lists, tiny.pad_token_id)


@pytest.mark.parametrize("place", PLACES, ids=str)
def test_edit_sees_the_recorded_activation_and_its_output_is_used(tiny, batch, place) -> None:
    seen = []
    with recording(tiny.model, [place]) as rec:
        clean = logits(tiny, batch)
    with editing(tiny.model, place, lambda x: seen.append(x) or x):
        same = logits(tiny, batch)
    assert torch.equal(seen[0], rec[place]) and torch.equal(same, clean)
    with editing(tiny.model, place, lambda x: 2 * x + 1):
        assert not torch.allclose(logits(tiny, batch), clean, atol=1e-3)


def test_splicing_with_the_error_term_kept_is_an_exact_identity(tiny, batch) -> None:
    sae = random_topk(64, 128, k=8)
    place = Place(PlaceKind.RESID_POST, 1)
    leaves: list[SpliceLeaves] = []
    with recording(tiny.model, [place]) as rec:
        clean = logits(tiny, batch)
    with editing(tiny.model, place, error_kept_edit(sae, positions_mask(batch), leaves)):
        got = logits(tiny, batch)
    assert torch.equal(got, clean)
    (leaf,) = leaves
    n = sum(batch.lengths)
    assert leaf.latents.shape == (n, 128) and leaf.latents.requires_grad and leaf.error.shape == (n, 64) and leaf.error.requires_grad
    x = rec[place][positions_mask(batch)]
    with torch.no_grad():  # latents + error rebuild the activation; the error is what the SAE misses
        torch.testing.assert_close(sae.decode(leaf.latents) + leaf.error, x, rtol=1e-5, atol=1e-5)
        assert leaf.error.norm() > 1e-2 * x.norm()
    torch.testing.assert_close(leaf.norm_sq, x.pow(2).sum(-1))
    with editing(tiny.model, place, reconstruction_edit(sae, positions_mask(batch))):  # without the error term it differs
        assert not torch.allclose(logits(tiny, batch), got, atol=1e-3)


def test_positions_mask_counts_in_each_rows_own_tokens() -> None:
    batch = left_pad([[1, 2, 3], [4, 5, 6, 7, 8]], pad_id=0)
    assert positions_mask(batch).tolist() == [[False, False, True, True, True], [True] * 5]
    assert positions_mask(batch, splice_from=1).tolist() == [[False, False, False, True, True], [False] + [True] * 4]
    assert positions_mask(batch, [[0, -1], [2, 2]]).tolist() == [[False, False, True, False, True], [False, False, True, False, False]]
    with pytest.raises(ValueError, match="token index 3 is outside a sequence of 3 tokens"):
        positions_mask(batch, [[3], [0]])
    with pytest.raises(ValueError, match="1 position lists for a batch of 2 rows"):
        positions_mask(batch, [[0]])


def test_masked_edit_touches_only_the_mask_and_checks_the_shape() -> None:
    mask = torch.tensor([[True, False, True]])
    x = torch.arange(6.0).reshape(1, 3, 2)
    assert masked_edit(mask, lambda v: -v)(x).tolist() == [[[-0.0, -1.0], [2.0, 3.0], [-4.0, -5.0]]]
    with pytest.raises(ValueError, match="does not match the position mask"):
        masked_edit(mask, lambda v: v)(torch.zeros(1, 4, 2))
