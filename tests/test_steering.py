"""Steering: vectors from group means, equal-norm random controls, exact additions where asked, and
the batched per-row steered forward (Steerer) against single-prompt oracles (Steer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from introspect_mi.batching import left_pad
from introspect_mi.hooks import recording
from introspect_mi.models import ModelHandle, load
from introspect_mi.places import Place, PlaceKind, resid_post
from introspect_mi.steering import RowSteer, Steer, Steerer, random_like, steering, steering_vector

IDS = [[17, 40, 5, 99, 230, 12, 8, 61, 77, 150], [33, 2, 91, 120, 64, 18]]
CLOSE = {"rtol": 1e-4, "atol": 1e-4}


@pytest.fixture(scope="module")
def handle(tiny_llama_dir: Path) -> ModelHandle:
    return load(tiny_llama_dir)


@pytest.fixture(scope="module")
def model(handle: ModelHandle) -> torch.nn.Module:
    return handle.model


def unit(seed: int, d: int = 64) -> torch.Tensor:
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def test_steering_vector_is_the_difference_of_group_means() -> None:
    x = np.array([[1.0, 2.0], [3.0, 6.0]])
    y = torch.tensor([[0.0, 1.0], [0.0, 3.0], [3.0, 2.0]])
    assert steering_vector(x, y).tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="equal width"):
        steering_vector(x, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="non-empty"):
        steering_vector(x, torch.zeros(0, 2))


def test_random_control_has_the_same_norm_and_is_seeded() -> None:
    v = 3.5 * unit(0)
    r1, r2, r3 = random_like(v, 1), random_like(v, 1), random_like(v, 2)
    torch.testing.assert_close(r1.norm(), v.norm())
    assert torch.equal(r1, r2) and not torch.allclose(r1, r3)
    assert abs(float(r1 @ v)) < 0.5 * float(v.norm() ** 2)  # a different direction
    assert random_like(v.to(torch.bfloat16), 1).dtype == torch.bfloat16


@torch.no_grad()
def test_zero_vector_is_the_identity(model: torch.nn.Module) -> None:
    ids = torch.tensor([IDS[0]])
    clean = model(ids).logits
    with steering(model, [Steer(Place(k, 1), torch.zeros(64), 5.0) for k in PlaceKind if k is not PlaceKind.FINAL_NORM]):
        assert torch.equal(model(ids).logits, clean)


@torch.no_grad()
@pytest.mark.parametrize("place", [resid_post(0), Place(PlaceKind.RESID_PRE, 2), Place(PlaceKind.ATTN_OUT, 1), Place(PlaceKind.FINAL_NORM)])
def test_steering_adds_exactly_scale_times_vector_at_the_chosen_positions(model: torch.nn.Module, place: Place) -> None:
    ids, v, scale = torch.tensor([IDS[0]]), unit(3), 4.0
    with recording(model, [place]) as clean:
        clean_logits = model(ids).logits
    with steering(model, Steer(place, v, scale, positions=(2, 7))), recording(model, [place]) as steered:
        steered_logits = model(ids).logits
    want = clean[place].clone()
    want[0, [2, 7]] = clean[place][0, [2, 7]] + scale * v
    assert torch.equal(steered[place], want)
    assert torch.equal(steered_logits[0, :2], clean_logits[0, :2])  # causal: earlier tokens untouched
    assert not torch.allclose(steered_logits[0, 7], clean_logits[0, 7])


@torch.no_grad()
def test_positions_count_real_tokens_under_left_padding(model: torch.nn.Module) -> None:
    batch = left_pad(IDS, pad_id=0)
    place, v = resid_post(1), unit(4)
    with recording(model, [place]) as clean:
        model(**batch.model_inputs())
    with steering(model, Steer(place, v, 2.0, positions=(3,))), recording(model, [place]) as steered:
        model(**batch.model_inputs())
    diff = (steered[place] != clean[place]).any(-1)
    for row in range(2):
        real = batch.real_slice(row)
        assert diff[row, real].nonzero().flatten().tolist() == [3]  # token 3 of each prompt


@torch.no_grad()
def test_generated_tokens_are_steered_by_their_positions(model: torch.nn.Module) -> None:
    """Steering position len(prompt) (the first generated token, fed back at step 2) leaves the
    first step alone and changes the second."""
    ids = torch.tensor([IDS[0]])
    kwargs = {"max_new_tokens": 2, "do_sample": False, "output_logits": True, "return_dict_in_generate": True, "pad_token_id": 0}
    clean = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    with steering(model, Steer(resid_post(0), 20 * unit(5), positions=(len(IDS[0]),))):
        steered = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    assert torch.equal(steered.logits[0], clean.logits[0])
    assert not torch.allclose(steered.logits[1], clean.logits[1])
    with steering(model, Steer(resid_post(0), 20 * unit(5))):  # everywhere: the prompt too
        everywhere = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    assert not torch.allclose(everywhere.logits[0], clean.logits[0])


@torch.no_grad()
def test_steering_a_peft_model_with_the_adapter_off_equals_the_base_model(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from tests.test_models import make_adapter

    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter")
    base, peft = load(tiny_llama_dir).model, load(tiny_llama_dir, adapter=adapter, adapter_mode="peft").model
    ids, steer = torch.tensor([IDS[0]]), Steer(Place(PlaceKind.MLP_OUT, 1), unit(6), 3.0, positions=(4, 5))
    with steering(base, steer):
        want = base(ids).logits
    with steering(peft, steer):
        on = peft(ids).logits
        with peft.disable_adapter():
            off = peft(ids).logits
    assert torch.equal(off, want)
    assert (on - off).abs().max() > 1e-2


def test_a_vector_of_the_wrong_width_is_refused(model: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="d_model is 64"):
        with steering(model, Steer(resid_post(0), torch.zeros(10))):
            pass


def prompts() -> list[list[int]]:
    """Three prompts sharing a 12-token prefix, then differing (lengths 20, 18, 23)."""
    shared = list(range(20, 32))
    return [shared + [40, 41, 42, 43, 44, 45, 46, 47], shared + [50, 51, 52, 53, 54, 55], shared + list(range(60, 71))]


@torch.no_grad()
def test_unsteered_batch_equals_each_prompt_alone(handle: ModelHandle) -> None:
    model = handle.model
    steerer = Steerer(model, handle.pad_token_id, batch_size=2)
    got = steerer.logits(prompts(), [RowSteer(None)] * 3, resid_post(1))
    for row, ids in zip(got, prompts()):
        torch.testing.assert_close(row, model(torch.tensor([ids])).logits[0, -1].float(), **CLOSE)
    again = steerer.logits(prompts(), [RowSteer(None)] * 3, resid_post(1))  # kept prefix reused
    torch.testing.assert_close(again, got, **CLOSE)


@torch.no_grad()
@pytest.mark.parametrize("layer", [0, 2])
def test_per_row_steering_equals_steer_on_each_prompt_alone(handle: ModelHandle, layer: int) -> None:
    model, place = handle.model, resid_post(layer)
    v = torch.randn(64, generator=torch.Generator().manual_seed(0))
    w = -2 * v
    steers = [RowSteer(v, frozenset({3, 4, 14})),  # inside the shared prefix too
              RowSteer(w, frozenset(range(12, 18))),
              RowSteer(v, None)]  # every token
    got = Steerer(model, handle.pad_token_id, batch_size=4).logits(prompts(), steers, place)
    for row, ids, s in zip(got, prompts(), steers):
        with steering(model, Steer(place, s.vector, 1.0, None if s.positions is None else tuple(s.positions))):
            want = model(torch.tensor([ids])).logits[0, -1].float()
        torch.testing.assert_close(row, want, **CLOSE)
    # different vectors after an unsteered shared prefix: one batch, per-row vectors
    late = [RowSteer(v, frozenset({12, 15})), RowSteer(w, frozenset({13})), RowSteer(None)]
    got = Steerer(model, handle.pad_token_id).logits(prompts(), late, place)
    for row, ids, s in zip(got, prompts(), late):
        with steering(model, [] if s.vector is None else [Steer(place, s.vector, 1.0, tuple(s.positions))]):
            torch.testing.assert_close(row, model(torch.tensor([ids])).logits[0, -1].float(), **CLOSE)
    # rows sharing a vector and a steered shared prefix (positions 2..5 in every row)
    same = [RowSteer(v, frozenset({2, 3, 4, 5, 13}))] * 3
    got = Steerer(model, handle.pad_token_id).logits(prompts(), same, place)
    for row, ids in zip(got, prompts()):
        with steering(model, Steer(place, v, 1.0, (2, 3, 4, 5, 13))):
            torch.testing.assert_close(row, model(torch.tensor([ids])).logits[0, -1].float(), **CLOSE)


@torch.no_grad()
@pytest.mark.parametrize("family", ["llama", "gemma"])
@pytest.mark.parametrize("place", [resid_post(0), Place(PlaceKind.RESID_PRE, 1)], ids=str)
def test_residual_steering_enters_at_its_layer_and_equals_steer_alone(family: str, place: Place, request: pytest.FixtureRequest) -> None:
    """Rows enter the decoder at the steered layer (the block below runs only to keep each prompt's
    clean stream, once) and get the logits of the hooked full forward of each prompt alone."""
    model = load(request.getfixturevalue(f"tiny_{family}_dir")).model
    d = int(model.config.hidden_size)
    v, w = 3 * unit(1, d), -2 * unit(2, d)
    steers = [RowSteer(v, frozenset({13, 14})), RowSteer(w, None), RowSteer(None)]
    block0 = model.get_submodule("model.layers.0")
    runs: list[int] = []
    counting = block0.register_forward_hook(lambda _m, args, _out: runs.append(args[0].shape[0]))
    steerer = Steerer(model, 0, batch_size=4)
    try:
        first = steerer.logits(prompts(), steers, place)
        rows_below = sum(runs)
        again = steerer.logits(prompts(), steers, place)
    finally:
        counting.remove()
    assert rows_below == 3 and sum(runs) == 3  # each prompt's clean stream once, then never again
    torch.testing.assert_close(again, first)
    # one vector steering part of the shared prefix (after its kept unsteered start) and later tokens
    alike = [RowSteer(v, frozenset({9, 10, 15}))] * 3
    for steered, got in ((steers, first), (alike, steerer.logits(prompts(), alike, place))):
        for row, ids, s in zip(got, prompts(), steered):
            with steering(model, [] if s.vector is None else [Steer(place, s.vector, 1.0, None if s.positions is None else tuple(s.positions))]):
                torch.testing.assert_close(row, model(torch.tensor([ids])).logits[0, -1].float(), **CLOSE)
