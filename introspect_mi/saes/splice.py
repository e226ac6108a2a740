"""Running a model with an SAE spliced in at one place: batched forwards and activation edits.

An *edit* replaces a place's activation `x` [batch, seq, d] by `edit(x)` during a forward pass.
Edits act only where a position mask is true, so left padding and the positions an analysis does
not touch keep their exact values. The edits are written so that "change nothing" is exact, not
merely close: ablating no features, or splicing with the error term kept, gives bit-identical
logits (they add `decode(f') − decode(f)` or `recon − recon.detach()`, which are exactly 0).
The SAE may sit on another device than the layer (a model spread with device_map).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from introspect_mi.batching import Batch, left_pad
from introspect_mi import hooks
from introspect_mi.places import Place

if TYPE_CHECKING:
    from sae_lens import SAE

    from introspect_mi.models import ModelHandle

Edit = Callable[[torch.Tensor], torch.Tensor]


@contextmanager
def editing(model: torch.nn.Module, place: Place, edit: Edit) -> Iterator[None]:
    """Replace `place`'s activation by `edit(activation)` in every forward pass inside the block
    (`hooks.editing` with an edit that ignores position ids)."""
    with hooks.editing(model, [(place, lambda x, _positions: edit(x))]):
        yield


def batched(handle: ModelHandle, sequences: Sequence[Sequence[int]], batch_size: int) -> Iterator[tuple[range, Batch]]:
    """(rows, left-padded batch on the model's device) for consecutive slices of `sequences`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, not {batch_size}")
    for start in range(0, len(sequences), batch_size):
        rows = range(start, min(start + batch_size, len(sequences)))
        batch = left_pad([list(sequences[i]) for i in rows], handle.pad_token_id)
        yield rows, batch.to(handle.device)


def row_positions(positions: Sequence[int], length: int) -> list[int]:
    """Sorted unique token indices into a sequence of `length` tokens (negative ones count from the end)."""
    out = set()
    for p in positions:
        if not -length <= p < length:
            raise ValueError(f"token index {p} is outside a sequence of {length} tokens")
        out.add(p % length)
    return sorted(out)


def positions_mask(batch: Batch, positions: Sequence[Sequence[int]] | None = None, splice_from: int = 0) -> torch.Tensor:
    """Bool [batch, seq]: the real tokens to edit.

    `positions[row]` lists token indices of that row's own (unpadded) sequence; None means every
    real token from index `splice_from` on.
    """
    if positions is None:
        real = batch.attention_mask.bool()
        return real & (batch.position_ids >= splice_from)
    if len(positions) != len(batch.lengths):
        raise ValueError(f"{len(positions)} position lists for a batch of {len(batch.lengths)} rows")
    mask = torch.zeros(batch.input_ids.shape, dtype=torch.bool, device=batch.input_ids.device)
    for row, (row_pos, length) in enumerate(zip(positions, batch.lengths)):
        offset = batch.width - length
        cols = [offset + p for p in row_positions(row_pos, length)]
        mask[row, cols] = True
    return mask


def masked_edit(mask: torch.Tensor, replace: Callable[[torch.Tensor], torch.Tensor]) -> Edit:
    """An edit setting x[mask] to `replace(x[mask])` (vectors [n, d] → [n, d]); the rest stays as is."""

    def edit(x: torch.Tensor) -> torch.Tensor:
        if x.shape[:2] != mask.shape:
            raise ValueError(f"activation of shape {tuple(x.shape)} does not match the position mask {tuple(mask.shape)}")
        where = mask.to(x.device)
        out = x.clone()
        out[where] = replace(x[where]).to(x.device, x.dtype)
        return out

    return edit


def reconstruction_edit(sae: SAE, mask: torch.Tensor) -> Edit:
    """Replace x by the SAE reconstruction `decode(encode(x))` at the masked positions."""
    return masked_edit(mask, lambda v: sae.decode(sae.encode(v.to(sae.device))))


@dataclass(frozen=True)
class SpliceLeaves:
    """What one forward of `error_kept_edit` spliced in at its masked positions [n_masked, ...]."""

    latents: torch.Tensor  # [n, d_sae]: f = encode(x), a leaf that requires grad
    error: torch.Tensor  # [n, d_in]: e = x − decode(f), a leaf that requires grad (its gradient is the residual's)
    norm_sq: torch.Tensor  # [n]: ‖x‖², for the error's relative size


def error_kept_edit(sae: SAE, mask: torch.Tensor, leaves: list[SpliceLeaves]) -> Edit:
    """Splice the SAE in with its error term kept: same values, gradients through the latents and the error.

    At the masked positions x becomes x + (decode(f) − decode(f).detach()) + (e − e.detach()), with
    f = encode(x) and e = x − decode(f) leaves that require grad (one `SpliceLeaves` appended to
    `leaves` per forward). Both added terms are exactly 0; e's gradient is x's, so e · ∂m/∂e is the
    share of a gradient × activation attribution that the SAE does not explain.
    """

    def replace(v: torch.Tensor) -> torch.Tensor:
        x = v.to(sae.device)
        f = sae.encode(x).detach().requires_grad_(True)
        recon = sae.decode(f)
        e = (x - recon).detach().requires_grad_(True)
        leaves.append(SpliceLeaves(f, e, x.detach().float().pow(2).sum(-1)))
        return v + (recon - recon.detach() + e - e.detach()).to(v.device, v.dtype)

    return masked_edit(mask, replace)


def ablation_edit(sae: SAE, features: Sequence[int] | torch.Tensor, mask: torch.Tensor) -> Edit:
    """Zero `features` in the SAE code at the masked positions, keeping the SAE's error term.

    x' = x + decode(f with `features` zeroed) − decode(f): the part of x the SAE does not explain
    stays, so only the chosen features' contribution is removed (exactly x when none is active).
    """
    index = torch.as_tensor(features, dtype=torch.long)

    def replace(v: torch.Tensor) -> torch.Tensor:
        f = sae.encode(v.to(sae.device))
        kept = f.clone()
        kept[:, index.to(f.device)] = 0
        return v + (sae.decode(kept) - sae.decode(f)).to(v.device, v.dtype)

    return masked_edit(mask, replace)
