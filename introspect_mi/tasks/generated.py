"""Deterministic generation of unique, split-disjoint items from a per-task draw function.

Why this shape: every generated task only says how to draw one random task string; this module
makes the result reproducible (a `random.Random` seeded from (seed, task, split), never global
state), unique within a split, disjoint across splits (an item's *group* — e.g. a question
regardless of option order — is assigned to train or val by a stable hash, so the same group
can never land in both), and balanced in its answer letter when the task has one.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from introspect_mi.tasks.base import TaskItem, TaskSpec
from introspect_mi.tasks.prompts import fill
from introspect_mi.tasks.records import SPLIT_NAMES, check_split, make_item

DEFAULT_N = 500
MAX_TRIES_PER_ITEM = 5000


@dataclass(frozen=True)
class Draft:
    """One drawn task string before it becomes a TaskItem."""

    string: str  # goes into the task's template "{string}" slot
    group: str  # decides split membership and uniqueness (e.g. question + sorted options)
    target: str | None = None
    meta: dict[str, str] = field(default_factory=dict)


Draw = Callable[[random.Random, str | None], Draft]
"""Draws one Draft; the second argument is the answer letter the item must have (or None)."""


def _digest(*parts: object) -> int:
    joined = "\x1f".join(str(part) for part in parts)
    return int.from_bytes(hashlib.sha256(joined.encode("utf-8")).digest()[:8], "big")


def derive_seed(seed: int, task: str, split: str) -> int:
    """The RNG seed of one task's split, so tasks and splits never share a random stream."""
    return _digest(seed, task, split)


def split_of(task: str, group: str) -> str:
    """The split a group belongs to, by a stable hash (independent of the seed)."""
    return SPLIT_NAMES[_digest(task, group) % len(SPLIT_NAMES)]


def balanced_letters(rng: random.Random, n: int, letters: tuple[str, ...]) -> list[str]:
    """n letters drawn as shuffled blocks of all `letters`: every prefix is balanced (±1 per
    letter), and the first k letters do not depend on n."""
    out: list[str] = []
    while len(out) < n:
        block = list(letters)
        rng.shuffle(block)
        out.extend(block)
    return out[:n]


@dataclass(frozen=True)
class GeneratedTask:
    """A task whose items are drawn at random: spec, prompt template and draw function."""

    spec: TaskSpec
    template: str
    draw: Draw
    letters: tuple[str, ...] | None = None  # answer letters to balance, if any

    def generate(self, split: str, n: int = DEFAULT_N, seed: int = 0) -> list[TaskItem]:
        """The first n items of `split` for `seed`: same arguments → identical items, and a
        smaller n gives a prefix of a larger one."""
        check_split(split)
        if n < 0:
            raise ValueError(f"n must be ≥ 0, got {n}")
        rng = random.Random(derive_seed(seed, self.spec.name, split))
        letter_rng = random.Random(derive_seed(seed, self.spec.name, f"{split}/letters"))
        wanted: list[str | None] = (
            list(balanced_letters(letter_rng, n, self.letters)) if self.letters else [None] * n
        )
        seen: set[str] = set()
        items: list[TaskItem] = []
        for index, letter in enumerate(wanted):
            draft = self._draw_new(rng, letter, split, seen)
            seen.add(draft.group)
            meta = {"string": draft.string, **draft.meta}
            text = fill(self.template, draft.string)
            items.append(make_item(self.spec, split, index, text, draft.target, meta))
        return items

    def _draw_new(
        self, rng: random.Random, letter: str | None, split: str, seen: set[str]
    ) -> Draft:
        """A draft of a group this split owns and has not used yet."""
        for _ in range(MAX_TRIES_PER_ITEM):
            draft = self.draw(rng, letter)
            if draft.group not in seen and split_of(self.spec.name, draft.group) == split:
                return draft
        raise ValueError(
            f"task {self.spec.name!r}: could not draw item {len(seen) + 1} of split {split!r} — "
            "its template space is nearly exhausted; ask for fewer items"
        )
