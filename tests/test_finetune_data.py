"""Finetuning data: labels are the target's properties, compliant answers only, no property
loses items to another, self and cross data ask the same questions."""

from __future__ import annotations

from introspect_mi import finetune_data as fd
from introspect_mi.evaluation import Pair, changed_pairs, make_pairs
from introspect_mi.prompt_format import PlainFormat
from introspect_mi.prompts import PromptConfig
from introspect_mi.tasks import load_items, task_spec

ZERO_SHOT = PromptConfig(shots=0)


def animal_pairs(n: int, properties: list[str]) -> list[Pair]:
    spec = task_spec("animals")
    return make_pairs([(i, spec) for i in load_items("animals", "train", n=n)], properties)


def test_labels_are_the_targets_property_values_and_noncompliant_are_dropped() -> None:
    pairs = animal_pairs(3, ["second_character"])
    ids = [p.item.item_id for p in pairs]
    objects = {ids[0]: ["Cat dog owl"], ids[1]: ["Sorry, I can't"], ids[2]: ["ox bee"]}
    data = fd.label_pairs(pairs, objects, per_cell=10, seed=0)
    assert [(r.pair.item.item_id, r.label) for r in data] == [(ids[0], "a"), (ids[2], "x")]


def test_an_item_asked_about_two_properties_stays_in_both_and_duplicates_go() -> None:
    pairs = animal_pairs(2, ["first_word", "second_word"])
    duplicate = Pair(pairs[0].item, pairs[0].spec, pairs[0].prop)  # the same question again
    objects = {p.item.item_id: ["cat dog owl"] for p in pairs}
    data = fd.label_pairs([*pairs, duplicate], objects, per_cell=10, seed=0)
    cells = sorted((r.cell[1], r.pair.item.item_id) for r in data)
    assert len(cells) == 4 and len(set(cells)) == 4  # 2 items × 2 properties, duplicate dropped
    assert {r.label for r in data if r.cell[1] == "first_word"} == {"cat"}


def test_per_cell_caps_each_task_property_separately() -> None:
    pairs = animal_pairs(10, ["first_character", "third_character"])
    objects = {p.item.item_id: ["lion bear"] for p in pairs}
    data = fd.label_pairs(pairs, objects, per_cell=4, seed=1)
    assert sorted(r.cell[1] for r in data) == ["first_character"] * 4 + ["third_character"] * 4
    assert data == fd.label_pairs(pairs, objects, per_cell=4, seed=1)  # seeded


def test_cross_data_asks_the_same_questions_with_the_other_models_labels() -> None:
    pairs = animal_pairs(4, ["first_word"])
    self_objects = {p.item.item_id: ["cat dog"] for p in pairs}
    trained_objects = {p.item.item_id: ["owl bee"] for p in pairs}
    self_data = fd.label_pairs(pairs, self_objects, per_cell=10, seed=0)
    cross_data, dropped = fd.relabel(self_data, trained_objects)
    assert dropped == 0
    assert fd.questions(cross_data, ZERO_SHOT) == fd.questions(self_data, ZERO_SHOT)
    assert {r.label for r in self_data} == {"cat"} and {r.label for r in cross_data} == {"owl"}
    trained_objects[pairs[0].item.item_id] = ["I'm sorry"]  # the other model refuses once
    fewer, dropped = fd.relabel(self_data, trained_objects)
    assert dropped == 1 and len(fewer) == len(self_data) - 1


def test_behaviour_change_keeps_pairs_whose_property_changed() -> None:
    pairs = animal_pairs(3, ["first_character"])
    ids = [p.item.item_id for p in pairs]
    old = {ids[0]: ["cat"], ids[1]: ["dog"], ids[2]: ["owl"]}
    new = {ids[0]: ["cow"], ids[1]: ["fox"], ids[2]: ["sorry"]}  # same, changed, non-compliant
    assert [p.item.item_id for p in changed_pairs(pairs, old=old, new=new)] == [ids[1]]


