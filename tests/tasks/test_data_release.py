"""Reading the paper's data release, on fixtures and on the released files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from introspect_mi.properties import PROPERTIES
from introspect_mi.tasks import RELEASE_PROPERTIES, TaskFormatError, read_data_release
from introspect_mi.tasks.data_release import split_release_name

from .conftest import WriteJsonl, count_records, error_at


def release_record(prop: str = "among_a_or_c", **changes: Any) -> dict[str, Any]:
    """A record shaped like the released ones (chat-message prompts)."""
    record: dict[str, Any] = {
        "original_question": "Q?",
        "original_dataset": "arc_challenge_non_cot",
        "object_level_prompt": [{"role": "user", "content": "Q?\nGive the answer.\n"}],
        "hypothetical_prompt": [{"role": "user", "content": 'Previously, ... "Q?" A or C?\n'}],
        "behavioral_property": prop,
        "option_matching_ethical_stance": "C",
    }
    record.update(changes)
    return record


@pytest.mark.parametrize("stem, expected", [
    ("arc_challenge_non_cot_among_a_or_c", ("arc_challenge_non_cot", "among_a_or_c")),
    ("animals_long_second_character", ("animals_long", "second_character")),
    ("wealth_seeking_ethical_stance", ("wealth_seeking", "ethical_stance")),
    ("numbers_is_even", ("numbers", "is_even")),
    ("my_task_identity", ("my_task", "identity")),
    ("identity", None),
    ("animals", None),
])
def test_file_names_split_on_the_longest_property(stem: str,
                                                  expected: tuple[str, str] | None) -> None:
    assert split_release_name(stem) == expected


def test_reads_fields_and_keeps_extras(tmp_path: Path, write_jsonl: WriteJsonl) -> None:
    folder = tmp_path / "train"
    folder.mkdir()
    path = write_jsonl(folder / "arc_challenge_non_cot_among_a_or_c.jsonl", [release_record()])
    [record] = read_data_release(path)
    assert record.object_level_prompt == "Q?\nGive the answer.\n"
    assert record.hypothetical_prompt.startswith("Previously")
    assert (record.task, record.property, record.behavioral_property, record.split) == (
        "arc_challenge_non_cot", "among_a_or_c", "among_a_or_c", "train")
    assert record.extra == {"original_question": "Q?", "original_dataset": "arc_challenge_non_cot",
                            "option_matching_ethical_stance": "C"}


def test_string_prompts_system_turns_and_unnamed_files(tmp_path: Path,
                                                       write_jsonl: WriteJsonl) -> None:
    messages = [{"role": "system", "content": ""}, {"role": "user", "content": "P"}]
    path = write_jsonl(tmp_path / "mine.jsonl", [
        release_record("is_even", object_level_prompt="P", original_dataset="numbers"),
        release_record("identity", hypothetical_prompt=messages, original_dataset=None),
    ])
    first, second = read_data_release(path)
    assert (first.object_level_prompt, first.task, first.property, first.split) == (
        "P", "numbers", "is_even", "")
    assert second.task == "mine" and second.hypothetical_prompt == "P"
    assert second.extra["hypothetical_prompt_messages"] == messages


def test_folder_reads_every_file_in_order(tmp_path: Path, write_jsonl: WriteJsonl) -> None:
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        write_jsonl(tmp_path / split / "t_identity.jsonl", [release_record("identity")] * 2)
    records = read_data_release(tmp_path)
    assert [r.split for r in records] == ["test", "test", "train", "train"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TaskFormatError, match=error_at(empty, None)):
        read_data_release(empty)


@pytest.mark.parametrize("changes, problem", [
    ({"behavioral_property": "is_even"}, "disagrees with the file name's 'among_a_or_c'"),
    ({"behavioral_property": "vibes"}, "unknown behavioral_property 'vibes'"),
    ({"behavioral_property": None}, 'missing field "behavioral_property"'),
    ({"object_level_prompt": None}, 'missing field "object_level_prompt"'),
    ({"object_level_prompt": ""}, 'field "object_level_prompt" is empty'),
    ({"object_level_prompt": 3}, "neither a string nor a list of messages"),
    ({"hypothetical_prompt": [{"role": "user"}]}, "neither a string nor a list of messages"),
    ({"hypothetical_prompt": [{"role": "system", "content": "s"}]}, "exactly one non-empty user"),
])
def test_bad_records_give_file_line_errors(tmp_path: Path, write_jsonl: WriteJsonl,
                                           changes: dict[str, Any], problem: str) -> None:
    path = write_jsonl(tmp_path / "x_among_a_or_c.jsonl",
                       [release_record(), "", release_record(**changes)])
    with pytest.raises(TaskFormatError, match=error_at(path, 3)) as info:
        read_data_release(path)
    assert problem in str(info.value)


def test_release_names_cover_the_project_properties() -> None:
    assert set(PROPERTIES) <= set(RELEASE_PROPERTIES)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(TaskFormatError, match=error_at(tmp_path / "gone.jsonl", None)):
        read_data_release(tmp_path / "gone.jsonl")


def test_paper_data_release(paper_data: Path) -> None:
    release = paper_data / "dataset_release"
    if not release.is_dir():
        pytest.skip(f"{release} not present")
    records = read_data_release(release)
    files = sorted(release.rglob("*.jsonl"))
    assert len(records) == sum(count_records(f) for f in files)
    assert {r.property for r in records} <= set(RELEASE_PROPERTIES)
    assert {r.split for r in records} <= {"train", "test"}
    for r in records:
        assert r.property == r.behavioral_property
        assert r.task == r.extra["original_dataset"]
        assert r.object_level_prompt.rstrip("\n") in r.hypothetical_prompt
    with files[0].open(encoding="utf-8") as handle:
        first = json.loads(handle.readline())
    assert records[0].object_level_prompt == first["object_level_prompt"][0]["content"]
