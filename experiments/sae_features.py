"""SAE features of self-prediction (issue 8).

    python -m experiments.sae_features --preset quick [--capture mech-try]

1. SAEs: TopK SAEs on untrained M1's resid_post at a few layers, trained on every token of
   object-level and hypothetical prompts of the study's *training* tasks (train split; the
   held-out evaluation items never enter), zero-shot or with format demonstrations
   (`train_shots`). A saved SAE with the same config and data is reused. Quality per layer:
   explained variance, L0, dead latents (on the stream's first prompts, held out of training),
   the next-token loss with the SAE spliced in, and the fit on the capture's stored vectors.
2. For each subject (untrained M1, self-trained M1) whose activation store the capture run holds
   (`python -m experiments.capture`), with the SAEs of untrained M1:
   - overlap: active latents at P's last token in the object-level run vs the same token in the
     hypothetical run (aligned), and at the two final tokens; the same item vs another item;
   - attribution: gradient × activation of the correct property token's logit (the first token
     of the object answer's property value, at the final position) to the latents at P's tokens
     vs the question's tokens, on a subset of hypothetical prompts;
   - ablation: zero the top-k attributed latents at those tokens (chosen on the other half of the
     items: 2-fold, so no item is scored under latents picked on itself) vs k random active
     latents (several seeded draws); change in first-token self-prediction accuracy and logit;
3. differential latents: untrained vs self-trained M1 at the hypothetical final token (both
   encoded with untrained M1's SAEs), when both stores exist: each on its own prompts (the
   stores: the untrained subject's have format demonstrations, the self-trained one's not), and
   on the same prompts (self-trained M1's, also run through untrained M1), which separates what
   training changed from what the prompt format changes;
4. feature pages for the top latents of the attribution and differential rankings.
Output: runs/<capture>/sae/{report.html, metrics.json, features/*.html, *.jsonl}; the explorer
(`introspect-mi explore runs/<capture>`) links the report.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from experiments.capture import spread
from experiments.common import config_main
from experiments.mech import SUBJECTS, StudyChoice, StudyView, capture_stores, open_capture, open_study, resolved
from introspect_mi import config as cfg
from introspect_mi import evaluation as ev
from introspect_mi.actstore import ActivationStore
from introspect_mi.alignment import Alignment
from introspect_mi.batching import left_pad
from introspect_mi.errors import UserError
from introspect_mi.hooks import recording
from introspect_mi.logit_lens import first_token
from introspect_mi.models import ModelHandle
from introspect_mi.places import Place, PlaceKind
from introspect_mi.prompts import PromptConfig, hypothetical_prompt, object_prompt
from introspect_mi.saes import (
    LoadedSAE,
    SAETrainConfig,
    answer_logit,
    compare_features,
    differential_features,
    encode,
    random_active_features,
    sae_dir,
    spliced_loss,
    train_sae,
)
from introspect_mi.saes.analysis import Attribution
from introspect_mi.saes.pages import FeaturePage, logit_effect, page_file, token_context, top_examples, visible, write_feature_pages
from introspect_mi.saes.shared_prefix import Ablation, ablation_logits, attribute_places
from introspect_mi.saes.stream import ActivationStream
from introspect_mi.store import RunDir, atomic_write_text
from introspect_mi.timing import StageClock
from introspect_mi.viz import Section, Table, write_report
from introspect_mi.viz.saes import ablation_figure, attribution_split_figure, differential_figure, overlap_figure

OUT = "sae"
OWN_PROMPTS = "own prompts"
SAME_PROMPTS = "same prompts"
STORE_POSITIONS = ("p_last", "final")


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
    analysis_items: int = 16
    """Hypothetical prompts per subject for attribution and ablation (spread over tasks, half of them ones the study scored correct)."""
    ablate_k: int = 10
    """Latents ablated: the top-k attributed, and k random active ones per control draw."""
    random_draws: int = 3
    """Draws of k random active latents (the ablation control)."""
    differential_items: int = 64
    """Self-trained M1's hypothetical prompts also run through untrained M1, for the training-change comparison on the same inputs (0: skip)."""
    top_features: int = 4
    """Feature pages per layer from each ranking (attribution per subject, differential)."""
    page_examples: int = 12
    """Rows in a feature page's top-items and top-tokens tables."""
    batch_size: int = 8
    """Prompts per forward pass (activation stream, attribution, ablation)."""
    seed: int = 0
    """Seeds SAE training, the choice of analysed prompts, the ablation folds and the random control."""


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def place_of(layer: int) -> Place:
    return Place(PlaceKind.RESID_POST, layer)


# --- 1. SAEs ---------------------------------------------------------------------------------


