"""Raw HF hooks, the TransformerBridge view and the nnsight view read identical activations.

PITFALLS.md: at equal attention implementation the three agree exactly; across eager vs SDPA
they drift, so that comparison uses a tolerance relative to each token's residual norm.
"""

from __future__ import annotations

import pytest
import torch

from introspect_mi.engines import run_bridge, run_hf, run_nnsight
from introspect_mi.generate import user_prompt
from introspect_mi.models import ModelHandle, load
from introspect_mi.places import Place, PlaceKind, resid_post

PROMPT = "What is the next 5 animals in the following text? cat dog fox owl"


def prompt_ids(handle: ModelHandle) -> torch.Tensor:
    return torch.tensor([handle.prompt_format.encode(user_prompt(handle, PROMPT))])


def assert_engines_agree_exactly(handle: ModelHandle, places: list[Place]) -> None:
    ids = prompt_ids(handle)
    ref = run_hf(handle, ids, places)
    for engine in (run_bridge, run_nnsight):
        got = engine(handle, ids, places)
        for place in places:
            assert torch.equal(got[place], ref[place]), f"{engine.__name__} differs at {place}"


def relative_token_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max over tokens of ||a - b|| / ||b||: residual norms reach 1e4–1e5, absolute tolerances mislead."""
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1)).max())


def test_tiny_model_all_places_agree(tiny_llama_dir) -> None:
    handle = load(tiny_llama_dir)
    kinds = [PlaceKind.RESID_PRE, PlaceKind.RESID_POST, PlaceKind.ATTN_OUT, PlaceKind.MLP_OUT]
    assert_engines_agree_exactly(handle, [Place(k, l) for k in kinds for l in range(handle.n_layers)] + [Place(PlaceKind.FINAL_NORM)])


def test_bridge_refuses_non_eager_handle(tiny_llama_dir) -> None:
    from introspect_mi.errors import UserError

    with pytest.raises(UserError, match="eager"):
        load(tiny_llama_dir, attn_implementation="sdpa").bridge()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "gemma3-270m"])
def test_embedded_models_engines_agree(name: str) -> None:
    eager = load(name)
    layers = [0, eager.n_layers // 2, eager.n_layers - 1]
    places = [resid_post(l) for l in layers]
    assert_engines_agree_exactly(eager, places)
    # Across attention implementations: within 1e-5 of the token's norm (measured ≤ 2.5e-6).
    sdpa = load(name, attn_implementation="sdpa")
    ids = prompt_ids(eager)
    a, b = run_hf(sdpa, ids, places), run_bridge(eager, ids, places)
    for place in places:
        assert relative_token_error(a[place], b[place]) < 1e-5
