"""The whole behavioural study (see experiments/behavioral.py for the stages)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import pandas as pd

from experiments.behavioral_config import StudyConfig, check_names
from experiments import behavioral_training as tr
from experiments import behavioral_endpoint as be
from experiments import behavioral_prompt_regime as pr
from experiments.behavioral_eval import Predictor, Scoring, calls_line, compare, score, summary
from experiments.behavioral_input_only import input_only_predictors
from introspect_mi import config as cfg
from introspect_mi import evaluation as ev
from introspect_mi import finetune_data as fd
from introspect_mi.answers import CallCounter
from introspect_mi.errors import UserError
from introspect_mi.finetune import TrainResult, train
from introspect_mi.finetune_config import PRESETS, FinetuneConfig
from introspect_mi.finetune_batches import Example, split_examples
from introspect_mi.inference import Engine
from introspect_mi.metrics import accuracy, exact_mcnemar
from introspect_mi.models import ModelHandle, load
from introspect_mi.paths import checkpoints_dir, runs_dir
from introspect_mi.prompts import PromptConfig
from introspect_mi.store import RunDir
from introspect_mi.timing import StageClock


def finetune_config(config: StudyConfig, lr: float = 0.0) -> FinetuneConfig:
    """The preset named by `config.finetune`, with the study's seed and any epochs/lr overrides."""
    if config.finetune not in PRESETS:
        raise UserError(f"unknown finetune preset {config.finetune!r}", f"use one of: {', '.join(PRESETS)}")
    base = PRESETS[config.finetune]
    changes: dict[str, Any] = {"seed": config.seed}
    if config.epochs:
        changes["epochs"] = config.epochs
    if lr or config.lr:
        changes["lr"] = lr or config.lr
    return dataclasses.replace(base, **changes)


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def default_name(config: StudyConfig) -> str:
    """The run (and adapter folder) name of a study given no --name."""
    return f"study-{config.m1}-{config.m2}".replace("/", "_")


