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
from introspect_mi.places import Place


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


@contextmanager
def _adding(model: torch.nn.Module, place: Place, deltas: torch.Tensor, member: torch.Tensor) -> Iterator[None]:
    """Add row r's `deltas[r]` at `place` where `member[r, position id]`."""
    if not bool(member.any()):
        yield
        return

    def add(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        table = member.to(x.device)
        hit = table.gather(1, pos.expand(x.shape[0], -1).clamp(max=table.shape[1] - 1))
        return torch.where(hit[..., None], x + deltas.to(x.device, x.dtype)[:, None, :], x)

    with editing(model, [(place, add)]):
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
    that shared part with different vectors is split by vector. Use one Steerer per model: the kept
    caches belong to its weights."""

    def __init__(self, model: torch.nn.Module, pad_id: int, batch_size: int = 16) -> None:
        self.model, self.pad_id, self.batch_size = model, pad_id, batch_size
        self._kept: dict[tuple[int, ...], Any] = {}

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

    @torch.no_grad()
    def _run(self, rows: list[int], seqs: Sequence[Sequence[int]], steers: Sequence[RowSteer], place: Place,
             out: dict[int, torch.Tensor]) -> None:
        model, dev = self.model, next(self.model.parameters()).device
        batch = [seqs[i] for i in rows]
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
        cache = self._unsteered(tuple(batch[0][:k0])) if k0 >= MIN_SHARED_PREFIX else None
        k0 = k0 if cache is not None else 0
        if k > k0:
            with _adding(model, place, deltas[:1], member[:1, :k]):
                cache = model(input_ids=torch.tensor([list(batch[0][k0:k])], device=dev), position_ids=torch.arange(k0, k, device=dev)[None],
                              cache=cache, use_cache=True, logits_to_keep=1).cache
        if cache is not None:
            cache.batch_repeat_interleave(len(batch))
        suffix = left_pad([list(s[k:]) for s in batch], self.pad_id)
        mask = torch.cat([torch.ones((len(batch), k), dtype=torch.long), suffix.attention_mask], 1)
        with _adding(model, place, deltas, member):
            logits = model(input_ids=suffix.input_ids.to(dev), attention_mask=mask.to(dev), position_ids=(suffix.position_ids + k).to(dev),
                           cache=cache, use_cache=cache is not None, logits_to_keep=1).logits[:, -1].float().cpu()
        out.update(zip(rows, logits))
