"""Feature analyses: overlap, differential features, attribution (vs finite differences; the error term vs the residual's gradient), ablation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from introspect_mi.batching import left_pad
from introspect_mi.places import Place, PlaceKind
from introspect_mi.saes.analysis import (
    ablated_final_logits,
    answer_logit,
    attribute,
    compare_features,
    differential_features,
    encode,
)
from tests.saes.builders import perfect_sae, random_topk

LAYER = 1
PLACE = Place(PlaceKind.RESID_POST, LAYER)


@pytest.fixture(scope="module")
def sae():
    return random_topk(64, 128, k=8)


@pytest.fixture(scope="module")
def tiny64(tiny_llama_dir):
    """The tiny Llama in float64 (its RMSNorm still computes in float32), for finite differences.

    Only single unpadded sequences: left-padded float64 batches give NaN logits in HF's eager attention.
    """
    from introspect_mi.models import load

    return load(tiny_llama_dir, dtype=torch.float64)


def clean_final_logits(handle, sequences) -> torch.Tensor:
    """Last-position logits of one left-padded batch, no hooks."""
    batch = left_pad(sequences, handle.pad_token_id)
    with torch.no_grad():
        return handle.model(**batch.model_inputs()).logits[:, -1].float()


def hooked_final_logits(handle, sequences, change) -> torch.Tensor:
    """Last-position logits, one unpadded sequence at a time, with layer LAYER's output[0] edited by `change(out)`."""
    rows = []
    h = handle.model.model.layers[LAYER].register_forward_hook(lambda mod, args, out: change(out))
    try:
        with torch.no_grad():
            for seq in sequences:
                rows.append(handle.model(input_ids=torch.tensor([seq])).logits[0, -1].float())
    finally:
        h.remove()
    return torch.stack(rows)


# --- activations, overlap, differential features -------------------------------------------


def test_encode_matches_the_sae_in_batches(sae) -> None:
    x = torch.randn(10, 64)
    with torch.no_grad():
        torch.testing.assert_close(encode(sae, x, batch_size=3), sae.encode(x))  # BLAS blocking differs by batch size


def test_overlap_by_hand() -> None:
    a = torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.5, 1.0, 0.0, 3.0]])
    b = torch.tensor([[1.0, 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.5, 2.0, 0.0, 1.0]])
    got = compare_features(a, b)
    assert got.jaccard[0] == pytest.approx(1 / 3) and torch.isnan(got.jaccard[1]) and got.jaccard[2] == 1.0
    assert got.pearson[0] == pytest.approx(np.corrcoef(a[0], b[0])[0, 1])
    assert torch.isnan(got.pearson[1])
    for j in (0, 1, 3):
        assert got.feature_pearson[j] == pytest.approx(np.corrcoef(a[:, j], b[:, j])[0, 1])
    top1 = compare_features(a, b, top=1)
    assert top1.jaccard[0] == 0.0 and top1.jaccard[2] == 0.0  # {2} vs {1}; {3} vs {1}


def test_differential_features_rank_by_mean_difference() -> None:
    a = torch.tensor([[1.0, 0.0, 5.0], [3.0, 0.0, 5.0]])
    b = torch.tensor([[1.0, 4.0, 1.0], [3.0, 0.0, 1.0]])
    table = differential_features(a, b)
    assert table["feature"].tolist() == [2, 1, 0]
    assert table["diff"].tolist() == [-4.0, 2.0, 0.0]
    assert table.loc[1, "frac_active_a"] == 0.0 and table.loc[1, "frac_active_b"] == 0.5
    assert len(differential_features(a, b, top=1)) == 1


# --- attribution -----------------------------------------------------------------------------


def test_attribution_leaves_the_forward_pass_unchanged(tiny, sae, token_lists) -> None:
    answers = [5, 17, 42, 99]
    got = attribute(tiny, sae, PLACE, token_lists, [[0, 2, -1]] * 4, answer_logit(answers), batch_size=4)
    clean = clean_final_logits(tiny, token_lists)
    assert torch.equal(got.metric, clean[torch.arange(4), answers])
    assert got.positions[0] == [0, 2, 5] and got.positions[3] == [0, 2, 14]
    assert [a.shape for a in got.attr] == [(3, 128)] * 4
    assert all(((a != 0) <= (f != 0)).all() for a, f in zip(got.attr, got.acts))  # only active latents get credit
    assert all(a.abs().sum() > 0 for a in got.attr)


def test_attribution_matches_finite_differences(tiny64, token_lists) -> None:
    sae = random_topk(64, 128, k=8).to(torch.float64)
    seq, pos, answer = token_lists[2], 7, 33
    got = attribute(tiny64, sae, PLACE, [seq], [[pos]], answer_logit([answer]))
    acts, attr = got.acts[0][0].double(), got.attr[0][0].double()

    def metric_with(feature: int, scale: float) -> float:
        def change(out):
            out = out.clone()
            out[0, pos] += scale * acts[feature] * sae.W_dec[feature]  # f_i → (1 + scale) f_i; decode is linear
            return out
        return hooked_final_logits(tiny64, [seq], change)[0, answer].item()

    delta = 1e-2  # central differences: O(delta²) error, well above the float32 RMSNorm's rounding
    for feature in acts.nonzero().flatten().tolist():
        numeric = (metric_with(feature, delta) - metric_with(feature, -delta)) / (2 * delta)
        assert attr[feature].item() == pytest.approx(numeric, rel=1e-3, abs=1e-6)