class Study:
    """State shared by the stages; each stage reads cached answers or finished adapters when present."""

    def __init__(self, config: StudyConfig) -> None:
        self.config = config
        self.name = config.name or default_name(config)
        check_names([config.m1, config.m2], [*config.train_tasks, *config.held_out_tasks, config.calibration_task],
                    [*config.properties, config.calibration_property], config.finetune)
        self.run = RunDir.create(runs_dir(), self.name, cfg.to_dict(config), seed=config.seed)
        self.adapters = checkpoints_dir() / "adapters" / self.name
        self.cache = runs_dir() / "cache"
        self.counter = CallCounter()
        self.object_prompts = PromptConfig(shots=config.object_shots)
        self.untrained_prompts = PromptConfig(shots=config.untrained_shots)
        self.trained_prompts = PromptConfig(shots=config.trained_shots)
        props = config.properties or None
        self.train_items = ev.load_task_items(config.train_tasks, "train", config.train_items, config.seed)
        self.train_pairs = ev.make_pairs(self.train_items, props)
        self.eval_items = ev.load_task_items(config.held_out_tasks, "val", config.eval_items, config.seed)
        self.eval_pairs = ev.make_pairs(self.eval_items, props)
        # the training tasks' val split: the tasks finetuned on, items never trained on
        self.train_val_items = ev.load_task_items(config.train_tasks, "val", config.eval_items, config.seed)
        self.train_val_pairs = ev.make_pairs(self.train_val_items, props)
        if not self.train_pairs or not self.eval_pairs:
            raise UserError("no (task, property) pair applies", "check the tasks and properties of the preset")
        self.finetunes: dict[str, Any] = {}

    def engine(self, handle: ModelHandle) -> Engine:
        return Engine(handle, self.config.batch_size)

    def load(self, spec: str, adapter: Any = None) -> ModelHandle:
        return load(spec, adapter=adapter, device=self.config.device or None)

    def objects(self, engine: Engine, items: list, label: str, prompts: PromptConfig | None = None) -> dict[str, list[str]]:
        """`engine`'s T=0 object-level answers to `items` (cached), under the study's object prompts unless `prompts`."""
        _log(f"object-level answers: {label}")
        return ev.object_answers(engine, items, prompts or self.object_prompts, self.cache, self.counter)

    def self_data(self, objects: dict[str, list[str]], ft: FinetuneConfig) -> tuple[list[fd.Labelled], list[fd.Labelled]]:
        """Self-prediction data labelled with `objects` (M1's answers on the training items), split
        into train / validation."""
        c = self.config
        return split_examples(fd.label_pairs(self.train_pairs, objects, c.per_cell, c.seed), ft.val_fraction, ft.seed)

    def replay_items(self, objects: dict[str, list[str]], fraction: float, n_self: int) -> list[ev.Pair]:
        """The training items whose object-level answers are replayed: `fraction` × `n_self` of them."""
        return fd.replay_pairs(self.train_pairs, objects, round(fraction * n_self), self.config.seed)

    def examples(self, handle: ModelHandle, rows: list[fd.Labelled], replay: Sequence[ev.Pair] = (),
                 objects: dict[str, list[str]] | None = None) -> list[Example]:
        """Hypothetical training examples rendered in `handle`'s prompt format, then the
        object-level replay of the `replay` items with `handle`'s own answers (`objects`)."""
        hypothetical = fd.hypothetical_examples(handle.prompt_format, rows, self.trained_prompts)
        return hypothetical + (fd.replay_examples(handle.prompt_format, replay, objects, self.object_prompts) if replay and objects else [])

    def finetune(self, name: str, handle: ModelHandle, train_ex: list, val_ex: list, config: FinetuneConfig) -> TrainResult:
        if not train_ex:
            raise UserError(f"no compliant object-level answers of {handle.name} to build the {name} finetuning data from",
                            "raise --train-items, or use format demonstrations (--object-shots 2) so the model answers in format")
        _log(f"finetune {name}: {len(train_ex)} train / {len(val_ex)} validation examples on {handle.name}")
        result = train(handle, train_ex, val_ex, config, self.adapters / name)
        if not result.trained:
            _log(f"finetune {name}: reused the finished adapter {result.adapter_dir}")
        elif result.resumed_from:
            _log(f"finetune {name}: resumed at optimizer step {result.resumed_from} and finished")
        curve = pd.DataFrame(result.losses)
        if result.val_losses:
            curve = pd.concat([curve, pd.DataFrame(result.val_losses)], ignore_index=True)
        self.run.write_table(f"loss_{name}", curve)
        final_val = result.val_losses[-1]["val_loss"] if result.val_losses else None
        self.finetunes[name] = {"adapter": str(result.adapter_dir), "n_train": len(train_ex), "n_val": len(val_ex),
                                "final_loss": result.losses[-1]["loss"] if result.losses else None, "final_val_loss": final_val,
                                "trained_now": result.trained, "resumed_from": result.resumed_from}
        return result


