"""What the mechanistic experiments share: the finished behavioural study they analyse.

A mechanistic run reads the study's saved results (never reruns it): the held-out items it
evaluated, the rows that say what each model answered and predicted, and the adapters it
trained. A *subject* is one model the study evaluated as a predictor, by label:

- `untrained`: M1 as loaded, predicting itself (hypothetical prompts with format demonstrations);
- `self`: self-trained M1 predicting itself (zero-shot hypothetical prompts, as trained);
- `cross`: cross-trained M2 predicting self-trained M1 (its object-level labels are M1's).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.behavioral_config import StudyConfig
from experiments.common import preset_path
from introspect_mi import config as cfg
from introspect_mi import evaluation as ev
from introspect_mi.errors import UserError
from introspect_mi.models import ModelHandle, load
from introspect_mi.paths import checkpoints_dir, runs_dir
from introspect_mi.prompts import PromptConfig, RenderedPrompt, hypothetical_prompt, object_prompt
from introspect_mi.store import RunDir

SUBJECTS = ("untrained", "self", "cross")
"""In the order of the study's predictors (behavioral_study.py): rows_0, rows_1, rows_2."""


@dataclass(frozen=True)
class Subject:
    label: str
    model: str
    adapter: Path | None
    hypothetical_shots: int
    rows: pd.DataFrame
    """The study's evaluation rows for this predictor (one per held-out item × property)."""


def study_name(preset: str, study: str) -> str:
    """The study run a mechanistic preset analyses (`study` flag, else the preset's models)."""
    if study:
        return study
    sc = cfg.build(StudyConfig, cfg.load_preset(preset_path(preset), "study"))
    return sc.name or f"study-{sc.m1}-{sc.m2}".replace("/", "_")


def open_capture(name: str, preset: str) -> RunDir:
    """The capture run `name` under runs/, or a one-line error naming the command that makes it."""
    if not (runs_dir() / name / RunDir.CONFIG).is_file():
        raise UserError(f"no capture run {name!r} in {runs_dir()}",
                        f"make it with `python -m experiments.capture --preset {preset}`, or pass --capture with an existing run's name")
    return RunDir.open(runs_dir(), name)


class StudyView:
    """Read-only view of a finished study run."""

    def __init__(self, name: str) -> None:
        self.run = RunDir.open(runs_dir(), name)
        if not self.run.exists("metrics.json"):
            raise UserError(f"the study {name!r} has not finished (no metrics.json in {self.run.folder})",
                            "run it first: python -m experiments.behavioral --preset quick")
        self.name = name
        self.config = StudyConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.run.config.items()})
        c = self.config
        self.items = ev.load_task_items(c.held_out_tasks, "val", c.eval_items, c.seed)
        self.pairs = ev.make_pairs(self.items, c.properties or None)
        self.object_config = PromptConfig(shots=c.object_shots)

    def subject(self, label: str) -> Subject:
        if label not in SUBJECTS:
            raise UserError(f"unknown subject {label!r}", f"use some of: {', '.join(SUBJECTS)}")
        c = self.config
        adapters = checkpoints_dir() / "adapters" / self.name
        model, adapter, shots = {
            "untrained": (c.m1, None, c.untrained_shots),
            "self": (c.m1, adapters / "self", c.trained_shots),
            "cross": (c.m2, adapters / "cross", c.trained_shots),
        }[label]
        if adapter is not None and not adapter.is_dir():
            raise UserError(f"the study's {label} adapter is missing ({adapter})", "rerun the study: python -m experiments.behavioral --preset quick")
        rows = self.run.read_table(f"rows_{SUBJECTS.index(label)}")
        return Subject(label, model, adapter, shots, rows)

    def load(self, subject: Subject, **kwargs: Any) -> ModelHandle:
        return load(subject.model, adapter=subject.adapter, device=self.config.device or None, **kwargs)

    @cached_property
    def specs(self) -> dict[str, Any]:
        return {spec.name: spec for _, spec in self.items}


@dataclass(frozen=True)
class PromptPair:
    """One held-out item × property: P asked (object) and P quoted (hypothetical), with labels."""

    item_id: str
    task: str
    property: str
    object_prompt: RenderedPrompt
    hypothetical_prompt: RenderedPrompt
    labels: dict[str, Any]
    """object_answer, object_value, hypothetical_answer, hypothetical_value, correct (the study's row)."""


def prompt_pairs(view: StudyView, subject: Subject, handle: ModelHandle) -> list[PromptPair]:
    """Every pair the study scored for `subject`, rendered in `handle`'s prompt format."""
    rows = subject.rows.set_index(["item_id", "property"])
    hyp_config = PromptConfig(shots=subject.hypothetical_shots)
    fmt = handle.prompt_format
    out = []
    for pair in view.pairs:
        key = (pair.item.item_id, pair.prop.name)
        if key not in rows.index:
            continue
        row = rows.loc[key]
        labels = {k: _plain(row[k]) for k in ("object_answer", "object_value", "hypothetical_answer", "hypothetical_value", "correct")}
        out.append(PromptPair(pair.item.item_id, pair.spec.name, pair.prop.name,
                              object_prompt(fmt, pair.item, pair.spec, view.object_config),
                              hypothetical_prompt(fmt, pair.item, pair.spec, pair.prop, hyp_config), labels))
    if not out:
        raise UserError(f"the study's rows for {subject.label} match none of its items", "rerun the study with the same preset")
    return out


def object_values(pairs: list[PromptPair]) -> dict[str, dict[str, Any]]:
    """item_id → {property: the object answer's value} (None where the answer is non-compliant)."""
    out: dict[str, dict[str, Any]] = defaultdict(dict)
    for p in pairs:
        out[p.item_id][p.property] = p.labels["object_value"]
    return out


def _plain(value: Any) -> Any:
    """numpy/pandas scalars and NaN → JSON-ready Python values."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    return value.item() if hasattr(value, "item") else value
