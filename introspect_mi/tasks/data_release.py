"""Reader for the paper's data release (dataset_release/{train,test}/<task>_<property>.jsonl).

Each line holds `object_level_prompt` and `hypothetical_prompt` (a string, or a chat-message
list [{"role", "content"}] as released — we keep the single user message's content verbatim,
trailing newline included) and `behavioral_property`; other fields (original_question,
original_dataset, option_matching_ethical_stance, ...) are kept in `extra`. Task and property
come from the file name, matching the longest known property suffix because task names
contain underscores ("arc_challenge_non_cot_among_a_or_c" → arc_challenge_non_cot,
among_a_or_c); a file named otherwise takes them from `original_dataset`/`behavioral_property`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from introspect_mi.tasks.errors import TaskFormatError
from introspect_mi.tasks.jsonl import JsonRecord, read_jsonl

RELEASE_PROPERTIES: tuple[str, ...] = (
    "first_character", "second_character", "third_character",
    "first_word", "second_word", "third_word",
    "starts_with_vowel", "is_even", "ethical_stance",
    "among_a_or_c", "among_b_or_d", "identity",
)
PROMPT_FIELDS: tuple[str, ...] = ("object_level_prompt", "hypothetical_prompt")
RELEASE_SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class ReleaseRecord:
    """One released (object-level prompt, hypothetical prompt, property) triple."""

    object_level_prompt: str
    hypothetical_prompt: str
    behavioral_property: str
    task: str
    property: str
    split: str  # the folder the file sits in ("train"/"test"), else ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def split_release_name(stem: str) -> tuple[str, str] | None:
    """(task, property) of a file stem "<task>_<property>", or None if no property matches."""
    for prop in sorted(RELEASE_PROPERTIES, key=len, reverse=True):
        suffix = f"_{prop}"
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)], prop
    return None


def _user_content(record: JsonRecord, key: str, extra: dict[str, Any]) -> str:
    """The prompt text of field `key`: a string, or the one user message of a message list."""
    value = record.data.get(key)
    if isinstance(value, str) or value is None:
        return record.text(key)
    fix = f'write "{key}" as a string or as [{{"role": "user", "content": "..."}}]'
    if not isinstance(value, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value
    ):
        raise record.error(f'field "{key}" is neither a string nor a list of messages', fix)
    users: list[str] = [m["content"] for m in value if m["role"] == "user"]
    if len(users) != 1 or not users[0].strip():
        raise record.error(f'field "{key}" needs exactly one non-empty user message', fix)
    if len(value) > 1:
        extra[f"{key}_messages"] = value  # keep system/assistant turns, never drop them silently
    return users[0]


def _release_record(record: JsonRecord, named: tuple[str, str] | None, split: str) -> ReleaseRecord:
    extra = {k: v for k, v in record.data.items()
             if k not in (*PROMPT_FIELDS, "behavioral_property")}
    object_prompt = _user_content(record, "object_level_prompt", extra)
    hypothetical = _user_content(record, "hypothetical_prompt", extra)
    prop = record.text("behavioral_property")
    if prop not in RELEASE_PROPERTIES:
        raise record.error(f"unknown behavioral_property {prop!r}",
                           f"use one of {', '.join(RELEASE_PROPERTIES)}")
    if named is not None and named[1] != prop:
        raise record.error(
            f"behavioral_property {prop!r} disagrees with the file name's {named[1]!r}",
            "fix the field or rename the file <task>_<property>.jsonl",
        )
    return ReleaseRecord(object_prompt, hypothetical, prop, _task_name(record, named), prop, split,
                         extra)


def _task_name(record: JsonRecord, named: tuple[str, str] | None) -> str:
    """The file name's task, else the record's original_dataset, else the file stem."""
    if named is not None:
        return named[0]
    dataset = record.data.get("original_dataset")
    return dataset if isinstance(dataset, str) and dataset else record.path.stem


def read_release_file(path: str | Path) -> list[ReleaseRecord]:
    """Records of one release file."""
    path = Path(path)
    named = split_release_name(path.stem)
    split = path.parent.name if path.parent.name in RELEASE_SPLITS else ""
    return [_release_record(record, named, split) for record in read_jsonl(path)]


def read_data_release(path: str | Path) -> list[ReleaseRecord]:
    """Records of a release file, or of every *.jsonl under a release folder (sorted by path)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.rglob("*.jsonl"))
        if not files:
            raise TaskFormatError(path, None, "folder holds no .jsonl files",
                                  "point at dataset_release/ or at one <task>_<property>.jsonl")
        return [record for file in files for record in read_release_file(file)]
    return read_release_file(path)
