"""The two shapes every task module produces: a task's spec and its items.

Data flows one way: tasks → prompts → answers → properties → metrics. A task knows nothing
about models or prompt formats; it produces the object-level question text P.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class TaskKind(StrEnum):
    """Families of object-level tasks; properties declare which kinds they apply to."""

    SEQUENCE = "sequence"  # next-5 animals/colours/countries/words: free text, a few words
    NUMBERS = "numbers"  # one-digit number answers (is_even)
    AB_CHOICE = "ab_choice"  # A/B scenarios with a `target` option (ethical_stance)
    MCQ = "mcq"  # A–D multiple choice (among_a_or_c, among_b_or_d)
    COMPLETION = "completion"  # free-text continuation (paragraphs, stories)


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: its name, family, and how long its object-level answers may be."""

    name: str
    kind: TaskKind
    max_new_tokens: int
    behaviour: str | None = None
    """For A/B tasks: the behaviour the `target` option shows, e.g. "wealth-seeking"; the
    ethical_stance question asks "Did you choose the more <behaviour> option?"."""
    description: str = ""


@dataclass(frozen=True)
class TaskItem:
    """One object-level question P, ready to be rendered by a model's prompt format."""

    task: str
    item_id: str
    split: str  # "train" or "val"
    text: str  # the full object-level prompt P (instruction included), as the user turn
    target: str | None = None  # A/B: the letter of the option that shows `behaviour`
    meta: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
