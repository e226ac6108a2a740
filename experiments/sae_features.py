"""SAE features of self-prediction (issue 8; controls and statistics: issue 15).

    python -m experiments.sae_features --preset quick [--capture mech-try]

1. SAEs: TopK SAEs on untrained M1's resid_post at a few layers, trained on every token of
   object-level and hypothetical prompts of the study's *training* tasks (train split; the
   held-out evaluation items never enter), zero-shot or with format demonstrations
   (`train_shots`). A saved SAE with the same config and data is reused (`sae_training`). Quality
   per layer: explained variance, L0, dead latents (on the stream's first prompts, held out of
   training), the next-token loss with the SAE spliced in, and the fit on every analysed
   subject's stored vectors. The self-trained subject is read with untrained M1's SAEs, so its
   fit, and the error term's share of the attribution, say how much the SAE misses there.
2. For each subject (untrained M1, self-trained M1) whose activation store the capture run holds
   (`python -m experiments.capture`), with the SAEs of untrained M1:
   - overlap: active latents at P's last token in the object-level run vs the same token in the
     hypothetical run (aligned), and at the two final tokens; the same item vs other items whose
     object-level prompt has the same token there (only the item differs), paired by record;
   - attribution: gradient × activation of the logit difference (the correct value's first token
     against the other valid values', `introspect_mi.saes.answers`) at the final position, to the
     latents and to the SAE error term at P's tokens vs the question's tokens (`sae_prompts`);
   - ablation: zero the top-k attributed latents at those tokens (chosen on the other half of the
     items: 2-fold, so no item is scored under latents picked on itself) vs, for each of them, a
     random latent from the same activation-frequency × magnitude cell (`saes.controls`; several
     seeded draws); per prompt the change in logit difference, compliance (argmax still a valid
     value) and first-token accuracy; top-k − matched random per item with a bootstrap CI and a
     sign-flip p over items (`saes.ablation_effects`), Holm-adjusted within FAMILIES;
3. differential latents: untrained vs self-trained M1 at the hypothetical final token (both
   encoded with untrained M1's SAEs), when both stores exist: each on its own prompts (the
   stores: the untrained subject's have format demonstrations, the self-trained one's not), and
   on the same prompts (self-trained M1's, also run through untrained M1), which separates what
   training changed from what the prompt format changes;
4. feature pages for the top latents of the attribution and differential rankings (`sae_pages`).
Output: runs/<capture>/sae/{report.html, metrics.json, features/*.html, *.jsonl} (`sae_report`);
the explorer (`introspect-mi explore runs/<capture>`) links the report.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from experiments.capture import spread
from experiments.common import config_main
from experiments.mech import SUBJECTS, StudyChoice, StudyView, capture_stores, open_capture, open_study, resolved
from experiments.sae_pages import Analysed, feature_page, page_choices, replace_folder, store_rows, token_rows
from experiments.sae_prompts import analysis_prompts, attribution_summary, attribution_tables, choose_records, scorable
from experiments.sae_training import log, place_of, train_saes
from introspect_mi import config as cfg
from introspect_mi.actstore import ActivationStore
from introspect_mi.errors import UserError
from introspect_mi.batching import left_pad
from introspect_mi.hooks import recording
from introspect_mi.models import ModelHandle
from introspect_mi.multiplicity import CONFIRMATORY, EXPLORATORY, holm
from introspect_mi.saes import LoadedSAE, encode
from introspect_mi.saes.ablation_effects import CLEAN, RANDOM, TOP, ablation_items, ablation_summary, paired_effects
from introspect_mi.saes.analysis import Attribution
from introspect_mi.saes.answers import logit_difference, logit_difference_metric, valid_values
from introspect_mi.saes.controls import folds, latent_bins, matched_random_features, top_attributed
from introspect_mi.saes.pages import write_feature_pages
from introspect_mi.saes.shared_prefix import Ablation, ablation_logits, attribute_places
from introspect_mi.saes.store_encoding import (
    StoreActs, differential_table, encode_store, overlap_rows, overlap_summary, own_prompt_acts, store_fit,
)
from introspect_mi.store import RunDir
from introspect_mi.timing import StageClock

OUT = "sae"
OWN_PROMPTS = "own prompts"
SAME_PROMPTS = "same prompts"
CONFIRMATORY_MEASURE = "logit_difference"
FAMILIES = {CONFIRMATORY: "top-k − matched random change in logit difference, per layer × subject (Holm over them)",
            EXPLORATORY: "compliance and accuracy changes, overlap, attribution shares, fit: shown, not adjusted into a claim"}
"""Declared before any number is read: the one family whose p-values are Holm-adjusted into claims."""


@dataclass(frozen=True)
class SAEFeaturesConfig(StudyChoice):
    capture: str = ""
    """Capture run under runs/ whose activation stores are read; results go to its sae/ folder (empty: mech-<study>)."""
    subjects: tuple[str, ...] = ("untrained", "self")
    """Subjects analysed where the capture run has their store: untrained (M1), self (self-trained M1)."""
    layers: tuple[int, ...] = (8, 16, 24)
    """resid_post layers that get an SAE (trained on untrained M1) and are analysed."""
    train_items: int = 12
    """Items per training task (the study's train_tasks, train split) whose prompts feed the SAEs."""
    hypotheticals_per_item: int = 1
    """Hypothetical prompts per training item (the study's properties, taken in turn)."""
    train_shots: tuple[int, ...] = (0,)
    """Format demonstrations in the training prompts, cycled over items (0 2: half zero-shot, half 2-shot like the untrained subject's)."""
    eval_prompts: int = 12
    """The stream's first prompts, held out of SAE training: its quality metrics are measured on them."""
    expansion: int = 4
    """SAE latents per residual dimension."""
    k: int = 32
    """Active latents per token (TopK)."""
    training_samples: int = 96_000
    """Vectors each SAE trains on (passes over the stream repeat as needed)."""
    sae_batch_size: int = 512
    """Vectors per SAE optimizer step."""
    lr: float = 3e-3
    """SAE learning rate."""
    overlap_partners: int = 8
    """Other items (same token at the compared position, seeded draw) each hypothetical run's overlap is averaged over: the control."""
    analysis_items: int = 16
    """Hypothetical prompts per subject for attribution and ablation (spread over tasks, half of them ones the study scored correct; only prompts whose property has another valid value)."""
    ablate_k: int = 10
    """Latents ablated: the top-k attributed, and k matched random ones per control draw."""
    random_draws: int = 3
    """Draws of the matched random control: per draw, each top-k latent gets a random partner of like activation frequency and magnitude."""
    match_bins: int = 4
    """Quantile bins per axis of the frequency × magnitude grid that matches random latents to the top-k ones."""
    n_boot: int = 2000
    """Bootstrap resamples of items for the intervals (ablation effects, overlap)."""
    sign_flips: int = 2000
    """Random sign flips for each paired p-value."""
    differential_items: int = 64
    """Self-trained M1's hypothetical prompts also run through untrained M1, for the training-change comparison on the same inputs (0: skip)."""
    top_features: int = 4
    """Feature pages per layer from each ranking (attribution per subject, differential)."""
    page_examples: int = 12
    """Rows in a feature page's top-items and top-tokens tables."""
    batch_size: int = 8
    """Prompts per forward pass (activation stream, attribution, ablation)."""
    seed: int = 0
    """Seeds SAE training, the choice of analysed prompts, the ablation folds, the random control and the bootstrap."""


# --- 2. attribution and ablation ---------------------------------------------------------------


def ablation_conditions(saes: dict[int, LoadedSAE], attrs: dict[int, Attribution], fold: np.ndarray, config: SAEFeaturesConfig
                        ) -> tuple[dict[str, list[Ablation]], dict[str, dict[str, Any]], dict[str, Any]]:
    """Conditions for `ablation_logits` (clean; per layer the top-k of the other fold, and each
    matched random draw: partners of the same other-fold top-k, ablated on the same rows), what
    each one is (layer, condition, draw, latents), and how well the partners match."""
    conditions: dict[str, list[Ablation]] = {CLEAN: []}
    info: dict[str, dict[str, Any]] = {CLEAN: {"layer": None, "condition": CLEAN, "draw": None, "features": ""}}
    matching: dict[str, Any] = {}
    for layer, a in attrs.items():
        place, sae = place_of(layer), saes[layer].sae
        rows = [np.flatnonzero(fold == f) for f in (0, 1)]
        tops = [top_attributed(a.attr, rows[f], config.ablate_k) for f in (0, 1)]
        chosen = [tops[1 - f] for f in (0, 1)]  # fold f's rows are ablated with the latents chosen on the other fold
        name = f"L{layer} {TOP}"
        conditions[name] = [Ablation(place, sae, chosen[f], frozenset(rows[f].tolist())) for f in (0, 1)]
        info[name] = {"layer": layer, "condition": TOP, "draw": None, "features": " | ".join(" ".join(map(str, t.tolist())) for t in chosen)}
        bins = latent_bins(torch.cat(a.acts), config.match_bins)
        exclude = torch.cat(tops).unique()
        matched = [matched_random_features(bins, chosen[f], config.random_draws, config.seed + 100 * layer + f, exclude) for f in (0, 1)]
        for d in range(config.random_draws):
            picks = [m.draws[d] for m in matched]
            name = f"L{layer} {RANDOM} {d}"
            conditions[name] = [Ablation(place, sae, picks[f], frozenset(rows[f].tolist())) for f in (0, 1)]
            info[name] = {"layer": layer, "condition": RANDOM, "draw": d, "features": " | ".join(" ".join(map(str, p.tolist())) for p in picks)}
        top_ids, partner_ids = torch.cat(chosen), torch.cat([p for m in matched for p in m.draws])
        matching[f"L{layer}"] = {
            "exact_share": sum(m.exact for m in matched) / sum(m.total for m in matched),
            "top_frequency": float(bins.frequency[top_ids].mean()), "random_frequency": float(bins.frequency[partner_ids].mean()),
            "top_magnitude": float(bins.magnitude[top_ids].mean()), "random_magnitude": float(bins.magnitude[partner_ids].mean())}
    return conditions, info, matching


def analyse_subject(handle: ModelHandle, label: str, store: ActivationStore, saes: dict[int, LoadedSAE], config: SAEFeaturesConfig,
                    clock: StageClock) -> tuple[Analysed, dict[str, pd.DataFrame], dict[str, Any]]:
    """Overlap, attribution and ablation for one subject (`handle`: its model)."""
    layers = list(saes)
    sacts = encode_store(store, saes)
    tables = {"store_fit": pd.DataFrame(store_fit(label, store, saes)),
              "overlap_items": overlap_rows(label, sacts, layers, config.overlap_partners, config.seed)}
    clock.lap(f"{label}: encode store, overlap")
    candidates = scorable(handle, store.records)
    if candidates.empty:
        raise UserError(f"{label}'s store has no hypothetical prompt whose property has two valid values to tell apart",
                        "capture more items (python -m experiments.capture) or study properties with several values")
    prompts = analysis_prompts(handle, choose_records(candidates, config.analysis_items, config.seed), valid_values(candidates))
    log(f"{label}: attribution on {len(prompts.sequences)} hypothetical prompts at layers {layers}")
    attrs = attribute_places(handle, {place_of(layer): saes[layer].sae for layer in layers}, prompts.sequences, prompts.positions,
                             logit_difference_metric(prompts.answers), config.batch_size)
    attrs = {layer: attrs[place_of(layer)] for layer in layers}
    tables["attribution_items"], tables["attribution_features"] = attribution_tables(label, prompts, attrs)
    clock.lap(f"{label}: attribution")
    conditions, info, matching = ablation_conditions(saes, attrs, folds(len(prompts.sequences), config.seed), config)
    log(f"{label}: ablation, {len(conditions)} conditions")
    logits = ablation_logits(handle, prompts.sequences, prompts.positions, conditions, config.batch_size)
    tables["ablation_items"] = ablation_items(label, logits, info, prompts.answers, prompts.records)
    clock.lap(f"{label}: ablation")
    clean = logit_difference(logits[CLEAN], prompts.answers.targets, prompts.answers.others)
    checks = {"max_abs_clean_vs_attribution_logit_difference": float((clean - next(iter(attrs.values())).metric).abs().max()),
              "max_relative_diff_live_vs_stored_final": live_vs_stored(handle, store, layers, config.batch_size),
              "matching": matching}
    clock.lap(f"{label}: checks")
    analysed = Analysed(sacts, prompts, attrs, store_rows(label, sacts), token_rows(label, prompts, attrs[layers[0]].positions))
    return analysed, tables, checks


def ablation_effects(items: pd.DataFrame, config: SAEFeaturesConfig) -> pd.DataFrame:
    """`paired_effects` with each row's family (FAMILIES) and its p-value Holm-adjusted within the family."""
    table = paired_effects(items, config.n_boot, config.sign_flips, config.seed)
    table["family"] = np.where(table["measure"] == CONFIRMATORY_MEASURE, CONFIRMATORY, EXPLORATORY)
    table["p_holm"] = np.nan
    mine = table["family"] == CONFIRMATORY
    table.loc[mine, "p_holm"] = holm(table.loc[mine, "p_value"].to_numpy(dtype=float))
    return table


def live_vs_stored(handle: ModelHandle, store: ActivationStore, layers: Sequence[int], batch_size: int, n: int = 4) -> float:
    """Largest ‖live − stored‖ / ‖stored‖ of the final-token vectors of the store's first `n`
    hypothetical prompts: is the model loaded here the one the store was captured from? (The
    store holds float16: ~1e-3 is agreement.)"""
    first = set(store.records.loc[store.records["kind"] == "hypothetical", "record"].head(n))
    chosen = lambda r: r["record"].isin(first)  # noqa: E731
    texts = store.records.loc[chosen(store.records), "text"]
    live = final_token_vectors(handle, [handle.prompt_format.encode(t) for t in texts], layers, batch_size)
    worst = 0.0
    for layer in layers:
        stored, _ = store.load("resid_post", layer, "final", filter=chosen, as_="torch")
        worst = max(worst, float(((live[layer] - stored).norm(dim=1) / stored.norm(dim=1)).max()))
    return worst


# --- 3. differential latents -------------------------------------------------------------------


@torch.no_grad()
def final_token_vectors(handle: ModelHandle, sequences: Sequence[Sequence[int]], layers: Sequence[int], batch_size: int) -> dict[int, torch.Tensor]:
    """resid_post at each sequence's last token (left padding puts it in the last column)."""
    places = [place_of(layer) for layer in layers]
    parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for start in range(0, len(sequences), batch_size):
        batch = left_pad([list(s) for s in sequences[start : start + batch_size]], handle.pad_token_id).to(handle.device)
        with recording(handle.model, places) as acts:
            handle.model(**batch.model_inputs(), logits_to_keep=1)
        for layer, place in zip(layers, places):
            parts[layer].append(acts[place][:, -1].float().cpu())
    return {layer: torch.cat(v) for layer, v in parts.items()}


def same_prompt_acts(m1: ModelHandle, self_acts: StoreActs, self_records: pd.DataFrame, saes: dict[int, LoadedSAE], n: int,
                     config: SAEFeaturesConfig) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Latents at the final token of `n` of self-trained M1's hypothetical prompts (spread over
    tasks): untrained M1 run on them now, and self-trained M1 as its store holds them."""
    hyp = self_records[self_records["kind"] == "hypothetical"].sample(frac=1.0, random_state=config.seed)
    chosen = spread(hyp, n)
    rows = np.flatnonzero(self_acts.meta["final"]["record"].isin(chosen["record"]).to_numpy())
    meta = self_acts.meta["final"].iloc[rows]
    vectors = final_token_vectors(m1, [m1.prompt_format.encode(t) for t in meta["text"]], list(saes), config.batch_size)
    return ({layer: encode(saes[layer].sae, v) for layer, v in vectors.items()},
            {layer: self_acts.acts[layer, "final"][rows] for layer in saes})


# --- main --------------------------------------------------------------------------------------


def capture_run(view: StudyView, config: SAEFeaturesConfig, preset: str) -> tuple[RunDir, dict[str, ActivationStore], dict[str, str]]:
    """The capture run, its finished stores of the configured subjects (captured from the study as
    it is now) and, per subject without one, why and how to make it."""
    default = f"mech-{view.name}"
    name = config.capture or default
    run = open_capture(name, preset)
    stores, missing = capture_stores(run, view, config.subjects)
    command = f"python -m experiments.capture --preset {preset}"
    for label, why in missing.items():
        missing[label] = (f"{why}; make it with `{command}` (writes runs/{default}/{{untrained,self}}/store), then rerun with --capture {default}"
                          if name != default else f"{why}; make it with `{command} --subjects {' '.join(config.subjects)}`")
    return run, stores, missing


def start_output(run: RunDir, config: SAEFeaturesConfig, view: StudyView) -> None:
    """`sae/` with this config (a rerun resumes it); one made with other settings is an error, never overwritten."""
    try:
        RunDir.create(run.folder, OUT, cfg.to_dict(resolved(config, view)), seed=config.seed)
    except UserError as exc:
        raise UserError(exc.problem, f"delete {run.path(OUT)} to analyse with these settings, or analyse another capture run (--capture)") from None


def main_sae_features(config: SAEFeaturesConfig, preset: str) -> dict[str, Any]:
    unknown = [s for s in config.subjects if s not in SUBJECTS or s == "cross"]
    if unknown:
        raise UserError(f"subject(s) {', '.join(unknown)} cannot be analysed with M1's SAEs", "use untrained and/or self")
    from experiments.sae_report import metrics_from_tables, summary_lines, write_sae_report

    view = open_study(preset, config)
    run, stores, missing = capture_run(view, config, preset)
    present = [s for s in config.subjects if s not in missing]
    for label, why in missing.items():
        log(f"skipping {label}: {why}")
    if not present:
        raise UserError(f"the capture run {run.name} has no finished store for {', '.join(config.subjects)}", next(iter(missing.values())))
    start_output(run, config, view)
    clock = StageClock(run.path(OUT))

    m1 = view.load(view.subject("untrained"))
    saes, quality = train_saes(m1, view, config)
    run.write_table(f"{OUT}/sae_quality", quality, csv=True)
    clock.lap("SAEs (activations, training or reuse, spliced loss)")

    analysed: dict[str, Analysed] = {}
    tables: dict[str, list[pd.DataFrame]] = defaultdict(list)
    checks = {}
    for label in present:
        handle = m1 if label == "untrained" else view.load(view.subject(label))
        analysed[label], subject_tables, checks[label] = analyse_subject(handle, label, stores[label], saes, config, clock)
        for name, table in subject_tables.items():
            tables[name].append(table)
    for name, parts in tables.items():
        table = pd.concat(parts, ignore_index=True)
        if name == "attribution_features":
            table = table[table["rank"] <= 50]
        run.write_table(f"{OUT}/{name}", table)
    run.write_table(f"{OUT}/attribution_summary", attribution_summary(pd.concat(tables["attribution_items"], ignore_index=True)))
    run.write_table(f"{OUT}/overlap", overlap_summary(pd.concat(tables["overlap_items"], ignore_index=True), config.n_boot, config.seed))
    items = pd.concat(tables["ablation_items"], ignore_index=True)
    run.write_table(f"{OUT}/ablation", ablation_summary(items))
    run.write_table(f"{OUT}/ablation_effects", ablation_effects(items, config))

    differential = None
    if {"untrained", "self"} <= set(analysed):
        parts = [differential_table(*own_prompt_acts(analysed["untrained"].sacts, analysed["self"].sacts), OWN_PROMPTS)]
        if config.differential_items:
            parts.append(differential_table(*same_prompt_acts(m1, analysed["self"].sacts, stores["self"].records, saes,
                                                              config.differential_items, config), SAME_PROMPTS))
        differential = pd.concat(parts, ignore_index=True)
        run.write_table(f"{OUT}/differential", differential)
    elif run.exists(f"{OUT}/differential.jsonl"):
        run.path(f"{OUT}/differential.jsonl").unlink()  # from an earlier run with other stores
    clock.lap("differential")

    features = run.read_table(f"{OUT}/attribution_features")
    ranking = None if differential is None else differential[differential["inputs"] == differential["inputs"].iloc[-1]]
    pages = page_choices(features, ranking, config.top_features)
    page_list = [feature_page(layer, f, why, analysed, m1, saes[layer], config.page_examples) for (layer, f), why in sorted(pages.items())]
    replace_folder(run.path(f"{OUT}/features"), lambda folder: write_feature_pages(folder, page_list, back_link="../report.html"))
    write_sae_report(run, config, missing, pages)
    clock.lap("feature pages, report")

    metrics = {"capture": run.name, "study": view.name, "subjects": present, "missing": missing, "layers": list(config.layers),
               **metrics_from_tables(run), "checks": checks, "pages": len(pages),
               "timing": {**clock.laps(), "total": clock.totals(), "torch_threads": torch.get_num_threads()}}
    run.write_json(f"{OUT}/metrics.json", metrics)
    print()
    for line in summary_lines(metrics):
        print(line)
    for label, why in missing.items():
        print(f"not analysed: {label}: {why}")
    total = clock.totals()
    clock.close()
    print(f"\nreport: {run.path(f'{OUT}/report.html')} ({len(pages)} feature pages); "
          f"total {total['wall_s']:.0f} s wall, {total['cpu_s']:.0f} s CPU\nexplore: introspect-mi explore {run.folder}")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    return config_main(argv, prog="python -m experiments.sae_features", doc=__doc__, config=SAEFeaturesConfig, section="sae_features", run=main_sae_features)


if __name__ == "__main__":
    sys.exit(main())
