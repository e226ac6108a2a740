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
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

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
