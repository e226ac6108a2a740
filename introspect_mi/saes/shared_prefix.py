"""SAE attribution and ablation that compute each prompt's unedited prefix once.

The analyses edit only P's tokens and the question after it, so everything before a prompt's
first edited token (chat template, format demonstrations, "Previously, you were asked...") is
the same in every pass. Each batch's prefixes are run once, left-padded, and their KV cache is
copied into every pass over the batch (the clean run, each ablation condition, the attribution
pass); only the suffixes are recomputed per pass. On the quick study's 2-shot hypothetical
prompts the suffix is about a third of the prompt. Padding sits before each prefix and between
prefix and suffix; masks and position ids are built from lengths, so a row computes what it would
alone (tests compare with `analysis.attribute` and `analysis.ablated_final_logits`, which run
the whole sequences). Models with sliding-window attention (where columns, not positions, set
the window) run whole sequences.

Several SAEs are attributed in one forward and backward pass: the error-kept splice changes no
value and its latents are detached leaves, so each place's gradient is the one a pass with that
splice alone would give. Only the last position's logits are computed (the next-token prediction
is the self-prediction's first answer token).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from introspect_mi.batching import Batch, left_pad
from introspect_mi.places import Place
from introspect_mi.saes.analysis import Attribution, Metric, leaf_parts
from introspect_mi.saes.splice import SpliceLeaves, ablation_edit, editing, error_kept_edit, positions_mask, row_positions

if TYPE_CHECKING:
    from sae_lens import SAE

    from introspect_mi.models import ModelHandle


@dataclass(frozen=True)
class Ablation:
    """Zero `features` of `sae` at `place`, at the analysis positions of `rows` (None: every row)."""

    place: Place
    sae: SAE
    features: Sequence[int] | torch.Tensor
    rows: frozenset[int] | None = None


@dataclass
class _Chunk:
    rows: list[int]  # indices into the sequences given
    prefix: Batch | None  # each row's tokens before its first analysis position, left-padded (None: no split)
    suffix: Batch  # the rows' remaining tokens, left-padded
    splits: list[int]  # per row: where its suffix starts in the sequence
    positions: list[list[int]]  # per row: analysis positions as indices into its suffix

    def mask(self, rows: frozenset[int] | None = None) -> torch.Tensor:
        """Bool [batch, suffix width]: the analysis positions of `rows` (None: of every row)."""
        mask = positions_mask(self.suffix, self.positions)
        if rows is not None:
            keep = torch.tensor([r in rows for r in self.rows], device=mask.device)
            mask &= keep[:, None]
        return mask


def _window(config: Any) -> int | None:
    """The sliding-attention window, for models that have sliding layers."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    return None if window is None or (types is not None and "sliding_attention" not in types) else int(window)


