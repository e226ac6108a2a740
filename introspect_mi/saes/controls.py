"""Which latents an ablation zeroes: the top attributed ones (chosen out of fold) and their matched random control.

A random latent is a fair control for a chosen one only if it is as common and as strong: zeroing
a latent active on most tokens with large values removes more of the residual than zeroing a rare
weak one, whatever either means. So each chosen latent gets a random partner from the same cell of
a frequency × magnitude grid, measured on the analysed tokens: frequency = share of tokens where
the latent is active, magnitude = its mean activation where active, each cut at its quantiles over
the active latents (`n_bins` per axis; inactive latents form their own cell). When a cell has no
latent left to draw, the nearest non-empty cell (grid distance) supplies it, and the draw counts it
as not exactly matched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


def folds(n: int, seed: int) -> np.ndarray:
    """Fold (0/1) of each prompt: a seeded half split."""
    out = np.zeros(n, dtype=int)
    out[np.random.default_rng(seed).permutation(n)[: n // 2]] = 1
    return out


def top_attributed(attr: Sequence[torch.Tensor], rows: Sequence[int], k: int) -> torch.Tensor:
    """The `k` latents with the largest total attribution over `rows` (each attr [n_positions, d_sae]), sorted."""
    total = sum(attr[i].double().sum(0) for i in rows)
    return total.topk(k).indices.sort().values


@dataclass(frozen=True)
class LatentBins:
    """Each latent's frequency, magnitude and grid cell on some tokens (cell −1: never active)."""

    frequency: torch.Tensor  # [d_sae]: share of tokens where active
    magnitude: torch.Tensor  # [d_sae]: mean activation where active (0 when never)
    cell: torch.Tensor  # [d_sae, 2]: (frequency bin, magnitude bin), (−1, −1) when never active


def latent_bins(acts: torch.Tensor, n_bins: int) -> LatentBins:
    """Frequency × magnitude cells of the latents from their activations [n_tokens, d_sae]."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be ≥ 1, not {n_bins}")
    active = acts > 0
    count = active.sum(0)
    frequency = count.double() / max(len(acts), 1)
    magnitude = torch.where(count > 0, (acts * active).double().sum(0) / count.clamp(min=1), torch.zeros_like(frequency))
    cell = torch.full((acts.shape[1], 2), -1, dtype=torch.long)
    alive = count > 0
    for axis, values in enumerate((frequency, magnitude)):
        edges = np.quantile(values[alive].numpy(), np.arange(1, n_bins) / n_bins) if alive.any() else np.zeros(0)
        cell[alive, axis] = torch.as_tensor(np.searchsorted(edges, values[alive].numpy(), side="right"), dtype=torch.long)
    return LatentBins(frequency, magnitude, cell)


@dataclass(frozen=True)
class MatchedDraws:
    """`draws[d][i]` is the random partner of chosen latent i in draw d; `exact` counts partners from the same cell."""

    draws: list[torch.Tensor]
    exact: int
    total: int


def matched_random_features(bins: LatentBins, chosen: Sequence[int] | torch.Tensor, n_draws: int, seed: int,
                            exclude: Sequence[int] | torch.Tensor = ()) -> MatchedDraws:
    """`n_draws` sets of partners, one per chosen latent, each drawn uniformly from the latents in
    the chosen latent's cell (nearest non-empty cell if none is left), never a chosen or excluded
    latent and never twice in one draw. The same seed gives the same draws."""
    chosen = [int(c) for c in torch.as_tensor(chosen, dtype=torch.long).tolist()]
    barred = set(chosen) | {int(e) for e in torch.as_tensor(exclude, dtype=torch.long).tolist()}
    cells = bins.cell.numpy()
    if len(cells) - len(barred) < len(chosen):
        raise ValueError(f"only {len(cells) - len(barred)} latents to draw {len(chosen)} partners from")
    gen = np.random.default_rng([seed, 15])
    draws, exact = [], 0
    for _ in range(n_draws):
        taken = set(barred)
        pick = []
        for c in chosen:
            free = np.array([j for j in range(len(cells)) if j not in taken])
            same_kind = (cells[free, 0] >= 0) == (cells[c, 0] >= 0)
            distance = np.where(same_kind, np.abs(cells[free] - cells[c]).max(1), np.iinfo(np.int64).max)
            nearest = free[distance == distance.min()]
            exact += int(distance.min() == 0)
            j = int(gen.choice(nearest))
            pick.append(j)
            taken.add(j)
        draws.append(torch.tensor(pick, dtype=torch.long))
    return MatchedDraws(draws, exact, n_draws * len(chosen))
