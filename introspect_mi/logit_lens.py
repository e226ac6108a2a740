"""Logit lens over stored residual-stream vectors: each layer read through the final norm and
the unembedding, as if the network stopped there.

The self-simulation signature (issue 5): at the hypothetical prompt's final token, does the
object answer's first token (" cat") rise in the middle layers before the property token ("a")
does? `lens_table` gives, per record and layer, the top tokens and the rank and probability of
named target tokens; `lens_summary` averages them per layer. Reads the activation store and
the model's two output modules, never runs a forward pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from introspect_mi.actstore import ActivationStore, Filter
from introspect_mi.models import ModelHandle
from introspect_mi.places import hf_prefix, layout_for


@torch.no_grad()
def unembed(handle: ModelHandle, x: torch.Tensor) -> torch.Tensor:
    """Logits [n, vocab] of residual vectors [n, d] through the final norm and the unembedding."""
    layout = layout_for(handle.config.model_type)
    prefix = hf_prefix(handle.model)
    norm = handle.model.get_submodule(prefix + layout.final_norm)
    head = handle.model.get_submodule(prefix + layout.unembed)
    logits = head(norm(x.to(handle.device, next(head.parameters()).dtype))).float()
    cap = getattr(handle.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def first_token(handle: ModelHandle, text: object) -> int | None:
    """The token an answer `text` starts with, as the model would produce it after the prompt
    (None for a missing answer: None, NaN from a table, or empty)."""
    if not isinstance(text, str) or not text:
        return None
    ids = handle.tokenizer(handle.prompt_format.answer_prefix + text, add_special_tokens=False)["input_ids"]
    return int(ids[0]) if ids else None


def lens_table(handle: ModelHandle, store: ActivationStore, position: str, targets: Mapping[str, Sequence[int | None]],
               filter: Filter = None, top_k: int = 5, layers: Sequence[int] | None = None) -> pd.DataFrame:
    """One row per (record, layer): top-k tokens/probabilities, and `<target>_rank` (0 = top) and
    `<target>_prob` for each named target (one token id per selected record, None to skip)."""
    layers = list(range(int(store.info["n_layers"]))) if layers is None else list(layers)
    frames = []
    for layer in layers:
        x, meta = store.load("resid_post", layer, position, filter=filter, as_="torch")
        probs = unembed(handle, x).softmax(-1)
        top = probs.topk(top_k, dim=-1)
        frame = pd.DataFrame({"record": meta["record"], "item_id": meta["item_id"], "layer": layer,
                              "top_tokens": [[handle.tokenizer.decode([int(t)]) for t in row] for row in top.indices],
                              "top_probs": top.values.tolist()})
        for name, ids in targets.items():
            rank, prob = _rank_and_prob(probs, ids)
            frame[f"{name}_rank"], frame[f"{name}_prob"] = rank, prob
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _rank_and_prob(probs: torch.Tensor, ids: Sequence[int | None]) -> tuple[np.ndarray, np.ndarray]:
    """Rank (0 = top) and probability of one token per row; NaN where the id is None."""
    if len(ids) != len(probs):
        raise ValueError(f"{len(ids)} target ids for {len(probs)} vectors")
    known = torch.tensor([i is not None and i == i for i in ids], dtype=torch.bool)
    index = torch.tensor([int(i) if k else 0 for i, k in zip(ids, known.tolist())], dtype=torch.long)
    p = probs.gather(1, index[:, None])
    rank = (probs > p).sum(1).double().numpy()
    prob = p[:, 0].double().numpy()
    missing = ~known.numpy()
    rank[missing], prob[missing] = np.nan, np.nan
    return rank, prob


def lens_summary(table: pd.DataFrame, targets: Sequence[str]) -> pd.DataFrame:
    """Per layer: median rank, mean probability and top-1 rate of each target."""
    agg: dict[str, tuple[str, str]] = {}
    for name in targets:
        agg[f"{name}_median_rank"] = (f"{name}_rank", "median")
        agg[f"{name}_mean_prob"] = (f"{name}_prob", "mean")
    out = table.groupby("layer").agg(n=("record", "size"), **agg).reset_index()
    for name in targets:
        out[f"{name}_top1"] = table.groupby("layer")[f"{name}_rank"].apply(lambda r: float((r.dropna() == 0).mean()) if r.notna().any() else np.nan).to_numpy()
    return out


def first_rise(summary: pd.DataFrame, target: str, threshold: int = 10) -> int | None:
    """The first layer where the target's median rank is within the top `threshold` (None: never)."""
    hit = summary.loc[summary[f"{target}_median_rank"] < threshold, "layer"]
    return int(hit.iloc[0]) if len(hit) else None
