"""The SAEs of the SAE-features experiment: TopK SAEs on untrained M1's resid_post, trained on the
study's training tasks (train split) or reused when saved with the same config and data, and
their quality (explained variance, L0, dead latents, spliced next-token loss)."""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from introspect_mi import evaluation as ev
from introspect_mi.errors import UserError
from introspect_mi.models import ModelHandle
from introspect_mi.places import Place, PlaceKind
from introspect_mi.prompts import PromptConfig, hypothetical_prompt, object_prompt
from introspect_mi.saes import LoadedSAE, SAETrainConfig, sae_dir, spliced_loss, train_sae
from introspect_mi.saes.stream import ActivationStream
from introspect_mi.store import atomic_write_text

if TYPE_CHECKING:
    from experiments.mech import StudyView
    from experiments.sae_features import SAEFeaturesConfig

SPLICED_LOSS_FILE = "spliced_loss.json"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def place_of(layer: int) -> Place:
    return Place(PlaceKind.RESID_POST, layer)


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


def train_saes(handle: ModelHandle, view: StudyView, config: SAEFeaturesConfig) -> tuple[dict[int, LoadedSAE], pd.DataFrame]:
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
        log(f"SAE {place}: {'reusing' if reused else 'training'} {folder}")
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
