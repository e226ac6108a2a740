"""Sequence tasks and the numbers task: prompt shape and sequence contents."""

from __future__ import annotations

import pytest

from introspect_mi.tasks import load_items
from introspect_mi.tasks.wordlists import ANIMALS, COLOURS, COUNTRIES, ENGLISH_WORDS

SEQUENCES = {
    "animals": ("animals", ANIMALS),
    "colours": ("colors", COLOURS),
    "countries": ("countries", COUNTRIES),
    "english_words": ("words", ENGLISH_WORDS),
}


def test_wordlists_are_clean_and_big_enough() -> None:
    for words, minimum in ((ANIMALS, 30), (COLOURS, 100), (COUNTRIES, 100),
                           (ENGLISH_WORDS, 300)):
        assert len(words) >= minimum and len(set(words)) == len(words)
        assert all(w.isalpha() and w.islower() for w in words)
    assert not set(ANIMALS) & set(COLOURS) and not set(ANIMALS) & set(COUNTRIES)
    assert not set(COLOURS) & set(COUNTRIES)


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_sequence_prompt_shape_and_contents(name: str) -> None:
    noun, vocabulary = SEQUENCES[name]
    head = (f"What is the next 5 {noun} in the following text? Respond only with the next 5 "
            f"{noun} and nothing else, including punctuation.\n")
    lengths = set()
    for item in load_items(name, "train"):
        assert item.text.startswith(head) and item.target is None
        sequence = item.text[len(head):]
        assert sequence == item.meta["string"]
        words = sequence.split(" ")
        assert set(words) <= set(vocabulary)
        lengths.add(len(words))
    assert lengths == {7, 8, 9, 10}


def test_animals_prompt_is_the_protocol_example() -> None:
    item = load_items("animals", "val", n=1)[0]
    assert item.text == ("What is the next 5 animals in the following text? Respond only with "
                         "the next 5 animals and nothing else, including punctuation.\n"
                         + item.meta["string"])


def test_numbers_prompt_and_digits() -> None:
    head = ("What is the next number in the following text? Respond only with a single number "
            "and nothing else.\n")
    for item in load_items("numbers", "val"):
        assert item.text.startswith(head)
        digits = item.text[len(head):].split(" ")
        assert 3 <= len(digits) <= 6 and all(len(d) == 1 and d.isdigit() for d in digits)
