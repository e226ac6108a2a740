"""Specification of probes.logistic: recovery of planted labels, optimality, CV, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from introspect_mi.errors import UserError
from probes.config import ProbeConfig
from probes.controls import shuffled_labels
from probes.logistic import fit_probe, fit_probes
from probes.metrics import accuracy
from tests.probes.planted import planted

CFG = ProbeConfig(c_grid=(1e-4, 1e-2, 1.0), folds=3)


def test_recovers_planted_label_and_shuffled_control_is_at_chance() -> None:
    x, y = planted(1500, d=64, k=3, strength=3.0)
    tr, te = slice(0, 1000), slice(1000, None)
    probe = fit_probe(x[tr], y[tr], CFG)
    assert accuracy(y[te], probe.predict(x[te])) > 0.9
    # A probe trained on permuted labels has no link between X and y: expected test accuracy is
    # Σ_c P(pred=c)·P(y=c) = 1/3 for balanced classes. With 500 test vectors its SD is
    # √(1/3·2/3/500) ≈ 0.021, so 0.1 is ~5 SD: a failure means leakage or a bug, not bad luck.
    control = fit_probe(x[tr], shuffled_labels(y[tr], seed=0), CFG)
    assert abs(accuracy(y[te], control.predict(x[te])) - 1 / 3) < 0.1


def test_fit_satisfies_the_first_order_conditions() -> None:
    """At the optimum of mean CE + ||W||²/(2Cn): Xsᵀ(P−Y)/n + W/(Cn) = 0 and mean(P) = class shares."""
    x, y = planted(600, d=16, k=4, strength=1.0, seed=1)
    probe = fit_probe(x, y, ProbeConfig(c_grid=(0.05,)))
    xs = (x.astype(np.float64) - probe.mean) / probe.scale
    onehot = (y[:, None] == probe.classes[None]).astype(float)
    resid = probe.predict_proba(x) - onehot
    n = len(y)
    grad_w = xs.T @ resid / n + probe.coef / (probe.C * n)
    assert np.abs(grad_w).max() < 2e-4
    np.testing.assert_allclose(probe.predict_proba(x).mean(0), onehot.mean(0), atol=2e-4)
    assert probe.converged
    np.testing.assert_allclose(probe.mean, x.mean(0), rtol=1e-5, atol=1e-5)  # training stats
    np.testing.assert_allclose(probe.scale, x.std(0), rtol=1e-4)


def test_cv_picks_the_strongest_penalty_without_signal_and_a_weak_one_with_strong_signal() -> None:
    x, y = planted(600, d=20, k=3, strength=0.0, seed=2)
    assert fit_probe(x, y, CFG).C == 1e-4  # without signal the prior (W ≈ 0) has the best held-out loss
    x, y = planted(600, d=20, k=3, strength=5.0, seed=2)
    probe = fit_probe(x, y, CFG)
    assert probe.C == 1.0
    assert np.all(np.diff(probe.cv_loss) < 0)  # held-out loss falls as the penalty weakens


def test_groups_stop_duplicated_items_leaking_across_cv_folds() -> None:
    """Each item appears 4 times (tiny jitter) with a random label: nothing generalises to new
    items, but a duplicate in the held-out fold rewards memorising. Group folds see through it."""
    rng = np.random.default_rng(0)
    items = rng.normal(size=(100, 120))  # more dimensions than items: labels can be memorised
    labels = rng.choice(["a", "b"], size=100)
    x = (np.repeat(items, 4, axis=0) + 0.01 * rng.normal(size=(400, 120))).astype(np.float32)
    y, groups = np.repeat(labels, 4), np.repeat(np.arange(100), 4)
    grouped, pooled = fit_probe(x, y, CFG, groups=groups), fit_probe(x, y, CFG)
    assert grouped.C == 1e-4 and grouped.cv_loss.min() > 0.65  # ≈ log 2: new items are coin flips
    assert pooled.C == 1.0 and pooled.cv_loss[-1] < 0.3  # duplicates leak: memorising "works"
    assert grouped.C < pooled.C


def test_invariant_to_per_feature_affine_rescaling() -> None:
    """Standardization makes the probe blind to units and offsets (e.g. a huge-norm dimension)."""
    x, y = planted(400, d=8, k=3, strength=2.0, seed=4)
    a = np.geomspace(1e-2, 1e3, 8).astype(np.float32)
    b = a * np.linspace(-100, 100, 8).astype(np.float32)  # offsets of up to 100 SDs stay exact in fp32
    p1, p2 = fit_probe(x[:300], y[:300], CFG), fit_probe(x[:300] * a + b, y[:300], CFG)
    assert p1.C == p2.C
    np.testing.assert_allclose(p1.predict_proba(x[300:]), p2.predict_proba(x[300:] * a + b), atol=2e-3)


def test_batched_label_sets_match_separate_fits() -> None:
    """Label sets solved together (here with 3 and 2 classes: padded) equal one-by-one fits."""
    x, y3 = planted(300, d=12, k=3, strength=1.5, seed=5)
    y2 = np.where(x[:, 0] > 0, "hi", "lo")
    together = fit_probes(x, [y3, y2], CFG)
    for probe, y in zip(together, (y3, y2)):
        alone = fit_probe(x, y, CFG)
        assert probe.C == alone.C
        assert list(probe.classes) == list(alone.classes)
        np.testing.assert_allclose(probe.predict_proba(x), alone.predict_proba(x), atol=1e-3)


def test_string_labels_unseen_test_labels_and_torch_input() -> None:
    x, y = planted(300, d=8, k=2, strength=3.0, seed=6)
    y = np.where(y == "c0", "zebra", "apple")
    probe = fit_probe(torch.from_numpy(x), list(y), CFG)
    assert list(probe.classes) == ["apple", "zebra"]  # sorted; column j of predict_proba
    assert probe.predict_proba(x).shape == (300, 2)
    np.testing.assert_allclose(probe.predict_proba(x).sum(1), 1.0, rtol=1e-6)
    pred = probe.predict(torch.from_numpy(x))
    assert set(pred) <= {"apple", "zebra"}
    y_test = y.copy()
    y_test[:10] = "mango"  # never seen in training: always wrong
    assert accuracy(y_test, pred) == pytest.approx(np.sum(pred[10:] == y[10:]) / 300)


def test_class_missing_from_a_training_fold_is_handled() -> None:
    """A class carried by one item is absent from one fold's training rows: finite CV loss."""
    x, y = planted(200, d=8, k=2, strength=2.0, seed=7)
    y = y.astype(object)
    y[:3] = "rare"
    groups = np.r_[np.zeros(3, int), np.arange(1, 198)]
    probe = fit_probe(x, y, CFG, groups=groups)
    assert np.isfinite(probe.cv_loss).all()
    assert "rare" in probe.classes


def test_seeded_and_single_c_skips_cross_validation() -> None:
    x, y = planted(300, d=8, k=3, strength=0.7, seed=8)
    a, b = fit_probe(x, y, CFG), fit_probe(x, y, CFG)
    np.testing.assert_array_equal(a.coef, b.coef)
    assert not np.array_equal(a.cv_loss, fit_probe(x, y, ProbeConfig(c_grid=CFG.c_grid, folds=3, seed=1)).cv_loss)
    single = fit_probe(x, y, ProbeConfig(c_grid=(0.3,)))
    assert single.C == 0.3 and np.isnan(single.cv_loss).all()


def test_bad_inputs() -> None:
    x, y = planted(50, d=4, seed=9)
    x[3, 1] = np.nan
    with pytest.raises(UserError, match="NaN or inf"):
        fit_probe(x, y, CFG)
    x, y = planted(50, d=4, seed=9)
    with pytest.raises(ValueError, match="None/NaN"):
        fit_probe(x, [None] + list(y[1:]), CFG)
    with pytest.raises(ValueError, match="length 50"):
        fit_probe(x, y[:-1], CFG)