def test_latents_bias_and_error_attribution_add_up_to_the_residuals_gradient_times_activation(tiny, sae, token_lists) -> None:
    """Σ latent attribution + error attribution + b_dec · g == x · g, with g = ∂metric/∂x from a plain hook (no SAE)."""
    seq, pos, answer = token_lists[3], [2, 5, 9], 21
    got = attribute(tiny, sae, PLACE, [seq], [pos], answer_logit([answer]))
    leaf = []

    def grab(mod, args, out):
        x = out[0] if isinstance(out, tuple) else out
        x = x.detach().requires_grad_(True)
        leaf.append(x)
        return (x, *out[1:]) if isinstance(out, tuple) else x

    h = tiny.model.model.layers[LAYER].register_forward_hook(grab)
    try:
        value = tiny.model(input_ids=torch.tensor([seq])).logits[0, -1, answer]
        (g,) = torch.autograd.grad(value, leaf)
    finally:
        h.remove()
    x, g = leaf[0][0, pos].detach().double(), g[0, pos].double()
    total = got.attr[0].double().sum(1) + got.error_attr[0].double() + g @ sae.b_dec.detach().double()
    torch.testing.assert_close(total, (x * g).sum(1), rtol=1e-3, atol=1e-4)
    assert got.error_attr[0].abs().sum() > 1e-3  # a random SAE misses a lot: the error term carries attribution
    torch.testing.assert_close(got.norm_sq[0].double(), x.pow(2).sum(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.error_sq[0].double(), (x - sae.decode(got.acts[0]).detach().double()).pow(2).sum(1), rtol=1e-4, atol=1e-4)


def test_a_perfect_sae_leaves_nothing_to_the_error_term(tiny, token_lists) -> None:
    got = attribute(tiny, perfect_sae(64), PLACE, token_lists[:2], [[0, 3], [1, -1]], answer_logit([3, 4]))
    assert all(e.abs().max() < 1e-4 for e in got.error_attr) and all(s.max() < 1e-8 for s in got.error_sq)
    assert all(a.abs().sum() > 0 for a in got.attr)


def test_attribution_does_not_depend_on_batching(tiny, sae, token_lists) -> None:
    metric = answer_logit([1, 2, 3, 4])
    positions = [[1], [0, 3], [-2, 4], [5]]
    together = attribute(tiny, sae, PLACE, token_lists, positions, metric, batch_size=4)
    alone = attribute(tiny, sae, PLACE, token_lists, positions, metric, batch_size=1)
    assert together.positions == alone.positions == [[1], [0, 3], [4, 10], [5]]
    for a, b in zip(together.attr, alone.attr):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# --- ablation --------------------------------------------------------------------------------


def test_ablating_nothing_or_inactive_features_is_exactly_clean(tiny, sae, token_lists) -> None:
    clean = clean_final_logits(tiny, token_lists)
    assert torch.equal(ablated_final_logits(tiny, sae, PLACE, token_lists, []), clean)
    acts = attribute(tiny, sae, PLACE, token_lists, [list(range(len(s))) for s in token_lists], answer_logit([0] * 4)).acts
    silent = ((torch.cat(acts) != 0).sum(0) == 0).nonzero().flatten()[:5]
    assert len(silent) == 5  # latents that fire at no token of these sequences
    assert torch.equal(ablated_final_logits(tiny, sae, PLACE, token_lists, silent), clean)


def test_ablation_matches_a_hand_hook(tiny, sae, token_lists) -> None:
    features = torch.arange(0, 128, 2)  # half of the latents, at every token

    def change(out):
        f = sae.encode(out)
        return out - f[..., features] @ sae.W_dec[features]  # linear decode: removes those latents' writes

    got = ablated_final_logits(tiny, sae, PLACE, token_lists, features, batch_size=3)
    torch.testing.assert_close(got, hooked_final_logits(tiny, token_lists, change), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, clean_final_logits(tiny, token_lists), atol=1e-3)


def test_ablation_only_at_the_given_positions(tiny, sae, token_lists) -> None:
    features = torch.arange(128)

    def change_last(out):
        out = out.clone()
        f = sae.encode(out[:, -1])
        out[:, -1] -= f @ sae.W_dec
        return out

    got = ablated_final_logits(tiny, sae, PLACE, token_lists, features, positions=[[-1]] * 4)
    torch.testing.assert_close(got, hooked_final_logits(tiny, token_lists, change_last), rtol=1e-4, atol=1e-4)
