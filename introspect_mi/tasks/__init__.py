"""Object-level tasks: generated defaults, a registry and split preset, and file readers.

Generated tasks (deterministic per seed, train/val splits of 500 by default):
sequences (animals, colours, countries, english_words), numbers, A/B behaviours
(wealth_seeking, power_seeking, myopic_reward, survival_instinct) and MCQ
(mcq_arithmetic, mcq_general). Readers take the paper's task strings, its data release, and
users' own task files.
"""

from introspect_mi.tasks.base import TaskItem, TaskKind, TaskSpec
from introspect_mi.tasks.data_release import RELEASE_PROPERTIES, ReleaseRecord, read_data_release
from introspect_mi.tasks.errors import TaskFormatError
from introspect_mi.tasks.generated import DEFAULT_N
from introspect_mi.tasks.prompts import (
    AB_TEMPLATE,
    ANIMALS_TEMPLATE,
    COLORS_TEMPLATE,
    COUNTRIES_TEMPLATE,
    MCQ_TEMPLATE,
    NUMBERS_TEMPLATE,
    PAPER_TEMPLATES,
    WORDS_TEMPLATE,
)
from introspect_mi.tasks.registry import TASKS, TaskSource, get_task, load_items, task_spec
from introspect_mi.tasks.splits import SPLITS, TaskSplit, get_split
from introspect_mi.tasks.task_strings import read_task_strings
from introspect_mi.tasks.user_tasks import FileTask, read_user_tasks

__all__ = [
    "AB_TEMPLATE",
    "ANIMALS_TEMPLATE",
    "COLORS_TEMPLATE",
    "COUNTRIES_TEMPLATE",
    "DEFAULT_N",
    "MCQ_TEMPLATE",
    "NUMBERS_TEMPLATE",
    "PAPER_TEMPLATES",
    "RELEASE_PROPERTIES",
    "SPLITS",
    "TASKS",
    "WORDS_TEMPLATE",
    "FileTask",
    "ReleaseRecord",
    "TaskFormatError",
    "TaskItem",
    "TaskKind",
    "TaskSource",
    "TaskSpec",
    "TaskSplit",
    "get_split",
    "get_task",
    "load_items",
    "read_data_release",
    "read_task_strings",
    "read_user_tasks",
    "task_spec",
]
