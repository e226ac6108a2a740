"""Turning one task record into a TaskItem: stable ids and per-kind rules for `target`.

Generators and file readers both go through `make_item`, so a generated item and a read one
carry their answer key in the same place: A/B → `target` (the behaviour's letter); MCQ →
`meta["answer"]` (the correct letter; `target` stays None); other kinds → `meta["target"]`.
"""

from __future__ import annotations

from introspect_mi.tasks.base import TaskItem, TaskKind, TaskSpec
from introspect_mi.tasks.jsonl import JsonRecord

SPLIT_NAMES: tuple[str, ...] = ("train", "val")
AB_LETTERS: tuple[str, ...] = ("A", "B")
MCQ_LETTERS: tuple[str, ...] = ("A", "B", "C", "D")
DEFAULT_MAX_NEW_TOKENS: dict[TaskKind, int] = {
    TaskKind.SEQUENCE: 16,  # five short words; the properties read the first three
    TaskKind.NUMBERS: 4,  # one number
    TaskKind.AB_CHOICE: 3,  # one letter, maybe a period
    TaskKind.MCQ: 3,
    TaskKind.COMPLETION: 64,  # 10–50 words
}


def check_split(split: str) -> None:
    """Raise ValueError unless `split` is a known split name."""
    if split not in SPLIT_NAMES:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLIT_NAMES)}")


def item_id(task: str, split: str, index: int | str) -> str:
    """The stable id of an item of a task's split: "<task>-<split>-<index or own id>"."""
    return f"{task}-{split}-{index}"


class TargetError(ValueError):
    """A target that does not fit the task's kind; `fix` says what would."""

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} — {fix}")


def _letter(target: str, allowed: tuple[str, ...]) -> str:
    letter = target.strip().upper()
    if letter not in allowed:
        raise TargetError(
            f"target {target!r} is not one of {', '.join(allowed)}",
            f'set "target" to one of {", ".join(allowed)}',
        )
    return letter


def make_item(
    spec: TaskSpec,
    split: str,
    index: int,
    text: str,
    target: str | None = None,
    meta: dict[str, str] | None = None,
    identifier: str | None = None,
) -> TaskItem:
    """Build a TaskItem, checking `target` for the task's kind (TargetError when it is wrong)."""
    meta = dict(meta or {})
    item_target: str | None = None
    if spec.kind is TaskKind.AB_CHOICE:
        if target is None:
            raise TargetError(
                "an A/B item needs a target", 'add "target": the letter (A or B) of the option '
                "that shows the behaviour",
            )
        item_target = _letter(target, AB_LETTERS)
    elif spec.kind is TaskKind.MCQ:
        if target is not None:
            meta["answer"] = _letter(target, MCQ_LETTERS)
    elif target is not None:
        meta["target"] = target
    return TaskItem(
        task=spec.name,
        item_id=identifier or item_id(spec.name, split, index),
        split=split,
        text=text,
        target=item_target,
        meta=meta,
    )


def item_from_record(
    record: JsonRecord,
    spec: TaskSpec,
    split: str,
    index: int,
    text: str,
    target: str | None,
    meta: dict[str, str],
    identifier: str | None = None,
) -> TaskItem:
    """`make_item` for a record read from a file: a bad target becomes a file:line error."""
    try:
        return make_item(spec, split, index, text, target, meta, identifier)
    except TargetError as exc:
        raise record.error(exc.problem, exc.fix) from exc
