"""Self- and cross-training, shared by the study, its seed replicates and its data scaling.

Self round 1 finetunes M1 on hypothetical questions labelled with untrained M1's behaviour. That
model answers differently from the M1 whose answers labelled its data, so some of its labels are
stale: it is scored against behaviour it was not trained to predict (issue 14). Round r > 1 (the
paper authors' remedy, `--self-rounds`) labels the same training questions with round r − 1's
behaviour and finetunes base M1 again with the same budget (a fresh LoRA: every round trains as
much as round 1, and the labels, not the amount of training, are what changes); its object-level
replay is round r − 1's answers too. Each round records how many of its training labels its own
behaviour contradicts. Cross: M2 finetuned on the same questions labelled with the behaviour of
the self-trained M1 it is compared with (plus M2's own answers to the same replay items).

A `Replicate` names its finetunes so that replicates never collide in one adapter folder, and the
study's default (its seed, all the self data, round 1) keeps the names `self` and `cross`, so a
replicate run reuses the study's finished adapters.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from introspect_mi import evaluation as ev
from introspect_mi import finetune_data as fd
from introspect_mi.finetune_config import FinetuneConfig
from introspect_mi.inference import Engine
from introspect_mi.models import ModelHandle

if TYPE_CHECKING:
    from experiments.behavioral_study import Study


@dataclass(frozen=True)
class Replicate:
    """One setting of the self/cross finetunes: their seed, the share of the self data, the rounds."""

    seed: int
    fraction: float = 1.0
    rounds: int = 1
    default_seed: int = 0
    """The study's seed: finetunes with it carry no seed in their names (the study's own adapters)."""

    def __post_init__(self) -> None:
        if self.rounds < 1 or not 0 < self.fraction <= 1:
            raise ValueError(f"need rounds >= 1 and 0 < fraction <= 1, not {self.rounds}, {self.fraction}")

    @property
    def tag(self) -> str:
        """'' for the study's default; else e.g. '_seed1', '_frac25', '_seed1_frac25'."""
        seed = "" if self.seed == self.default_seed else f"_seed{self.seed}"
        return seed + ("" if self.fraction == 1 else f"_frac{round(self.fraction * 100)}")

    def name(self, kind: str, round_: int = 1) -> str:
        """Adapter (and finetune record) name, e.g. self, cross_round2, self_seed1_round2."""
        return f"{kind}{self.tag}" + ("" if round_ == 1 else f"_round{round_}")


@dataclass
class Bases:
    """The untrained models and their answers on the training items: what every replicate starts from."""

    m1: ModelHandle
    m1_engine: Engine
    m2: ModelHandle
    m2_engine: Engine
    m1_train_objects: dict[str, list[str]]
    m2_train_objects: dict[str, list[str]]


def load_bases(s: Study) -> Bases:
    c = s.config
    m1 = s.load(c.m1)
    m1_engine = s.engine(m1)
    m1_objects = s.objects(m1_engine, s.train_items, f"{c.m1} on training tasks")
    m2 = s.load(c.m2)
    m2_engine = s.engine(m2)
    m2_objects = s.objects(m2_engine, s.train_items, f"{c.m2} on training tasks (replay and behaviour-change data)")
    return Bases(m1, m1_engine, m2, m2_engine, m1_objects, m2_objects)


@dataclass
class SelfRound:
    """One finished self-training round: its model, the data it was trained on, its behaviour."""

    round: int
    name: str
    handle: ModelHandle
    engine: Engine
    train_rows: list[fd.Labelled]
    val_rows: list[fd.Labelled]
    replayed: list[ev.Pair]
    train_objects: dict[str, list[str]]
    """This round's model's answers on the training items (the labels of the next round and of cross)."""
    stale: dict[str, Any]
    """Training labels its own behaviour contradicts: n_labels, n_stale, share."""


def stale_labels(rows: list[fd.Labelled], objects: dict[str, list[str]]) -> dict[str, Any]:
    """How many training labels differ from the property of `objects` (the trained model's own
    answers; a non-compliant answer contradicts its label too)."""
    stale = sum(ev.object_value(r.pair.prop, objects[r.pair.item.item_id][0], r.pair.item.target) != r.label for r in rows)
    return {"n_labels": len(rows), "n_stale": stale, "share": stale / len(rows) if rows else float("nan")}


def self_rounds(s: Study, b: Bases, ft: FinetuneConfig, rep: Replicate) -> list[SelfRound]:
    """Round 1 … rep.rounds of self-training (module docstring); finished adapters are reused."""
    c = s.config
    ft = dataclasses.replace(ft, seed=rep.seed)
    source = b.m1_train_objects
    out: list[SelfRound] = []
    for r in range(1, rep.rounds + 1):
        train_rows, val_rows = s.self_data(source, ft)
        if rep.fraction < 1:
            train_rows = fd.subsample(train_rows, rep.fraction, rep.seed)
        replayed = s.replay_items(source, c.object_replay, len(train_rows))
        name = rep.name("self", r)
        result = s.finetune(name, b.m1, s.examples(b.m1, train_rows, replayed, source), s.examples(b.m1, val_rows), ft)
        s.finetunes[name]["n_replay"] = s.finetunes[name]["n_train"] - len(train_rows)
        handle = s.load(c.m1, adapter=result.adapter_dir)
        engine = s.engine(handle)
        objects = s.objects(engine, s.train_items, f"self-trained {c.m1} ({name}) on training tasks")
        out.append(SelfRound(r, name, handle, engine, train_rows, val_rows, replayed, objects, stale_labels(train_rows, objects)))
        s.finetunes[name]["stale_labels"] = out[-1].stale
        source = objects
    return out


def train_cross(s: Study, b: Bases, ft: FinetuneConfig, rep: Replicate, target: SelfRound) -> tuple[ModelHandle, list[fd.Labelled]]:
    """M2 finetuned on `target`'s questions labelled with `target`'s behaviour, plus M2's own
    answers to the same replay items; returns the cross-trained M2 and its training rows (the
    input-only predictor learns from the very same)."""
    ft = dataclasses.replace(ft, seed=rep.seed)
    (cross_train, dropped_train), (cross_val, dropped_val) = (fd.relabel(rows, target.train_objects) for rows in (target.train_rows, target.val_rows))
    name = rep.name("cross", target.round)
    result = s.finetune(name, b.m2, s.examples(b.m2, cross_train, target.replayed, b.m2_train_objects), s.examples(b.m2, cross_val), ft)
    s.finetunes[name].update(dropped_noncompliant=dropped_train + dropped_val, n_replay=s.finetunes[name]["n_train"] - len(cross_train))
    return s.load(s.config.m2, adapter=result.adapter_dir), cross_train
