"""A subject's stored vectors (activation store) seen through SAEs: encodings, reconstruction fit, run-to-run overlap.

The store holds resid_post at P's last token and at the final prompt token of every object-level
and hypothetical prompt. Overlap compares the latents of an item's object-level run with those of
its hypothetical run at the same token; its control pairs the hypothetical run with *other*
items' object-level runs **at the same token** (same token string), so that only the item
differs. Both pairings are measured on the same hypothetical records (those with such a partner),
so their difference is paired by record. Differential latents compare two subjects' encodings of
their hypothetical final tokens (what self-prediction training changed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from introspect_mi.alignment import Alignment
from introspect_mi.paired import clustered_mean
from introspect_mi.saes.analysis import compare_features, differential_features, encode

if TYPE_CHECKING:
    from introspect_mi.actstore import ActivationStore
    from introspect_mi.saes.load import LoadedSAE

STORE_POSITIONS = ("p_last", "final")


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


def _token(meta: pd.DataFrame, row: int) -> str:
    return meta["tokens"].iloc[row][meta["token_index"].iloc[row]]


def overlap_pairs(meta: pd.DataFrame, position: str, max_partners: int, seed: int) -> tuple[list[int], list[int], list[list[int]]]:
    """(hypothetical rows, their own item's object row, the object rows of other items with the
    same token at `position`: all of them, or a seeded draw of `max_partners`): every hypothetical
    record whose own pair is comparable (p_last: aligned) and that has at least one same-token partner."""
    rng = np.random.default_rng([seed, 7])
    kinds, items = meta["kind"].to_numpy(), meta["item_id"].to_numpy()
    obj_row = {items[i]: i for i in range(len(meta)) if kinds[i] == "object"}
    by_token: dict[str, list[int]] = {}
    for i in obj_row.values():
        by_token.setdefault(_token(meta, i), []).append(i)
    hyp, own, others = [], [], []
    for i in np.flatnonzero(kinds == "hypothetical"):
        o = obj_row[items[i]]
        if position == "p_last" and not aligned_p_last(meta.iloc[i], meta.iloc[o]):
            continue
        partners = [j for j in by_token.get(_token(meta, i), []) if items[j] != items[i]]
        if len(partners) > max_partners:
            partners = sorted(rng.choice(partners, max_partners, replace=False).tolist())
        if partners:
            hyp.append(int(i))
            own.append(o)
            others.append(partners)
    return hyp, own, others


def overlap_rows(subject: str, sacts: StoreActs, layers: Sequence[int], max_partners: int = 8, seed: int = 0) -> pd.DataFrame:
    """One row per hypothetical record × layer × position with a same-token partner: Jaccard and
    correlation of its latents with its own item's object-level run ("same item") and, averaged
    over its partners (up to `max_partners`: at the final token every item is one), with other
    items' object-level runs at the same token ("other item")."""
    frames = []
    for position in STORE_POSITIONS:
        meta = sacts.meta[position]
        hyp, own, others = overlap_pairs(meta, position, max_partners, seed)
        if not hyp:
            continue
        flat_h = [h for h, o in zip(hyp, others) for _ in o]
        flat_o = [j for o in others for j in o]
        owner = np.repeat(np.arange(len(hyp)), [len(o) for o in others])
        for layer in layers:
            acts = sacts.acts[layer, position]
            same = compare_features(acts[own], acts[hyp])
            other = compare_features(acts[flat_o], acts[flat_h])
            mean_other = lambda v: pd.Series(v.numpy()).groupby(owner).mean().to_numpy()  # noqa: E731
            frames.append(pd.DataFrame({
                "subject": subject, "layer": layer, "position": position, "record": meta["record"].to_numpy()[hyp],
                "item_id": meta["item_id"].to_numpy()[hyp], "token": [_token(meta, h) for h in hyp], "partners": [len(o) for o in others],
                "jaccard_same": same.jaccard.numpy(), "jaccard_other": mean_other(other.jaccard),
                "pearson_same": same.pearson.numpy(), "pearson_other": mean_other(other.pearson)}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()



def overlap_summary(rows: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """Per subject × layer × position (from `overlap_rows`): n, mean Jaccard and correlation of
    both pairings, and same − other item Jaccard with its bootstrap 95% CI over items."""
    out = []
    for (subject, layer, position), part in rows.groupby(["subject", "layer", "position"], sort=False):
        diff = part["jaccard_same"] - part["jaccard_other"]
        keep = diff.notna().to_numpy()
        est = clustered_mean(diff[keep].to_numpy(), part["item_id"].to_numpy()[keep], n_boot=n_boot, seed=seed)
        out.append({"subject": subject, "layer": int(layer), "position": position, "n": int(keep.sum()),
                    "items": part["item_id"].nunique(), "jaccard_same": part["jaccard_same"].mean(),
                    "jaccard_other": part["jaccard_other"].mean(), "pearson_same": part["pearson_same"].mean(),
                    "pearson_other": part["pearson_other"].mean(), "jaccard_diff": est.value, "diff_ci_low": est.ci_low,
                    "diff_ci_high": est.ci_high})
    return pd.DataFrame(out)

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