def training_sequences(handle: ModelHandle, view: StudyView, config: SAEFeaturesConfig) -> list[list[int]]:
    """Token ids of prompts on the training tasks' train split: each item's object-level prompt,
    then its hypothetical prompts, with `train_shots` demonstrations (cycled over items); items
    alternate between tasks (the first prompts, held out of training, cover every task)."""
    study = view.config
    if set(study.train_tasks) & set(study.held_out_tasks):
        raise UserError("the study's train and held-out tasks overlap", "fix the study's train_tasks / held_out_tasks")
    items = ev.load_task_items(study.train_tasks, "train", config.train_items, study.seed)
    properties: dict[str, list] = defaultdict(list)
    for pair in ev.make_pairs(items, study.properties or None):
        properties[pair.item.item_id].append(pair.prop)
    by_task: dict[str, list] = defaultdict(list)
    for item, spec in items:
        by_task[spec.name].append((item, spec))
    interleaved = [group[i] for i in range(config.train_items) for group in by_task.values() if i < len(group)]
    fmt, out = handle.prompt_format, []
    for n, (item, spec) in enumerate(interleaved):
        shots = PromptConfig(shots=config.train_shots[n % len(config.train_shots)])
        out.append(fmt.encode(object_prompt(fmt, item, spec, shots).text))
        props = properties[item.item_id]
        for j in range(min(config.hypotheticals_per_item, len(props))):
            out.append(fmt.encode(hypothetical_prompt(fmt, item, spec, props[(n + j) % len(props)], shots).text))
    return out


def train_saes(handle: ModelHandle, view: StudyView, config: SAEFeaturesConfig, run: RunDir) -> tuple[dict[int, LoadedSAE], pd.DataFrame]:
    """The layers' SAEs (trained, or reused when saved with the same config and data) and their quality table."""
    bad = [layer for layer in config.layers if not 0 <= layer < handle.n_layers]
    if bad:
        raise UserError(f"layers {bad} are outside {handle.name}'s {handle.n_layers} layers", f"use layers between 0 and {handle.n_layers - 1}")
    sequences = training_sequences(handle, view, config)
    if config.eval_prompts >= len(sequences):
        raise UserError(f"eval_prompts={config.eval_prompts} leaves none of the {len(sequences)} training prompts to train on",
                        "lower eval_prompts or raise train_items")
    stream = ActivationStream(handle, sequences, [place_of(layer) for layer in config.layers], batch_size=config.batch_size)
    eval_vectors = stream.n_vectors(config.eval_prompts)
    train_vectors = stream.n_vectors() - eval_vectors
    sae_cfg = SAETrainConfig(
        expansion=config.expansion, k=config.k, lr=config.lr, training_samples=config.training_samples,
        batch_size=config.sae_batch_size, eval_samples=eval_vectors, shuffle_buffer=max(config.sae_batch_size, min(65_536, train_vectors)),
        norm_estimate_batches=4, seed=config.seed,
    )
    data = {**stream.describe(), "tasks": list(view.config.train_tasks), "split": "train", "items_per_task": config.train_items,
            "prompts": "object-level + hypothetical", "shots": list(config.train_shots), "eval_prompts": config.eval_prompts}
    data_tag = json.dumps(data, sort_keys=True)
    saes, rows = {}, []
    for layer in config.layers:
        place = place_of(layer)
        folder = Path(f"{sae_dir(handle.fingerprint, place, sae_cfg)}-{_digest(data_tag)}")
        reused = folder.is_dir()
        _log(f"SAE {place}: {'reusing' if reused else 'training'} {folder}")
        loaded = train_sae(stream.of(place), handle.d_model, sae_cfg, folder, place, fingerprint=handle.fingerprint, data=data)
        loss = measured_spliced_loss(handle, loaded, sequences[: config.eval_prompts], stream.skip, config.batch_size)
        metrics = loaded.meta["metrics"]
        saes[layer] = loaded
        rows.append({"layer": layer, "d_sae": loaded.d_sae, "k": config.k, "explained_variance": metrics["explained_variance"],
                     "l0": metrics["l0"], "dead_fraction": metrics["dead_fraction"], "clean_loss": loss["clean"],
                     "spliced_loss": loss["spliced"], "loss_delta": loss["spliced"] - loss["clean"],
                     "train_vectors": train_vectors, "eval_vectors": eval_vectors, "train_seconds": loaded.meta["training"]["seconds"],
                     "reused": reused, "folder": str(folder)})
    return saes, pd.DataFrame(rows)


SPLICED_LOSS_FILE = "spliced_loss.json"


def measured_spliced_loss(handle: ModelHandle, loaded: LoadedSAE, sequences: list[list[int]], skip: int, batch_size: int) -> dict[str, Any]:
    """The SAE's spliced next-token loss on its held-out prompts, saved in its folder beside the
    SAE (keyed by the SAE's reuse key, which covers those prompts) and read back on reuse."""
    path = loaded.folder / SPLICED_LOSS_FILE
    saved = json.loads(path.read_text()) if path.is_file() else {}
    if saved.get("key") != loaded.meta["key"]:
        loss = spliced_loss(handle, loaded.sae, loaded.place, sequences, batch_size, splice_from=skip)
        saved = {"key": loaded.meta["key"], "clean": loss.clean, "spliced": loss.spliced, "n_tokens": loss.n_tokens, "splice_from": skip}
        atomic_write_text(path, json.dumps(saved, indent=2) + "\n")
    return saved


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


