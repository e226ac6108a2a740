"""Patching pairs: selection (token-aligned, differing values, screened on the clean gap, no item
twice in a group), position groups and token bookkeeping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from introspect_mi.models import ModelHandle, load
from introspect_mi.patching_pairs import (
    GROUPS, ItemPrompts, first_difference, group_of, pairable, position_groups, select_pairs, token_aligned, tokenise,
)
from introspect_mi.prompts import RenderedPrompt

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


def test_only_token_aligned_pairs_are_chosen() -> None:
    """Prompts of other lengths, or with P elsewhere, never pair (the old selection only preferred equal lengths)."""
    items = [item("i0", "a", n_hyp=20), item("i1", "b", n_hyp=21), item("i2", "c", n_hyp=21), item("i3", "d", n_hyp=22),
             item("i4", "b", n_hyp=20, p_words=(40, 41, 42))]  # i4: as long as i0, but P one token shorter
    assert not token_aligned(items[0], items[4]) and token_aligned(items[1], items[2])
    pairs = select_pairs(items, first, per_group=5)
    assert [(p.source.item_id, p.target.item_id) for p in pairs] == [("i1", "i2")]
    assert all(token_aligned(p.source, p.target) for p in pairs)
    assert [it.item_id for it in pairable(items)] == ["i1", "i2"]  # the rest have no aligned partner of another value


def test_the_larger_clean_gap_goes_first_and_gaps_below_min_gap_are_dropped() -> None:
    items = [item(f"i{k}", v) for k, v in enumerate("abcd")]
    logits = {(i.item_id, i.property): torch.zeros(20) for i in items}
    logits[("i3", "p")][TOKENS["d"]] = 5.0  # i3's run prefers its own value: its pairs have |gap| 5
    logits[("i1", "p")][TOKENS["a"]] = 1.0  # a token that only i1's pairs with i0 read: |gap| 1
    (pair,) = select_pairs(items, first, 1, logits)
    assert (pair.source.item_id, pair.target.item_id) == ("i0", "i3")
    # the only pair left without i0 / i3 is i1 with i2, gap 0: kept by default, dropped under any min_gap
    assert [(p.source.item_id, p.target.item_id) for p in select_pairs(items, first, 2, logits)][1] == ("i1", "i2")
    assert len(select_pairs(items, first, 2, logits, min_gap=0.5)) == 1
    del logits[("i3", "p")]
    assert all("i3" not in (p.source.item_id, p.target.item_id) for p in select_pairs(items, first, 2, logits))


def test_without_logits_correct_and_differing_predictions_go_first() -> None:
    items = [item("i0", "a", predicted="b"), item("i1", "b", predicted="a"), item("i2", "c", predicted="c"), item("i3", "d", predicted="d")]
    (pair,) = select_pairs(items, first, 1)
    assert {pair.source.item_id, pair.target.item_id} == {"i2", "i3"}


def test_position_groups_partition_the_tokens_from_p_on() -> None:
    groups = position_groups(12, [3, 4, 5])
    assert groups == {"P": [3, 4, 5], "question": [6, 7, 8, 9, 10], "final": [11]}
    assert tuple(groups) == GROUPS
    assert [group_of(t, groups) for t in (0, 3, 7, 11)] == ["context", "P", "question", "final"]
    with pytest.raises(ValueError, match="before the final token"):
        position_groups(6, [4, 5])


def test_first_difference() -> None:
    assert first_difference([1, 2, 3], [1, 2, 4, 5]) == 2 and first_difference([1, 2], [1, 2, 3]) == 2


def test_tokenise_aligns_identical_p_tokens(tiny_llama_dir: Path) -> None:
    handle: ModelHandle = load(tiny_llama_dir)
    p = "cat dog fox owl bee"
    obj = RenderedPrompt(f"Q: {p}\nA:", (3, 3 + len(p)))
    hyp = RenderedPrompt(f'Previously "{p}" what is the second character?', (12, 12 + len(p)))
    it = tokenise(handle, "i", "animals", "second_character", obj, hyp, "a", None, "b")
    assert it.alignment and all(it.object_ids[o] == it.hyp_ids[h] for o, h in it.alignment)
    assert {o for o, _ in it.alignment} <= set(it.object_p_tokens) and {h for _, h in it.alignment} <= set(it.hyp_p_tokens)
