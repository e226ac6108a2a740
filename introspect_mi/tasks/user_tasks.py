"""Reader for users' own tasks: one JSONL file per task, a header line then one item a line.

Format (blank lines are skipped; unknown fields are errors, so typos do not pass silently)::

    {"name": "risk_taking", "kind": "ab_choice", "behaviour": "risk-seeking"}
    {"id": "r1", "text": "Bet on a coin?\\n\\nChoices:\\nA - Yes\\nB - No\\n...", "target": "A"}
    {"text": "...", "target": "B", "split": "train", "meta": {"source": "my notes"}}

Header (first line): "kind" (required) is one of sequence, numbers, ab_choice, mcq,
completion; "name" (default the file stem; the `name` argument overrides it); "behaviour"
(required for ab_choice: the word in "Did you choose the more <behaviour> option?");
"max_new_tokens" (a positive int, default by kind); "description".

Items: "text" (required) is the full object-level prompt P, instruction included; "target" is
A/B for ab_choice (required: the letter of the option showing the behaviour), A–D for mcq (the
correct letter, stored in meta["answer"]), free text otherwise (meta["target"]); "split" is
"train" or "val" (default "val": user tasks are usually held out); "id" (item id becomes
"<name>-<split>-<id>", else "<name>-<split>-<index within split>"); "meta" maps strings to strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from introspect_mi.tasks.base import TaskItem, TaskKind, TaskSpec
from introspect_mi.tasks.errors import TaskFormatError
from introspect_mi.tasks.generated import DEFAULT_N
from introspect_mi.tasks.jsonl import JsonRecord, read_jsonl
from introspect_mi.tasks.records import (
    DEFAULT_MAX_NEW_TOKENS,
    SPLIT_NAMES,
    check_split,
    item_from_record,
    item_id,
)

HEADER_FIELDS = ("name", "kind", "behaviour", "max_new_tokens", "description")
ITEM_FIELDS = ("text", "id", "target", "split", "meta")
DEFAULT_SPLIT = "val"
HEADER_EXAMPLE = '{"name": "my_task", "kind": "ab_choice", "behaviour": "risk-seeking"}'


@dataclass(frozen=True)
class FileTask:
    """A task read from a file; it answers `generate` like a generated task (seed unused)."""

    spec: TaskSpec
    items: tuple[TaskItem, ...]

    def generate(self, split: str, n: int = DEFAULT_N, seed: int = 0) -> list[TaskItem]:
        """The file's first n items of `split`, in file order."""
        check_split(split)
        return [item for item in self.items if item.split == split][:n]


def _spec(header: JsonRecord, name: str | None) -> TaskSpec:
    if "text" in header.data:
        raise header.error("the first line is an item, not the task header",
                           f"start the file with a header such as {HEADER_EXAMPLE}")
    header.only_fields(HEADER_FIELDS)
    kind_name = header.text("kind")
    try:
        kind = TaskKind(kind_name)
    except ValueError:
        raise header.error(f"unknown kind {kind_name!r}",
                           f"use one of {', '.join(k.value for k in TaskKind)}") from None
    behaviour = header.optional_text("behaviour")
    if kind is TaskKind.AB_CHOICE and behaviour is None:
        raise header.error(
            "an ab_choice task needs a behaviour",
            'add "behaviour": e.g. "risk-seeking" (read as "the more <behaviour> option")',
        )
    tokens = header.data.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS[kind])
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
        raise header.error(f'"max_new_tokens" is {tokens!r}', "give a positive whole number")
    return TaskSpec(
        name=name or header.optional_text("name") or header.path.stem,
        kind=kind,
        max_new_tokens=tokens,
        behaviour=behaviour,
        description=header.optional_text("description") or "",
    )


def _meta(record: JsonRecord) -> dict[str, str]:
    meta = record.data.get("meta", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise record.error('"meta" is not an object of strings', 'write "meta": {"key": "value"}')
    return dict(meta)


def _split(record: JsonRecord) -> str:
    split = record.optional_text("split") or DEFAULT_SPLIT
    if split not in SPLIT_NAMES:
        raise record.error(f"unknown split {split!r}",
                           f'use "split": one of {", ".join(SPLIT_NAMES)}')
    return split


def read_user_tasks(path: str | Path, name: str | None = None) -> FileTask:
    """The task of a user task file (format in the module docstring); `name` overrides its name."""
    records = iter(read_jsonl(path))
    header = next(records, None)
    if header is None:
        raise TaskFormatError(path, None, "file is empty",
                              f"write a header line such as {HEADER_EXAMPLE}, then one item a line")
    spec = _spec(header, name)
    items: list[TaskItem] = []
    seen: set[str] = set()
    per_split: dict[str, int] = dict.fromkeys(SPLIT_NAMES, 0)
    for record in records:
        record.only_fields(ITEM_FIELDS)
        split = _split(record)
        index = per_split[split]
        per_split[split] += 1
        identifier = item_id(spec.name, split, record.optional_text("id") or index)
        if identifier in seen:
            raise record.error(f"duplicate item id {identifier!r}", 'give each item its own "id"')
        seen.add(identifier)
        items.append(item_from_record(record, spec, split, index, record.text("text"),
                                      record.optional_text("target"), _meta(record), identifier))
    return FileTask(spec, tuple(items))