# --- 2. store encodings and overlap -----------------------------------------------------------


@dataclass
class StoreActs:
    """A subject's stored vectors encoded by each layer's SAE."""

    acts: dict[tuple[int, str], torch.Tensor]  # (layer, position) → [n_records, d_sae]
    meta: dict[str, pd.DataFrame]  # position → one row per record (its token at `token_index`)


def encode_store(store: ActivationStore, saes: dict[int, LoadedSAE]) -> StoreActs:
    acts, meta = {}, {}
    for position in STORE_POSITIONS:
        for layer, loaded in saes.items():
            x, meta[position] = store.load("resid_post", layer, position, as_="torch")
            acts[layer, position] = encode(loaded.sae, x)
    return StoreActs(acts, meta)


@torch.no_grad()
def store_fit(subject: str, store: ActivationStore, saes: dict[int, LoadedSAE]) -> list[dict[str, Any]]:
    """How well the SAEs reconstruct the subject's stored vectors (held-out items, other prompts
    than the SAEs' training ones): explained variance around the group's own mean (harsh for
    groups of near-identical vectors, such as every prompt's final token), mean cosine between a
    vector and its reconstruction, and the squared error relative to the squared norm."""
    rows = []
    for layer, loaded in saes.items():
        sae = loaded.sae
        for position in STORE_POSITIONS:
            for kind in ("object", "hypothetical"):
                x, _ = store.load("resid_post", layer, position, filter={"kind": kind}, as_="torch")
                x = x.to(sae.device)
                recon = sae.decode(sae.encode(x))
                err = (x - recon).pow(2).sum(1)
                rows.append({"subject": subject, "layer": layer, "run": kind, "position": position, "n": len(x),
                             "explained_variance": float(1 - err.sum() / (x - x.mean(0)).pow(2).sum()),
                             "cosine": float(torch.nn.functional.cosine_similarity(x, recon).mean()),
                             "relative_error": float((err / x.pow(2).sum(1)).mean())})
    return rows


def aligned_p_last(hyp: pd.Series, obj: pd.Series) -> bool:
    """Whether P's last token is the same token in both prompts (an aligned pair), so the two
    p_last vectors are comparable."""
    a = Alignment.from_dict(hyp["alignment"])
    pair = (obj["positions"]["p_last"][0], hyp["positions"]["p_last"][0])
    return pair == (a.object_last, a.hypothetical_last) and pair in set(a.pairs)


def overlap_table(subject: str, sacts: StoreActs, layers: Sequence[int]) -> pd.DataFrame:
    """Per layer and position: object-run vs hypothetical-run latents of the same item, and of
    another item (the control: the next item in the store)."""
    rows = []
    for position in STORE_POSITIONS:
        meta = sacts.meta[position]
        obj_row = {item: i for i, item in enumerate(meta["item_id"]) if meta["kind"].iloc[i] == "object"}
        hyp = [i for i in range(len(meta)) if meta["kind"].iloc[i] == "hypothetical"
               and (position != "p_last" or aligned_p_last(meta.iloc[i], meta.iloc[obj_row[meta["item_id"].iloc[i]]]))]
        if not hyp:
            continue
        items = list(obj_row)
        other = {item: items[(n + 1) % len(items)] for n, item in enumerate(items)}
        same_o = [obj_row[meta["item_id"].iloc[i]] for i in hyp]
        other_o = [obj_row[other[meta["item_id"].iloc[i]]] for i in hyp]
        for layer in layers:
            acts = sacts.acts[layer, position]
            for pairing, o in (("same item", same_o), ("other item", other_o)):
                ov = compare_features(acts[o], acts[hyp])
                rows.append({"subject": subject, "layer": layer, "position": position, "pairing": pairing, "n": len(hyp),
                             "jaccard": float(np.nanmean(ov.jaccard.numpy())), "pearson": float(np.nanmean(ov.pearson.numpy()))})
    return pd.DataFrame(rows)


# --- 2. attribution and ablation ---------------------------------------------------------------


@dataclass
class Prompts:
    """The analysed hypothetical prompts of one subject."""

    records: pd.DataFrame
    sequences: list[list[int]]
    positions: list[list[int]]  # P's tokens, then the question's
    p_sets: list[set[int]]
    targets: list[int]  # the correct property value's first token