def study(config: StudyConfig) -> dict[str, Any]:
    """Run (or resume) the study; returns the metrics written to metrics.json."""
    s = Study(config)
    c = config
    ft = finetune_config(c)
    clock = StageClock(s.run.folder)

    with clock.stage("load models, object-level answers on the training tasks"):
        bases = tr.load_bases(s)
    m1_engine, m2_engine, m2_train_objects = bases.m1_engine, bases.m2_engine, bases.m2_train_objects
    replicate = tr.Replicate(c.seed, rounds=c.self_rounds, default_seed=c.seed)
    with clock.stage("self finetune (every round)"):
        rounds = tr.self_rounds(s, bases, ft, replicate)
    m1_self, m1_self_engine = rounds[-1].handle, rounds[-1].engine
    with clock.stage("cross finetune"):
        m2_cross, cross_train = tr.train_cross(s, bases, ft, replicate, rounds[-1])

    with clock.stage("object-level answers on the held-out tasks"):
        m1_eval = s.objects(m1_engine, s.eval_items, f"{c.m1} on held-out tasks")
        m1_self_eval = s.objects(m1_self_engine, s.eval_items, f"self-trained {c.m1} on held-out tasks")
        m2_cross_engine = s.engine(m2_cross)
        m2_eval = s.objects(m2_engine, s.eval_items, f"{c.m2} on held-out tasks")
        m2_cross_eval = s.objects(m2_cross_engine, s.eval_items, f"cross-trained {c.m2} on held-out tasks")

    labels = {"untrained": f"untrained {c.m1} → itself", "self": f"self-trained {c.m1} → itself",
              "cross": f"cross-trained {c.m2} → self-trained {c.m1}"}
    predictors = [
        Predictor(labels["untrained"], m1_engine, s.untrained_prompts, m1_engine, m1_eval),
        Predictor(labels["self"], m1_self_engine, s.trained_prompts, m1_self_engine, m1_self_eval),
        Predictor(labels["cross"], m2_cross_engine, s.trained_prompts, m1_self_engine, m1_self_eval),
    ]
    cal_pairs: list[ev.Pair] = []
    if c.calibration_items:
        cal_items = ev.load_task_items([c.calibration_task], "val", c.calibration_items, c.seed)
        cal_pairs = ev.make_pairs(cal_items, [c.calibration_property])
    _log("evaluating untrained / self / cross predictors on held-out tasks")
    scoring = Scoring(s.eval_pairs, cal_pairs, s.object_prompts, s.cache, s.counter, c.calibration_samples, c.n_boot, c.seed)
    with clock.stage("hypothetical answers and calibration of the untrained / self / cross predictors"):
        metrics: dict[str, Any] = {"run": s.name, "m1": c.m1, "m2": c.m2, **score(s.run, predictors, scoring)}
    _log("input-only predictors (P's text only; the cross model's training rows, and item-grouped CV on the held-out pairs)")
    with clock.stage("input-only predictors"):
        metrics["predictors"].update(input_only_predictors(s.run, cross_train, s.eval_pairs, m1_self_eval, f"self-trained {c.m1}", c.n_boot, c.seed))
    with clock.stage("primary endpoint"):
        metrics[be.KEY] = be.primary_endpoint(s.run, metrics, first=labels["self"], second=labels["cross"], untrained=labels["untrained"],
                                              m2_values=be.pair_values(s.eval_pairs, m2_cross_eval),
                                              others=[label for label in metrics["predictors"] if label not in labels.values()],
                                              n_boot=c.n_boot, seed=c.seed)
    with clock.stage("prompt regime (0-shot vs k-shot)"):
        metrics[pr.KEY] = prompt_regime(s, {f"untrained {c.m1}": (m1_engine, m1_eval), f"self-trained {c.m1}": (m1_self_engine, m1_self_eval),
                                            f"untrained {c.m2}": (m2_engine, m2_eval), f"cross-trained {c.m2}": (m2_cross_engine, m2_cross_eval)},
                                        predictors, truth_model=f"self-trained {c.m1}")

    _log("self-prediction on the training tasks' val items (the tasks trained on, items never trained on)")
    with clock.stage("self-prediction on the training tasks' val items"):
        m1_train_val = s.objects(m1_engine, s.train_val_items, f"{c.m1} on training tasks' val items")
        m1_self_train_val = s.objects(m1_self_engine, s.train_val_items, f"self-trained {c.m1} on training tasks' val items")
        on_training_tasks = [
            Predictor(labels["untrained"], m1_engine, s.untrained_prompts, m1_engine, m1_train_val),
            Predictor(labels["self"], m1_self_engine, s.trained_prompts, m1_self_engine, m1_self_train_val),
        ]
        val_scoring = dataclasses.replace(scoring, pairs=s.train_val_pairs, calibration_pairs=[])
        training = score(s.run, on_training_tasks, val_scoring, prefix="train_")
    metrics["training_tasks"] = training["predictors"]
    metrics["training_tasks_comparison"] = compare(s.run, training, labels["self"], labels["untrained"], c.n_boot, c.seed)
    metrics["changed"] = [
        {"finetune": f"self ({c.m1})", "items": "held-out tasks", "fraction_changed": ev.changed_fraction(m1_eval, m1_self_eval),
         "n_items": len(m1_eval)},
        {"finetune": f"cross ({c.m2})", "items": "held-out tasks", "fraction_changed": ev.changed_fraction(m2_eval, m2_cross_eval),
         "n_items": len(m2_eval)},
        {"finetune": f"self ({c.m1})", "items": "training tasks' val items", "fraction_changed": ev.changed_fraction(m1_train_val, m1_self_train_val),
         "n_items": len(m1_train_val)},
    ]

    with clock.stage("behaviour change (finetune M_C, answers, hypotheticals)"):
        metrics["behaviour_change"] = behaviour_change(s, m1_self, m1_self_eval, m2_train_objects)
    metrics["finetunes"] = s.finetunes
    s.run.write_json("metrics.json", metrics)
    from experiments.behavioral_report import write_report_for

    with clock.stage("report"):
        write_report_for(s.run)
    clock.close()
    print("\n" + be.endpoint_text(metrics[be.KEY]) + "\n\n" + pr.regime_text(metrics[pr.KEY]) + "\n\nEXPLORATORY (secondary results; not the primary endpoint):\n" + summary(metrics))
    print("\non the training tasks' val items:\n" + summary({"predictors": metrics["training_tasks"], "comparison": metrics["training_tasks_comparison"]}))
    print(behaviour_change_line(metrics["behaviour_change"]))
    for r in rounds:
        print(f"self round {r.round} ({r.name}): {r.stale['n_stale']} of its {r.stale['n_labels']} training labels ({r.stale['share']:.0%}) differ from its own behaviour")
    for row in metrics["changed"]:
        print(f"object-level answers changed by the {row['finetune']} finetune on {row['items']}: {row['fraction_changed']:.0%} of {row['n_items']}")
    print(f"\n{calls_line(s.counter)}\nreport: {s.run.path('report.html')}")
    return metrics


