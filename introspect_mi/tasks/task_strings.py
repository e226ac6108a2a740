"""Reader for the paper's task-string files (evals/datasets/{train,val}_<task>.jsonl).

Each line is {"string": <task string>, "target"?: <letter>}; the object-level prompt is the
string put into a template (see `prompts.PAPER_TEMPLATES`). The target lands where `make_item`
puts it for the task's kind (A/B → `target`, MCQ → `meta["answer"]`).
"""

from __future__ import annotations

from pathlib import Path

from introspect_mi.tasks.base import TaskItem, TaskSpec
from introspect_mi.tasks.errors import TaskFormatError
from introspect_mi.tasks.jsonl import read_jsonl
from introspect_mi.tasks.prompts import PLACEHOLDER, fill
from introspect_mi.tasks.records import SPLIT_NAMES, check_split, item_from_record


def split_from_name(path: Path) -> str:
    """The split a paper file's name starts with ("train_animals.jsonl" → "train")."""
    for split in SPLIT_NAMES:
        if path.name.startswith(f"{split}_"):
            return split
    raise TaskFormatError(
        path, None, "cannot tell the split from the file name",
        "pass split='train' or split='val', or name the file train_<task>.jsonl / val_<task>.jsonl",
    )


def read_task_strings(
    path: str | Path, spec: TaskSpec, template: str, split: str | None = None
) -> list[TaskItem]:
    """Items of one task-string file; `split` defaults to the file name's prefix."""
    path = Path(path)
    if PLACEHOLDER not in template:
        raise ValueError(f"template has no {PLACEHOLDER} slot: {template!r}")
    split = split_from_name(path) if split is None else split
    check_split(split)
    items: list[TaskItem] = []
    for record in read_jsonl(path):
        string = record.text("string")
        target = record.optional_text("target")
        items.append(item_from_record(
            record, spec, split, len(items), fill(template, string), target, {"string": string}
        ))
    return items
