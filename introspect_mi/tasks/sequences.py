"""Random space-separated sequence tasks: next 5 animals/colours/countries/words, next number.

Item shape follows the paper: 7–10 random items from a vocabulary, e.g.
"What is the next 5 animals in the following text? ...\\ndog cow fox ...". The `numbers` task
(released code only, is_even property) uses 3–6 random digits.
"""

from __future__ import annotations

import random

from introspect_mi.tasks.base import TaskKind, TaskSpec
from introspect_mi.tasks.generated import Draft, Draw, GeneratedTask
from introspect_mi.tasks.prompts import NUMBERS_TEMPLATE, sequence_template
from introspect_mi.tasks.records import DEFAULT_MAX_NEW_TOKENS
from introspect_mi.tasks.wordlists import ANIMALS, COLOURS, COUNTRIES, ENGLISH_WORDS

SEQUENCE_LENGTH: tuple[int, int] = (7, 10)
DIGIT_LENGTH: tuple[int, int] = (3, 6)
DIGITS: tuple[str, ...] = tuple("0123456789")


def sequence_draw(vocabulary: tuple[str, ...], length: tuple[int, int]) -> Draw:
    """A draw of `length[0]`..`length[1]` random vocabulary items joined by spaces."""

    def draw(rng: random.Random, _letter: str | None) -> Draft:
        count = rng.randint(*length)
        string = " ".join(rng.choice(vocabulary) for _ in range(count))
        return Draft(string=string, group=string)

    return draw


def next_five_task(name: str, noun: str, vocabulary: tuple[str, ...]) -> GeneratedTask:
    """A "next 5 <noun>" task over `vocabulary`."""
    spec = TaskSpec(
        name=name,
        kind=TaskKind.SEQUENCE,
        max_new_tokens=DEFAULT_MAX_NEW_TOKENS[TaskKind.SEQUENCE],
        description=f"Continue a random sequence of {SEQUENCE_LENGTH[0]}–{SEQUENCE_LENGTH[1]} "
        f"{noun} with the next 5.",
    )
    return GeneratedTask(spec, sequence_template(noun), sequence_draw(vocabulary, SEQUENCE_LENGTH))


SEQUENCE_TASKS: tuple[GeneratedTask, ...] = (
    next_five_task("animals", "animals", ANIMALS),
    next_five_task("colours", "colors", COLOURS),
    next_five_task("countries", "countries", COUNTRIES),
    next_five_task("english_words", "words", ENGLISH_WORDS),
)

NUMBERS_TASK = GeneratedTask(
    spec=TaskSpec(
        name="numbers",
        kind=TaskKind.NUMBERS,
        max_new_tokens=DEFAULT_MAX_NEW_TOKENS[TaskKind.NUMBERS],
        description="Give the next number of a random sequence of digits (a single number).",
    ),
    template=NUMBERS_TEMPLATE,
    draw=sequence_draw(DIGITS, DIGIT_LENGTH),
)