def choose_records(records: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Up to `n` hypothetical records with a defined correct value: a seeded draw spread over
    tasks, half of them ones the study scored correct (so that ablation has correct answers to lose)."""
    valued = records["object_value"].fillna("").astype(str).str.len() > 0
    hyp = records[(records["kind"] == "hypothetical") & valued].sample(frac=1.0, random_state=seed)
    correct = hyp["correct"].astype(bool)
    chosen = pd.concat([spread(hyp[correct], n // 2), spread(hyp[~correct], n - n // 2)])
    if len(chosen) < n:
        chosen = pd.concat([chosen, spread(hyp.drop(chosen.index), n - len(chosen))])
    return chosen.sort_values("record")


def analysis_prompts(handle: ModelHandle, records: pd.DataFrame) -> Prompts:
    sequences, positions, p_sets, targets = [], [], [], []
    for r in records.itertuples():
        ids = handle.prompt_format.encode(r.text)
        if len(ids) != len(r.tokens):
            raise UserError(f"record {r.record} re-encodes to {len(ids)} tokens, the store has {len(r.tokens)}",
                            "the store was captured with another tokenizer or prompt format: capture again")
        p = list(r.p_tokens)
        sequences.append(ids)
        positions.append(p + list(range(p[-1] + 1, len(ids))))
        p_sets.append(set(p))
        targets.append(first_token(handle, r.object_value))
    return Prompts(records.reset_index(drop=True), sequences, positions, p_sets, targets)


def attribution_tables(subject: str, prompts: Prompts, attrs: dict[int, Attribution]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per prompt × layer: attribution summed at P's and at the question's tokens;
    one row per layer × latent: its total attribution, at P and at the question)."""
    items, features = [], []
    for layer, a in attrs.items():
        d_sae = a.attr[0].shape[1]
        total, at_p, active = torch.zeros(d_sae, dtype=torch.float64), torch.zeros(d_sae, dtype=torch.float64), torch.zeros(d_sae)
        for i, r in enumerate(prompts.records.itertuples()):
            is_p = torch.tensor([pos in prompts.p_sets[i] for pos in a.positions[i]])
            attr = a.attr[i].double()
            items.append({"subject": subject, "layer": layer, "record": r.record, "item_id": r.item_id, "task": r.task, "property": r.property,
                          "logit": float(a.metric[i]), "attr_p": float(attr[is_p].sum()), "attr_q": float(attr[~is_p].sum()),
                          "abs_p": float(attr[is_p].abs().sum()), "abs_q": float(attr[~is_p].abs().sum()),
                          "n_p": int(is_p.sum()), "n_q": int((~is_p).sum())})
            total += attr.sum(0)
            at_p += attr[is_p].sum(0)
            active += (a.acts[i] > 0).any(0).float()
        features.append(pd.DataFrame({"subject": subject, "layer": layer, "feature": range(d_sae), "total": total.numpy(),
                                      "at_p": at_p.numpy(), "at_q": (total - at_p).numpy(), "items_active": active.numpy().astype(int)}))
    feats = pd.concat(features, ignore_index=True).sort_values(["layer", "total"], ascending=[True, False], kind="stable")
    feats["rank"] = feats.groupby("layer").cumcount() + 1
    return pd.DataFrame(items), feats.reset_index(drop=True)


def attribution_summary(items: pd.DataFrame) -> pd.DataFrame:
    """Per subject and layer: mean per prompt of the attribution at P's and the question's tokens."""
    g = items.groupby(["subject", "layer"], sort=False)
    out = g.agg(n=("record", "size"), logit=("logit", "mean"), attr_p=("attr_p", "mean"), attr_q=("attr_q", "mean"),
                abs_p=("abs_p", "mean"), abs_q=("abs_q", "mean")).reset_index()
    sums = g[["abs_p", "abs_q", "n_p", "n_q"]].sum().reset_index(drop=True)
    out["share_p"] = sums["abs_p"] / (sums["abs_p"] + sums["abs_q"])
    out["abs_p_per_token"] = sums["abs_p"] / sums["n_p"]
    out["abs_q_per_token"] = sums["abs_q"] / sums["n_q"]
    return out


def folds(n: int, seed: int) -> np.ndarray:
    """Fold (0/1) of each prompt: a seeded half split."""
    out = np.zeros(n, dtype=int)
    out[np.random.default_rng(seed).permutation(n)[: n // 2]] = 1
    return out


def _fold_top(a: Attribution, rows: np.ndarray, k: int) -> torch.Tensor:
    total = sum(a.attr[i].double().sum(0) for i in rows)
    return total.topk(k).indices.sort().values


def ablation_conditions(saes: dict[int, LoadedSAE], attrs: dict[int, Attribution], fold: np.ndarray, k: int, draws: int,
                        seed: int) -> tuple[dict[str, list[Ablation]], dict[str, dict[str, Any]]]:
    """Conditions for `ablation_logits` (clean; per layer the top-k of the other fold, and each
    random draw) and what each one is (layer, kind, draw, latents)."""
    conditions: dict[str, list[Ablation]] = {"clean": []}
    info: dict[str, dict[str, Any]] = {"clean": {"layer": None, "condition": "clean", "draw": None, "features": ""}}
    for layer, a in attrs.items():
        place, sae = place_of(layer), saes[layer].sae
        rows = [np.flatnonzero(fold == f) for f in (0, 1)]
        tops = [_fold_top(a, rows[f], k) for f in (0, 1)]
        name = f"L{layer} top-k"
        conditions[name] = [Ablation(place, sae, tops[1 - f], frozenset(rows[f].tolist())) for f in (0, 1)]
        info[name] = {"layer": layer, "condition": "top-k", "draw": None,
                      "features": " | ".join(" ".join(map(str, t.tolist())) for t in tops)}
        exclude = torch.cat(tops).unique()
        for d, pick in enumerate(random_active_features(torch.cat(a.acts), k, draws, seed + layer, exclude=exclude)):
            name = f"L{layer} random {d}"
            conditions[name] = [Ablation(place, sae, pick)]
            info[name] = {"layer": layer, "condition": "random", "draw": d, "features": " ".join(map(str, pick.tolist()))}
    return conditions, info


def ablation_table(subject: str, logits: dict[str, torch.Tensor], info: dict[str, dict[str, Any]], targets: Sequence[int]) -> pd.DataFrame:
    """Per condition: first-token accuracy, mean logit and log-probability of the correct token,
    and their change from the clean run."""
    ids = torch.tensor(list(targets))
    rows = []
    for name, lg in logits.items():
        logit = lg.gather(1, ids[:, None])[:, 0]
        logprob = lg.log_softmax(-1).gather(1, ids[:, None])[:, 0]
        rows.append({"subject": subject, **info[name], "n": len(ids), "accuracy": float((lg.argmax(-1) == ids).float().mean()),
                     "logit": float(logit.mean()), "logprob": float(logprob.mean())})
    table = pd.DataFrame(rows)
    clean = table[table["condition"] == "clean"].iloc[0]
    for m in ("accuracy", "logit", "logprob"):
        table[f"d_{m}"] = table[m] - clean[m]
    return table


@dataclass
class Analysed:
    """A subject's results kept in memory for the feature pages."""

    sacts: StoreActs
    prompts: Prompts
    attrs: dict[int, Attribution]
    store_rows: pd.DataFrame  # one row per stored vector, as `sacts` orders them
    token_rows: pd.DataFrame  # one row per attributed token, as `attrs` orders them


def analyse_subject(handle: ModelHandle, label: str, store: ActivationStore, saes: dict[int, LoadedSAE], config: SAEFeaturesConfig,
                    clock: StageClock) -> tuple[Analysed, dict[str, pd.DataFrame], dict[str, Any]]:
    """Overlap, attribution and ablation for one subject (`handle`: its model)."""
    layers = list(saes)
    sacts = encode_store(store, saes)
    tables = {"store_fit": pd.DataFrame(store_fit(label, store, saes)), "overlap": overlap_table(label, sacts, layers)}
    clock.lap(f"{label}: encode store, overlap")
    prompts = analysis_prompts(handle, choose_records(store.records, config.analysis_items, config.seed))
    _log(f"{label}: attribution on {len(prompts.sequences)} hypothetical prompts at layers {layers}")
    attrs = attribute_places(handle, {place_of(layer): saes[layer].sae for layer in layers}, prompts.sequences, prompts.positions,
                             answer_logit(prompts.targets), config.batch_size)
    attrs = {layer: attrs[place_of(layer)] for layer in layers}
    tables["attribution_items"], tables["attribution_features"] = attribution_tables(label, prompts, attrs)
    clock.lap(f"{label}: attribution")
    fold = folds(len(prompts.sequences), config.seed)
    conditions, info = ablation_conditions(saes, attrs, fold, config.ablate_k, config.random_draws, config.seed)
    _log(f"{label}: ablation, {len(conditions)} conditions")
    logits = ablation_logits(handle, prompts.sequences, prompts.positions, conditions, config.batch_size)
    tables["ablation"] = ablation_table(label, logits, info, prompts.targets)
    clock.lap(f"{label}: ablation")
    clean = logits["clean"].gather(1, torch.tensor(prompts.targets)[:, None])[:, 0]
    checks = {"max_abs_clean_logit_vs_attribution_logit": float((clean - next(iter(attrs.values())).metric).abs().max()),
              "max_relative_diff_live_vs_stored_final": live_vs_stored(handle, store, layers, config.batch_size)}
    clock.lap(f"{label}: checks")
    analysed = Analysed(sacts, prompts, attrs, store_rows(label, sacts), token_rows(label, prompts, attrs[layers[0]].positions))
    return analysed, tables, checks


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


def differential_table(acts_a: dict[int, torch.Tensor], acts_b: dict[int, torch.Tensor], inputs: str, top: int = 50) -> pd.DataFrame:
    """Per layer, latents ranked by the change of their mean activation from a (untrained M1) to
    b (self-trained M1); `inputs` says which prompts the rows come from."""
    frames = []
    for layer, a in acts_a.items():
        table = differential_features(a, acts_b[layer], top=top)
        frames.append(table.assign(inputs=inputs, layer=layer, rank=range(1, len(table) + 1), n=len(a)))
    return pd.concat(frames, ignore_index=True)


def own_prompt_acts(a: StoreActs, b: StoreActs) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Both stores' hypothetical final-token latents, paired by (item, property)."""
    def keyed(s: StoreActs) -> dict[tuple[str, str], int]:
        m = s.meta["final"]
        return {(m["item_id"].iloc[i], m["property"].iloc[i]): i for i in range(len(m)) if m["kind"].iloc[i] == "hypothetical"}

    ka, kb = keyed(a), keyed(b)
    common = [k for k in ka if k in kb]
    layers = sorted({layer for layer, _ in a.acts})
    return ({layer: a.acts[layer, "final"][[ka[k] for k in common]] for layer in layers},
            {layer: b.acts[layer, "final"][[kb[k] for k in common]] for layer in layers})


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


# --- 4. feature pages ---------------------------------------------------------------------------


def page_choices(features: pd.DataFrame, differential: pd.DataFrame | None, n: int) -> dict[tuple[int, int], list[str]]:
    """(layer, latent) → why it gets a page: top `n` per layer of each subject's attribution
    ranking and of the differential ranking."""
    out: dict[tuple[int, int], list[str]] = defaultdict(list)
    for r in features[features["rank"] <= n].itertuples():
        out[int(r.layer), int(r.feature)].append(
            f"attribution rank {r.rank} for {r.subject}: total {r.total:+.3f} (P {r.at_p:+.3f}, question {r.at_q:+.3f}), "
            f"active in {r.items_active} prompts")
    if differential is not None:
        for r in differential[differential["rank"] <= n].itertuples():
            out[int(r.layer), int(r.feature)].append(
                f"training-change rank {r.rank} ({r.inputs}): mean at the hypothetical final token {r.mean_a:.3f} (untrained) → "
                f"{r.mean_b:.3f} (self)")
    return dict(out)


def token_rows(label: str, prompts: Prompts, positions: list[list[int]]) -> pd.DataFrame:
    """One row per attributed token (in the attribution's order): where it is and its context."""
    rows = []
    for i, r in enumerate(prompts.records.itertuples()):
        for pos in positions[i]:
            rows.append({"subject": label, "task": r.task, "item_id": r.item_id, "property": r.property,
                         "tokens": "P" if pos in prompts.p_sets[i] else "question", "token": visible(r.tokens[pos]),
                         "context": token_context(r.tokens, pos)})
    return pd.DataFrame(rows)


def store_rows(label: str, sacts: StoreActs) -> pd.DataFrame:
    """One row per stored vector (positions in STORE_POSITIONS order): where it is and its token."""
    return pd.concat([pd.DataFrame({"subject": label, "run": m["kind"], "position": position, "task": m["task"], "item_id": m["item_id"],
                                    "property": m["property"], "token": [visible(t[i]) for t, i in zip(m["tokens"], m["token_index"])]})
                      for position, m in ((p, sacts.meta[p]) for p in STORE_POSITIONS)], ignore_index=True)


def feature_page(layer: int, feature: int, reasons: list[str], analysed: dict[str, Analysed], handle: ModelHandle, sae: LoadedSAE,
                 n: int) -> FeaturePage:
    """One latent's page from the subjects' store encodings and attribution passes."""
    activations, item_values, token_values = {}, [], []
    for label, res in analysed.items():
        for position in STORE_POSITIONS:
            kinds = res.sacts.meta[position]["kind"].to_numpy()
            values = res.sacts.acts[layer, position][:, feature].numpy()
            for kind in ("object", "hypothetical"):
                activations[f"{label} · {kind} · {position}"] = values[kinds == kind]
            item_values.append(values)
        token_values.append(torch.cat(res.attrs[layer].acts)[:, feature].numpy())
    summary = pd.DataFrame({"what": ["place", "latent", "SAE", *["why"] * len(reasons)],
                            "value": [str(place_of(layer)), str(feature), str(sae.folder), *reasons]})
    items = pd.concat([res.store_rows for res in analysed.values()], ignore_index=True)
    tokens = pd.concat([res.token_rows for res in analysed.values()], ignore_index=True)
    return FeaturePage(place_of(layer), feature, summary, activations,
                       top_examples(np.concatenate(item_values), items, n, distinct=["subject", "run", "position", "item_id", "token"]),
                       top_examples(np.concatenate(token_values), tokens, n, distinct=["subject", "item_id", "tokens", "context"]),
                       logit_effect(handle, sae.sae, feature))


# --- report ------------------------------------------------------------------------------------


def write_sae_report(run: RunDir, config: SAEFeaturesConfig, missing: dict[str, str], pages: dict[tuple[int, int], list[str]]) -> None:
    """sae/report.html from the saved tables."""
    read = lambda name: run.read_table(f"{OUT}/{name}")  # noqa: E731
    quality, fit, overlap = read("sae_quality"), read("store_fit"), read("overlap")
    summary = read("attribution_summary")
    ablation = read("ablation").astype({"layer": "Int64", "draw": "Int64"})  # the clean row has neither
    features = read("attribution_features")
    note = "".join(f"\n\nNot analysed: {s} ({why})." for s, why in missing.items())
    sections = [
        Section("SAEs", tables=[
            Table(quality.drop(columns=["folder"]), caption="TopK SAEs on untrained M1 (held-out training prompts)",
                  percent_columns=["explained_variance", "dead_fraction"]),
            Table(fit, caption="Reconstruction of the capture's stored vectors (held-out items)",
                  percent_columns=["explained_variance", "relative_error"]),
        ], text=f"resid_post TopK SAEs at layers {list(config.layers)}, trained on every token (after the shared chat-template opening) of "
                f"object-level and hypothetical prompts of the study's training tasks, train split, with {list(config.train_shots)} format "
                "demonstrations; quality measured on the first prompts, held out of training. loss_delta: next-token cross-entropy (nats) "
                "with the SAE reconstruction spliced in, minus the clean one. The second table: the capture's stored vectors (held-out "
                "tasks and items); explained variance is around each group's own mean, which for near-identical vectors (every "
                "prompt's final token) is tiny: cosine and relative error say more there." + note),
        Section("Object-level vs hypothetical run", figures=[overlap_figure(overlap)], tables=[Table(overlap, percent_columns=[])],
                text="Jaccard overlap of the active latents, and the correlation of the activation vectors, between the object-level "
                     "prompt and the hypothetical prompt of the same item: at P's last token (only where it is the same token in both "
                     "prompts) and at the final prompt token. 'other item' pairs the hypothetical prompt with another item's object-level "
                     "prompt: the overlap two unrelated prompts have."),
        Section("Attribution: P's tokens vs the question", figures=[attribution_split_figure(summary)],
                tables=[Table(summary, percent_columns=["share_p"]),
                        Table(features[features["rank"] <= 10], caption="Top latents by total attribution", percent_columns=[])],
                text="Gradient × activation of the correct property token's logit (at the final position) with respect to the SAE "
                     "latents at each token of P and of the question after it (error term kept: the forward pass is unchanged)."),
        Section("Ablation", figures=[ablation_figure(ablation)], tables=[Table(ablation, percent_columns=["accuracy", "d_accuracy"])],
                text=f"Zeroing latents at P's and the question's tokens (error term kept). top-k: the {config.ablate_k} latents with the "
                     f"largest total attribution on the other half of the prompts (2-fold). random: {config.ablate_k} latents drawn from "
                     f"those active at these tokens, {config.random_draws} seeded draws. Accuracy: the argmax next token is the correct "
                     "value's first token."),
    ]
    if run.exists(f"{OUT}/differential.jsonl"):
        diff = read("differential")
        sections.append(Section("What self-prediction training changed",
                                figures=[differential_figure(diff[diff["inputs"] == inputs], title=f"Training change on the {inputs}")
                                         for inputs in dict.fromkeys(diff["inputs"])],
                                tables=[Table(diff[diff["rank"] <= 10], percent_columns=["frac_active_a", "frac_active_b"])],
                                text="Latents (untrained M1's SAEs) whose mean activation at the hypothetical final token differs most "
                                     "between untrained (a) and self-trained (b) M1. 'own prompts': each subject's stored prompts, paired "
                                     "by item and property; they differ in format (untrained: with format demonstrations; self: "
                                     "zero-shot), so format and training changes mix. 'same prompts': self-trained M1's zero-shot "
                                     f"prompts ({config.differential_items}, spread over tasks) also run through untrained M1: only the "
                                     "weights differ."))
    else:
        sections.append(Section("What self-prediction training changed",
                                text="Needs the stores of both untrained and self-trained M1." + note))
    sections.append(Section("Feature pages", links=[(f"features/{page_file(place_of(layer), f)}", f"L{layer} latent {f}: " + "; ".join(why))
                                                    for (layer, f), why in sorted(pages.items())]))
    write_report(run.path(f"{OUT}/report.html"), f"SAE features · {run.name}", sections)


def metrics_from_tables(run: RunDir) -> dict[str, Any]:
    """The headline numbers, from the saved tables."""
    read = lambda name: run.read_table(f"{OUT}/{name}")  # noqa: E731
    out: dict[str, Any] = {"saes": {f"L{r.layer}": {"explained_variance": r.explained_variance, "l0": r.l0, "dead_fraction": r.dead_fraction,
                                                   "loss_delta": r.loss_delta, "clean_loss": r.clean_loss, "d_sae": r.d_sae, "reused": bool(r.reused)}
                                   for r in read("sae_quality").itertuples()}}
    overlap = read("overlap")
    out["overlap_jaccard"] = {f"{r.subject} L{r.layer} {r.position} {r.pairing}": r.jaccard for r in overlap.itertuples()}
    out["attribution"] = {f"{r.subject} L{r.layer}": {"share_p": r.share_p, "attr_p": r.attr_p, "attr_q": r.attr_q, "logit": r.logit}
                          for r in read("attribution_summary").itertuples()}
    ablation = read("ablation")
    out["ablation"] = {}
    for subject, part in ablation.groupby("subject", sort=False):
        clean = part[part["condition"] == "clean"].iloc[0]
        entry: dict[str, Any] = {"n": int(clean["n"]), "clean_accuracy": clean["accuracy"], "clean_logit": clean["logit"]}
        for layer, rows in part[part["condition"] != "clean"].groupby("layer"):
            top, rnd = rows[rows["condition"] == "top-k"].iloc[0], rows[rows["condition"] == "random"]
            entry[f"L{int(layer)}"] = {"top_k_d_accuracy": top["d_accuracy"], "random_d_accuracy_mean": rnd["d_accuracy"].mean(),
                                       "random_d_accuracy_sd": rnd["d_accuracy"].std(ddof=1) if len(rnd) > 1 else None,
                                       "top_k_d_logit": top["d_logit"], "random_d_logit_mean": rnd["d_logit"].mean()}
        out["ablation"][subject] = entry
    if run.exists(f"{OUT}/differential.jsonl"):
        diff = read("differential")
        out["differential_top"] = {f"{inputs} L{layer}": [{"feature": int(r.feature), "untrained": r.mean_a, "self": r.mean_b}
                                                          for r in part.head(5).itertuples()]
                                   for (inputs, layer), part in diff.groupby(["inputs", "layer"], sort=False)}
    return out


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    lines = [f"SAE {layer}: explained variance {m['explained_variance']:.1%}, L0 {m['l0']:.1f}, dead {m['dead_fraction']:.1%}, "
             f"spliced loss +{m['loss_delta']:.3f} nats" for layer, m in metrics["saes"].items()]
    ov = metrics["overlap_jaccard"]
    for key, value in ov.items():
        if key.endswith("same item"):
            other = ov[key.replace("same item", "other item")]
            lines.append(f"overlap {key.removesuffix(' same item')}: Jaccard {value:.2f} (other item {other:.2f})")
    for key, a in metrics["attribution"].items():
        lines.append(f"attribution {key}: {a['share_p']:.0%} of |attribution| at P's tokens "
                     f"(signed: P {a['attr_p']:+.3f}, question {a['attr_q']:+.3f})")
    for subject, ab in metrics["ablation"].items():
        lines.append(f"ablation {subject}: clean first-token accuracy {ab['clean_accuracy']:.1%} on {ab['n']} prompts")
        for layer, m in ab.items():
            if isinstance(m, dict):
                lines.append(f"  {layer}: top-k Δacc {m['top_k_d_accuracy']:+.1%} (Δlogit {m['top_k_d_logit']:+.2f}); "
                             f"random Δacc {m['random_d_accuracy_mean']:+.1%} (Δlogit {m['random_d_logit_mean']:+.2f})")
    for layer, top in metrics.get("differential_top", {}).items():
        lines.append(f"training change {layer}: " + ", ".join(f"#{t['feature']} {t['untrained']:.2f}→{t['self']:.2f}" for t in top[:3]))
    return lines


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


def replace_folder(folder: Path, write: Callable[[Path], object]) -> None:
    """`write` a fresh folder beside `folder`, then swap it in: no file of an earlier run survives (a
    latent no longer chosen keeps no page), and a crash leaves the old pages or the new ones, never
    a mix (between the two renames: no folder, until the rerun)."""
    staging, old = folder.with_name(f".{folder.name}.new"), folder.with_name(f".{folder.name}.old")
    for leftover in (staging, old):
        shutil.rmtree(leftover, ignore_errors=True)
    write(staging)
    if folder.exists():
        folder.rename(old)
    staging.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def main_sae_features(config: SAEFeaturesConfig, preset: str) -> dict[str, Any]:
    unknown = [s for s in config.subjects if s not in SUBJECTS or s == "cross"]
    if unknown:
        raise UserError(f"subject(s) {', '.join(unknown)} cannot be analysed with M1's SAEs", "use untrained and/or self")
    view = open_study(preset, config)
    run, stores, missing = capture_run(view, config, preset)
    present = [s for s in config.subjects if s not in missing]
    for label, why in missing.items():
        _log(f"skipping {label}: {why}")
    if not present:
        raise UserError(f"the capture run {run.name} has no finished store for {', '.join(config.subjects)}", next(iter(missing.values())))
    start_output(run, config, view)
    clock = StageClock(run.path(OUT))

    m1 = view.load(view.subject("untrained"))
    saes, quality = train_saes(m1, view, config, run)
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
