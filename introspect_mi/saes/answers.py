"""The self-prediction's answer at its first token: the correct value against the other valid values.

A raw logit of the correct token moves when anything in the output distribution moves (an edit
that breaks the answer format lowers it as much as one that swaps the answer). The measure here is
the **logit difference**: the correct value's first token minus the logsumexp of the other valid
values' first tokens, which ignores a shift shared by every valid answer; **compliance** says
whether the argmax token is still the start of some valid value at all (format kept).

Valid values of a property: its finite answer set (true/false, even/odd) or, for open sets
(characters, words), the values its object-level answers take on the same task (every value
the prompts could be about). Values sharing the correct value's first token are not "other".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
import torch

from introspect_mi.logit_lens import first_token
from introspect_mi.properties import get_property

if TYPE_CHECKING:
    from introspect_mi.models import ModelHandle
    from introspect_mi.saes.analysis import Metric


@dataclass(frozen=True)
class AnswerTokens:
    """Per prompt: the correct value's first token and the other valid values' first tokens."""

    targets: list[int]
    others: list[list[int]]  # never containing the target; may be empty (no margin defined)

    def __post_init__(self) -> None:
        if len(self.targets) != len(self.others):
            raise ValueError(f"{len(self.targets)} targets for {len(self.others)} sets of other values")
        if any(t in o for t, o in zip(self.targets, self.others)):
            raise ValueError("a prompt's other values include its correct token")


def valid_values(records: pd.DataFrame) -> dict[tuple[str, str], list[str]]:
    """(task, property) → its valid values: the property's answer set if finite, otherwise the
    object values of the `records` (object_value column) on that task, sorted."""
    out = {}
    for (task, name), part in records.groupby(["task", "property"], sort=True):
        answer_set = get_property(name).answer_set
        seen = part["object_value"].dropna().astype(str)
        out[task, name] = sorted(answer_set if answer_set is not None else set(seen[seen.str.len() > 0]))
    return out


def answer_tokens(handle: ModelHandle, chosen: pd.DataFrame, values: dict[tuple[str, str], list[str]]) -> AnswerTokens:
    """The first tokens of each chosen record's correct value and of its (task, property)'s other valid values."""
    targets, others = [], []
    tokens: dict[str, int | None] = {}

    def first(value: str) -> int | None:
        if value not in tokens:
            tokens[value] = first_token(handle, value)
        return tokens[value]

    for r in chosen.itertuples():
        target = first(r.object_value)
        if target is None:
            raise ValueError(f"record {r.record} has no correct value")
        ids = {first(v) for v in values[r.task, r.property]} - {target, None}
        targets.append(target)
        others.append(sorted(ids))
    return AnswerTokens(targets, others)


def _other_index(others: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded index [n, width] of the other tokens and its validity mask."""
    width = max((len(o) for o in others), default=0) or 1
    index = torch.zeros(len(others), width, dtype=torch.long)
    valid = torch.zeros(len(others), width, dtype=torch.bool)
    for i, o in enumerate(others):
        index[i, : len(o)] = torch.tensor(list(o), dtype=torch.long)
        valid[i, : len(o)] = True
    return index.to(device), valid.to(device)


def logit_difference(logits: torch.Tensor, targets: Sequence[int], others: Sequence[Sequence[int]]) -> torch.Tensor:
    """[n]: logit of each row's target minus the logsumexp of its other tokens (logits [n, vocab]);
    NaN for a row with no other token."""
    index, valid = _other_index(others, logits.device)
    other = logits.gather(1, index).masked_fill(~valid, float("-inf")).logsumexp(1)
    target = logits.gather(1, torch.as_tensor(list(targets), dtype=torch.long, device=logits.device)[:, None])[:, 0]
    return torch.where(valid.any(1), target - other, torch.full_like(target, float("nan")))


def compliant(logits: torch.Tensor, answers: AnswerTokens) -> torch.Tensor:
    """Bool [n]: the argmax token of each row (logits [n, vocab]) starts a valid value (its target or another)."""
    top = logits.argmax(-1).tolist()
    return torch.tensor([t == target or t in set(o) for t, target, o in zip(top, answers.targets, answers.others)])


def logit_difference_metric(answers: AnswerTokens) -> Metric:
    """`logit_difference` at the last position, as an attribution metric (rows index `answers`)."""

    def metric(logits: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        return logit_difference(logits[:, -1], [answers.targets[i] for i in rows], [answers.others[i] for i in rows])

    return metric
