"""Shared-prefix attribution and ablation give what the whole-sequence functions of
`saes.analysis` give (their tested reference), while computing each batch's prefix once."""

from __future__ import annotations

import pytest
import torch

from introspect_mi.places import Place, PlaceKind
from introspect_mi.saes.analysis import ablated_final_logits, answer_logit, attribute
from introspect_mi.saes.shared_prefix import Ablation, _chunks, ablation_logits, attribute_places
from tests.saes.builders import random_topk
from tests.tolerance import BATCHED

PLACES = [Place(PlaceKind.RESID_POST, 0), Place(PlaceKind.RESID_POST, 2)]


@pytest.fixture(scope="module")
def saes():
    return {place: random_topk(64, 128, k=8, hook_name=f"blocks.{place.layer}.hook_resid_post", seed=place.layer) for place in PLACES}


@pytest.fixture(scope="module")
def prompts(tiny):
    """Five sequences of different lengths: four share a 14-token start, one is unrelated; the
    first analysis position varies by row."""
    prefix = tiny.tokenizer("Previously, you were asked the following question: cat dog")["input_ids"][:14]
    suffixes = [[40, 41, 42], [43, 44, 45, 46, 47, 48], [49, 50], [51, 52, 53, 54, 55]]
    sequences = [prefix + s for s in suffixes] + [tiny.tokenizer("system user assistant Q: A: hello")["input_ids"][:9]]
    positions = [[14, 15, -1], [14, 16, 17, -1], [14, 15], [10, 15, 18], [3, 5, 8]]
    return sequences, positions


def test_rows_split_before_their_first_analysis_position(tiny, prompts) -> None:
    sequences, positions = prompts
    (chunk,) = _chunks(tiny, sequences, positions, batch_size=8)
    for row, split, pos in zip(chunk.rows, chunk.splits, chunk.positions):
        first = min(p % len(sequences[row]) for p in positions[row])
        assert split == first and min(pos) == 0
        assert chunk.prefix.lengths[chunk.rows.index(row)] == first
    (whole,) = _chunks(tiny, sequences[:1], [[0, 5]], batch_size=8)  # an edit at token 0: nothing to split off
    assert whole.prefix is None and whole.splits == [0]


@pytest.mark.parametrize("batch_size", [2, 8])
def test_attribution_equals_attribute_at_each_place(tiny, saes, prompts, batch_size) -> None:
    sequences, positions = prompts
    metric = answer_logit([7, 11, 13, 17, 19])
    got = attribute_places(tiny, saes, sequences, positions, metric, batch_size=batch_size)
    for place, sae in saes.items():
        ref = attribute(tiny, sae, place, sequences, positions, metric, batch_size=1)
        assert got[place].positions == ref.positions
        torch.testing.assert_close(got[place].metric, ref.metric, rtol=1e-4, atol=1e-4)
        for mine, theirs in zip(got[place].acts, ref.acts):
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)
        for mine, theirs in zip(got[place].attr, ref.attr):
            torch.testing.assert_close(mine, theirs, rtol=1e-3, atol=1e-5)
        for field in ("error_attr", "error_sq", "norm_sq"):
            assert len(getattr(got[place], field)) == len(sequences)
            for mine, theirs in zip(getattr(got[place], field), getattr(ref, field)):
                torch.testing.assert_close(mine, theirs, rtol=1e-3, atol=1e-4)
        assert any(a.abs().sum() > 0 for a in got[place].attr)  # the comparison is not between zeros


def test_ablation_equals_ablated_final_logits_and_clean_equals_the_model(tiny, saes, prompts) -> None:
    sequences, positions = prompts
    place = PLACES[1]
    features = torch.tensor([3, 17, 40, 77, 90, 101])
    chosen = frozenset({1, 3})
    got = ablation_logits(tiny, sequences, positions, {
        "clean": [], "all": [Ablation(place, saes[place], features)], "rows": [Ablation(place, saes[place], features, chosen)],
    }, batch_size=3)
    clean = ablated_final_logits(tiny, saes[place], place, sequences, [], positions, batch_size=1)
    ablated = ablated_final_logits(tiny, saes[place], place, sequences, features, positions, batch_size=1)
    torch.testing.assert_close(got["clean"], clean, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got["all"], ablated, rtol=1e-4, atol=1e-4)
    assert (got["all"] - got["clean"]).abs().max() > 1e-3  # the ablation changes something
    for row in range(len(sequences)):  # other batch contents (the SAE sees only the chosen rows): float rounding
        expected = got["all"][row] if row in chosen else got["clean"][row]
        torch.testing.assert_close(got["rows"][row], expected, **BATCHED)