def prompt_regime(s: Study, models: dict[str, tuple[Engine, dict[str, list[str]]]], predictors: list[Predictor],
                  truth_model: str) -> dict[str, Any]:
    """experiments/behavioral_prompt_regime.py on the held-out pairs: every model's 0-shot object-level
    answers beside its k-shot ones, self and cross scored against `truth_model`'s 0-shot behaviour
    (their hypothetical answers come from the cache), and untrained M1 asked 0-shot vs k-shot."""
    c, zero = s.config, PromptConfig(shots=0)
    zero_objects = {name: s.objects(engine, s.eval_items, f"{name} on held-out tasks, 0-shot", zero) if c.object_shots else objects
                    for name, (engine, objects) in models.items()}
    agreement = {name: pr.agreement(s.eval_pairs, objects, zero_objects[name], c.n_boot, c.seed) for name, (_, objects) in models.items()}
    untrained, self_, cross = predictors
    hypotheticals = {p.label: ev.hypothetical_answers(p.engine, s.eval_pairs, p.prompts, s.cache, s.counter) for p in (self_, cross)}
    _log(f"untrained {c.m1} asked the hypothetical questions 0-shot (the prompt's effect without training)")
    asked = [ev.hypothetical_answers(untrained.engine, s.eval_pairs, prompts, s.cache, s.counter) for prompts in (zero, untrained.prompts)]
    return {"k": c.object_shots, "k_hypothetical": c.untrained_shots, "truth_model": truth_model, "agreement": agreement,
            "zero_shot_truth": pr.zero_shot_truth(s.run, s.eval_pairs, zero_objects[truth_model], hypotheticals, c.n_boot, c.seed),
            "untrained_prompt_effect": pr.untrained_prompt_effect(s.eval_pairs, untrained.target_objects, *asked, c.n_boot, c.seed)}