def test_replay_samples_compliant_items_once_and_replays_each_models_own_answers() -> None:
    pairs = animal_pairs(6, ["first_character", "second_character"])  # every item twice
    ids = list(dict.fromkeys(p.item.item_id for p in pairs))
    m1 = {i: ["cat dog"] for i in ids} | {ids[0]: ["I'm sorry"]}  # item 0 non-compliant for M1
    chosen = fd.replay_pairs(pairs, m1, n=4, seed=3)
    assert len(chosen) == 4 and len({p.item.item_id for p in chosen}) == 4 and ids[0] not in {p.item.item_id for p in chosen}
    assert chosen == fd.replay_pairs(pairs, m1, n=4, seed=3) and len(fd.replay_pairs(pairs, m1, n=99, seed=3)) == 5
    m2 = {i: ["Sure! owl"] for i in ids}  # M2's own answers, replayed as they are
    fmt = PlainFormat(tokenizer=None)  # rendering needs no tokenizer
    blank = m2 | {chosen[0].item.item_id: [" "]}  # an empty answer has no tokens to train on
    assert [e.answer for e in fd.replay_examples(fmt, chosen, blank, ZERO_SHOT)] == ["Sure! owl"] * 3
    for objects in (m1, m2):
        examples = fd.replay_examples(fmt, chosen, objects, ZERO_SHOT)
        assert [e.answer for e in examples] == [objects[p.item.item_id][0] for p in chosen]
        assert all(p.item.text in e.prompt for p, e in zip(chosen, examples))


def mixed_pairs(counts: dict[str, int]) -> list[Pair]:
    """The first `n` items of each task, one pair each (their first property)."""
    return [make_pairs([(item, task_spec(task))], None)[0] for task, n in counts.items() for item in load_items(task, "train", n=n)]


def test_behaviour_change_sample_spreads_over_tasks_is_seeded_and_keeps_input_order() -> None:
    pairs = mixed_pairs({"countries": 30, "colours": 30, "wealth_seeking": 4, "mcq_arithmetic": 30})
    chosen = fd.stratified_sample(pairs, 40, seed=1)
    tasks = [p.spec.name for p in chosen]
    # 4 turns of 4 tasks, then wealth_seeking has run out: 12, 12, 4, 12 (the first 40 in task order were 30 countries + 10 colours)
    assert {t: tasks.count(t) for t in set(tasks)} == {"countries": 12, "colours": 12, "wealth_seeking": 4, "mcq_arithmetic": 12}
    assert chosen == sorted(chosen, key=pairs.index) and chosen == fd.stratified_sample(pairs, 40, seed=1)
    assert chosen != fd.stratified_sample(pairs, 40, seed=2) and len(fd.stratified_sample(pairs, 999, seed=1)) == len(pairs)
    objects = {p.item.item_id: ["A" if p.spec.name in ("wealth_seeking", "mcq_arithmetic") else "cat dog"] for p in pairs}  # all compliant
    examples = fd.object_examples(PlainFormat(tokenizer=None), pairs, objects, ZERO_SHOT, 40, seed=1)
    assert [e.prompt for e in examples] == [fd.object_prompt(PlainFormat(tokenizer=None), p.item, p.spec, ZERO_SHOT).text for p in chosen]


def test_subsample_keeps_a_share_of_every_cell_seeded() -> None:
    pairs = animal_pairs(20, ["first_character", "second_character"])
    data = fd.label_pairs(pairs, {p.item.item_id: ["cat dog"] for p in pairs}, per_cell=20, seed=0)
    half = fd.subsample(data, 0.5, seed=3)
    assert [r.cell[1] for r in half].count("first_character") == 10 and [r.cell[1] for r in half].count("second_character") == 10
    assert half == fd.subsample(data, 0.5, seed=3) and half != fd.subsample(data, 0.5, seed=4)
    assert half == [r for r in data if r in half]  # input order kept
    assert fd.subsample(data, 1.0, seed=3) == data and len(fd.subsample(data, 0.01, seed=3)) == 2  # at least one per cell
