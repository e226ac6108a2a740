"""Self- and cross-prediction evaluation: tasks → prompts → answers → properties → rows.

One row per (item, property): the target's object-level answer and its property value (None:
non-compliant, dropped by the metrics), the predictor's hypothetical answer and its normalised
value (None: non-compliant, counted wrong), and whether they match. `metrics` turns rows into
tables; nothing here knows about figures.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from introspect_mi import answers
from introspect_mi.answers import CallCounter
from introspect_mi.inference import Decoding, Engine
from introspect_mi.metrics import calibration_curve, calibration_pairs, mad, mad_interval, sample_distribution
from introspect_mi.prompts import PromptConfig, hypothetical_prompt, object_prompt
from introspect_mi.properties import Property, get_property, properties_for
from introspect_mi.tasks import get_task, read_user_tasks
from introspect_mi.tasks.base import TaskItem, TaskSpec

HYPOTHETICAL_MAX_NEW_TOKENS = 8  # property answers are one character / word / letter


@dataclass(frozen=True)
class Pair:
    """One (item, property) cell of an evaluation."""

    item: TaskItem
    spec: TaskSpec
    prop: Property


def load_task_items(tasks: Sequence[str], split: str, n_items: int, seed: int) -> list[tuple[TaskItem, TaskSpec]]:
    """Items of each task: a registered task name, or a user task file (`*.jsonl`, see
    introspect_mi/tasks/user_tasks.py for the format)."""
    out = []
    for name in tasks:
        source = read_user_tasks(name) if name.endswith(".jsonl") else get_task(name)
        out += [(item, source.spec) for item in source.generate(split, n_items, seed)]
    return out


def make_pairs(items: Sequence[tuple[TaskItem, TaskSpec]], properties: Sequence[str] | None) -> list[Pair]:
    """Every applicable (item, property); `properties=None` means all that apply to each task."""
    chosen = None if properties is None else {get_property(p).name for p in properties}
    return [Pair(item, spec, prop) for item, spec in items for prop in properties_for(spec)
            if chosen is None or prop.name in chosen]


def object_answers(engine: Engine, items: Sequence[tuple[TaskItem, TaskSpec]], config: PromptConfig,
                   root: Path, counter: CallCounter | None = None, decoding: Decoding | None = None) -> dict[str, list[str]]:
    """item_id → the model's object-level answers (greedy: one), per task's answer length."""
    by_task: dict[str, list[tuple[TaskItem, TaskSpec]]] = defaultdict(list)
    for item, spec in items:
        by_task[spec.name].append((item, spec))
    out: dict[str, list[str]] = {}
    for group in by_task.values():
        spec = group[0][1]
        dec = decoding or Decoding(spec.max_new_tokens)
        prompts = [object_prompt(engine.handle.prompt_format, item, spec, config).text for item, _ in group]
        got = answers.generate(engine, prompts, dec, root, counter, desc=f"{engine.handle.name} · {spec.name} object-level")
        out.update({item.item_id: a for (item, _), a in zip(group, got)})
    return out


def hypothetical_prompts(engine: Engine, pairs: Sequence[Pair], config: PromptConfig) -> list[str]:
    fmt = engine.handle.prompt_format
    return [hypothetical_prompt(fmt, p.item, p.spec, p.prop, config).text for p in pairs]


def hypothetical_answers(engine: Engine, pairs: Sequence[Pair], config: PromptConfig, root: Path,
                         counter: CallCounter | None = None, decoding: Decoding | None = None) -> list[list[str]]:
    """The predictor's answers to each pair's hypothetical question."""
    prompts = hypothetical_prompts(engine, pairs, config)
    dec = decoding or Decoding(HYPOTHETICAL_MAX_NEW_TOKENS)
    return answers.generate(engine, prompts, dec, root, counter, desc=f"{engine.handle.name} · hypothetical")


def object_value(prop: Property, answer: str, target: str | None) -> str | None:
    """Ground truth of one object answer: None when it is non-compliant."""
    return prop.extract(answer, target) if prop.is_compliant_object(answer) else None


def score_rows(pairs: Sequence[Pair], objects: dict[str, list[str]], hypotheticals: Sequence[list[str]]) -> pd.DataFrame:
    """The evaluation table's rows (see the module docstring)."""
    rows = []
    for pair, hyp in zip(pairs, hypotheticals):
        obj = objects[pair.item.item_id][0]
        value = object_value(pair.prop, obj, pair.item.target)
        predicted = pair.prop.normalize_hypothetical(hyp[0])
        rows.append({
            "item_id": pair.item.item_id, "task": pair.spec.name, "property": pair.prop.name,
            "object_answer": obj, "object_value": value, "hypothetical_answer": hyp[0],
            "hypothetical_value": predicted, "correct": value is not None and predicted == value,
        })
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Calibration:
    """Calibration of a predictor about a target on one task × property (PROTOCOL.md), each MAD
    with a 95% bootstrap CI over prompts. `noise_floor`: the sampled MAD between two independent
    sets of the target's own T=1 object samples — what a perfect predictor would score with this
    many samples per prompt (the exact variant has no sampling noise)."""

    mad_sampled: float
    mad_exact: float
    curve_sampled: pd.DataFrame
    curve_exact: pd.DataFrame
    n_prompts: int
    mad_sampled_ci: tuple[float, float]
    mad_exact_ci: tuple[float, float]
    noise_floor: float
    noise_floor_ci: tuple[float, float]


