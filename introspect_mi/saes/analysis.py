"""SAE feature analyses: activations, overlap between runs, attribution (latents and error term), ablation.

Vectors come from the activation store (already picked at positions: P's tokens, the final
token...) or from a forward pass. Positions given to the model-running functions are token
indices of each sequence's own, unpadded, token list, as the store's records hold them
(negative ones count from the end).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd
import torch

from introspect_mi.places import Place
from introspect_mi.saes.splice import SpliceLeaves, ablation_edit, batched, editing, error_kept_edit, positions_mask, row_positions

if TYPE_CHECKING:
    from sae_lens import SAE

    from introspect_mi.models import ModelHandle

Metric = Callable[[torch.Tensor, Sequence[int]], torch.Tensor]
"""metric(logits [batch, seq, vocab], rows) → [batch]: the quantity to attribute, one per sequence
(`rows` are the batch's indices into the sequences given; left padding puts the last token at -1)."""


def answer_logit(answer_ids: Sequence[int]) -> Metric:
    """The logit of each sequence's answer token at its last position (the next-token prediction)."""
    ids = torch.as_tensor(list(answer_ids), dtype=torch.long)

    def metric(logits: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        return logits[:, -1].gather(-1, ids[list(rows)].to(logits.device)[:, None])[:, 0]

    return metric


@torch.no_grad()
def encode(sae: SAE, vectors: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Feature activations [n, d_sae] (float32, cpu) of vectors [n, d_in]."""
    parts = [sae.encode(chunk.to(sae.device)).float().cpu() for chunk in vectors.split(batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0, sae.cfg.d_sae)


# --- overlap between two runs --------------------------------------------------------------


@dataclass(frozen=True)
class FeatureOverlap:
    """How alike the features of paired vectors are (pair i: row i of `a` and row i of `b`)."""

    jaccard: torch.Tensor  # [n]: |A ∩ B| / |A ∪ B| of the pair's active (or top-`top`) latent sets; nan when both are empty
    pearson: torch.Tensor  # [n]: correlation of the pair's activation vectors over all latents; nan if one is constant
    feature_pearson: torch.Tensor  # [d_sae]: per latent, correlation across pairs of its a and b activations; nan if constant


def _active_sets(acts: torch.Tensor, top: int | None) -> torch.Tensor:
    """Bool [n, d_sae]: active latents, or only the `top` largest active ones per row."""
    active = acts > 0
    if top is None:
        return active
    keep = torch.zeros_like(active)
    keep.scatter_(1, acts.topk(min(top, acts.shape[1]), dim=1).indices, True)
    return keep & active


def _pearson(x: torch.Tensor, y: torch.Tensor, dim: int) -> torch.Tensor:
    x = x.double() - x.double().mean(dim, keepdim=True)
    y = y.double() - y.double().mean(dim, keepdim=True)
    return (x * y).sum(dim) / (x.norm(dim=dim) * y.norm(dim=dim))


def compare_features(acts_a: torch.Tensor, acts_b: torch.Tensor, top: int | None = None) -> FeatureOverlap:
    """Overlap and correlation of paired feature activations [n, d_sae] (e.g. P's tokens in the
    object run vs the aligned tokens of the hypothetical run)."""
    if acts_a.shape != acts_b.shape:
        raise ValueError(f"paired activations differ in shape: {tuple(acts_a.shape)} vs {tuple(acts_b.shape)}")
    a, b = _active_sets(acts_a, top), _active_sets(acts_b, top)
    union = (a | b).sum(1).double()
    jaccard = (a & b).sum(1).double() / union  # 0/0 → nan
    return FeatureOverlap(jaccard=jaccard, pearson=_pearson(acts_a, acts_b, 1), feature_pearson=_pearson(acts_a, acts_b, 0))


def differential_features(acts_a: torch.Tensor, acts_b: torch.Tensor, top: int | None = None) -> pd.DataFrame:
    """Latents ranked by |mean_b − mean_a| (e.g. a = untrained M1, b = self-trained M1, same inputs).

    Columns: feature, mean_a, mean_b, diff (b − a), frac_active_a, frac_active_b.
    """
    if acts_a.shape[1] != acts_b.shape[1]:
        raise ValueError(f"different latent counts: {acts_a.shape[1]} vs {acts_b.shape[1]}")
    mean_a, mean_b = acts_a.double().mean(0), acts_b.double().mean(0)
    table = pd.DataFrame({
        "feature": range(acts_a.shape[1]), "mean_a": mean_a.numpy(), "mean_b": mean_b.numpy(), "diff": (mean_b - mean_a).numpy(),
        "frac_active_a": (acts_a > 0).double().mean(0).numpy(), "frac_active_b": (acts_b > 0).double().mean(0).numpy(),
    })
    order = table["diff"].abs().sort_values(ascending=False, kind="stable").index
    table = table.loc[order].reset_index(drop=True)
    return table if top is None else table.head(top)


# --- attribution -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Attribution:
    """Per sequence: the attributed positions and, at each, every latent's activation and attribution.

    The SAE error term e = x − decode(encode(x)) stays in the forward pass; `error_attr` is its
    gradient × activation (e · ∂metric/∂x), the part of the attribution no latent carries, and
    `error_sq` / `norm_sq` say how large e is beside x (empty lists where not measured).
    """

    positions: list[list[int]]  # sorted token indices
    acts: list[torch.Tensor]  # [n_positions, d_sae]
    attr: list[torch.Tensor]  # [n_positions, d_sae]: activation × ∂metric/∂activation
    metric: torch.Tensor  # [n_sequences]: the metric (the splice leaves the forward pass unchanged)
    error_attr: list[torch.Tensor] = field(default_factory=list)  # [n_positions]: e · ∂metric/∂x
    error_sq: list[torch.Tensor] = field(default_factory=list)  # [n_positions]: ‖e‖²
    norm_sq: list[torch.Tensor] = field(default_factory=list)  # [n_positions]: ‖x‖²


def leaf_parts(leaf: SpliceLeaves, grads: Sequence[torch.Tensor | None], counts: Sequence[int]) -> Iterator[tuple[torch.Tensor, ...]]:
    """Per row of a batch (`counts` masked positions each): acts, attr, error_attr, error_sq,
    norm_sq, from one forward's splice leaves and their gradients (None: the metric ignores them)."""
    f, e = leaf.latents.detach(), leaf.error.detach()
    grad_f, grad_e = (torch.zeros_like(t) if g is None else g for t, g in zip((f, e), grads))
    parts = (f, f * grad_f, (e * grad_e).sum(-1), e.pow(2).sum(-1), leaf.norm_sq)
    return zip(*(p.float().cpu().split(list(counts)) for p in parts))


def attribute(
    handle: ModelHandle, sae: SAE, place: Place, sequences: Sequence[Sequence[int]], positions: Sequence[Sequence[int]],
    metric: Metric, batch_size: int = 8,
) -> Attribution:
    """Gradient × activation attribution of `metric` to the SAE's latents (and its error term) at `positions`.

    At those positions the SAE is spliced in with its error term kept (`splice.error_kept_edit`):
    the forward pass is exactly unchanged and the gradient reaches the latents. Sum `attr` over P's positions vs the question's to compare where the answer comes from.
    """
    if len(positions) != len(sequences):
        raise ValueError(f"{len(positions)} position lists for {len(sequences)} sequences")
    out = Attribution([], [], [], torch.empty(len(sequences)))
    for rows, batch in batched(handle, sequences, batch_size):
        mask = positions_mask(batch, [positions[i] for i in rows])
        leaves: list[SpliceLeaves] = []
        with torch.enable_grad(), editing(handle.model, place, error_kept_edit(sae, mask, leaves)):
            values = metric(handle.model(**batch.model_inputs()).logits, rows)
            grads = torch.autograd.grad(values.sum(), [leaves[0].latents, leaves[0].error], allow_unused=True)
        out.metric[list(rows)] = values.detach().float().cpu()
        for i, n, (acts, attr, error_attr, error_sq, norm_sq) in zip(rows, batch.lengths, leaf_parts(leaves[0], grads, mask.sum(1).tolist())):
            out.acts.append(acts)
            out.attr.append(attr)
            out.error_attr.append(error_attr)
            out.error_sq.append(error_sq)
            out.norm_sq.append(norm_sq)
            out.positions.append(row_positions(positions[i], n))
    return out


# --- ablation ---------------------------------------------------------


@torch.no_grad()
def ablated_final_logits(
    handle: ModelHandle, sae: SAE, place: Place, sequences: Sequence[Sequence[int]], features: Sequence[int] | torch.Tensor,
    positions: Sequence[Sequence[int]] | None = None, batch_size: int = 8,
) -> torch.Tensor:
    """Last-position logits [n, vocab] (float32, cpu) with `features` zeroed at `positions` (None:
    every token), the SAE's error term kept; no features gives exactly the clean logits.

    The next-token prediction is the first answer token, so self-prediction accuracy under the
    ablation follows from these. For per-sequence feature sets, call once per sequence.
    """
    logits = []
    for rows, batch in batched(handle, sequences, batch_size):
        mask = positions_mask(batch, None if positions is None else [positions[i] for i in rows])
        with editing(handle.model, place, ablation_edit(sae, features, mask)):
            logits.append(handle.model(**batch.model_inputs()).logits[:, -1].float().cpu())
    return torch.cat(logits)
