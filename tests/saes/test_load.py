"""Loading SAEs in sae-lens format from a local folder, mapped onto our places; clear errors otherwise."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from introspect_mi.errors import UserError
from introspect_mi.places import Place, PlaceKind
from introspect_mi.saes.load import load_sae, place_of_hook
from tests.saes.builders import perfect_sae, random_topk, saved


@pytest.mark.parametrize("hook_name,place", [
    ("blocks.9.hook_resid_post", "resid_post[9]"),
    ("blocks.0.hook_resid_pre", "resid_pre[0]"),
    ("blocks.12.hook_attn_out", "attn_out[12]"),
    ("blocks.3.hook_mlp_out", "mlp_out[3]"),
    ("blocks.9.hook_out", "resid_post[9]"),
    ("blocks.9.hook_in", "resid_pre[9]"),
    ("blocks.4.attn.hook_out", "attn_out[4]"),
    ("blocks.4.mlp.hook_out", "mlp_out[4]"),
    ("ln_final.hook_out", "final_norm"),
])
def test_hook_names_map_onto_places(hook_name: str, place: str) -> None:
    assert place_of_hook(hook_name) == Place.parse(place)


@pytest.mark.parametrize("hook_name", ["blocks.9.hook_resid_mid", "blocks.9.attn.hook_z", "model.layers.9", "blocks.x.hook_out", "hook_resid_post"])
def test_names_outside_the_vocabulary_map_to_nothing(hook_name: str) -> None:
    assert place_of_hook(hook_name) is None


def test_round_trip_reproduces_encode_and_decode_exactly(tmp_path) -> None:
    sae = random_topk(16, 48, k=4)
    loaded = load_sae(saved(sae, tmp_path / "sae"))
    x = torch.randn(20, 16)
    with torch.no_grad():
        f = sae.encode(x)
        assert torch.equal(loaded.sae.encode(x), f)
        assert torch.equal(loaded.sae.decode(f), sae.decode(f))
    assert (f != 0).sum(1).max() <= 4
    assert type(loaded.sae).__name__ == "TopKSAE" and (loaded.d_in, loaded.d_sae) == (16, 48)


def test_transformer_lens_hook_name_gives_the_place(tmp_path) -> None:
    loaded = load_sae(saved(random_topk(16, 32, 4, hook_name="blocks.1.hook_resid_post"), tmp_path / "sae"))
    assert loaded.place == Place(PlaceKind.RESID_POST, 1)
    assert loaded.hook_name == "blocks.1.hook_resid_post" and loaded.meta == {}


def test_bridge_hook_name_gives_the_place(tmp_path) -> None:
    loaded = load_sae(saved(random_topk(16, 32, 4, hook_name="blocks.2.mlp.hook_out"), tmp_path / "sae"))
    assert loaded.place == Place(PlaceKind.MLP_OUT, 2)


def test_pre_6_config_with_top_level_hook_point_loads(tmp_path) -> None:
    """Older sae-lens folders keep `hook_point` at the top level and no metadata."""
    folder = tmp_path / "old"
    folder.mkdir()
    d_in, d_sae = 8, 16
    cfg = {"d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu", "hook_point": "blocks.2.hook_resid_pre", "model_name": "x"}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    weights = {"W_enc": torch.randn(d_in, d_sae), "W_dec": torch.randn(d_sae, d_in), "b_enc": torch.zeros(d_sae), "b_dec": torch.zeros(d_in)}
    save_file(weights, folder / "sae_weights.safetensors")
    loaded = load_sae(folder)
    assert loaded.place == Place(PlaceKind.RESID_PRE, 2)
    assert torch.equal(loaded.sae.W_enc, weights["W_enc"])


def test_jumprelu_sae_like_llama_scope_loads(tmp_path) -> None:
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=8, d_sae=24, dtype="bfloat16", apply_b_dec_to_input=False,
                                        metadata=SAEMetadata(hook_name="blocks.0.hook_attn_out")))
    loaded = load_sae(saved(sae, tmp_path / "scope"))
    assert loaded.place == Place(PlaceKind.ATTN_OUT, 0) and loaded.sae.dtype == torch.bfloat16
    assert load_sae(tmp_path / "scope", dtype="float32").sae.dtype == torch.float32


def test_explicit_place_overrides_and_unknown_hook_needs_one(tmp_path) -> None:
    folder = saved(random_topk(16, 32, 4, hook_name="blocks.1.hook_resid_mid"), tmp_path / "sae")
    with pytest.raises(UserError, match=r"hook_resid_mid.*place="):
        load_sae(folder)
    assert load_sae(folder, place="resid_pre[2]").place == Place(PlaceKind.RESID_PRE, 2)
    with pytest.raises(UserError, match="unknown place"):
        load_sae(folder, place="resid_middle[2]")


def test_fits_the_model_and_lands_on_its_device(tmp_path, tiny) -> None:
    loaded = load_sae(saved(random_topk(64, 128, 8, hook_name="blocks.2.hook_resid_post"), tmp_path / "sae"), handle=tiny)
    assert loaded.place == Place(PlaceKind.RESID_POST, 2) and loaded.sae.device == tiny.device


# --- malformed folders ---------------------------------------------------------------------


def test_missing_folder(tmp_path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_sae(tmp_path / "nowhere")


def test_no_cfg_json(tmp_path) -> None:
    folder = saved(random_topk(16, 32, 4), tmp_path / "sae")
    (folder / "cfg.json").unlink()
    with pytest.raises(UserError, match=r"has no cfg\.json.*sae-lens format") as err:
        load_sae(folder)
    assert "cfg.json + sae_weights.safetensors" in err.value.fix


def test_cfg_without_weights(tmp_path) -> None:
    folder = saved(random_topk(16, 32, 4), tmp_path / "sae")
    (folder / "sae_weights.safetensors").unlink()
    with pytest.raises(UserError, match=r"sae_weights\.safetensors is missing"):
        load_sae(folder)


def test_cfg_that_is_not_json(tmp_path) -> None:
    folder = saved(random_topk(16, 32, 4), tmp_path / "sae")
    (folder / "cfg.json").write_text("{not json")
    with pytest.raises(UserError, match=r"cfg\.json is unreadable"):
        load_sae(folder)


def test_weights_that_disagree_with_cfg(tmp_path) -> None:
    folder = saved(random_topk(16, 32, 4), tmp_path / "sae")
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "d_in": 12}))
    with pytest.raises(UserError, match=r"W_enc has shape \[16, 32\] but cfg\.json says d_in=12"):
        load_sae(folder)


def test_unknown_architecture(tmp_path) -> None:
    folder = saved(random_topk(16, 32, 4), tmp_path / "sae")
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "architecture": "mystery"}))
    with pytest.raises(UserError, match="unknown SAE architecture 'mystery'"):
        load_sae(folder)


def test_width_mismatch_with_the_model(tmp_path, tiny) -> None:
    folder = saved(random_topk(32, 64, 4, hook_name="blocks.1.hook_resid_post"), tmp_path / "sae")
    with pytest.raises(UserError, match="reads 32-dim vectors but .* has d_model=64"):
        load_sae(folder, handle=tiny)


def test_layer_the_model_does_not_have(tmp_path, tiny) -> None:
    folder = saved(random_topk(64, 64, 4, hook_name="blocks.7.hook_resid_post"), tmp_path / "sae")
    with pytest.raises(UserError, match=r"resid_post\[7\] but .* has 3 layers"):
        load_sae(folder, handle=tiny)


def test_head_and_transcoder_saes_are_refused(tmp_path) -> None:
    folder = saved(random_topk(16, 32, 4, hook_name="blocks.1.attn.hook_z"), tmp_path / "z")
    with pytest.raises(UserError, match="hook_z"):
        load_sae(folder, place="attn_out[1]")
    folder = saved(perfect_sae(8), tmp_path / "tc")
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["metadata"]["hook_name_out"] = "blocks.1.hook_mlp_out"
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="transcoder"):
        load_sae(folder)


def test_transformer_lens_attn_out_does_not_fit_gemma(tmp_path, tiny_gemma_dir) -> None:
    """On Gemma, TransformerLens's hook_attn_out is after the post-attention norm; our attn_out is before it."""
    from introspect_mi.models import load

    gemma = load(tiny_gemma_dir)
    with pytest.raises(UserError, match="after the post-norm"):
        load_sae(saved(random_topk(64, 64, 4, hook_name="blocks.0.hook_attn_out"), tmp_path / "tl"), handle=gemma)
    ours = load_sae(saved(random_topk(64, 64, 4, hook_name="blocks.0.attn.hook_out"), tmp_path / "bridge"), handle=gemma)
    assert ours.place == Place(PlaceKind.ATTN_OUT, 0)