@dataclass(frozen=True)
class CalibrationSkipped:
    """A calibration that cannot be measured, and why: the target's object level gives no
    property value to compare with (known only once its answers are in)."""

    reason: str
    n_prompts: int


def calibration(predictor: Engine, target: Engine, pairs: Sequence[Pair], object_config: PromptConfig,
                hypothetical_config: PromptConfig, root: Path, n_samples: int, seed: int,
                counter: CallCounter | None = None, n_bins: int = 10, n_boot: int = 1000) -> Calibration | CalibrationSkipped:
    """MAD from T=1 samples, and the exact variant from first-token probabilities; skipped (before
    the predictor runs) when no object-level sample, or no first token, gives a property value."""
    items = [(p.item, p.spec) for p in pairs]

    def object_dists(sample_seed: int) -> list[dict[str, float]]:
        dec = Decoding(pairs[0].spec.max_new_tokens, temperature=1.0, n=n_samples, seed=sample_seed)
        samples = object_answers(target, items, object_config, root, counter, decoding=dec)
        return [sample_distribution([object_value(p.prop, a, p.item.target) for a in samples[p.item.item_id]], drop_none=True)
                for p in pairs]

    prop = ", ".join(sorted({p.prop.name for p in pairs}))
    obj_dists, replica = object_dists(seed), object_dists(seed + 1)
    if not (any(obj_dists) and any(replica)):
        return CalibrationSkipped(f"none of the target's T=1 object-level answers complies with {prop} "
                                  f"({len(pairs)} prompts × {n_samples} samples)", len(pairs))
    fmt = target.handle.prompt_format
    obj_next = answers.next_token_distributions(target, [object_prompt(fmt, p.item, p.spec, object_config).text for p in pairs], root, counter=counter)
    obj_exact = [_value_distribution(d, lambda t, p=p: object_value(p.prop, t, p.item.target)) for p, d in zip(pairs, obj_next)]
    if not any(obj_exact):
        return CalibrationSkipped(f"no first token of the target's object-level answers decides {prop} ({len(pairs)} prompts), "
                                  "so its exact variant has nothing to compare", len(pairs))

    hyp_dec = Decoding(HYPOTHETICAL_MAX_NEW_TOKENS, temperature=1.0, n=n_samples, seed=seed)
    hyp_samples = hypothetical_answers(predictor, pairs, hypothetical_config, root, counter, decoding=hyp_dec)
    hyp_dists = [sample_distribution([p.prop.normalize_hypothetical(a) for a in s]) for p, s in zip(pairs, hyp_samples)]
    hyp_next = answers.next_token_distributions(predictor, hypothetical_prompts(predictor, pairs, hypothetical_config), root, counter=counter)
    hyp_exact = [_value_distribution(d, lambda t, p=p: p.prop.normalize_hypothetical(t)) for p, d in zip(pairs, hyp_next)]

    def measured(objects: list[dict[str, float]], hypotheticals: list[dict[str, float]]) -> tuple[np.ndarray, tuple[float, float]]:
        return calibration_pairs(objects, hypotheticals), mad_interval(objects, hypotheticals, n_bins=n_bins, n_boot=n_boot, seed=seed)

    (sampled, sampled_ci), (exact, exact_ci), (floor, floor_ci) = (
        measured(obj_dists, hyp_dists), measured(obj_exact, hyp_exact), measured(obj_dists, replica))
    return Calibration(mad(sampled, n_bins), mad(exact, n_bins), calibration_curve(sampled, n_bins), calibration_curve(exact, n_bins),
                       len(pairs), sampled_ci, exact_ci, mad(floor, n_bins), floor_ci)


def _value_distribution(token_probs: dict[str, float], value_of) -> dict[str, float]:
    """Token probabilities → property-value probabilities, over the tokens that decide a value.

    Exact only when the first token decides the property (e.g. " cat" decides the second
    character; " c" does not): undecided mass is left out and the rest renormalised.
    """
    dist: dict[str, float] = defaultdict(float)
    for token, p in token_probs.items():
        value = value_of(token)
        if value is not None:
            dist[value] += p
    total = sum(dist.values())
    return {v: p / total for v, p in dist.items()} if total > 0 else {}


def changed_pairs(pairs: Sequence[Pair], old: dict[str, list[str]], new: dict[str, list[str]]) -> list[Pair]:
    """Pairs whose property value differs between two models' behaviour (both compliant)."""
    out = []
    for p in pairs:
        before = object_value(p.prop, old[p.item.item_id][0], p.item.target)
        after = object_value(p.prop, new[p.item.item_id][0], p.item.target)
        if before is not None and after is not None and before != after:
            out.append(p)
    return out


def changed_fraction(before: dict[str, list[str]], after: dict[str, list[str]]) -> float:
    """Share of items whose (first) object-level answer differs between two models."""
    keys = sorted(set(before) & set(after))
    return float(np.mean([before[k][0] != after[k][0] for k in keys])) if keys else float("nan")
