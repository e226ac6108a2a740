"""Reading the paper's task-string files, on fixtures and on the released files."""

from __future__ import annotations

from pathlib import Path

import pytest

from introspect_mi.tasks import (
    AB_TEMPLATE,
    ANIMALS_TEMPLATE,
    MCQ_TEMPLATE,
    PAPER_TEMPLATES,
    TaskFormatError,
    TaskKind,
    TaskSpec,
    read_task_strings,
)
from introspect_mi.tasks.prompts import fill

from .conftest import WriteJsonl, count_records, error_at

ANIMALS = TaskSpec("animals", TaskKind.SEQUENCE, 24)
WEALTH = TaskSpec("wealth_seeking", TaskKind.AB_CHOICE, 3, behaviour="wealth-seeking")
MMLU = TaskSpec("mmlu", TaskKind.MCQ, 3)
AB_STRING = "Take the money?\n\nChoices:\nA - Yes\nB - No"


def test_sequence_file(tmp_path: Path, write_jsonl: WriteJsonl) -> None:
    path = write_jsonl(tmp_path / "train_animals.jsonl",
                       [{"string": "dog cat "}, "", {"string": "cow {x}"}])
    items = read_task_strings(path, ANIMALS, ANIMALS_TEMPLATE)
    assert [i.item_id for i in items] == ["animals-train-0", "animals-train-1"]
    assert items[1].text == fill(ANIMALS_TEMPLATE, "cow {x}") and items[1].split == "train"
    assert items[0].meta == {"string": "dog cat "} and items[0].target is None


def test_ab_and_mcq_targets_land_by_kind(tmp_path: Path, write_jsonl: WriteJsonl) -> None:
    ab = write_jsonl(tmp_path / "val_w.jsonl", [{"string": AB_STRING, "target": "A"}])
    item = read_task_strings(ab, WEALTH, AB_TEMPLATE)[0]
    assert (item.target, item.split, item.text) == ("A", "val", fill(AB_TEMPLATE, AB_STRING))
    mcq = write_jsonl(tmp_path / "q.jsonl", [{"string": "Q?", "target": "C"}, {"string": "R?"}])
    items = read_task_strings(mcq, MMLU, MCQ_TEMPLATE, split="train")
    assert items[0].target is None and items[0].meta["answer"] == "C"
    assert "answer" not in items[1].meta


@pytest.mark.parametrize("record, spec, problem", [
    ({"target": "A"}, WEALTH, 'missing field "string"'),
    ({"string": 5, "target": "A"}, WEALTH, 'field "string" is int'),
    ({"string": " ", "target": "A"}, WEALTH, 'field "string" is empty'),
    ({"string": AB_STRING}, WEALTH, "an A/B item needs a target"),
    ({"string": AB_STRING, "target": "C"}, WEALTH, "target 'C' is not one of A, B"),
    ({"string": AB_STRING, "target": 1}, WEALTH, 'field "target" is int'),
    ({"string": "Q?", "target": "E"}, MMLU, "target 'E' is not one of A, B, C, D"),
])
def test_bad_records_give_file_line_errors(tmp_path: Path, write_jsonl: WriteJsonl,
                                           record: dict[str, object], spec: TaskSpec,
                                           problem: str) -> None:
    path = write_jsonl(tmp_path / "train_x.jsonl", [{"string": "Q", "target": "A"}, record])
    with pytest.raises(TaskFormatError, match=error_at(path, 2)) as info:
        read_task_strings(path, spec, MCQ_TEMPLATE if spec is MMLU else AB_TEMPLATE)
    assert problem in str(info.value)


def test_split_must_be_known_or_inferable(tmp_path: Path, write_jsonl: WriteJsonl) -> None:
    path = write_jsonl(tmp_path / "animals.jsonl", [{"string": "dog"}])
    with pytest.raises(TaskFormatError, match=error_at(path, None)):
        read_task_strings(path, ANIMALS, ANIMALS_TEMPLATE)
    with pytest.raises(ValueError, match="unknown split"):
        read_task_strings(path, ANIMALS, ANIMALS_TEMPLATE, split="dev")
    with pytest.raises(ValueError, match=r"no \{string\} slot"):
        read_task_strings(path, ANIMALS, "no slot", split="val")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "train_gone.jsonl"
    with pytest.raises(TaskFormatError, match=error_at(path, None)) as info:
        read_task_strings(path, ANIMALS, ANIMALS_TEMPLATE)
    assert "file not found" in str(info.value)


@pytest.mark.parametrize("task, kind", [
    ("animals", TaskKind.SEQUENCE), ("colors", TaskKind.SEQUENCE),
    ("countries", TaskKind.SEQUENCE), ("english_words", TaskKind.SEQUENCE),
    ("numbers", TaskKind.NUMBERS), ("wealth_seeking", TaskKind.AB_CHOICE),
    ("power_seeking", TaskKind.AB_CHOICE), ("myopic_reward", TaskKind.AB_CHOICE),
    ("survival_instinct", TaskKind.AB_CHOICE), ("arc_challenge", TaskKind.MCQ),
    ("mmlu", TaskKind.MCQ),
])
def test_paper_task_strings(paper_data: Path, task: str, kind: TaskKind) -> None:
    spec = TaskSpec(task, kind, 8, behaviour="x" if kind is TaskKind.AB_CHOICE else None)
    files = sorted((paper_data / "evals" / "datasets").glob(f"*_{task}.jsonl"))
    if not files:
        pytest.skip(f"no task-string files for {task}")
    for path in files:
        items = read_task_strings(path, spec, PAPER_TEMPLATES[task])
        assert len(items) == count_records(path)
        assert {i.split for i in items} == {path.name.split("_")[0]}
        if kind is TaskKind.AB_CHOICE:
            assert {i.target for i in items} == {"A", "B"}
        if kind is TaskKind.MCQ:
            assert {i.meta["answer"] for i in items} == {"A", "B", "C", "D"}
