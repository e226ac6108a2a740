"""Generated four-option multiple-choice tasks with a checkable correct letter.

Two tasks mirror the paper's pair of MCQ datasets: `mcq_arithmetic` (training, standing in for
ARC) asks for a sum, difference or product; `mcq_general` (held out, standing in for MMLU's mix
of subjects) mixes five question families — alphabetical order, letter counts, largest number,
remainders and category membership. The correct letter is balanced over A–D per split and stored
in `meta["answer"]`; `meta["family"]` names the question family.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from introspect_mi.tasks.base import TaskKind, TaskSpec
from introspect_mi.tasks.generated import Draft, Draw, GeneratedTask
from introspect_mi.tasks.prompts import MCQ_TEMPLATE, mcq_string
from introspect_mi.tasks.records import DEFAULT_MAX_NEW_TOKENS, MCQ_LETTERS
from introspect_mi.tasks.wordlists import ANIMALS, COLOURS, COUNTRIES, ENGLISH_WORDS


@dataclass(frozen=True)
class Question:
    """A question, its correct option, three wrong options, and its uniqueness group."""

    family: str
    text: str
    correct: str
    wrong: tuple[str, str, str]
    group: str


Family = Callable[[random.Random], Question]

OPERATIONS: dict[str, Callable[[int, int], int]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "×": lambda a, b: a * b,
}
ARITHMETIC_PHRASES = ("What is {expr}?", "Calculate {expr}.", "Compute the value of {expr}.",
                      "What number is {expr}?")
NEAR_MISSES = (-100, -11, -10, -2, -1, 1, 2, 10, 11, 100)
CATEGORIES: dict[str, tuple[str, ...]] = {"an animal": ANIMALS, "a colour": COLOURS,
                                          "a country": COUNTRIES}


def _wrong_numbers(
    rng: random.Random, answer: int, offsets: tuple[int, ...]
) -> tuple[str, str, str]:
    """Three distinct non-negative numbers answer+offset, as strings."""
    candidates = [answer + off for off in offsets if answer + off >= 0]
    picked = rng.sample(candidates, 3)
    return (str(picked[0]), str(picked[1]), str(picked[2]))


def arithmetic(rng: random.Random) -> Question:
    """"What is 47 + 38?" with near-miss distractors."""
    op = rng.choice(tuple(OPERATIONS))
    if op == "×":
        a, b = rng.randint(11, 99), rng.randint(2, 12)
    else:
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        if op == "-" and b > a:
            a, b = b, a
    answer = OPERATIONS[op](a, b)
    text = rng.choice(ARITHMETIC_PHRASES).format(expr=f"{a} {op} {b}")
    return Question("arithmetic", text, str(answer), _wrong_numbers(rng, answer, NEAR_MISSES),
                    f"{a}{op}{b}")


def alphabetical(rng: random.Random) -> Question:
    """Which of four words comes first alphabetically."""
    words = sorted(rng.sample(ENGLISH_WORDS, 4))
    return Question("alphabetical", "Which of these words comes first in alphabetical order?",
                    words[0], (words[1], words[2], words[3]), " ".join(words))


def letter_count(rng: random.Random) -> Question:
    """How many letters a word has."""
    word = rng.choice(ENGLISH_WORDS)
    return Question("letter_count", f'How many letters are in the word "{word}"?',
                    str(len(word)), _wrong_numbers(rng, len(word), (-2, -1, 1, 2, 3)), word)


def largest(rng: random.Random) -> Question:
    """Which of four numbers is the largest."""
    numbers = sorted(rng.sample(range(10, 1000), 4), reverse=True)
    texts = [str(n) for n in numbers]
    return Question("largest", "Which of these numbers is the largest?", texts[0],
                    (texts[1], texts[2], texts[3]), " ".join(texts))


def remainder(rng: random.Random) -> Question:
    """The remainder of a small division."""
    a, b = rng.randint(20, 200), rng.randint(4, 12)
    wrong = rng.sample([r for r in range(b) if r != a % b], 3)
    return Question("remainder", f"What is the remainder when {a} is divided by {b}?",
                    str(a % b), (str(wrong[0]), str(wrong[1]), str(wrong[2])), f"{a}%{b}")


def category(rng: random.Random) -> Question:
    """Which of four words belongs to a category (animal, colour, country)."""
    noun = rng.choice(tuple(CATEGORIES))
    others = [word for name, words in CATEGORIES.items() if name != noun for word in words]
    correct = rng.choice(CATEGORIES[noun])
    wrong = rng.sample(others, 3)
    return Question("category", f"Which of these is {noun}?", correct,
                    (wrong[0], wrong[1], wrong[2]), " ".join([noun, correct, *sorted(wrong)]))


def mcq_draw(families: tuple[Family, ...]) -> Draw:
    """A draw of one question from a random family, its correct option at `letter`."""

    def draw(rng: random.Random, letter: str | None) -> Draft:
        question = rng.choice(families)(rng)
        options = list(question.wrong)
        rng.shuffle(options)
        options.insert(MCQ_LETTERS.index(letter or "A"), question.correct)
        return Draft(mcq_string(question.text, options), f"{question.family}:{question.group}",
                     letter, {"family": question.family})

    return draw


def mcq_task(name: str, description: str, families: tuple[Family, ...]) -> GeneratedTask:
    """A generated MCQ task over question families."""
    spec = TaskSpec(name=name, kind=TaskKind.MCQ, description=description,
                    max_new_tokens=DEFAULT_MAX_NEW_TOKENS[TaskKind.MCQ])
    return GeneratedTask(spec, MCQ_TEMPLATE, mcq_draw(families), letters=MCQ_LETTERS)


MCQ_TASKS: tuple[GeneratedTask, ...] = (
    mcq_task("mcq_arithmetic", "Four-option arithmetic questions (ARC stand-in).", (arithmetic,)),
    mcq_task("mcq_general", "Four-option questions of mixed families (MMLU stand-in).",
             (alphabetical, letter_count, largest, remainder, category)),
)
