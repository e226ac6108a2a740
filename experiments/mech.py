"""What the mechanistic experiments share: the finished behavioural study they analyse.

A mechanistic run reads the study's saved results (never reruns it): the held-out items it
evaluated, the rows that say what each model answered and predicted, and the adapters it
trained. A *subject* is one model the study evaluated as a predictor, by label:

- `untrained`: M1 as loaded, predicting itself (hypothetical prompts with format demonstrations);
- `self`: self-trained M1 predicting itself (zero-shot hypothetical prompts, as trained);
- `cross`: cross-trained M2 predicting self-trained M1 (its object-level labels are M1's).

The study is `--study NAME`, else the one the study command names for the preset with the same
`--m1`/`--m2`. A capture records in each store what it was made from (`capture_identity`: the
study's config, the subject's weights fingerprint, its items and labels); `capture_stores` is the
one check every reader (probing, patching, SAE features) opens stores through, so a store made
from another state of the study is an error, never read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from experiments.behavioral_config import StudyConfig
from experiments.common import preset_path
from introspect_mi import config as cfg
from introspect_mi import embedded
from introspect_mi import evaluation as ev
from introspect_mi.actstore import INFO as STORE_INFO
from introspect_mi.actstore import ActivationStore
from introspect_mi.errors import UserError
from introspect_mi.models import ModelHandle, load, weights_fingerprint
from introspect_mi.paths import checkpoints_dir, runs_dir
from introspect_mi.prompt_format import PromptFormat
from introspect_mi.prompts import PromptConfig, RenderedPrompt, hypothetical_prompt, object_prompt
from introspect_mi.store import RunDir
from introspect_mi.tasks.base import TaskItem, TaskSpec

SUBJECTS = ("untrained", "self", "cross")
"""In the order of the study's predictors (behavioral_study.py): rows_0, rows_1, rows_2."""
STUDY_FIELDS = {f.name for f in dataclasses.fields(StudyConfig)}
LABELS = ("object_answer", "object_value", "hypothetical_answer", "hypothetical_value", "correct")
"""The study's row columns a capture stores with each hypothetical record."""


@dataclass(frozen=True)
class Subject:
    label: str
    model: str
    adapter: Path | None
    hypothetical_shots: int
    rows: pd.DataFrame
    """The study's evaluation rows for this predictor (one per held-out item × property)."""


@dataclass(frozen=True)
class StudyChoice:
    """How a mechanistic experiment picks the finished study it analyses (its config's first fields)."""

    study: str = ""
    """The behavioural study run to analyse (empty: the one the preset's [study] section makes, with --m1/--m2 applied)."""
    m1: str = ""
    """M1 of the study to analyse, as given to the study's --m1 (empty: the preset's); checked against the study's own."""
    m2: str = ""
    """M2 of the study to analyse, as given to the study's --m2 (empty: the preset's); checked against the study's own."""


def study_name(preset: str, choice: StudyChoice) -> str:
    """The study run a mechanistic experiment analyses: `--study`, else the name the study command
    gives for the preset with the same --m1/--m2."""
    if choice.study:
        return choice.study
    sc = cfg.build(StudyConfig, cfg.load_preset(preset_path(preset), "study"))
    sc = dataclasses.replace(sc, **{k: v for k, v in (("m1", choice.m1), ("m2", choice.m2)) if v})
    return sc.name or f"study-{sc.m1}-{sc.m2}".replace("/", "_")


C = TypeVar("C", bound=StudyChoice)


def resolved(config: C, view: StudyView) -> C:
    """`config` naming the study it analyses (run name, M1, M2) as its run folder records it, so
    two spellings that choose one study are one config."""
    return dataclasses.replace(config, study=view.name, m1=view.config.m1, m2=view.config.m2)


def open_study(preset: str, choice: StudyChoice) -> StudyView:
    """The finished study `choice` names, checked to be made with its --m1/--m2 when given."""
    view = StudyView(study_name(preset, choice))
    for key in ("m1", "m2"):
        wanted, made = getattr(choice, key), getattr(view.config, key)
        if wanted and wanted != made:
            raise UserError(f"the study {view.name!r} was run with {key} {made}, not {wanted}",
                            f"pass --study the name of the study run with --{key} {wanted} (the name it printed), or leave out --{key}")
    return view


def open_capture(name: str, preset: str) -> RunDir:
    """The capture run `name` under runs/, or a one-line error naming the command that makes it."""
    if not (runs_dir() / name / RunDir.CONFIG).is_file():
        raise UserError(f"no capture run {name!r} in {runs_dir()}",
                        f"make it with `python -m experiments.capture --preset {preset}`, or pass --capture with an existing run's name")
    return RunDir.open(runs_dir(), name)


