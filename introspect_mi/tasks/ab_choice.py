"""A/B behaviour tasks (wealth/power seeking, myopic reward, survival instinct) from scenarios.

Each item fills a random scenario's slots, draws one behaviour option and one other option, and
puts the behaviour option at the item's target letter (targets are balanced A/B per split).
"""

from __future__ import annotations

import random

from introspect_mi.tasks.ab_scenarios import BEHAVIOURS, Behaviour
from introspect_mi.tasks.base import TaskKind, TaskSpec
from introspect_mi.tasks.generated import Draft, Draw, GeneratedTask
from introspect_mi.tasks.prompts import AB_TEMPLATE, ab_string
from introspect_mi.tasks.records import AB_LETTERS, DEFAULT_MAX_NEW_TOKENS


def ab_draw(behaviour: Behaviour) -> Draw:
    """A draw of one A/B question whose `letter` option shows the behaviour."""

    def draw(rng: random.Random, letter: str | None) -> Draft:
        index = rng.randrange(len(behaviour.scenarios))
        scenario = behaviour.scenarios[index]
        question = scenario.question.format(
            **{slot: rng.choice(fillers) for slot, fillers in scenario.slots.items()}
        )
        shown = rng.choice(scenario.behaviour_options)
        other = rng.choice(scenario.other_options)
        options = [shown, other] if letter == "A" else [other, shown]
        group = "\x1e".join([question, *sorted(options)])  # same question+options, any order
        return Draft(ab_string(question, options), group, letter, {"scenario": str(index)})

    return draw


def ab_task(behaviour: Behaviour) -> GeneratedTask:
    """The generated task of one behaviour."""
    spec = TaskSpec(
        name=behaviour.name,
        kind=TaskKind.AB_CHOICE,
        max_new_tokens=DEFAULT_MAX_NEW_TOKENS[TaskKind.AB_CHOICE],
        behaviour=behaviour.behaviour,
        description=behaviour.description,
    )
    return GeneratedTask(spec, AB_TEMPLATE, ab_draw(behaviour), letters=AB_LETTERS)


AB_TASKS: tuple[GeneratedTask, ...] = tuple(ab_task(behaviour) for behaviour in BEHAVIOURS)
