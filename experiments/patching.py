"""Patching, steering and concept injection on the behavioural study's held-out items (issue 7).

    python -m experiments.patching --preset quick

For each subject (untrained M1, self-trained M1, cross-trained M2; the quick preset leaves cross
out, it needs its own capture), on pairs of items of one task × property whose object-level
property values differ:
A. hypothetical → hypothetical patching per layer × position group (P's tokens, the question's
   tokens, the final token), and attribution patching over every layer × token, checked against
   exact patching;
B. P's object-level states → the other item's hypothetical run at the aligned tokens;
C. the object run's final-token state → the hypothetical final token (B and C with controls);
D. steering with a mean-difference vector from the activation store at (i) P's tokens, (ii) the
   question and final tokens, (iii) every token, in object and hypothetical runs, against
   equal-norm random vectors: does the self-prediction follow the steered behaviour?
E. concept injection into the hypothetical prompt at every token (priming) and at the tokens after P
   only (reading): the shift of log P(concept's value | a valid value), against equal-norm random
   and other-concept vectors, with the clean chance level; D's sweep and E's after-P injection are
   confirmatory families (paired sign-flip tests, Holm), the rest exploratory.
Output: runs/<capture>/patching/{report.html, metrics.json, config.json, *.jsonl}; the explorer
of the capture run links the report. The capture run (`python -m experiments.capture --preset
quick`) must exist: its stores give D's steering vectors.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from experiments.common import config_main, config_parser
from experiments.mech import SUBJECTS, StudyChoice, StudyView, Subject, capture_stores, open_capture, open_study, prompt_pairs, resolved
from experiments.mech_engine import check_engine, engine_of, subject_handle
from experiments.patching_report import write_report
from introspect_mi import config as cfg
from introspect_mi.actstore import ActivationStore
from introspect_mi.concepts import CONCEPT_FAMILY, CONCEPT_POSITIONS, concept_vectors, run_concepts, summarise_concepts
from introspect_mi.errors import UserError
from introspect_mi.logit_lens import first_token
from introspect_mi.models import ModelHandle
from introspect_mi.nnsight_engine import NnsightEngine
from introspect_mi.patching_experiments import run_pairs
from introspect_mi.patching_pairs import ItemPrompts, pairable, select_pairs, tokenise
from introspect_mi.patching_summary import CONFIRMATORY_FAMILY, attribution_agreement, contrast_layers, contrast_tests, layer_summary
from introspect_mi.places import resid_post
from introspect_mi.properties import get_property
from introspect_mi.steering import RowSteer, Steerer
from introspect_mi.steering_experiments import (
    SWEEP_FAMILY, SteeringSetup, assign_folds, balanced, layer_at, run_steering, site_norm, steer_values, steering_pattern,
    store_steering_vectors, summarise_steering, sweep_tests,
)
from introspect_mi.store import RunDir
from introspect_mi.timing import StageClock

CAPTURE_COMMAND = "python -m experiments.capture --preset quick"
TABLES = ("pairs", "cells", "grid", "exact", "steering_sweep", "steering_sweep_items", "steering_sweep_tests", "steering", "steering_summary",
          "concepts", "concept_summary")


@dataclass(frozen=True)
class PatchingConfig(StudyChoice):
    """Defaults are the full-size run (a GPU, `--preset paper`); the quick preset trims them for a
    2-core CPU."""

    capture: str = ""
    """The capture run that holds the activation stores and gets the results (empty: mech-<study>)."""
    subjects: tuple[str, ...] = ("untrained", "self", "cross")
    """Models: untrained (M1), self (self-trained M1), cross (cross-trained M2; needs its capture)."""
    tasks: tuple[str, ...] = ()
    """Held-out tasks to draw patching pairs from (empty: all of the study's)."""
    properties: tuple[str, ...] = ("first_character", "second_character", "among_a_or_c", "among_b_or_d", "ethical_stance")
    """Properties to draw patching pairs from (those that apply to each task)."""
    pairs_per_group: int = 5
    """Patching pairs per task × property (token-aligned, no item twice in a group)."""
    pair_candidates: int = 30
    """Items per task × property whose clean hypothetical runs are screened (one forward, before any patching) to pick the pairs
    with the largest clean metric gap; pairs whose gap is below min_gap are not patched."""
    layer_stride: int = 1
    """Patch every k-th layer in B, C and their controls (the last layer always; attribution covers every layer)."""
    group_layer_stride: int = 1
    """Patch every k-th layer in A's position groups (the last layer always)."""
    min_gap: float = 0.5
    """Smallest clean source-minus-target logit difference that is normalised (smaller: raw change only); pairs are chosen above it."""
    exact_pairs: int = 2
    """Pairs (spread over the task × property groups) whose attribution grid is checked cell by cell with exact patching."""
    exact_cells: int = 200
    """Single cells checked per such pair (spread over layers × tokens after the first differing token)."""
    steer_task: str = "mcq_general"
    """Task of the steering experiment (D)."""
    steer_property: str = "among_a_or_c"
    """Property of D: the steering vector separates its two most common object-level values."""
    steer_depth: float = 0.5
    """Layer of the steering vector and of steering, as a fraction of depth (0: first, 1: last)."""
    steer_position: str = "p_last"
    """Stored position the steering vector is computed at: p_last (P read) or final."""
    steer_items: int = 60
    """Items steered in D (balanced between the two values)."""
    steer_scales: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    """Scales swept at P's tokens (× the mean-difference vector); D uses the one where the vector beats a random one most (the largest on ties)."""
    steer_dose_until: float = 0.5
    """After steer_scales, the sweep doubles the scale until its random vector changes this share of the object answers (a null at a dose that matters)."""
    steer_max_scale: float = 64.0
    """Largest scale the sweep doubles to."""
    n_random: int = 5
    """Equal-norm random vectors per condition (D) as controls."""
    min_effect: float = 0.15
    """How far (share of items) steering must beat every random control to count as moving an answer."""
    concept_task: str = "animals"
    """Task of the concept-injection experiment (E)."""
    concept_property: str = "first_character"
    """Property asked in E: a concept word implies its value (e.g. zebra → z)."""
    concepts: tuple[str, ...] = ("zebra", "kangaroo", "octopus")
    """Concept words injected in E."""
    baseline_words: tuple[str, ...] = ("table", "river", "music", "paper", "window", "garden", "bread", "mountain")
    """Neutral words whose mean activation is subtracted from a concept's."""
    concept_depth: float = 0.5
    """Layer of concept injection, as a fraction of depth."""
    concept_scales: tuple[float, ...] = (2.0, 4.0, 8.0)
    """Injection strengths (× the concept vector)."""
    concept_positions: tuple[str, ...] = CONCEPT_POSITIONS
    """Position sets of E: after_P (question and final tokens: reading; the confirmatory family) and all (every token: priming)."""
    concept_items: int = 60
    """Hypothetical prompts injected in E."""
    concept_random: int = 1
    """Equal-norm random vectors per concept (E)."""
    batch_size: int = 16
    """Rows per forward pass (fixed per run: batch composition can shift results slightly)."""
    name: str = "patching"
    """Folder for the results inside the capture run."""
    seed: int = 0
    """Seed of the random control vectors."""
    engine: str = "hooks"
    """hooks (raw HF hooks) or nnsight: pair selection, clean runs and patched cells of A–C as nnsight traces (attribution, D and E stay on hooks)."""
    remote: str = ""
    """Hub id of M1 on NDIF (e.g. meta-llama/Llama-3.1-70B-Instruct): run the nnsight traces there (needs --engine nnsight, --subjects untrained, NDIF_API_KEY); runs A–C only."""


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def item_prompts(view: StudyView, subject: Subject, handle: ModelHandle, wanted: set[tuple[str, str]]) -> list[ItemPrompts]:
    """The study's pairs of the wanted task × property groups, tokenised for `handle`."""
    targets = {item.item_id: item.target for item, _ in view.items}
    return [tokenise(handle, p.item_id, p.task, p.property, p.object_prompt, p.hypothetical_prompt, p.labels["object_value"],
                     targets[p.item_id], p.labels["hypothetical_value"])
            for p in prompt_pairs(view, subject, handle) if (p.task, p.property) in wanted]


def candidate_logits(logits_of: Callable[[list[tuple[int, ...]]], torch.Tensor], items: Sequence[ItemPrompts],
                     per_group: int) -> dict[tuple[str, str], torch.Tensor]:
    """Clean final logits of the hypothetical prompts of up to `per_group` items per group."""
    seen: dict[tuple[str, str], int] = {}
    chosen = []
    for it in items:
        key = (it.task, it.property)
        if it.value is not None and seen.get(key, 0) < per_group:
            seen[key] = seen.get(key, 0) + 1
            chosen.append(it)
    if not chosen:
        return {}
    chosen.sort(key=lambda it: it.hyp_ids)  # neighbours share their prompt's prefix, which a batch then computes once
    logits = logits_of([it.hyp_ids for it in chosen])
    return {(it.item_id, it.property): row for it, row in zip(chosen, logits)}


def patching_layers(n_layers: int, stride: int) -> list[int]:
    if stride < 1:
        raise UserError(f"layer_stride must be at least 1, not {stride}", "pass --layer-stride 1 (every layer) or more")
    return sorted(set(range(0, n_layers, stride)) | {n_layers - 1})


def patch_stage(handle: ModelHandle, steerer: Steerer, items: Sequence[ItemPrompts], groups: set[tuple[str, str]],
                c: PatchingConfig, nnsight: NnsightEngine | None = None) -> tuple[dict[str, pd.DataFrame], dict]:
    """A, B and C on pairs chosen by a screening forward of their clean hypothetical runs (through
    `nnsight`'s traces when given): per-layer medians, the confirmatory B − control contrast, attribution checks."""
    grouped = pairable([it for it in items if (it.task, it.property) in groups])
    logits_of = (lambda seqs: steerer.logits(seqs, [RowSteer(None)] * len(seqs), resid_post(0))) if nnsight is None else nnsight.final_logits
    screened = candidate_logits(logits_of, grouped, c.pair_candidates)
    pairs = select_pairs(grouped, lambda v: first_token(handle, v), c.pairs_per_group, screened, min_gap=c.min_gap)
    if not pairs:
        raise UserError(f"no token-aligned pair of items has differing values and a clean gap ≥ {c.min_gap:g} in {sorted(groups)}",
                        "choose other --tasks / --properties, more --pair-candidates or a smaller --min-gap")
    layers = patching_layers(handle.n_layers, c.layer_stride)
    group_layers = patching_layers(handle.n_layers, c.group_layer_stride)
    t = run_pairs(handle, pairs, layers, group_layers=group_layers, min_gap=c.min_gap, exact_pairs=c.exact_pairs, exact_cells=c.exact_cells,
                  batch_size=c.batch_size, nnsight=nnsight)
    per_pair, agreement = attribution_agreement(t.cells, t.exact)
    metrics = {"pairs": len(pairs), "normalisable_pairs": int(t.pairs["normalisable"].sum()),
               "pairs_per_group": {f"{task}/{prop}": int(n) for (task, prop), n in t.pairs.groupby(["task", "property"]).size().items()},
               "screened_prompts": len(screened), "layers_patched": layers, "group_layers_patched": group_layers,
               "confirmatory_family": CONFIRMATORY_FAMILY, "contrast_layers": contrast_layers(handle.n_layers, layers),
               "layer_summary": layer_summary(t.cells).to_dict("records"), "contrasts": contrast_tests(t.cells, handle.n_layers, c.seed).to_dict("records"),
               "attribution": {**agreement, "per_pair": per_pair.to_dict("records")},
               "cost": {**t.cost, "screened_prompts": len(screened)}}
    return {"pairs": t.pairs, "cells": t.cells, "grid": t.grid, "exact": t.exact}, metrics


def steer_stage(handle: ModelHandle, steerer: Steerer, items: Sequence[ItemPrompts], store: ActivationStore,
                c: PatchingConfig) -> tuple[dict[str, pd.DataFrame], dict]:
    """D: cross-fitted steering vectors from the store, the scale sweep, the conditions and the pattern.
    A subject whose behaviour gives the steering cell fewer than two values (a finetuned model that
    answers every MCQ with one letter) skips D; the reason goes into its metrics and the report."""
    chosen = [it for it in items if (it.task, it.property) == (c.steer_task, c.steer_property)]
    try:
        values = steer_values(chosen)
    except ValueError as exc:
        reason = f"{exc} on {c.steer_task} / {c.steer_property} (another --steer-task / --steer-property may have two)"
        _log(f"steering (D) skipped: {reason}")
        return {}, {"skipped": reason}
    folds = assign_folds(chosen, values)
    layer = layer_at(c.steer_depth, handle.n_layers)
    vectors = store_steering_vectors(store, layer, c.steer_position, c.steer_task, c.steer_property, values, folds)
    setup = SteeringSetup(c.steer_property, layer, values, vectors, folds, site_norm(store, layer, c.steer_position, c.steer_task))
    sweep, sweep_items, rows, scale = run_steering(handle, steerer, balanced(chosen, values, c.steer_items), setup, c.steer_scales,
                                                   n_random=c.n_random, seed=c.seed, dose_until=c.steer_dose_until, max_scale=c.steer_max_scale)
    tests = sweep_tests(sweep_items, c.seed)
    summary = summarise_steering(rows)
    pattern, sentences = steering_pattern(summary, c.min_effect)
    metrics = {"task": c.steer_task, "property": c.steer_property, "values": list(values), "layer": layer, "scale": scale,
               "dose": setup.dose(scale), "residual_norm": setup.residual_norm, "sweep": sweep.to_dict("records"),
               "vector_norms": {str(f): float(v.norm()) for f, v in vectors.items()}, "items": int(rows["item_id"].nunique()),
               "pattern": pattern, "sentences": sentences, "summary": summary.to_dict("records"),
               "sweep_family": SWEEP_FAMILY, "sweep_tests": tests.to_dict("records")}
    return {"steering_sweep": sweep, "steering_sweep_items": sweep_items, "steering_sweep_tests": tests, "steering": rows,
            "steering_summary": summary}, metrics


def concept_stage(handle: ModelHandle, steerer: Steerer, items: Sequence[ItemPrompts], c: PatchingConfig) -> tuple[dict[str, pd.DataFrame], dict]:
    """E: concept vectors injected into the hypothetical prompts at each position set, the paired tests."""
    layer = layer_at(c.concept_depth, handle.n_layers)
    vectors = concept_vectors(handle, c.concepts, c.baseline_words, layer)
    chosen = [it for it in items if (it.task, it.property) == (c.concept_task, c.concept_property)][: c.concept_items]
    rows = run_concepts(handle, steerer, chosen, vectors, layer, c.concept_scales, positions=c.concept_positions,
                        n_random=c.concept_random, seed=c.seed)
    summary = summarise_concepts(rows, c.seed)
    metrics = {"layer": layer, "norms": {w: float(v.norm()) for w, v in vectors.items()}, "items": len(chosen),
               "positions": list(c.concept_positions), "family": CONCEPT_FAMILY,
               "prompts_run": (1 + rows.groupby(["positions", "injected", "scale"]).ngroups) * len(chosen),
               "summary": summary.to_dict("records")}
    return {"concepts": rows, "concept_summary": summary}, metrics


def run_subject(view: StudyView, store: ActivationStore, label: str, c: PatchingConfig) -> tuple[dict[str, pd.DataFrame], dict]:
    """All five experiments on one subject (its finished store from the study as it is now): its
    tables (with a `subject` column) and metrics."""
    started = time.perf_counter()
    subject = view.subject(label)
    handle = subject_handle(view, subject, c.remote)
    nnsight = engine_of(handle, c.engine, c.remote)
    groups = {(spec.name, p) for _, spec in view.items for p in c.properties
              if (not c.tasks or spec.name in c.tasks) and get_property(p).applies_to(spec)
              and (not view.config.properties or p in view.config.properties)}
    items = item_prompts(view, subject, handle, groups | {(c.steer_task, c.steer_property), (c.concept_task, c.concept_property)})
    steerer = Steerer(handle.model, handle.pad_token_id, c.batch_size)
    tables, metrics = {}, {"model": handle.provenance(), "seconds": {"load": round(time.perf_counter() - started, 1)}}
    for stage, title, run in (("patching", "patching pairs (A, B, C)", lambda: patch_stage(handle, steerer, items, groups, c, nnsight)),
                              ("steering", "steering (D)", lambda: steer_stage(handle, steerer, items, store, c)),
                              ("concepts", "concept injection (E)", lambda: concept_stage(handle, steerer, items, c))):
        if c.remote and stage != "patching":  # steering hooks need the weights here
            metrics[stage] = {"skipped": "--remote runs A–C only (steering and concept injection hook local weights)"}
            continue
        _log(f"{label}: {title}")
        started = time.perf_counter()
        try:
            got, m = run()
        except UserError as exc:  # name the subject: several run in one command
            raise UserError(f"{label}: {exc.problem}", exc.fix) from None
        tables.update(got)
        metrics[stage] = m
        metrics["seconds"][stage] = round(time.perf_counter() - started, 1)
    return {k: v.assign(subject=label) for k, v in tables.items()}, metrics


def subject_results(out: RunDir, view: StudyView, store: ActivationStore, label: str,
                    c: PatchingConfig) -> tuple[dict[str, pd.DataFrame], dict]:
    """One subject's tables and metrics, computed once per store and kept in `subjects/<label>/`,
    so a run killed during a later subject resumes after the finished ones. They are always read
    back from there, so a resumed run writes the same bytes as an uninterrupted one."""
    stage = f"subject:{label}"
    made_from = hashlib.sha256((store.folder / "store.json").read_bytes()).hexdigest()
    if out.stages().get(stage, {}).get("store") == made_from:
        _log(f"{label}: finished earlier, reused")
    else:
        got, metrics = run_subject(view, store, label, c)
        for k, frame in got.items():
            out.write_table(f"subjects/{label}/{k}", frame)
        out.write_json(f"subjects/{label}/metrics.json", _finite(metrics))
        out.mark_done(stage, {"store": made_from, "tables": sorted(got)})
    tables = out.stages()[stage]["tables"]
    return {k: out.read_table(f"subjects/{label}/{k}") for k in tables}, out.read_json(f"subjects/{label}/metrics.json")


def main_patching(config: PatchingConfig, preset: str) -> dict:
    check_engine(config.engine, config.remote, config.subjects)
    unknown = [s for s in config.subjects if s not in SUBJECTS]
    if unknown:
        raise UserError(f"unknown subject(s) {', '.join(unknown)}", f"use some of: {', '.join(SUBJECTS)}")
    view = open_study(preset, config)
    capture_name = config.capture or f"mech-{view.name}"
    capture = open_capture(capture_name, preset)
    stores, missing = capture_stores(capture, view, config.subjects)
    if missing:
        label, why = next(iter(missing.items()))
        raise UserError(why, f"capture it: {CAPTURE_COMMAND} --subjects {label}")
    out = RunDir.create(capture.folder, config.name, cfg.to_dict(resolved(config, view)), seed=config.seed)
    started = time.perf_counter()
    tables: dict[str, list[pd.DataFrame]] = {k: [] for k in TABLES}
    results: dict = {"study": view.name, "capture": capture_name, "torch_threads": torch.get_num_threads(),
                     "load_average_1min_start": os.getloadavg()[0], "subjects": {}}
    clock = StageClock(out.folder)
    for label in config.subjects:
        with clock.stage(f"{label}: patching, steering, concept injection"):
            got, metrics = subject_results(out, view, stores[label], label, config)
        results["subjects"][label] = metrics
        for k, frame in got.items():
            tables[k].append(frame)
            out.write_table(k, pd.concat(tables[k], ignore_index=True))
        _log(f"{label}: done in {sum(metrics['seconds'].values()):.0f} s ({metrics['seconds']}); pattern (D): {metrics['steering'].get('pattern', 'skipped')}")
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["load_average_1min"] = os.getloadavg()[0]
    out.write_json("metrics.json", _finite(results))
    with clock.stage("report"):
        report = write_report(out)
    clock.close()
    print(f"\nreport: {report}\nexplore: introspect-mi explore {capture.folder}")
    return results


def _finite(obj: object) -> object:
    """JSON-ready: NaN and ±inf become null, numpy scalars plain numbers."""
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    return None if isinstance(obj, float) and not math.isfinite(obj) else obj


def build_parser() -> argparse.ArgumentParser:
    return config_parser(prog="python -m experiments.patching", doc=__doc__, config=PatchingConfig)


def main(argv: Sequence[str] | None = None) -> int:
    return config_main(argv, prog="python -m experiments.patching", doc=__doc__, config=PatchingConfig, section="patching", run=main_patching)


if __name__ == "__main__":
    sys.exit(main())
