"""Steering vectors and concept injection: add scale · vector to a place during forward passes.

A steering vector is the mean activation difference between two groups of items (property value
X vs Y, e.g. rows of `ActivationStore.load`); its control is a random vector of equal norm
(`random_like`). Concept injection is the same operation mid-network during a prompt: a `Steer`
at one layer over the prompt's tokens.

Positions are token indices counted over each row's real tokens (the model's position ids), so
they hold under left padding, shared-prefix KV caches and generation alike:
- `positions=None` steers every token the model processes: the prompt and each generated token;
- explicit positions steer just those tokens, e.g. P's tokens (`p_tokens` in the store) or the
  question-final token (`len(ids) - 1`); generated tokens have positions from `len(ids)` on, so
  they are steered only if listed. With a batch of prompts every row gets the same positions:
  steer prompts whose positions differ in separate calls.
Padded columns carry position 0 (masked from attention, so steering them changes nothing real).
Steering changes every forward inside the block: don't reuse a KV cache or an
`inference.Engine` prefix computed outside it.

`Steerer` is the batched form the experiments use (D steering, E concept injection): next-token
logits of many prompts, each row with its own vector and positions (`RowSteer`), sharing each
batch's common prefix.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from introspect_mi.batching import MIN_SHARED_PREFIX, left_pad, sliding_window
from introspect_mi.hooks import Edit, editing
from introspect_mi.patching_forward import n_layers, reading, start_layer, starting_at
from introspect_mi.places import Place, PlaceKind


def steering_vector(group_x: torch.Tensor | np.ndarray, group_y: torch.Tensor | np.ndarray) -> torch.Tensor:
    """mean(group_x) - mean(group_y) over rows ([n, d_model] each), float32 [d_model]."""
    x, y = (torch.as_tensor(g, dtype=torch.float32) for g in (group_x, group_y))
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or not len(x) or not len(y):
        raise ValueError(f"need two non-empty [n, d_model] groups of equal width, got {tuple(x.shape)} and {tuple(y.shape)}")
    return x.mean(0) - y.mean(0)


def random_like(vector: torch.Tensor, seed: int) -> torch.Tensor:
    """A random direction with `vector`'s norm, dtype and device: the equal-norm control."""
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(vector.shape, generator=gen, dtype=torch.float64)
    r = r * (vector.double().norm() / r.norm())
    return r.to(dtype=vector.dtype, device=vector.device)


