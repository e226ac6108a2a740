"""Which tokens of the object-level question P are the same tokens in both prompts.

The hypothetical prompt quotes P verbatim, but the characters around P differ (a chat template's
newline before it in the object-level prompt, a quote `"` on both sides in the hypothetical one),
and a tokenizer can merge them with P's first or last characters. A token of P is *aligned* when
it covers only characters of P, at the same place relative to P's start, in both prompts: then it
is the same token (same characters, hence the same id; `align` checks ids when given them).
Everything else that overlaps P is reported as unmatched, so no comparison silently pairs a `"P`
token with a `\\nP` one.

Inputs are character spans per token, as `PromptFormat.encode_with_offsets` returns them
(special tokens the tokenizer adds have the empty span (0, 0) and never overlap P).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

Span = tuple[int, int]


@dataclass(frozen=True)
class Alignment:
    """P's tokens in the object-level prompt matched to P's tokens in the hypothetical prompt."""

    pairs: list[tuple[int, int]]
    """(object token index, hypothetical token index), one-to-one, in P's order."""
    unmatched_object: list[int]
    """Object-prompt tokens overlapping P without a one-to-one partner (edge merges)."""
    unmatched_hypothetical: list[int]
    """Hypothetical-prompt tokens overlapping P without a one-to-one partner."""
    object_last: int
    """Index of the object-prompt token holding P's last character."""
    hypothetical_last: int
    """Index of the hypothetical-prompt token holding P's last character."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pairs"] = [list(p) for p in self.pairs]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Alignment:
        return cls(
            pairs=[(int(o), int(h)) for o, h in d["pairs"]],
            unmatched_object=[int(i) for i in d["unmatched_object"]],
            unmatched_hypothetical=[int(i) for i in d["unmatched_hypothetical"]],
            object_last=int(d["object_last"]),
            hypothetical_last=int(d["hypothetical_last"]),
        )


def p_token_indices(offsets: Sequence[Span], p_span: Span) -> list[int]:
    """Indices of the tokens that cover at least one character of P."""
    p_start, p_end = p_span
    return [i for i, (s, e) in enumerate(offsets) if s < e and s < p_end and e > p_start]


def _last_token(offsets: Sequence[Span], p_span: Span) -> int:
    """Index of the (last) token covering P's last character."""
    _check_span(p_span)
    last = p_span[1] - 1
    return max(i for i, (s, e) in enumerate(offsets) if s <= last < e)


def _check_span(p_span: Span) -> None:
    if p_span[1] <= p_span[0]:
        raise ValueError(f"P's span {p_span} is empty")


def _inner_tokens(offsets: Sequence[Span], p_span: Span) -> dict[Span, list[int]]:
    """Tokens lying wholly inside P, grouped by their span relative to P's start."""
    p_start, p_end = p_span
    groups: dict[Span, list[int]] = defaultdict(list)
    for i in p_token_indices(offsets, p_span):
        s, e = offsets[i]
        if s >= p_start and e <= p_end:
            groups[(s - p_start, e - p_start)].append(i)
    return groups


def align(
    object_offsets: Sequence[Span], object_p_span: Span, hyp_offsets: Sequence[Span], hyp_p_span: Span,
    object_ids: Sequence[int] | None = None, hyp_ids: Sequence[int] | None = None,
) -> Alignment:
    """Pair P's tokens between the two prompts (see the module docstring).

    Several tokens share one span when a multi-byte character is split into byte tokens; such a
    group is paired in order only if both prompts hold the same number of tokens with that span.
    With `object_ids`/`hyp_ids`, a group whose ids differ is left unmatched as well.
    """
    _check_span(object_p_span)
    _check_span(hyp_p_span)
    if object_p_span[1] - object_p_span[0] != hyp_p_span[1] - hyp_p_span[0]:
        raise ValueError(f"P has different lengths in the two prompts: spans {object_p_span} and {hyp_p_span}")
    obj_groups = _inner_tokens(object_offsets, object_p_span)
    hyp_groups = _inner_tokens(hyp_offsets, hyp_p_span)
    pairs: list[tuple[int, int]] = []
    for rel, obj in obj_groups.items():
        hyp = hyp_groups.get(rel, [])
        same_ids = object_ids is None or hyp_ids is None or [object_ids[i] for i in obj] == [hyp_ids[j] for j in hyp]
        if len(obj) == len(hyp) and same_ids:
            pairs.extend(zip(obj, hyp))
    pairs.sort()
    matched_obj = {o for o, _ in pairs}
    matched_hyp = {h for _, h in pairs}
    return Alignment(
        pairs=pairs,
        unmatched_object=[i for i in p_token_indices(object_offsets, object_p_span) if i not in matched_obj],
        unmatched_hypothetical=[i for i in p_token_indices(hyp_offsets, hyp_p_span) if i not in matched_hyp],
        object_last=_last_token(object_offsets, object_p_span),
        hypothetical_last=_last_token(hyp_offsets, hyp_p_span),
    )
