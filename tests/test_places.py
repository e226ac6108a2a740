"""The place vocabulary resolves to real modules/hooks on every supported engine (no weights needed)."""

from __future__ import annotations

import pytest
import torch

from introspect_mi.hooks import site_of
from introspect_mi.places import LAYOUTS, Place, PlaceKind, bridge_name, hf_site, layout_for
from tests.tiny import make_gemma3, make_llama

ALL_KINDS = [PlaceKind.RESID_PRE, PlaceKind.RESID_POST, PlaceKind.ATTN_OUT, PlaceKind.MLP_OUT]


def places(n_layers: int) -> list[Place]:
    return [Place(k, l) for k in ALL_KINDS for l in range(n_layers)] + [Place(PlaceKind.FINAL_NORM)]


@pytest.mark.parametrize("text,expected", [
    ("resid_post[3]", Place(PlaceKind.RESID_POST, 3)),
    ("resid_pre.0", Place(PlaceKind.RESID_PRE, 0)),
    ("final_norm", Place(PlaceKind.FINAL_NORM)),
])
def test_parse_round_trips(text: str, expected: Place) -> None:
    assert Place.parse(text) == expected
    assert Place.parse(str(expected)) == expected


@pytest.mark.parametrize("bad", ["resid_mid[2]", "resid_post", "final_norm[1]", "resid_post[x]"])
def test_parse_rejects_bad_places(bad: str) -> None:
    with pytest.raises(ValueError, match="place"):
        Place.parse(bad)


def test_unknown_architecture_names_the_table() -> None:
    with pytest.raises(ValueError, match="LAYOUTS"):
        layout_for("mamba")


@pytest.mark.parametrize("make", [make_llama, make_gemma3], ids=["llama", "gemma3"])
def test_every_place_resolves_to_a_module(make) -> None:
    model = make(vocab_size=50)
    assert model.config.model_type in LAYOUTS
    for place in places(model.config.num_hidden_layers):
        model.get_submodule(hf_site(place, model.config.model_type).path)  # raises if missing


def test_peft_wrapped_model_gets_the_prefix() -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(make_llama(vocab_size=50), LoraConfig(r=2, target_modules=["q_proj"]))
    site = site_of(model, Place(PlaceKind.RESID_POST, 1))
    assert site.path == "base_model.model.model.layers.1"
    for place in places(3):
        model.get_submodule(site_of(model, place).path)


@pytest.mark.parametrize("make", [make_llama, make_gemma3], ids=["llama", "gemma3"])
def test_bridge_names_exist_in_the_bridge(make, tmp_path) -> None:
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    from tests.tiny import make_tokenizer, save_checkpoint

    model = make(vocab_size=len(make_tokenizer()))
    save_checkpoint(tmp_path, model, make_tokenizer())
    tok = AutoTokenizer.from_pretrained(tmp_path)
    bridge = TransformerBridge.boot_transformers(str(tmp_path), hf_model=model, tokenizer=tok, device="cpu", dtype=torch.float32)
    hooks = set(bridge.hook_dict)
    missing = [bridge_name(p) for p in places(model.config.num_hidden_layers) if bridge_name(p) not in hooks]
    assert missing == []
