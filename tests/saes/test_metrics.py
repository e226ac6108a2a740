"""Reconstruction metrics and the spliced next-token loss, checked against hand computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from introspect_mi.places import Place, PlaceKind
from introspect_mi.saes.metrics import reconstruction_metrics, spliced_loss
from tests.saes.builders import perfect_sae, random_topk

LAYER = 1
PLACE = Place(PlaceKind.RESID_POST, LAYER)


def test_reconstruction_metrics_match_a_hand_computation() -> None:
    sae = random_topk(16, 64, k=3)
    x = torch.randn(50, 16) * 3 + 1
    with torch.no_grad():
        f = sae.encode(x)
        recon = sae.decode(f)
    got = reconstruction_metrics(sae, x.split(7))  # uneven batches
    residual = ((x - recon) ** 2).sum()
    assert got.n_vectors == 50
    assert got.explained_variance == pytest.approx(float(1 - residual / ((x - x.mean(0)) ** 2).sum()), rel=1e-6)
    assert got.mse == pytest.approx(float(residual / 50), rel=1e-6)
    assert got.l0 == pytest.approx(float((f != 0).sum(1).float().mean()))
    assert got.dead_fraction == pytest.approx(float(((f != 0).sum(0) == 0).float().mean()))
    assert 0 < got.dead_fraction < 1 and got.explained_variance < 0.99


def test_perfect_sae_explains_everything() -> None:
    x = torch.randn(30, 8)
    got = reconstruction_metrics(perfect_sae(8), [x])
    assert got.explained_variance == 1.0 and got.mse == 0.0
    assert got.l0 == 8.0  # exactly one of relu(x_i), relu(-x_i) fires per dimension


def hand_loss(model: torch.nn.Module, sequences: list[list[int]], replace=None) -> float:
    """Mean next-token CE over unpadded sequences, one at a time, with layer LAYER's output optionally replaced."""
    handle = None
    if replace is not None:
        handle = model.model.layers[LAYER].register_forward_hook(lambda mod, args, out: replace(out))
    try:
        total, count = 0.0, 0
        with torch.no_grad():
            for seq in sequences:
                ids = torch.tensor([seq])
                logits = model(input_ids=ids).logits[0]
                total += F.cross_entropy(logits[:-1], ids[0, 1:], reduction="sum").item()
                count += len(seq) - 1
        return total / count
    finally:
        if handle is not None:
            handle.remove()


def test_spliced_loss_changes_by_the_reported_delta(tiny, token_lists) -> None:
    sae = random_topk(64, 128, k=8, hook_name=f"blocks.{LAYER}.hook_resid_post")
    got = spliced_loss(tiny, sae, PLACE, token_lists, batch_size=3)  # a padded batch and a single one
    clean = hand_loss(tiny.model, token_lists)
    spliced = hand_loss(tiny.model, token_lists, replace=lambda out: sae.decode(sae.encode(out)))
    assert got.n_tokens == sum(len(s) - 1 for s in token_lists)
    assert got.clean == pytest.approx(clean, rel=1e-5)
    assert got.spliced == pytest.approx(spliced, rel=1e-5)
    assert got.delta == pytest.approx(spliced - clean, abs=1e-5)
    assert abs(got.delta) > 1e-3  # the splice does change the model


def test_perfect_reconstruction_gives_zero_delta(tiny, token_lists) -> None:
    got = spliced_loss(tiny, perfect_sae(64), PLACE, token_lists, batch_size=4)
    assert got.spliced == got.clean and got.delta == 0.0


def test_splice_from_beyond_every_token_changes_nothing(tiny, token_lists) -> None:
    sae = random_topk(64, 128, k=8)
    assert spliced_loss(tiny, sae, PLACE, token_lists, splice_from=1000).delta == 0.0
    assert spliced_loss(tiny, sae, PLACE, token_lists, splice_from=1).delta != spliced_loss(tiny, sae, PLACE, token_lists).delta