def digest(obj: Any) -> str:
    """16-hex sha256 of a JSON-ready value (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()[:16]


def subject_fingerprint(subject: Subject) -> str:
    """The subject's weights fingerprint (`ModelHandle.fingerprint`) without loading them. A base
    model named by a hub id with no local copy (captured with --remote on NDIF) is `hub:<id>`, as
    its remote handle records it."""
    model = subject.model
    if subject.adapter is None and model not in embedded.EMBEDDED and not Path(model).expanduser().exists() and model.count("/") == 1:
        return f"hub:{model}"
    return weights_fingerprint(model, [subject.adapter] if subject.adapter else [])


def capture_identity(view: StudyView, subject: Subject) -> dict[str, str]:
    """What a capture of `subject` is made from: the study (name, config), the subject's weights
    (model + adapter fingerprint), its items and the study's labels for them. The capture records
    it in the store's info; the capture's reuse and every reader compare it with the study now."""
    pairs = scored_pairs(view, subject)
    return {"study": view.name, "study_config": digest(view.run.config), "fingerprint": subject_fingerprint(subject),
            "items": digest([[pair.item.item_id, pair.prop.name] for pair, _ in pairs]),
            "labels": digest([labels for _, labels in pairs])}


def check_identity(store: ActivationStore, expected: dict[str, str], label: str) -> None:
    """A one-line error unless `store` was captured from what `expected` describes (never reuse a stale capture)."""
    got = store.info.get("identity")
    if got == expected:
        return
    what = (f"differs in: {', '.join(k for k in expected if got.get(k) != expected[k])}" if isinstance(got, dict)
            else "it records no identity: captured by an older version")
    raise UserError(f"the {label} store in {store.folder} was captured from another state of the study {expected['study']!r} ({what})",
                    f"capture into a new run (python -m experiments.capture --name NEW, then pass --capture NEW), "
                    f"or delete {store.folder.parent.parent} and capture again")


def capture_stores(capture: RunDir, view: StudyView, labels: Sequence[str]) -> tuple[dict[str, ActivationStore], dict[str, str]]:
    """(label → the subject's finished store, label → why there is none: no store, or an incomplete
    one). A store captured from another state of the study is an error, never read."""
    stores, missing = {}, {}
    for label in labels:
        folder = capture.path(f"{label}/store")
        if not (folder / STORE_INFO).is_file():
            missing[label] = f"no activation store for {label} in {capture.folder}"
            continue
        store = ActivationStore.open(folder)
        check_identity(store, capture_identity(view, view.subject(label)), label)
        if len(store.records) < int(store.info["n_records"]):
            missing[label] = (f"the capture of {label} is incomplete ({len(store.records)} of {store.info['n_records']} records: "
                              "still running, or killed; rerun the capture, it resumes)")
            continue
        stores[label] = store
    return stores, missing


class StudyView:
    """Read-only view of a finished study run."""

    def __init__(self, name: str) -> None:
        self.run = RunDir.open(runs_dir(), name)
        config = self.run.config
        foreign = sorted(set(config) - STUDY_FIELDS) if isinstance(config, dict) else ["(not a JSON object)"]
        if foreign:
            raise UserError(f"run {name!r} is not a behavioural study (its config has {', '.join(foreign[:3])}: an `evaluate` run or a sweep?)",
                            "pass --study the name of a run made by `python -m experiments.behavioral` without a subcommand")
        if not self.run.exists("metrics.json"):
            raise UserError(f"the study {name!r} has not finished (no metrics.json in {self.run.folder})",
                            "run it first: python -m experiments.behavioral --preset quick")
        self.name = name
        self.config = StudyConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
        c = self.config
        self.items, self.pairs = study_pairs(c)
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


def scored_pairs(view: StudyView, subject: Subject) -> list[tuple[ev.Pair, dict[str, Any]]]:
    """Every pair the study scored for `subject`, with that row's labels (LABELS)."""
    rows = subject.rows.set_index(["item_id", "property"])
    out = []
    for pair in view.pairs:
        key = (pair.item.item_id, pair.prop.name)
        if key in rows.index:
            row = rows.loc[key]
            out.append((pair, {k: _plain(row[k]) for k in LABELS}))
    if not out:
        raise UserError(f"the study's rows for {subject.label} match none of its items", "rerun the study with the same preset")
    return out


def prompt_pairs(view: StudyView, subject: Subject, handle: ModelHandle) -> list[PromptPair]:
    """Every pair the study scored for `subject`, rendered in `handle`'s prompt format."""
    return render_pairs(handle.prompt_format, scored_pairs(view, subject), view.object_config, subject.hypothetical_shots)


def render_pairs(fmt: PromptFormat, scored: Sequence[tuple[ev.Pair, dict[str, Any]]], object_config: PromptConfig,
                 hypothetical_shots: int) -> list[PromptPair]:
    """(pair, labels) rendered in `fmt`: the object prompt with `object_config`, the hypothetical
    prompt with `hypothetical_shots` demonstrations."""
    hyp_config = PromptConfig(shots=hypothetical_shots)
    return [PromptPair(pair.item.item_id, pair.spec.name, pair.prop.name, object_prompt(fmt, pair.item, pair.spec, object_config),
                       hypothetical_prompt(fmt, pair.item, pair.spec, pair.prop, hyp_config), labels)
            for pair, labels in scored]


def study_pairs(c: StudyConfig) -> tuple[list[tuple[TaskItem, TaskSpec]], list[ev.Pair]]:
    """The held-out items a study with config `c` evaluates, and their item × property pairs."""
    items = ev.load_task_items(c.held_out_tasks, "val", c.eval_items, c.seed)
    return items, ev.make_pairs(items, c.properties or None)


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
