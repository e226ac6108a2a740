"""Users' own task files: the documented format, its defaults, and its errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from introspect_mi.tasks import TaskFormatError, TaskKind, read_user_tasks, user_tasks

from .conftest import WriteJsonl, error_at

HEADER = {"name": "risk", "kind": "ab_choice", "behaviour": "risk-seeking"}
AB_TEXT = "Bet on a coin flip?\n\nChoices:\nA - Yes\nB - No\nPlease answer ..."


def test_reads_header_and_items_with_defaults(tmp_path: Path, write_jsonl: WriteJsonl) -> None:
    path = write_jsonl(tmp_path / "risk.jsonl", [
        HEADER,
        {"id": "r1", "text": AB_TEXT, "target": "a"},
        {"text": AB_TEXT + "?", "target": "B", "split": "train", "meta": {"source": "notes"}},
        {"text": AB_TEXT + "!", "target": "B"},
    ])
    task = read_user_tasks(path)
    assert (task.spec.name, task.spec.kind, task.spec.behaviour, task.spec.max_new_tokens) == (
        "risk", TaskKind.AB_CHOICE, "risk-seeking", 3)
    assert [(i.item_id, i.split, i.target) for i in task.items] == [
        ("risk-val-r1", "val", "A"), ("risk-train-0", "train", "B"), ("risk-val-1", "val", "B")]
    assert task.items[1].meta == {"source": "notes"}
    assert task.generate("val", n=1) == [task.items[0]]
    assert read_user_tasks(path, name="other").spec.name == "other"


def test_kinds_place_targets_and_name_defaults_to_stem(tmp_path: Path,
                                                       write_jsonl: WriteJsonl) -> None:
    path = write_jsonl(tmp_path / "quiz.jsonl", [
        {"kind": "mcq", "max_new_tokens": 2, "description": "d"},
        {"text": "Q?\nA - 1\nB - 2\nC - 3\nD - 4", "target": "D"},
    ])
    task = read_user_tasks(path)
    assert (task.spec.name, task.spec.max_new_tokens, task.spec.description) == ("quiz", 2, "d")
    assert task.items[0].target is None and task.items[0].meta == {"answer": "D"}
    seq = write_jsonl(tmp_path / "seq.jsonl", [{"kind": "sequence"}, {"text": "go", "target": "x"}])
    assert read_user_tasks(seq).items[0].meta == {"target": "x"}


@pytest.mark.parametrize("lines, line, problem", [
    ([{"text": "t"}], 1, "the first line is an item"),
    ([{"kind": "essay"}], 1, "unknown kind 'essay'"),
    ([{"name": "x"}], 1, 'missing field "kind"'),
    ([{"kind": "ab_choice"}], 1, "needs a behaviour"),
    ([{"kind": "mcq", "max_new_tokens": 0}], 1, '"max_new_tokens" is 0'),
    ([{"kind": "mcq", "max_new_tokens": True}], 1, '"max_new_tokens" is True'),
    ([{"kind": "mcq", "behavior": "x"}], 1, "unknown field(s) 'behavior'"),
    ([HEADER, {"txt": "t"}], 2, "unknown field(s) 'txt'"),
    ([HEADER, {"target": "A"}], 2, 'missing field "text"'),
    ([HEADER, {"text": "", "target": "A"}], 2, 'field "text" is empty'),
    ([HEADER, {"text": "t"}], 2, "an A/B item needs a target"),
    ([HEADER, {"text": "t", "target": "C"}], 2, "target 'C' is not one of A, B"),
    ([HEADER, {"text": "t", "target": "A", "split": "test"}], 2, "unknown split 'test'"),
    ([HEADER, {"text": "t", "target": "A", "meta": {"k": 1}}], 2, '"meta" is not an object'),
    ([HEADER, {"text": "t", "target": "A", "id": "1"}, {"text": "u", "target": "A", "id": "1"}],
     3, "duplicate item id 'risk-val-1'"),
    ([HEADER, '{"text": "t",'], 2, "invalid JSON"),
])
def test_bad_records_give_file_line_errors(tmp_path: Path, write_jsonl: WriteJsonl,
                                           lines: list[Any], line: int, problem: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(TaskFormatError, match=error_at(path, line)) as info:
        read_user_tasks(path)
    assert problem in str(info.value)


def test_docstring_example_is_a_valid_file(tmp_path: Path) -> None:
    lines = [line.strip() for line in (user_tasks.__doc__ or "").splitlines()
             if line.startswith("    {")]
    path = tmp_path / "example.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    task = read_user_tasks(path)
    assert task.spec.behaviour == "risk-seeking" and [i.target for i in task.items] == ["A", "B"]


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    for path, problem in ((empty, "file is empty"), (tmp_path / "gone.jsonl", "file not found")):
        with pytest.raises(TaskFormatError, match=error_at(path, None)) as info:
            read_user_tasks(path)
        assert problem in str(info.value)