def _chunks(handle: ModelHandle, sequences: Sequence[Sequence[int]], positions: Sequence[Sequence[int]], batch_size: int) -> Iterator[_Chunk]:
    """Batches of rows sorted by their tokens (similar lengths together), each row split before its
    first analysis position (at least its last token stays in the suffix)."""
    if len(positions) != len(sequences):
        raise ValueError(f"{len(positions)} position lists for {len(sequences)} sequences")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, not {batch_size}")
    split_ok = _window(handle.config) is None
    order = sorted(range(len(sequences)), key=lambda i: list(sequences[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        seqs = [list(sequences[i]) for i in rows]
        absolute = [row_positions(positions[i], len(s)) for i, s in zip(rows, seqs)]
        splits = [min(p, default=len(s) - 1) for p, s in zip(absolute, seqs)]
        if not split_ok or min(splits) == 0:
            splits = [0] * len(rows)
        prefix = left_pad([s[:k] for s, k in zip(seqs, splits)], handle.pad_token_id).to(handle.device) if splits[0] else None
        suffix = left_pad([s[k:] for s, k in zip(seqs, splits)], handle.pad_token_id).to(handle.device)
        yield _Chunk(rows, prefix, suffix, splits, [[p - k for p in ps] for ps, k in zip(absolute, splits)])


@torch.no_grad()
def _prefix_cache(handle: ModelHandle, chunk: _Chunk) -> Any:
    """The KV cache of the chunk's prefixes (run outside any edit: edits are built for the suffix grid)."""
    if chunk.prefix is None:
        return None
    return handle.model(**chunk.prefix.model_inputs(), use_cache=True, logits_to_keep=1).cache


def _last_logits(handle: ModelHandle, chunk: _Chunk, prefix_cache: Any) -> torch.Tensor:
    """Logits [batch, 1, vocab] at each row's last token (under whatever edits are active)."""
    suffix = chunk.suffix
    if chunk.prefix is None:
        return handle.model(**suffix.model_inputs(), logits_to_keep=1).logits
    lengths = torch.tensor(chunk.prefix.lengths, device=suffix.input_ids.device)
    out = handle.model(input_ids=suffix.input_ids, attention_mask=torch.cat([chunk.prefix.attention_mask, suffix.attention_mask], dim=1),
                       position_ids=lengths[:, None] + suffix.position_ids, cache=copy.deepcopy(prefix_cache), use_cache=True,
                       logits_to_keep=1)
    return out.logits


def attribute_places(
    handle: ModelHandle, saes: Mapping[Place, SAE], sequences: Sequence[Sequence[int]], positions: Sequence[Sequence[int]],
    metric: Metric, batch_size: int = 8,
) -> dict[Place, Attribution]:
    """Gradient × activation attribution of `metric` to each SAE's latents at `positions` (token
    indices of each sequence, negative from the end), all places in one pass per batch.

    Same result as `analysis.attribute` once per place; `metric` sees the last position's logits only.
    """
    n = len(sequences)
    out = {place: Attribution([[] for _ in sequences], *([torch.empty(0)] * n for _ in range(2)), torch.empty(n),
                              *([torch.empty(0)] * n for _ in range(3))) for place in saes}
    for chunk in _chunks(handle, sequences, positions, batch_size):
        mask, prefix = chunk.mask(), _prefix_cache(handle, chunk)
        leaves: dict[Place, list[SpliceLeaves]] = {place: [] for place in saes}
        with torch.enable_grad(), ExitStack() as stack:
            for place, sae in saes.items():
                stack.enter_context(editing(handle.model, place, error_kept_edit(sae, mask, leaves[place])))
            values = metric(_last_logits(handle, chunk, prefix), chunk.rows)
            grads = torch.autograd.grad(values.sum(), [t for p in saes for t in (leaves[p][0].latents, leaves[p][0].error)], allow_unused=True)
        counts = mask.sum(1).tolist()
        for j, place in enumerate(saes):
            result = out[place]
            result.metric[chunk.rows] = values.detach().float().cpu()
            parts = leaf_parts(leaves[place][0], grads[2 * j : 2 * j + 2], counts)
            for row, (acts, attr, error_attr, error_sq, norm_sq), pos, split in zip(chunk.rows, parts, chunk.positions, chunk.splits):
                result.acts[row], result.attr[row], result.positions[row] = acts, attr, [p + split for p in pos]
                result.error_attr[row], result.error_sq[row], result.norm_sq[row] = error_attr, error_sq, norm_sq
    return out


@torch.no_grad()
def ablation_logits(
    handle: ModelHandle, sequences: Sequence[Sequence[int]], positions: Sequence[Sequence[int]],
    conditions: Mapping[str, Sequence[Ablation]], batch_size: int = 8,
) -> dict[str, torch.Tensor]:
    """Last-position logits [n, vocab] (float32, cpu) under each condition: its ablations applied
    at the analysis `positions` of their rows, the SAE error term kept. An empty condition is the
    clean run. Each batch's prefix is computed once for all conditions."""
    logits: dict[str, list[tuple[list[int], torch.Tensor]]] = {name: [] for name in conditions}
    for chunk in _chunks(handle, sequences, positions, batch_size):
        prefix = _prefix_cache(handle, chunk)
        for name, ablations in conditions.items():
            with ExitStack() as stack:
                for a in ablations:
                    stack.enter_context(editing(handle.model, a.place, ablation_edit(a.sae, a.features, chunk.mask(a.rows))))
                logits[name].append((chunk.rows, _last_logits(handle, chunk, prefix)[:, -1].float().cpu()))
    out = {}
    for name, parts in logits.items():
        full = torch.empty(len(sequences), parts[0][1].shape[-1]) if parts else torch.empty(0, 0)
        for rows, part in parts:
            full[rows] = part
        out[name] = full
    return out