@dataclass(frozen=True, eq=False)
class Steer:
    """Add `scale * vector` to `place` at `positions` (None: every token, generated ones too)."""

    place: Place
    vector: torch.Tensor  # [d_model]
    scale: float = 1.0
    positions: tuple[int, ...] | None = None

    def edit(self) -> Edit:
        wanted = None if self.positions is None else torch.tensor(sorted(set(self.positions)), dtype=torch.long)

        def add(x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
            delta = (self.scale * self.vector).to(device=x.device, dtype=x.dtype)
            if wanted is None:
                return x + delta
            hit = torch.isin(position_ids, wanted.to(position_ids.device)).expand(x.shape[:2])
            return torch.where(hit[..., None], x + delta, x)

        return add


@contextmanager
def steering(model: torch.nn.Module, steers: Steer | Sequence[Steer]) -> Iterator[None]:
    """Apply the steers to every forward pass (and `generate` step) inside the block."""
    steers = [steers] if isinstance(steers, Steer) else list(steers)
    d = int(model.config.hidden_size)
    for s in steers:
        if tuple(s.vector.shape) != (d,):
            raise ValueError(f"steering vector for {s.place} has shape {tuple(s.vector.shape)}; the model's d_model is {d}")
    with editing(model, [(s.place, s.edit()) for s in steers]):
        yield


@dataclass(frozen=True, eq=False)
class RowSteer:
    """What one row gets: `vector` (scale applied; None: nothing) added at `positions` (None: all).
    Rows holding the same vector object may share a steered prefix."""

    vector: torch.Tensor | None
    positions: frozenset[int] | None = None


def _membership(steers: Sequence[RowSteer], width: int) -> torch.Tensor:
    """[rows, width] True where a row is steered (token index = position id)."""
    out = torch.zeros((len(steers), width), dtype=torch.bool)
    for i, s in enumerate(steers):
        if s.vector is None:
            continue
        if s.positions is None:
            out[i] = True
        else:
            out[i, [p for p in s.positions if p < width]] = True
    return out


def _steered(x: torch.Tensor, positions: torch.Tensor, deltas: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """x [rows, tokens, d] plus row r's `deltas[r]` at the tokens whose position id `member[r]` marks."""
    table = member.to(x.device)
    hit = table.gather(1, positions.to(x.device).expand(x.shape[0], -1).clamp(max=table.shape[1] - 1))
    return torch.where(hit[..., None], x + deltas.to(x.device, x.dtype)[:, None, :], x)


@contextmanager
def _adding(model: torch.nn.Module, place: Place, deltas: torch.Tensor, member: torch.Tensor) -> Iterator[None]:
    """Add row r's `deltas[r]` at `place` where `member[r, position id]`."""
    if not bool(member.any()):
        yield
        return
    with editing(model, [(place, lambda x, pos: _steered(x, pos, deltas, member))]):
        yield


def _shared(seqs: Sequence[Sequence[int]], member: torch.Tensor) -> int:
    """Length of the prefix every row shares: same tokens, steered in every row or in none."""
    limit, k = min(len(s) for s in seqs) - 1, 0
    alike = (member[:, :limit] == member[:1, :limit]).all(0).tolist()  # one tensor op, not one per token
    while k < limit and alike[k] and all(s[k] == seqs[0][k] for s in seqs):
        k += 1
    return k if k >= MIN_SHARED_PREFIX else 0


class Steerer:
    """Next-token logits of prompts under per-row steering, batched.

    A batch's shared prefix is computed once (batch of one): its unsteered start is kept across
    calls (the KV cache of those tokens; unsteered states never change), the rest of the shared
    prefix — steered alike in every row — is computed per batch, and a batch whose rows would steer
    that shared part with different vectors is split by vector.

    Steering in the residual stream (resid_pre / resid_post of a layer above the embeddings)
    changes nothing below it: there a batch enters the decoder at the steered layer (blocks below
    are pass-throughs, as in patching) fed each prompt's clean stream plus its row's vector, kept
    per prompt across calls after one forward that stops at that layer. Same logits up to float
    rounding (other matrix shapes; `python -m experiments.benchmark steering` measures both);
    `join=False` is the plain path, for checks: every batch from the embeddings, steered by a hook.
    Use one Steerer per model: the kept caches and streams belong to its weights."""

    def __init__(self, model: torch.nn.Module, pad_id: int, batch_size: int = 16, join: bool = True) -> None:
        self.model, self.pad_id, self.batch_size, self.join = model, pad_id, batch_size, join
        self._kept: dict[tuple[int, ...], Any] = {}
        self._streams: dict[tuple[tuple[int, ...], int], torch.Tensor] = {}

    def logits(self, seqs: Sequence[Sequence[int]], steers: Sequence[RowSteer], place: Place) -> torch.Tensor:
        """[rows, vocab] float32: each prompt's next-token logits with its row's steer at `place`."""
        if len(seqs) != len(steers):
            raise ValueError(f"{len(seqs)} prompts, {len(steers)} steers")
        out: dict[int, torch.Tensor] = {}
        for start in range(0, len(seqs), self.batch_size):
            self._run(list(range(start, min(start + self.batch_size, len(seqs)))), seqs, steers, place, out)
        return torch.stack([out[i] for i in range(len(seqs))])

    def _unsteered(self, prefix: tuple[int, ...]) -> Any:
        if prefix not in self._kept:
            dev = next(self.model.parameters()).device
            self._kept[prefix] = self.model(input_ids=torch.tensor([prefix], device=dev), use_cache=True, logits_to_keep=1).cache
        return copy.deepcopy(self._kept[prefix])

    def _join_layer(self, place: Place) -> int | None:
        """The block a batch steered at `place` can enter the decoder at (None: from the embeddings)."""
        if not self.join or place.kind not in (PlaceKind.RESID_PRE, PlaceKind.RESID_POST):
            return None
        layer = start_layer(place, n_layers(self.model))
        return layer if 0 < layer < n_layers(self.model) else None

    def _clean_streams(self, seqs: Sequence[tuple[int, ...]], layer: int) -> list[torch.Tensor]:
        """[tokens, d_model] clean stream entering block `layer` of each prompt, computed (left-padded
        batches, each forward stopped at that block) the first time a prompt is asked for."""
        todo = list(dict.fromkeys(s for s in seqs if (s, layer) not in self._streams))
        dev = next(self.model.parameters()).device
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            batch, got = left_pad([list(s) for s in chunk], self.pad_id), []
            with reading(self.model, Place(PlaceKind.RESID_PRE, layer), got):
                self.model(input_ids=batch.input_ids.to(dev), attention_mask=batch.attention_mask.to(dev),
                           position_ids=batch.position_ids.to(dev), use_cache=False, logits_to_keep=1)
            for row, s in enumerate(chunk):
                self._streams[(s, layer)] = got[0][row, batch.width - len(s) :]
        return [self._streams[(s, layer)] for s in seqs]

    def _steered_streams(self, batch: Sequence[tuple[int, ...]], k: int, width: int, positions: torch.Tensor,
                         deltas: torch.Tensor, member: torch.Tensor, layer: int) -> torch.Tensor:
        """[rows, width, d_model]: each row's clean stream from token k on (left-padded) plus its delta
        where it is steered: what enters block `layer` (padded columns, masked from attention, are zeros
        steered as position k, like the hook steers them)."""
        streams = self._clean_streams(batch, layer)
        x = streams[0].new_zeros((len(batch), width, streams[0].shape[-1]))
        for i, (s, stream) in enumerate(zip(batch, streams)):
            x[i, width - (len(s) - k) :] = stream[k:]
        return _steered(x, positions, deltas, member)

    def _shared_part(self, ids: tuple[int, ...], k0: int, k: int, delta: torch.Tensor, member: torch.Tensor, place: Place,
                     layer: int | None, cache: Any) -> Any:
        """The KV cache after the shared prefix's steered part, tokens [k0, k) (steered alike in every
        row), computed once (batch of one) on top of `cache`."""
        model, dev = self.model, next(self.model.parameters()).device
        positions = torch.arange(k0, k)[None]
        if layer is None:
            with _adding(model, place, delta, member[:, :k]):
                return model(input_ids=torch.tensor([list(ids[k0:k])], device=dev), position_ids=positions.to(dev),
                             cache=cache, use_cache=True, logits_to_keep=1).cache
        x = _steered(self._clean_streams([ids], layer)[0][None, k0:k], positions, delta, member)
        with starting_at(model, layer):
            cache = model(inputs_embeds=x, position_ids=positions.to(dev), cache=cache, use_cache=True, logits_to_keep=1).cache
        like = cache.layers[layer].keys
        filler = like.new_zeros((*like.shape[:2], k - k0, like.shape[-1]))
        for below in cache.layers[:layer]:  # pass-through blocks never read their cache, but its length sizes the masks
            below.update(filler, filler)
        return cache

    @torch.no_grad()
    def _run(self, rows: list[int], seqs: Sequence[Sequence[int]], steers: Sequence[RowSteer], place: Place,
             out: dict[int, torch.Tensor]) -> None:
        model, dev = self.model, next(self.model.parameters()).device
        batch = [tuple(seqs[i]) for i in rows]
        member = _membership([steers[i] for i in rows], max(map(len, batch)))
        window = sliding_window(model.config)
        k = 0 if window is not None and max(map(len, batch)) > window else _shared(batch, member)
        hits = member[0, :k].nonzero()
        k0 = int(hits[0]) if len(hits) else k  # the shared prefix is unsteered before k0
        if k0 < k and len({id(steers[i].vector) for i in rows}) > 1:
            groups: dict[int, list[int]] = {}
            for i in rows:
                groups.setdefault(id(steers[i].vector), []).append(i)
            for group in groups.values():
                self._run(group, seqs, steers, place, out)
            return
        d = int(model.config.hidden_size)
        deltas = torch.stack([torch.zeros(d) if steers[i].vector is None else steers[i].vector.float().cpu() for i in rows])
        layer = self._join_layer(place) if bool(member.any()) else None
        cache = self._unsteered(batch[0][:k0]) if k0 >= MIN_SHARED_PREFIX else None
        k0 = k0 if cache is not None else 0
        if k > k0:
            cache = self._shared_part(batch[0], k0, k, deltas[:1], member[:1], place, layer, cache)
        if cache is not None:
            cache.batch_repeat_interleave(len(batch))
        suffix = left_pad([list(s[k:]) for s in batch], self.pad_id)
        mask = torch.cat([torch.ones((len(batch), k), dtype=torch.long), suffix.attention_mask], 1).to(dev)
        positions = suffix.position_ids + k
        if layer is None:
            with _adding(model, place, deltas, member):
                logits = model(input_ids=suffix.input_ids.to(dev), attention_mask=mask, position_ids=positions.to(dev),
                               cache=cache, use_cache=cache is not None, logits_to_keep=1).logits
        else:
            x = self._steered_streams(batch, k, suffix.width, positions, deltas, member, layer)
            with starting_at(model, layer):
                logits = model(inputs_embeds=x, attention_mask=mask, position_ids=positions.to(dev),
                               cache=cache, use_cache=cache is not None, logits_to_keep=1).logits
        out.update(zip(rows, logits[:, -1].float().cpu()))
