"""The paper's train/held-out preset over the generated tasks."""

from __future__ import annotations

import pytest

from introspect_mi.tasks import SPLITS, TASKS, TaskKind, get_split, task_spec


def test_paper_preset_matches_the_paper() -> None:
    paper = get_split("paper")
    assert set(paper.train) == {"countries", "colours", "wealth_seeking", "power_seeking",
                                "mcq_arithmetic", "numbers"}
    assert set(paper.held_out) == {"animals", "english_words", "myopic_reward",
                                   "survival_instinct", "mcq_general"}


@pytest.mark.parametrize("preset", sorted(SPLITS))
def test_presets_are_disjoint_and_cover_registered_tasks(preset: str) -> None:
    split = SPLITS[preset]
    assert not set(split.train) & set(split.held_out)
    assert set(split.train) | set(split.held_out) == set(TASKS)
    kinds = {task_spec(n).kind for n in split.held_out}
    assert {TaskKind.SEQUENCE, TaskKind.AB_CHOICE, TaskKind.MCQ} <= kinds


def test_unknown_preset_lists_known() -> None:
    with pytest.raises(ValueError, match="unknown split preset 'x' — known split presets: paper"):
        get_split("x")
