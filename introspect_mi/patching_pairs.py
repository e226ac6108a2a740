"""The items and pairs that the patching experiments (A–C) run on, and how their tokens line up.

A pair is two held-out items of one task × property whose object-level property values (and those
values' first tokens) differ: the source P_a and the target P_b. Pairs are **aligned token for
token**: both hypothetical prompts have the same length and P at the same positions, so every
token of P_b has a partner in P_a and a group cell overwrites the whole group (pairs of other
lengths would leave part of P unpatched, or need an alignment that pairs unrelated tokens).

Pairs are chosen on their *clean* runs only (a screening forward of the items' hypothetical
prompts, before any patching): among equal-length candidates, those whose clean metric gap
(source minus target logit difference) is largest, and at least `min_gap` when asked, so that the
normalised effect is defined. This selects on the denominator of the normalised metric, never on
a patched value, so it cannot favour any experiment's outcome.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from introspect_mi.alignment import align, p_token_indices
from introspect_mi.models import ModelHandle
from introspect_mi.prompts import RenderedPrompt

GROUPS = ("P", "question", "final")
"""Position groups of a hypothetical prompt, in prompt order (tokens before P: "context")."""


@dataclass(frozen=True)
class ItemPrompts:
    """One held-out item × property, tokenised: P asked (object) and P quoted (hypothetical)."""

    item_id: str
    task: str
    property: str
    value: str | None
    """The object answer's property value: what a correct self-prediction says."""
    target: str | None
    """A/B tasks: the option letter that shows the behaviour (property values depend on it)."""
    predicted: str | None
    """The study's hypothetical answer value (None: non-compliant)."""
    object_ids: tuple[int, ...]
    object_p_tokens: tuple[int, ...]
    hyp_ids: tuple[int, ...]
    hyp_p_tokens: tuple[int, ...]
    alignment: tuple[tuple[int, int], ...]
    """(object index, hypothetical index) of P's tokens that are the same token in both prompts."""

    @property
    def correct(self) -> bool:
        return self.value is not None and self.predicted == self.value


def tokenise(handle: ModelHandle, item_id: str, task: str, prop: str, object_prompt: RenderedPrompt,
             hyp_prompt: RenderedPrompt, value: str | None, target: str | None, predicted: str | None) -> ItemPrompts:
    """Both prompts as token ids, P's tokens in each and their alignment (as capture stores it)."""
    fmt = handle.prompt_format
    o_ids, o_off = fmt.encode_with_offsets(object_prompt.text)
    h_ids, h_off = fmt.encode_with_offsets(hyp_prompt.text)
    pairs = align(o_off, object_prompt.p_span, h_off, hyp_prompt.p_span, o_ids, h_ids).pairs
    return ItemPrompts(item_id, task, prop, value, target, predicted, tuple(o_ids), tuple(p_token_indices(o_off, object_prompt.p_span)),
                       tuple(h_ids), tuple(p_token_indices(h_off, hyp_prompt.p_span)), tuple(map(tuple, pairs)))


@dataclass(frozen=True)
class Pair:
    """Source and target items of one task × property, with their values' first tokens."""

    source: ItemPrompts
    target: ItemPrompts
    source_token: int
    target_token: int

    @property
    def id(self) -> str:
        return f"{self.source.task}/{self.source.property}/{self.source.item_id}>{self.target.item_id}"


def token_aligned(a: ItemPrompts, b: ItemPrompts) -> bool:
    """Whether two items' hypothetical prompts line up token for token: same length, P at the same positions."""
    return len(a.hyp_ids) == len(b.hyp_ids) and a.hyp_p_tokens == b.hyp_p_tokens


def clean_gap(logits: Mapping[tuple[str, str], torch.Tensor], a: ItemPrompts, b: ItemPrompts, ta: int, tb: int) -> float:
    """The clean metric gap of pair (a → b): (logit[ta] − logit[tb]) in a's run minus the same in b's."""
    la, lb = logits[(a.item_id, a.property)], logits[(b.item_id, b.property)]
    return float((la[ta] - la[tb]) - (lb[ta] - lb[tb]))


def select_pairs(items: Sequence[ItemPrompts], first_token: Callable[[str], int | None], per_group: int,
                 clean_logits: Mapping[tuple[str, str], torch.Tensor] | None = None, min_gap: float = 0.0) -> list[Pair]:
    """Up to `per_group` token-aligned pairs per task × property (groups in first-seen order), no item
    twice in a group (so a group's pairs are independent units). Candidates: ordered item pairs whose
    values and value tokens differ and whose hypothetical prompts are `token_aligned`. With
    `clean_logits` ((item_id, property) → the hypothetical prompt's clean final logits; items without
    them are left out) the larger |clean gap| goes first and gaps below `min_gap` are dropped; without,
    more correct self-predictions and differing predictions go first; then the items' order."""
    groups: dict[tuple[str, str], list[ItemPrompts]] = {}
    for it in items:
        if it.value is not None and first_token(it.value) is not None and (clean_logits is None or (it.item_id, it.property) in clean_logits):
            groups.setdefault((it.task, it.property), []).append(it)

    out = []
    for members in groups.values():
        tokens = {it.item_id: first_token(it.value) for it in members}
        keyed = []
        for k, (a, b) in enumerate((a, b) for a in members for b in members):
            ta, tb = tokens[a.item_id], tokens[b.item_id]
            if a.value == b.value or ta == tb or not token_aligned(a, b):
                continue
            if clean_logits is None:
                keyed.append(((-(a.correct + b.correct), a.predicted == b.predicted, k), a, b))
            elif abs(gap := clean_gap(clean_logits, a, b, ta, tb)) >= min_gap:
                keyed.append(((-abs(gap), k), a, b))
        keyed.sort(key=lambda c: c[0])
        used: set[str] = set()
        chosen = []
        for _, a, b in keyed:
            if len(chosen) == per_group:
                break
            if a.item_id not in used and b.item_id not in used:
                used |= {a.item_id, b.item_id}
                chosen.append(Pair(a, b, tokens[a.item_id], tokens[b.item_id]))
        out += chosen
    return out


def position_groups(n_tokens: int, p_tokens: Sequence[int]) -> dict[str, list[int]]:
    """Token indices of each group in a hypothetical prompt of `n_tokens` tokens."""
    if not p_tokens or max(p_tokens) >= n_tokens - 1:
        raise ValueError(f"P's tokens {list(p_tokens)[:3]}… must lie before the final token of a {n_tokens}-token prompt")
    last = max(p_tokens)
    return {"P": sorted(p_tokens), "question": list(range(last + 1, n_tokens - 1)), "final": [n_tokens - 1]}


def group_of(position: int, groups: Mapping[str, Sequence[int]]) -> str:
    """The group a token belongs to ("context": before P)."""
    return next((name for name, members in groups.items() if position in members), "context")


def first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    """Index of the first token where two prompts differ (tokens before it compute the same states)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def pairable(items: Sequence[ItemPrompts]) -> list[ItemPrompts]:
    """The items that could enter a pair: a value, and a token-aligned item of another value in
    their task × property (only these need the screening forward)."""
    groups: dict[tuple[str, str], list[ItemPrompts]] = {}
    for it in items:
        if it.value is not None:
            groups.setdefault((it.task, it.property), []).append(it)
    return [a for members in groups.values() for a in members if any(b.value != a.value and token_aligned(a, b) for b in members)]
