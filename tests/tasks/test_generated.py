"""Seeding, split assignment, letter balance and exhaustion of the item generator."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from introspect_mi.tasks.base import TaskKind, TaskSpec
from introspect_mi.tasks.generated import (
    Draft,
    GeneratedTask,
    balanced_letters,
    derive_seed,
    split_of,
)


def test_derived_seeds_differ_by_seed_task_and_split() -> None:
    seeds = {derive_seed(s, t, sp) for s in (0, 1) for t in ("a", "b") for sp in ("train", "val")}
    assert len(seeds) == 8
    assert derive_seed(0, "a", "train") == derive_seed(0, "a", "train")


def test_split_of_is_stable_and_uses_both_splits() -> None:
    groups = [f"g{i}" for i in range(200)]
    assignment = [split_of("t", g) for g in groups]
    assert assignment == [split_of("t", g) for g in groups]
    assert 60 < assignment.count("train") < 140


@pytest.mark.parametrize("n", [0, 1, 5, 6, 101])
def test_balanced_letters_prefixes_are_balanced(n: int) -> None:
    letters = balanced_letters(random.Random(1), n, ("A", "B", "C", "D"))
    assert len(letters) == n
    counts = Counter(letters)
    assert max(counts.values(), default=0) - min(counts.get(x, 0) for x in "ABCD") <= 1


def test_exhausted_space_raises_instead_of_looping() -> None:
    spec = TaskSpec("tiny", TaskKind.SEQUENCE, 4)
    task = GeneratedTask(spec, "{string}", lambda rng, _: Draft(s := str(rng.randrange(4)), s))
    with pytest.raises(ValueError, match=r"'tiny'.*nearly exhausted"):
        task.generate("train", n=10)
