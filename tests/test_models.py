"""The loader: placement policy, fingerprints, adapters (merged == unmerged), clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from introspect_mi.errors import UserError
from introspect_mi.models import ADAPTER_SIDECAR, load, plan_placement

GIB = 1 << 30


def test_cpu_gets_fp32_and_cuda_gets_bf16() -> None:
    assert plan_placement(GIB, 4, None, None, None, gpu_bytes=[]) .dtype == torch.float32
    on_gpu = plan_placement(GIB, 4, None, None, None, gpu_bytes=[80 * GIB])
    assert (on_gpu.device, on_gpu.dtype, on_gpu.device_map) == ("cuda", torch.bfloat16, None)


def test_model_larger_than_one_gpu_is_spread_with_device_map() -> None:
    # Llama-3.1-70B: ~141 GB of bf16 weights on 80 GB GPUs.
    seventy_b = plan_placement(141 * GIB, 2, None, None, None, gpu_bytes=[80 * GIB] * 4)
    assert seventy_b.device_map == "auto"
    eight_b = plan_placement(16 * GIB, 2, None, None, None, gpu_bytes=[80 * GIB])
    assert eight_b.device_map is None
    # fp32 checkpoint loaded as bf16 needs half its file size.
    assert plan_placement(100 * GIB, 4, None, None, None, gpu_bytes=[80 * GIB]).device_map is None


def test_load_records_what_it_did(tiny_llama_dir: Path) -> None:
    handle = load(tiny_llama_dir)
    prov = handle.provenance()
    assert (prov["dtype"], prov["device"], prov["attn_implementation"]) == ("float32", "cpu", "eager")
    assert handle.model.config._attn_implementation == "eager"
    assert prov["prompt_format"] == "chat_template"
    assert load(tiny_llama_dir).fingerprint == handle.fingerprint


def make_adapter(base_dir: Path, out: Path, seed: int = 1) -> Path:
    """A LoRA adapter with non-zero B (a fresh LoRA is a no-op: B starts at zero)."""
    from peft import LoraConfig, get_peft_model

    handle = load(base_dir)
    peft_model = get_peft_model(handle.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(out)
    (out / ADAPTER_SIDECAR).write_text(json.dumps({"base_fingerprint": handle.base_fingerprint}))
    return out


def test_merged_logits_equal_unmerged_peft_logits(tiny_llama_dir: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter")
    ids = torch.tensor([[5, 17, 33, 2, 80, 41]])
    base = load(tiny_llama_dir)
    merged = load(tiny_llama_dir, adapter=adapter, adapter_mode="merged")
    unmerged = load(tiny_llama_dir, adapter=adapter, adapter_mode="peft")
    with torch.no_grad():
        l_base, l_merged, l_peft = (h.model(ids).logits for h in (base, merged, unmerged))
        with unmerged.model.disable_adapter():
            l_disabled = unmerged.model(ids).logits
    assert (l_merged - l_base).abs().max() > 1e-2  # the adapter really changes the model
    torch.testing.assert_close(l_merged, l_peft, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(l_disabled, l_base, atol=0, rtol=0)
    assert merged.fingerprint != base.fingerprint and merged.fingerprint.startswith(base.base_fingerprint)


def test_adapter_hash_ignores_where_the_base_was_and_set_order_but_not_what_it_computes(tiny_llama_dir: Path, tmp_path: Path) -> None:
    import shutil

    from introspect_mi.models import adapter_hash

    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter")

    def variant(name: str, edit) -> Path:
        out = shutil.copytree(adapter, tmp_path / name)
        config = json.loads((out / "adapter_config.json").read_text())
        edit(config)
        (out / "adapter_config.json").write_text(json.dumps(config, indent=1))
        return out

    moved = variant("moved", lambda c: c.update(base_model_name_or_path="/elsewhere/base", target_modules=sorted(c["target_modules"], reverse=True)))
    rescaled = variant("rescaled", lambda c: c.update(lora_alpha=c["lora_alpha"] * 2))
    assert adapter_hash(moved) == adapter_hash(adapter)
    assert adapter_hash(rescaled) != adapter_hash(adapter)
    assert adapter_hash(make_adapter(tiny_llama_dir, tmp_path / "other_weights", seed=2)) != adapter_hash(adapter)


def test_adapter_for_another_base_is_refused(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from tests.tiny import make_llama, make_tokenizer, save_checkpoint

    tok = make_tokenizer()
    other = save_checkpoint(tmp_path / "wide", make_llama(len(tok), hidden=96, seed=3), tok)
    adapter = make_adapter(other, tmp_path / "adapter")
    with pytest.raises(UserError, match="trained for base weights"):
        load(tiny_llama_dir, adapter=adapter)
    (adapter / ADAPTER_SIDECAR).unlink()  # without our sidecar, the shape check still catches it
    with pytest.raises(UserError, match="does not fit"):
        load(tiny_llama_dir, adapter=adapter)


@pytest.mark.parametrize("case,message", [
    ("missing", "does not exist"),
    ("no_config", "no config.json"),
    ("truncated_safetensors", "truncated or corrupt"),
    ("not_gguf", "truncated or corrupt"),
    ("truncated_gguf", "truncated or corrupt"),
    ("unknown_name", "unknown embedded model"),
])
def test_bad_model_specs_give_clear_errors(case: str, message: str, tiny_llama_dir: Path, tmp_path: Path) -> None:
    spec = bad_spec(case, tiny_llama_dir, tmp_path)
    with pytest.raises(UserError, match=message) as info:
        load(spec)
    assert "—" in str(info.value)  # every message says how to fix it


def bad_spec(case: str, good: Path, tmp: Path) -> str:
    """Build one kind of bad --model argument (shared with the CLI tests)."""
    if case == "missing":
        return str(tmp / "nowhere")
    if case == "no_config":
        (tmp / "empty").mkdir()
        return str(tmp / "empty")
    if case == "truncated_safetensors":
        broken = tmp / "broken"
        shutil.copytree(good, broken)
        weights = broken / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        return str(broken)
    if case == "not_gguf":
        (tmp / "x.gguf").write_bytes(b"not a gguf file at all")
        return str(tmp / "x.gguf")
    if case == "truncated_gguf":
        from introspect_mi.embedded import _smollm2_gguf

        (tmp / "cut.gguf").write_bytes(_smollm2_gguf(tmp).read_bytes()[: 3 << 20])
        return str(tmp / "cut.gguf")
    return "smollm3-9000"


def test_adapter_trained_on_top_of_another_loads_as_a_chain(tiny_llama_dir: Path, tmp_path: Path) -> None:
    parent = make_adapter(tiny_llama_dir, tmp_path / "parent", seed=1)
    child = make_adapter(tiny_llama_dir, tmp_path / "child", seed=2)
    on_parent = load(tiny_llama_dir, adapter=parent)
    (child / ADAPTER_SIDECAR).write_text(json.dumps({
        "base_fingerprint": on_parent.base_fingerprint, "weights_fingerprint": on_parent.fingerprint, "parent_adapter": str(parent)}))
    with pytest.raises(UserError, match="load it after its parent adapter"):
        load(tiny_llama_dir, adapter=child)
    chained = load(tiny_llama_dir, adapter=[parent, child])
    assert chained.fingerprint.startswith(on_parent.fingerprint + "+") and chained.adapter == child
    ids = torch.tensor([[5, 17, 33, 2]])
    with torch.no_grad():
        assert (chained.model(ids).logits - on_parent.model(ids).logits).abs().max() > 1e-3
    with pytest.raises(UserError, match="can only be merged"):
        load(tiny_llama_dir, adapter=[parent, child], adapter_mode="peft")


@pytest.mark.slow
def test_a_gguf_file_is_converted_once_to_the_same_weights_as_the_embedded_model(checkpoints: Path, tmp_path: Path) -> None:
    from introspect_mi import embedded
    from tests.prepared import link_prepared_models

    link_prepared_models(checkpoints)  # the embedded model as `make models` converted it (tests/prepared.py)
    gguf = embedded._smollm2_gguf(tmp_path)
    first = load(gguf)
    assert first.checkpoint.parent == checkpoints / "base" and first.checkpoint.name.startswith(gguf.stem)
    assert first.base_fingerprint == load("smollm2-135m-instruct").base_fingerprint
    mtime = first.checkpoint.stat().st_mtime_ns
    assert load(gguf).checkpoint.stat().st_mtime_ns == mtime  # not converted again
