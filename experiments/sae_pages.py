"""Feature pages of the SAE experiment: which latents get one (top of each attribution and
training-change ranking) and what each shows (activations across the stores, top items and tokens,
the decoder direction's logit effect)."""

from __future__ import annotations

import shutil
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from experiments.sae_prompts import Prompts
from experiments.sae_training import place_of
from introspect_mi.models import ModelHandle
from introspect_mi.saes import LoadedSAE
from introspect_mi.saes.analysis import Attribution
from introspect_mi.saes.pages import FeaturePage, logit_effect, token_context, top_examples, visible
from introspect_mi.saes.store_encoding import STORE_POSITIONS, StoreActs


@dataclass
class Analysed:
    """A subject's results kept in memory for the feature pages."""

    sacts: StoreActs
    prompts: Prompts
    attrs: dict[int, Attribution]
    store_rows: pd.DataFrame  # one row per stored vector, as `sacts` orders them
    token_rows: pd.DataFrame  # one row per attributed token, as `attrs` orders them


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
