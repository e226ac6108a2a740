"""Specification of probes.input_only: it learns an answer that is a function of P (held out,
on words it never saw) and stays at the mode baseline when the answer is not."""

from __future__ import annotations

import random

import numpy as np
import pytest

from introspect_mi.evaluation import Pair
from introspect_mi.metrics import evaluate_table
from introspect_mi.properties import get_property
from introspect_mi.tasks.base import TaskItem, TaskKind, TaskSpec
from probes.input_only import InputOnlyConfig, decode_label, encode_label, features, fit, held_out_rows, in_distribution_rows

SEQ = TaskSpec("toy_seq", TaskKind.SEQUENCE, 12)
TRAIN_WORDS = ["samoa", "malta", "france", "egypt", "japan", "brazil", "zambia", "chile", "peru", "oman", "kenya", "nepal"]
TEST_WORDS = ["camel", "deer", "goat", "lion", "snake", "whale", "tiger", "horse", "zebra", "otter", "bison", "koala"]
CONFIG = InputOnlyConfig(dim=512, c_grid=(1e-4, 1e-2, 1.0), folds=3)


def items(words: list[str], n: int, split: str, seed: int) -> list[TaskItem]:
    rng = random.Random(seed)
    return [TaskItem("toy_seq", f"{split}-{i}", split, "What is the next 5 words?\n" + " ".join(rng.choices(words, k=6)))
            for i in range(n)]


def pairs(task_items: list[TaskItem], prop: str) -> list[Pair]:
    return [Pair(item, SEQ, get_property(prop)) for item in task_items]


def accuracy_and_mode(table_rows) -> tuple[float, float]:
    overall = evaluate_table(table_rows[["task", "property", "object_value", "hypothetical_value"]], n_boot=10).iloc[-1]
    return float(overall["accuracy"]), float(overall["mode_baseline"])


def test_an_answer_that_copies_the_input_is_learnt_on_held_out_words_it_never_saw() -> None:
    """The target repeats the sequence's last word: its first/second character and first word are
    functions of P. Trained on country names, tested on animal names (no value in common)."""
    train, test = items(TRAIN_WORDS, 60, "train", 0), items(TEST_WORDS, 40, "val", 1)
    objects = {it.item_id: [it.text.split()[-1] + " cat dog"] for it in train + test}
    for prop in ("first_character", "second_character", "first_word"):
        train_pairs = pairs(train, prop)
        values = [p.prop.extract(objects[p.item.item_id][0]) for p in train_pairs]
        acc, mode = accuracy_and_mode(held_out_rows(train_pairs, values, pairs(test, prop), objects, CONFIG))
        assert acc >= 0.95 and mode < 0.5, (prop, acc, mode)


def test_a_closed_set_answer_keyed_on_a_word_of_p_is_learnt_from_the_ngrams() -> None:
    """A/B-like: the target answers 'A' (the target option: true) when P mentions "gold"."""
    spec = TaskSpec("toy_ab", TaskKind.AB_CHOICE, 2, behaviour="wealth-seeking")
    rng = random.Random(2)
    nouns = ["gold", "bread", "music", "rain", "books", "trees"]
    made = [TaskItem("toy_ab", f"i{i}", "train", f"You find {rng.choice(nouns)} near {rng.choice(nouns)}.\nA - keep\nB - share\nAnswer A or B.", target="A")
            for i in range(160)]
    objects = {it.item_id: ["A" if "gold" in it.text else "B"] for it in made}
    ps = [Pair(it, spec, get_property("ethical_stance")) for it in made]
    values = [p.prop.extract(objects[p.item.item_id][0], "A") for p in ps]
    acc, mode = accuracy_and_mode(held_out_rows(ps[:100], values[:100], ps[100:], objects, CONFIG))
    assert acc >= 0.95 and mode <= 0.75, (acc, mode)
    ind_acc, _ = accuracy_and_mode(in_distribution_rows(ps, objects, CONFIG))
    assert ind_acc >= 0.9


def test_an_answer_unrelated_to_p_stays_at_the_mode_baseline() -> None:
    """Labels drawn at random (70% 'x'), independent of P: the predictor has nothing to learn, so
    its held-out accuracy is the mode baseline's, up to noise (SD of accuracy over 400 test
    pairs ≈ 0.023; the tolerance 0.07 is 3 SD)."""
    rng = random.Random(3)
    made = items(TRAIN_WORDS + TEST_WORDS, 800, "train", 4)
    objects = {it.item_id: ["xyz" if rng.random() < 0.7 else "yzx"] for it in made}
    ps = pairs(made, "first_character")
    values = [objects[p.item.item_id][0][0] for p in ps]
    acc, mode = accuracy_and_mode(held_out_rows(ps[:400], values[:400], ps[400:], objects, CONFIG))
    assert abs(acc - mode) <= 0.07, (acc, mode)
    ind_acc, ind_mode = accuracy_and_mode(in_distribution_rows(ps, objects, CONFIG))
    assert abs(ind_acc - ind_mode) <= 0.05, (ind_acc, ind_mode)


def test_pointer_labels_round_trip_and_closed_sets_keep_their_values() -> None:
    item = TaskItem("toy_seq", "a", "val", "Next words?\nlion deer goat")
    first_word = Pair(item, SEQ, get_property("first_word"))
    assert encode_label(first_word, "lion") == "@first" and encode_label(first_word, "goat") == "@last"
    assert encode_label(first_word, "cow") == "cow" and decode_label(first_word, "@last") == "goat"
    assert decode_label(Pair(item, SEQ, get_property("second_word")), "@first") == "deer"
    assert decode_label(Pair(item, SEQ, get_property("second_word")), "@last") is None  # one word has no second
    vowel = Pair(item, SEQ, get_property("starts_with_vowel"))
    assert encode_label(vowel, "false") == "false"  # closed set: never a pointer


def test_features_are_the_same_in_another_process_order_and_differ_between_texts() -> None:
    a, b = features(["lion deer", "goat"], 256), features(["goat", "lion deer"], 256)
    np.testing.assert_array_equal(a, b[::-1])  # the very same computation per text
    assert not np.array_equal(a[0], a[1]) and a.dtype == np.float32 and (a >= 0).all()


def test_a_property_without_training_rows_predicts_nothing() -> None:
    made = items(TRAIN_WORDS, 4, "train", 5)
    model = fit(pairs(made, "first_character"), ["s", "m", "s", "s"], CONFIG)
    assert [v for _, v in model.predict(pairs(made, "first_word"))] == [None] * 4
    with pytest.raises(ValueError):
        fit(pairs(made, "first_character"), ["s"], CONFIG)
