"""Out-of-fold top latents and the random control matched on activation frequency and magnitude."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from introspect_mi.saes.controls import LatentBins, folds, latent_bins, matched_random_features, top_attributed


def test_folds_split_in_halves_by_seed() -> None:
    fold = folds(9, seed=3)
    assert sorted(np.bincount(fold)) == [4, 5]
    assert (folds(9, seed=3) == fold).all() and not all((folds(9, seed=s) == fold).all() for s in range(4, 9))


def test_top_attributed_sums_only_the_given_rows() -> None:
    attr = [torch.tensor([[5.0, 0.0, 1.0]]), torch.tensor([[0.0, 2.0, 1.5], [0.0, 1.0, 0.0]])]
    assert top_attributed(attr, [1], 2).tolist() == [1, 2]  # row 0's large latent 0 does not count
    assert top_attributed(attr, [0, 1], 1).tolist() == [0]


def test_bins_by_hand() -> None:
    acts = torch.zeros(4, 6)
    acts[:, 0] = 1.0  # always active, weak
    acts[:, 1] = 9.0  # always active, strong
    acts[0, 2] = 1.0  # rare, weak
    acts[0, 3] = 9.0  # rare, strong
    acts[:2, 4] = 5.0  # half the tokens
    bins = latent_bins(acts, n_bins=2)
    assert bins.frequency.tolist() == [1.0, 1.0, 0.25, 0.25, 0.5, 0.0]
    assert bins.magnitude.tolist() == [1.0, 9.0, 1.0, 9.0, 5.0, 0.0]
    assert bins.cell.tolist() == [[1, 0], [1, 1], [0, 0], [0, 1], [1, 1], [-1, -1]]


def synthetic(seed: int = 0, d_sae: int = 400, tokens: int = 300) -> torch.Tensor:
    """Latents with frequencies and magnitudes spread over orders of magnitude (a few dozen never fire)."""
    gen = torch.Generator().manual_seed(seed)
    freq = torch.logspace(-2.3, 0, d_sae)[torch.randperm(d_sae, generator=gen)]
    freq[:30] = 0.0
    scale = torch.logspace(-1, 1, d_sae)[torch.randperm(d_sae, generator=gen)]
    active = torch.rand(tokens, d_sae, generator=gen) < freq
    return active * scale * (0.5 + torch.rand(tokens, d_sae, generator=gen))


def test_partners_share_the_cell_are_new_and_seeded() -> None:
    acts = synthetic()
    bins = latent_bins(acts, n_bins=4)
    chosen = bins.frequency.argsort(descending=True)[:10]  # the most frequent: the top cells
    got = matched_random_features(bins, chosen, n_draws=5, seed=1, exclude=[int(chosen[0]) + 1])
    again = matched_random_features(bins, chosen, n_draws=5, seed=1, exclude=[int(chosen[0]) + 1])
    assert [d.tolist() for d in got.draws] == [d.tolist() for d in again.draws]
    assert got.exact == got.total == 50
    for draw in got.draws:
        assert len(set(draw.tolist())) == 10 and not set(draw.tolist()) & (set(chosen.tolist()) | {int(chosen[0]) + 1})
        assert (bins.cell[draw] == bins.cell[chosen]).all()
    assert [d.tolist() for d in matched_random_features(bins, chosen, 5, seed=2).draws] != [d.tolist() for d in got.draws]


def test_matched_partners_are_closer_in_frequency_and_magnitude_than_uniform_active_ones() -> None:
    """On latents spread over two orders of magnitude, the matched control tracks the chosen
    latents' frequency and magnitude; a uniform draw from the active latents does not."""
    for seed in range(3):
        acts = synthetic(seed)
        bins = latent_bins(acts, n_bins=4)
        strong = (bins.frequency * bins.magnitude).argsort(descending=True)[:10]
        draws = torch.cat(matched_random_features(bins, strong, n_draws=20, seed=seed).draws)
        pool = (bins.frequency > 0).nonzero().flatten()
        uniform = pool[torch.randint(len(pool), (200,), generator=torch.Generator().manual_seed(seed))]
        log_f = lambda ids: bins.frequency[ids].log().mean()  # noqa: E731
        log_m = lambda ids: bins.magnitude[ids].log().mean()  # noqa: E731
        assert abs(log_f(draws) - log_f(strong)) < 0.5 * abs(log_f(uniform) - log_f(strong))
        assert abs(log_m(draws) - log_m(strong)) < 0.5 * abs(log_m(uniform) - log_m(strong))


def test_an_exhausted_cell_borrows_from_the_nearest_and_says_so() -> None:
    cells = torch.tensor([[2, 2], [2, 2], [2, 1], [0, 0], [0, 0], [-1, -1], [-1, -1]])
    bins = LatentBins(torch.zeros(7), torch.zeros(7), cells)
    got = matched_random_features(bins, [0], n_draws=3, seed=0, exclude=[1])  # latent 0's cell holds only its excluded twin
    assert got.exact == 0 and got.total == 3
    assert all(d.tolist() == [2] for d in got.draws)  # the nearest cell, never the far ones
    silent = matched_random_features(bins, [5], n_draws=2, seed=0)  # a latent that never fires gets one that never fires
    assert [d.tolist() for d in silent.draws] == [[6], [6]] and silent.exact == 2
    with pytest.raises(ValueError, match="only 1 latents"):
        matched_random_features(bins, [0, 1], n_draws=1, seed=0, exclude=[2, 3, 4, 5])
