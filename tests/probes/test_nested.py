"""Specification of probes.nested: the layer chosen in inner folds is not inflated by the choice,
the sign-flip test holds its level on data without signal, Holm's adjustment."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from probes.config import ProbeConfig
from probes.crossfit import CrossFit, Pool, cross_predict
from probes.nested import holm, item_differences, nested_layers, sign_flip_p
from tests.probes.planted import planted

CFG = ProbeConfig(c_grid=(1.0,), folds=3, n_boot=10, max_iter=30, tol=1e-3)
FAST = ProbeConfig(c_grid=(1.0,), folds=3, n_boot=10, max_iter=10, tol=1e-2)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """As the probing experiment fits: threads only add overhead on these small batched problems."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _noise_layers(seed: int, n_layers: int = 12, n: int = 40) -> dict[int, CrossFit]:
    """Every layer pure noise, random binary labels: any layer's true accuracy is 50%."""
    rng = np.random.default_rng(seed)
    y = rng.choice(["a", "b"], n)
    groups = np.array([f"i{i}" for i in range(n)])
    fold = rng.permutation(n) % 4
    return {layer: cross_predict(Pool(rng.normal(size=(n, 4)).astype(np.float32), {"p": y}, fold, groups), FAST, inner=True)["p"]
            for layer in range(n_layers)}


def test_nested_choice_is_not_inflated_where_the_naive_best_layer_is() -> None:
    naive, nested = [], []
    for seed in range(6):
        fits = _noise_layers(seed)
        naive.append(max(float(np.mean(f.pred["probe"] == f.y)) for f in fits.values()))
        hits, chosen = nested_layers(fits)
        nested.append(float(hits.mean()))
        assert set(chosen) == {0, 1, 2, 3} and set(chosen.values()) <= set(range(12))
    assert np.mean(naive) > 0.6  # the maximum of 12 noisy accuracies
    assert np.mean(nested) < 0.55  # the nested estimate: not above chance (cross-fitting on random labels sits a little below)


def test_nested_choice_finds_the_planted_layer() -> None:
    x, y = planted(60, d=8, k=2, strength=3.0, seed=2)
    rng = np.random.default_rng(0)
    groups = np.array([f"i{i}" for i in range(60)])
    layers = {layer: (x if layer == 3 else rng.normal(size=x.shape).astype(np.float32)) for layer in range(6)}
    fits = {layer: cross_predict(Pool(v, {"p": y}, np.arange(60) % 3, groups), CFG, inner=True)["p"] for layer, v in layers.items()}
    hits, chosen = nested_layers(fits)
    assert set(chosen.values()) == {3} and hits.mean() > 0.9


def test_nested_choice_needs_inner_losses() -> None:
    x, y = planted(30, d=4, k=2, seed=1)
    fit = cross_predict(Pool(x, {"p": y}, np.arange(30) % 3, np.arange(30).astype(str)), CFG)["p"]
    with pytest.raises(ValueError, match="inner"):
        nested_layers({0: fit})


def test_sign_flip_holds_its_level_without_signal() -> None:
    """Probe and baseline hits exchangeable (no signal): P(p < 0.05) ≈ 0.05 over 400 data sets."""
    rng = np.random.default_rng(0)
    rejections = []
    for seed in range(400):
        groups = np.repeat(np.arange(30), 2)
        probe, base = rng.random(60) < 0.6, rng.random(60) < 0.6
        rejections.append(sign_flip_p(item_differences(probe, base, groups), n_perm=199, seed=seed) < 0.05)
    assert 0.02 <= np.mean(rejections) <= 0.08


def test_sign_flip_detects_a_real_gain() -> None:
    d = np.r_[np.ones(15), np.zeros(15)]
    assert sign_flip_p(d, n_perm=999) < 0.01
    assert sign_flip_p(-d, n_perm=999) > 0.99


def test_item_differences_average_within_items() -> None:
    diff = item_differences(np.array([1, 1, 0, 1], bool), np.array([0, 1, 0, 0], bool), ["b", "b", "a", "a"])
    assert list(diff) == [0.5, 0.5]  # items sorted: a then b


def test_holm_adjusts_by_rank_and_keeps_order() -> None:
    adjusted = holm([0.01, np.nan, 0.04, 0.03])
    assert adjusted[0] == pytest.approx(0.03) and np.isnan(adjusted[1])
    assert adjusted[3] == pytest.approx(0.06) and adjusted[2] == pytest.approx(0.06)  # monotone: max(2·0.03, 1·0.04)
