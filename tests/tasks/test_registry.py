"""Registry lookups and the properties every generated task must have."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from introspect_mi.tasks import TASKS, TaskKind, get_task, load_items, task_spec

NAMES = sorted(TASKS)
EXPECTED_TOKENS = {TaskKind.SEQUENCE: 16, TaskKind.NUMBERS: 4, TaskKind.AB_CHOICE: 3,
                   TaskKind.MCQ: 3}


def test_registry_holds_the_generated_tasks() -> None:
    assert set(TASKS) == {
        "animals", "colours", "countries", "english_words", "numbers", "wealth_seeking",
        "power_seeking", "myopic_reward", "survival_instinct", "mcq_arithmetic", "mcq_general",
    }
    for name, source in TASKS.items():
        assert source.spec.name == name
        assert task_spec(name) is source.spec
        assert source.spec.max_new_tokens == EXPECTED_TOKENS[source.spec.kind]
        assert (source.spec.behaviour is not None) == (source.spec.kind is TaskKind.AB_CHOICE)


def test_unknown_task_lists_known_names() -> None:
    with pytest.raises(ValueError, match=r"unknown task 'nope' — known tasks: .*animals.*wealth_seeking"):
        get_task("nope")


def test_unknown_split_and_negative_n_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown split 'test'"):
        load_items("animals", "test")
    with pytest.raises(ValueError, match="n must be"):
        load_items("animals", "train", n=-1)


@pytest.mark.parametrize("name", NAMES)
def test_default_splits_have_500_unique_disjoint_items(name: str) -> None:
    train, val = load_items(name, "train"), load_items(name, "val")
    for split, items in (("train", train), ("val", val)):
        assert len(items) == 500
        assert [i.item_id for i in items] == [f"{name}-{split}-{k}" for k in range(500)]
        assert {i.split for i in items} == {split} and {i.task for i in items} == {name}
        assert len({i.text for i in items}) == 500
        assert all(i.text.strip() and i.meta["string"] in i.text for i in items)
    assert not {i.text for i in train} & {i.text for i in val}


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_items_other_seed_other_items(name: str) -> None:
    first = load_items(name, "val", n=50, seed=3)
    assert first == load_items(name, "val", n=50, seed=3)
    assert [i.meta for i in first] == [i.meta for i in load_items(name, "val", n=50, seed=3)]
    assert [i.text for i in first] != [i.text for i in load_items(name, "val", n=50, seed=4)]


@pytest.mark.parametrize("name", NAMES)
def test_n_is_configurable_and_smaller_n_is_a_prefix(name: str) -> None:
    assert load_items(name, "train", n=37) == load_items(name, "train", n=800)[:37]
    assert len(load_items(name, "val", n=1000)) == 1000


def test_generation_does_not_depend_on_hash_randomisation() -> None:
    code = ("from introspect_mi.tasks import TASKS, load_items\n"
            "print(repr([i.text for n in sorted(TASKS) for i in load_items(n, 'train', 20)]))")
    root = Path(__file__).resolve().parents[2]
    outputs = {
        subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                       check=True, env={"PYTHONHASHSEED": seed}).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1
    assert re.match(r"\['What is the next 5", outputs.pop())
