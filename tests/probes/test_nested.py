"""Specification of probes.nested: the layer chosen in inner folds is not inflated by the choice,
the sign-flip test holds its level on data without signal, Holm's adjustment."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from probes.config import ProbeConfig
from probes.crossfit import CrossFit, Pool, cross_predict
from probes.nested import (
    item_differences, max_over_layers_p, nested_layers, nested_summary, strict_bar, subset_summary, task_mode_hits,
)
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


def test_item_differences_average_within_items() -> None:
    diff = item_differences(np.array([1, 1, 0, 1], bool), np.array([0, 1, 0, 0], bool), ["b", "b", "a", "a"])
    assert list(diff) == [0.5, 0.5]  # items sorted: a then b


def _null_layers(seed: int, permutations: int, n_layers: int = 5, n: int = 48) -> dict[int, CrossFit]:
    rng = np.random.default_rng([seed, 99])
    y = rng.choice(["a", "b"], n)
    tasks = np.repeat(["t", "u"], n // 2)
    pool = lambda: Pool(rng.normal(size=(n, 3)).astype(np.float32), {"p": y}, np.arange(n) % 3, np.arange(n).astype(str), tasks=tasks)  # noqa: E731
    cfg = ProbeConfig(c_grid=(1.0,), n_boot=1, max_iter=10, tol=1e-2, seed=seed)
    return {layer: cross_predict(pool(), cfg, permutations=permutations)["p"] for layer in range(n_layers)}


def test_max_over_layers_null_holds_its_level_without_signal() -> None:
    """No signal at any of 5 layers: the max-over-layers permutation p-value rejects at about its
    level (0.1 here) over 120 data sets; the best layer tested against its own layer's null (no
    max in the null) rejects far more often (measured 0.37)."""
    rejected, naive = [], []
    for seed in range(120):
        fits = _null_layers(seed, permutations=19)
        acc, layer, p = max_over_layers_p(fits)
        rejected.append(p <= 0.1)
        naive.append((1 + np.sum(fits[layer].null_acc >= acc - 1e-12)) / 20 <= 0.1)
    assert 0.03 <= np.mean(rejected) <= 0.2
    assert np.mean(naive) > 0.25


def test_max_over_layers_detects_a_planted_layer_and_needs_permutations() -> None:
    x, y = planted(36, d=3, k=2, strength=4.0, seed=5)
    groups = np.arange(36).astype(str)
    cfg = ProbeConfig(c_grid=(1.0,), n_boot=1, max_iter=20)
    fits = {layer: cross_predict(Pool(x if layer == 1 else np.random.default_rng(layer).normal(size=x.shape).astype(np.float32),
                                      {"p": y}, np.arange(36) % 3, groups), cfg, permutations=19)["p"] for layer in range(3)}
    acc, layer, p = max_over_layers_p(fits)
    assert layer == 1 and acc > 0.9 and p == pytest.approx(0.05)
    with pytest.raises(ValueError, match="permutations"):
        max_over_layers_p(_null_layers(0, permutations=0))


def test_permutations_are_within_task_and_need_one_pool() -> None:
    from probes.crossfit import permuted_within

    y = np.array(list("aabbbcccdd"))
    tasks = np.array(["t"] * 5 + ["u"] * 5)
    z = permuted_within(y, tasks, 0, 1)
    assert sorted(z[:5]) == sorted(y[:5]) and sorted(z[5:]) == sorted(y[5:])
    assert not np.array_equal(permuted_within(y, tasks, 0, 1), permuted_within(y, tasks, 0, 2))
    pool = Pool(np.zeros((10, 2), np.float32), {"p": y}, np.arange(10) % 2, np.arange(10).astype(str))
    with pytest.raises(ValueError, match="one pool"):
        cross_predict(pool, CFG, pool, permutations=3)


def _fit(y: list[str], constant: list[str], tasks: list[str] | None) -> CrossFit:
    """A hand-made cross-fit whose probe predicts `y` itself (only the bar matters here)."""
    n = len(y)
    return CrossFit(y=np.array(y), pred={"probe": np.array(y)}, control=None, constant=np.array(constant), fold=np.arange(n) % 2,
                    groups=np.array([f"i{i}" for i in range(n)]), tasks=None if tasks is None else np.array(tasks),
                    inner_loss={0: 0.1, 1: 0.1}, n_train=n, n_classes=2, seen=1.0, C=1.0, converged=True)


def test_the_bar_is_the_task_mode_in_hindsight_where_cross_fitting_pushes_the_constant_below_it() -> None:
    # balanced a/b: each fold's training majority is the class its test part lacks, so the
    # cross-fitted constant scores 0 of 4; the task's mode in hindsight ('a', ties: smallest) scores 2
    fit = _fit(["a", "b", "a", "b"], ["b", "a", "b", "a"], None)
    bar, kind = strict_bar(fit)
    assert list(bar) == [True, False, True, False] and kind == "task mode in hindsight"
    assert nested_summary({0: fit}, n_boot=20, n_flips=50)["task_majority"] == 0.5


def test_the_task_mode_is_taken_within_each_task() -> None:
    # task s: a a b (mode a); task t: b b a (mode b) → 4 of 6; the pooled mode would score 3
    hits = task_mode_hits(np.array(["a", "a", "b", "b", "b", "a"]), np.array(["s", "s", "s", "t", "t", "t"]))
    assert list(hits) == [True, True, False, True, True, False]


def test_the_cross_fitted_constant_stays_the_bar_where_it_scores_higher() -> None:
    fit = _fit(["a", "b", "b", "b"], ["a", "b", "b", "b"], ["s"] * 4)  # hindsight mode 'b' scores 3, the constant 4
    assert strict_bar(fit)[1] == "training folds' task majority"


def test_subset_summary_scores_the_curves_own_predictions_on_part_of_its_vectors() -> None:
    """The subset score is the nested hits (layer chosen on all items) restricted to the mask, against the same bar;
    the whole mask gives the curve's own accuracy; an empty mask gives n = 0 and NaN."""
    rng = np.random.default_rng(3)
    n = 60
    y = rng.choice(["a", "b"], n)
    tasks = np.repeat(["t", "u"], n // 2)
    cfg = ProbeConfig(c_grid=(1.0,), folds=2, n_boot=1, max_iter=20, tol=1e-2)
    fits = {layer: cross_predict(Pool(rng.normal(size=(n, 3)).astype(np.float32) + (y == "a")[:, None] * layer, {"p": y},
                                      np.arange(n) % 3, np.arange(n).astype(str), tasks=tasks), cfg, inner=True)["p"] for layer in range(3)}
    hits, _ = nested_layers(fits)
    bar, _ = strict_bar(fits[0])
    mask = np.arange(n) % 2 == 0
    part = subset_summary(fits, mask, n_flips=99)
    assert part["n"] == 30 and part["acc"] == pytest.approx(hits[mask].mean()) and part["bar"] == pytest.approx(bar[mask].mean())
    assert subset_summary(fits, np.ones(n, bool), n_flips=99)["acc"] == pytest.approx(nested_summary(fits, n_boot=10, n_flips=99)["nested_acc"])
    empty = subset_summary(fits, np.zeros(n, bool))
    assert empty["n"] == 0 and np.isnan(empty["acc"])
