"""The registry of generated tasks, as data: name → source, and lookups over it."""

from __future__ import annotations

from typing import Protocol

from introspect_mi.errors import UnknownName
from introspect_mi.tasks.ab_choice import AB_TASKS
from introspect_mi.tasks.base import TaskItem, TaskSpec
from introspect_mi.tasks.generated import DEFAULT_N
from introspect_mi.tasks.mcq import MCQ_TASKS
from introspect_mi.tasks.sequences import NUMBERS_TASK, SEQUENCE_TASKS


class TaskSource(Protocol):
    """Anything that can produce a task's items for a split and seed."""

    @property
    def spec(self) -> TaskSpec: ...

    def generate(self, split: str, n: int = DEFAULT_N, seed: int = 0) -> list[TaskItem]: ...


TASKS: dict[str, TaskSource] = {
    source.spec.name: source
    for source in (*SEQUENCE_TASKS, NUMBERS_TASK, *AB_TASKS, *MCQ_TASKS)
}


def get_task(name: str) -> TaskSource:
    """The registered task `name`; ValueError listing the known names otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownName("task", name, sorted(TASKS)) from None


def task_spec(name: str) -> TaskSpec:
    """The spec of the registered task `name`."""
    return get_task(name).spec


def load_items(name: str, split: str, n: int | None = None, seed: int = 0) -> list[TaskItem]:
    """The first n (default 500) items of task `name`'s split ("train" or "val") for `seed`."""
    return get_task(name).generate(split, DEFAULT_N if n is None else n, seed)