MIN_CHANGED = 50
"""Held-out pairs the behaviour change must change for its new-vs-old comparison to mean much."""


def behaviour_change_line(bc: dict[str, Any]) -> str:
    """The printed result of the behaviour change, with its paired test and a warning when weak."""
    line = f"behaviour change: M_C predicts its new behaviour {bc['new']['value']:.1%}, its old {bc['old']['value']:.1%} (n = {bc['n_changed']} changed pairs"
    if "mcnemar" in bc:
        m = bc["mcnemar"]
        line += f"; exact McNemar on {m['new_only'] + m['old_only']} discordant pairs: {m['new_only']} new only, {m['old_only']} old only, p = {m['p_value']:.3g}"
    line += ")"
    if bc["n_changed"] < MIN_CHANGED:
        line += f"\n  fewer than {MIN_CHANGED} pairs changed: raise behaviour_change_items or behaviour_change_lr in the preset"
    return line


def behaviour_change(s: Study, m1_self: ModelHandle, m1_self_eval: dict[str, list[str]], m2_train_objects: dict[str, list[str]]) -> dict[str, Any]:
    """PROTOCOL.md "Behaviour change": finetune self-trained M1 on M2's object-level answers on the
    training tasks → M_C; on held-out pairs whose property changed, does M_C predict its new or
    its old behaviour?"""
    c = s.config
    examples = fd.object_examples(m1_self.prompt_format, s.train_pairs, m2_train_objects, s.object_prompts, c.behaviour_change_items, c.seed)
    lr = c.behaviour_change_lr or finetune_config(c).lr / 10
    bc_config = dataclasses.replace(finetune_config(c, lr), epochs=1)
    result = s.finetune("behaviour_change", m1_self, *split_examples(examples, bc_config.val_fraction, bc_config.seed), bc_config)
    mc = s.load(c.m1, adapter=[m1_self.adapter, result.adapter_dir])
    mc_engine = s.engine(mc)
    mc_eval = s.objects(mc_engine, s.eval_items, f"M_C ({c.m1}, behaviour-changed) on held-out tasks")
    changed = ev.changed_pairs(s.eval_pairs, old=m1_self_eval, new=mc_eval)
    if not changed:
        return {"n_changed": 0, "n_train": len(examples), "source": c.m2,
                "new": {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}, "old": {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}}
    _log(f"behaviour change: {len(changed)} held-out pairs changed their property")
    hyps = ev.hypothetical_answers(mc_engine, changed, s.trained_prompts, s.cache, s.counter)
    new_rows = ev.score_rows(changed, mc_eval, hyps)
    old_rows = ev.score_rows(changed, m1_self_eval, hyps)
    s.run.write_table("behaviour_change_rows", new_rows.assign(old_object_answer=old_rows["object_answer"], old_value=old_rows["object_value"],
                                                               correct_old=old_rows["correct"]))
    new, old = accuracy(new_rows["correct"].tolist(), seed=c.seed), accuracy(old_rows["correct"].tolist(), seed=c.seed)
    new_only, old_only = int((new_rows["correct"] & ~old_rows["correct"]).sum()), int((old_rows["correct"] & ~new_rows["correct"]).sum())
    mcnemar = {"new_only": new_only, "old_only": old_only, "p_value": exact_mcnemar(new_only, old_only)}
    return {"n_changed": len(changed), "n_train": len(examples), "source": c.m2, "new": new.to_dict(), "old": old.to_dict(), "mcnemar": mcnemar}
