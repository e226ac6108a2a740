"""The activation stream: every token's vector from `skip` on, equal to a single-sequence forward,
computed once, lazily (a reused SAE costs no forward pass), and re-iterable for training passes."""

from __future__ import annotations

import pytest
import torch

from introspect_mi.engines import run_hf
from introspect_mi.places import Place, PlaceKind
from introspect_mi.prompt_format import Message
from introspect_mi.saes.stream import ActivationStream, shared_prefix_length
from introspect_mi.saes.train import SAETrainConfig, train_sae

PLACES = [Place(PlaceKind.RESID_POST, 0), Place(PlaceKind.RESID_POST, 2)]


@pytest.fixture()
def sequences(tiny):
    """Chat-formatted prompts of different lengths that share the template's opening."""
    texts = ["cat dog fox", "What is the second character of owl?", "Paris. Respond only with that word.", "0 1 2"]
    fmt = tiny.prompt_format
    return [fmt.encode(fmt.render([Message("user", t)])) for t in texts]


def test_shared_prefix_length_by_hand() -> None:
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert shared_prefix_length([[1, 2], [1, 2, 3]]) == 1  # every sequence keeps at least one token
    assert shared_prefix_length([[7, 8, 9]]) == 2
    assert shared_prefix_length([]) == 0


def test_vectors_are_each_tokens_activation_from_skip_on(tiny, sequences) -> None:
    stream = ActivationStream(tiny, sequences, PLACES, batch_size=3, progress=False)
    assert stream.skip == shared_prefix_length(sequences) > 0
    assert stream.n_vectors() == sum(len(s) - stream.skip for s in sequences)
    for place in PLACES:
        expected = torch.cat([run_hf(tiny, torch.tensor([s]), [place])[place][0, stream.skip :] for s in sequences])
        got = torch.cat(list(stream.of(place)))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_one_lazy_pass_serves_every_place_and_every_iteration(tiny, sequences) -> None:
    stream = ActivationStream(tiny, sequences, PLACES, batch_size=2, chunk=5, progress=False)
    handle = tiny.model.register_forward_hook(lambda *a: calls.append(1))
    calls: list[int] = []
    try:
        described = stream.describe()
        assert calls == [] and described["vectors"] == stream.n_vectors()
        first = [c.clone() for c in stream.of(PLACES[0])]
        assert len(calls) == 2  # two batches of two prompts, once
        assert all(len(c) <= 5 for c in first)
        again = list(stream.of(PLACES[0])) + list(stream.of(PLACES[1]))
        assert len(calls) == 2
        torch.testing.assert_close(torch.cat(again[: len(first)]), torch.cat(first), rtol=0, atol=0)
    finally:
        handle.remove()


def test_reusing_a_saved_sae_runs_no_forward_pass(tiny, sequences, tmp_path) -> None:
    cfg = SAETrainConfig(d_sae=32, k=4, training_samples=256, batch_size=32, eval_samples=8, shuffle_buffer=64,
                         norm_estimate_batches=1, device="cpu")
    first = ActivationStream(tiny, sequences, PLACES, progress=False)
    train_sae(first.of(PLACES[1]), tiny.d_model, cfg, tmp_path / "sae", PLACES[1], fingerprint=tiny.fingerprint, data=first.describe())
    second = ActivationStream(tiny, sequences, PLACES, progress=False)
    handle = tiny.model.register_forward_hook(lambda *a: calls.append(1))
    calls: list[int] = []
    try:
        train_sae(second.of(PLACES[1]), tiny.d_model, cfg, tmp_path / "sae", PLACES[1], fingerprint=tiny.fingerprint, data=second.describe())
    finally:
        handle.remove()
    assert calls == []


def test_bad_inputs(tiny, sequences) -> None:
    with pytest.raises(ValueError, match="more than skip"):
        ActivationStream(tiny, sequences, PLACES, skip=max(map(len, sequences)))
    with pytest.raises(ValueError, match="not one of the stream's places"):
        ActivationStream(tiny, sequences, PLACES[:1]).of(PLACES[1])
