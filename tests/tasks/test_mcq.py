"""MCQ tasks: prompt shape, balanced letters, and answers recomputed from the question."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from introspect_mi.tasks import load_items
from introspect_mi.tasks.wordlists import ANIMALS, COLOURS, COUNTRIES

INSTRUCTION = ("\nGive the correct answer. Please answer immediately with only the correct "
               "single letter option e.g. 'A', 'B', 'C', 'D'.")
OPTIONS = re.compile(r"\n\nAnswer choices:\nA - (.+)\nB - (.+)\nC - (.+)\nD - (.+)$")
CATEGORY = {"an animal": ANIMALS, "a colour": COLOURS, "a country": COUNTRIES}


def parse(text: str) -> tuple[str, list[str]]:
    """(question, [option A..D]) of an MCQ prompt in the paper's shape."""
    assert text.endswith(INSTRUCTION)
    body = text[: -len(INSTRUCTION)]
    match = OPTIONS.search(body)
    assert match, text
    return body[: match.start()], list(match.groups())


def is_correct(question: str, option: str, options: list[str]) -> bool:
    """Recompute from the question text alone whether `option` is the right answer."""
    if m := re.fullmatch(r"(?:What is|Calculate|Compute the value of|What number is) "
                         r"(\d+) ([-+×]) (\d+)[?.]", question):
        a, op, b = int(m[1]), m[2], int(m[3])
        return int(option) == {"+": a + b, "-": a - b, "×": a * b}[op]
    if question == "Which of these words comes first in alphabetical order?":
        return option == min(options)
    if m := re.fullmatch(r'How many letters are in the word "(\w+)"\?', question):
        return int(option) == len(m[1])
    if question == "Which of these numbers is the largest?":
        return int(option) == max(map(int, options))
    if m := re.fullmatch(r"What is the remainder when (\d+) is divided by (\d+)\?", question):
        return int(option) == int(m[1]) % int(m[2])
    if m := re.fullmatch(r"Which of these is (an animal|a colour|a country)\?", question):
        return option in CATEGORY[m[1]]
    raise AssertionError(f"unrecognised question: {question!r}")


@pytest.mark.parametrize("name", ["mcq_arithmetic", "mcq_general"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_exactly_the_answer_letter_is_correct(name: str, split: str) -> None:
    items = load_items(name, split)
    assert Counter(i.meta["answer"] for i in items) == {"A": 125, "B": 125, "C": 125, "D": 125}
    for item in items:
        assert item.target is None
        question, options = parse(item.text)
        assert len(set(options)) == 4
        correct = [letter for letter, option in zip("ABCD", options, strict=True)
                   if is_correct(question, option, options)]
        assert correct == [item.meta["answer"]], item.text


def test_arithmetic_uses_all_operations_and_general_all_families() -> None:
    arithmetic = load_items("mcq_arithmetic", "train")
    questions = [parse(i.text)[0] for i in arithmetic]
    assert {op for q in questions for op in "+-×" if f" {op} " in q} == {"+", "-", "×"}
    families = Counter(i.meta["family"] for i in load_items("mcq_general", "train"))
    assert set(families) == {"alphabetical", "letter_count", "largest", "remainder", "category"}
    assert min(families.values()) > 50
