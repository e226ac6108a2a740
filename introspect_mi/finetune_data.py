"""Self-, cross-prediction, replay and behaviour-change training data (PROTOCOL.md "Finetuning").

Self data: hypothetical prompt → property value of the target's own T=0 object answer, for
compliant object answers only, up to `per_cell` per task × property. Cross data: the same
hypothetical questions, labelled with another model's behaviour (the self-finetuned target's),
rendered in the cross model's own prompt format. Deduplication is per task × property (the same
item asked about two properties stays in both), so no property silently loses items to another.
Object-level replay (not in the paper, off unless asked for): each finetuned model's own answers
to some training items' object-level prompts, mixed in so that a small model's behaviour does
not drift away from what it learns to predict; self and cross replay use the same items.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from introspect_mi.evaluation import Pair, object_value
from introspect_mi.finetune_batches import Example
from introspect_mi.prompt_format import PromptFormat
from introspect_mi.prompts import PromptConfig, hypothetical_prompt, hypothetical_question, object_prompt


@dataclass(frozen=True)
class Labelled:
    """A hypothetical question with the property value a model's behaviour gives it."""

    pair: Pair
    label: str

    @property
    def cell(self) -> tuple[str, str]:
        return (self.pair.spec.name, self.pair.prop.name)


def label_pairs(pairs: Sequence[Pair], objects: dict[str, list[str]], per_cell: int, seed: int) -> list[Labelled]:
    """Up to `per_cell` labelled pairs per task × property, compliant object answers only."""
    seen: set[tuple[str, str, str]] = set()
    by_cell: dict[tuple[str, str], list[Labelled]] = defaultdict(list)
    for pair in pairs:
        key = (pair.spec.name, pair.prop.name, pair.item.text)
        value = object_value(pair.prop, objects[pair.item.item_id][0], pair.item.target)
        if value is None or key in seen:
            continue
        seen.add(key)
        by_cell[(pair.spec.name, pair.prop.name)].append(Labelled(pair, value))
    rng = random.Random(seed)
    chosen: list[Labelled] = []
    for cell in sorted(by_cell):
        rows = by_cell[cell]
        chosen += rows if len(rows) <= per_cell else rng.sample(rows, per_cell)
    return chosen


def relabel(data: Sequence[Labelled], objects: dict[str, list[str]]) -> tuple[list[Labelled], int]:
    """The same questions labelled with another model's behaviour; drops (and counts) the
    questions whose new object answer is non-compliant."""
    out = []
    for row in data:
        p = row.pair
        value = object_value(p.prop, objects[p.item.item_id][0], p.item.target)
        if value is not None:
            out.append(Labelled(p, value))
    return out, len(data) - len(out)


def hypothetical_examples(fmt: PromptFormat, data: Sequence[Labelled], config: PromptConfig) -> list[Example]:
    """Training examples: the hypothetical prompt rendered for `fmt` → the label."""
    return [Example(hypothetical_prompt(fmt, r.pair.item, r.pair.spec, r.pair.prop, config).text, r.label) for r in data]


def compliant_items(pairs: Sequence[Pair], objects: dict[str, list[str]]) -> list[Pair]:
    """One pair per item, in order: the item's first pair whose property its answer in `objects`
    complies with (items with no such pair are left out)."""
    seen: set[str] = set()
    out = []
    for p in pairs:
        if p.item.item_id not in seen and p.prop.is_compliant_object(objects[p.item.item_id][0]):
            seen.add(p.item.item_id)
            out.append(p)
    return out


def stratified_sample(pairs: Sequence[Pair], n: int, seed: int) -> list[Pair]:
    """A seeded sample of `n` of `pairs` spread evenly over their tasks: each task's pairs are
    shuffled and the tasks take turns (a task that runs out drops out), so no task order or
    task size decides which tasks the sample covers. Kept in the input order."""
    rng = random.Random(seed)
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(pairs):
        by_task[p.spec.name].append(i)
    queues = [rng.sample(idx, len(idx)) for _, idx in sorted(by_task.items())]
    chosen: list[int] = []
    while len(chosen) < min(n, len(pairs)):
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop())
    return [pairs[i] for i in sorted(chosen)]


def object_examples(fmt: PromptFormat, pairs: Sequence[Pair], objects: dict[str, list[str]], config: PromptConfig,
                    n: int, seed: int) -> list[Example]:
    """Behaviour-change data: object-level prompt → another model's answer, for a `stratified_sample`
    of `n` of the items it answered compliantly (one pair per item)."""
    chosen = stratified_sample(compliant_items(pairs, objects), n, seed)
    return [Example(object_prompt(fmt, p.item, p.spec, config).text, objects[p.item.item_id][0]) for p in chosen]


def subsample(data: Sequence[Labelled], fraction: float, seed: int) -> list[Labelled]:
    """A seeded `fraction` of the labelled rows of each task × property (at least one per cell),
    in the input order: smaller training sets with the composition of the whole (data scaling)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], not {fraction}")
    by_cell: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, row in enumerate(data):
        by_cell[row.cell].append(i)
    rng = random.Random(seed)
    keep = {i for _, idx in sorted(by_cell.items()) for i in rng.sample(idx, max(1, round(fraction * len(idx))))}
    return [row for i, row in enumerate(data) if i in keep]


def replay_pairs(pairs: Sequence[Pair], objects: dict[str, list[str]], n: int, seed: int) -> list[Pair]:
    """Which training items an object-level replay uses: a seeded sample of `n` of the
    `compliant_items`."""
    pool = compliant_items(pairs, objects)
    return random.Random(seed).sample(pool, min(n, len(pool)))


def replay_examples(fmt: PromptFormat, chosen: Sequence[Pair], objects: dict[str, list[str]], config: PromptConfig) -> list[Example]:
    """Object-level replay: object-level prompt → the model's own T=0 answer (`objects`, compliant
    or not), so a finetune keeps the behaviour that self-prediction is scored against. An empty
    answer has no tokens to train on: its item is left out (so another model's replay of the same
    items can be a little shorter; the study records each finetune's `n_replay`)."""
    return [Example(object_prompt(fmt, p.item, p.spec, config).text, objects[p.item.item_id][0])
            for p in chosen if objects[p.item.item_id][0].strip()]


def questions(data: Sequence[Labelled], config: PromptConfig) -> list[tuple[str, str, str]]:
    """(item id, property, hypothetical question text): what must match between self and cross data."""
    return [(r.pair.item.item_id, r.pair.prop.name, hypothetical_question(r.pair.item.text, r.pair.prop, r.pair.spec, config)) for r in data]
