"""LoRA finetuning: training steps, saving, resuming (examples, batches and the loss: test_finetune_batches.py)."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from introspect_mi.errors import UserError
from introspect_mi.finetune import lora_on, train
from introspect_mi.finetune_config import PRESETS, FinetuneConfig
from introspect_mi.finetune_batches import Example, answer_loss, collate, encode_example, end_of_answer_ids
from introspect_mi.models import ADAPTER_SIDECAR, ModelHandle, load
from introspect_mi.prompt_format import Message

WORDS = ["cat", "dog", "fox", "owl", "bee", "true", "false", "even", "odd", "Paris"]
TINY = FinetuneConfig(rank=4, alpha=8.0, lr=1e-2, epochs=2, batch_size=2, grad_accum=1, save_every=0, warmup_ratio=0.0)


def examples(handle: ModelHandle, n: int, offset: int = 0) -> list[Example]:
    fmt = handle.prompt_format
    out = []
    for i in range(offset, offset + n):
        words = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(2 + i % 4))
        prompt = fmt.render([Message("user", f"What is the next animal in the following text? {words}")])
        out.append(Example(prompt, WORDS[(3 * i + 1) % len(WORDS)]))
    return out


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: one thread is faster, and 10x faster when another process holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


@pytest.fixture()
def llama(tiny_llama_dir: Path) -> ModelHandle:
    return load(tiny_llama_dir)


@pytest.fixture()
def gemma(tiny_gemma_dir: Path) -> ModelHandle:
    return load(tiny_gemma_dir)


def test_lora_steps_memorise_eight_examples_and_leave_the_model_untouched(llama: ModelHandle, tmp_path: Path) -> None:
    # A random tiny model's logits span about ±1 and LoRA cannot grow the hidden state past the
    # final RMSNorm's weight: scale that weight so confident (memorised) predictions are reachable.
    with torch.no_grad():
        llama.model.model.norm.weight.mul_(10)
    probe = llama.prompt_format.encode(examples(llama, 1)[0].prompt)
    before = logits(llama.model, probe)
    modules = [n for n, _ in llama.model.named_modules()]
    cfg = replace(TINY, rank=8, alpha=16.0, epochs=40, batch_size=8, lr_schedule="constant")
    result = train(llama, examples(llama, 8), examples(llama, 2, offset=8), cfg, tmp_path / "a", progress=False)
    first, last = result.losses[0]["loss"], result.losses[-1]["loss"]
    assert last < 0.1 * first, (first, last)
    assert [v["epoch"] for v in result.val_losses] == list(range(1, 41))
    # the caller's model computes what it did before: LoRA unloaded, flags restored
    assert [n for n, _ in llama.model.named_modules()] == modules
    assert all(p.requires_grad for p in llama.model.parameters()) and not llama.model.training
    assert llama.model.config._attn_implementation == "eager"  # trained with SDPA, switched back
    assert torch.equal(logits(llama.model, probe), before)


def lora_step_gradients(handle: ModelHandle, config: FinetuneConfig, enc: list, micro: int) -> tuple[float, torch.Tensor]:
    """(loss, flat LoRA gradient) of one step over `enc`, run as micro-batches of `micro` rows
    with the step's loss normalised by all its target tokens (as `train` does)."""
    torch.manual_seed(0)
    with lora_on(handle, config) as peft_model:
        with torch.no_grad():  # LoRA B starts at zero, which stops every gradient to A: start it random
            for name, p in sorted(peft_model.named_parameters()):
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1)
        peft_model.train()
        n = sum(e.n_target for e in enc)
        total = 0.0
        for i in range(0, len(enc), micro):
            loss, _ = answer_loss(peft_model, collate(enc[i : i + micro], handle.pad_token_id))
            (loss / n).backward()
            total += float(loss.detach())
        grads = torch.cat([p.grad.flatten() for p in peft_model.parameters() if p.requires_grad])
    return total / n, grads


@pytest.mark.parametrize("which", ["llama", "gemma"])
def test_sdpa_training_and_micro_batches_compute_the_eager_full_batch_step(which: str, request: pytest.FixtureRequest) -> None:
    """Training with SDPA, whole or in micro-batches of 2 (the low-memory variant): the same loss and
    gradients as the model's eager attention over the whole left-padded batch (rows of different lengths)."""
    handle = request.getfixturevalue(which)
    fmt = handle.prompt_format
    end = end_of_answer_ids(fmt, handle.tokenizer)
    enc = [encode_example(fmt, end, e) for e in examples(handle, 6)]
    assert len({len(e.ids) for e in enc}) > 2
    config = replace(TINY, rank=4)
    ref_loss, ref = lora_step_gradients(handle, replace(config, attn_implementation="eager"), enc, micro=6)
    for kernel, micro in (("sdpa", 6), ("sdpa", 2), ("eager", 2)):
        loss, got = lora_step_gradients(handle, replace(config, attn_implementation=kernel), enc, micro)
        assert abs(loss - ref_loss) < 1e-5 and float((got - ref).abs().max()) <= 1e-4 * float(ref.abs().max()), (kernel, micro)
    assert float(ref.abs().max()) > 0 and handle.model.config._attn_implementation == "eager"


@pytest.mark.parametrize("which", ["llama", "gemma"])
def test_saved_adapter_reproduces_the_trained_model(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    handle = request.getfixturevalue(which)
    probe = handle.prompt_format.encode(examples(handle, 1)[0].prompt + " cat")
    seen: dict[str, torch.Tensor] = {}

    def grab(step: int, loss: float, peft_model) -> None:
        seen["logits"] = logits(peft_model, probe)

    out = tmp_path / "adapter"
    result = train(handle, examples(handle, 4), [], replace(TINY, epochs=1), out, progress=False, on_step=grab)
    assert (out / "adapter_config.json").is_file() and (out / ADAPTER_SIDECAR).is_file() and (out / "losses.jsonl").is_file()
    assert result.sidecar["base_fingerprint"] == handle.base_fingerprint and result.sidecar["n_train"] == 4
    assert not torch.allclose(seen["logits"], logits(handle.model, probe), atol=1e-3)  # training changed something
    for mode in ("merged", "peft"):
        again = load(handle.checkpoint, adapter=out, adapter_mode=mode)
        assert torch.allclose(logits(again.model, probe), seen["logits"], atol=1e-5, rtol=0)


class Interrupted(Exception):
    pass


def test_an_interrupted_run_resumes_where_it_stopped_and_matches_an_uninterrupted_one(llama: ModelHandle, tmp_path: Path) -> None:
    # dropout > 0 and warm-up/decay: the RNG, optimizer and scheduler states all have to come back
    cfg = replace(TINY, dropout=0.1, epochs=2, batch_size=2, save_every=2, warmup_ratio=0.25)
    train_ex, val_ex = examples(llama, 7), examples(llama, 2, offset=7)  # 4 steps per epoch, the last short
    whole = train(llama, train_ex, val_ex, cfg, tmp_path / "whole", progress=False)
    assert [x["step"] for x in whole.losses] == list(range(1, 9))

    def stop_after_4(step: int, loss: float, model) -> None:
        if step == 4:
            raise Interrupted

    out = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        train(llama, train_ex, val_ex, cfg, out, progress=False, on_step=stop_after_4)
    assert not out.exists() and (tmp_path / ".resumed.resume").is_file()
    assert not any("lora" in n for n, _ in llama.model.named_modules())  # unloaded despite the error

    steps: list[int] = []
    resumed = train(llama, train_ex, val_ex, cfg, out, progress=False, on_step=lambda s, loss, m: steps.append(s))
    assert resumed.resumed_from == 4 and steps == [5, 6, 7, 8]
    assert not (tmp_path / ".resumed.resume").exists()
    assert [x["step"] for x in resumed.losses] == list(range(1, 9))
    assert [x["lr"] for x in resumed.losses] == [x["lr"] for x in whole.losses]
    assert [x["loss"] for x in resumed.losses] == pytest.approx([x["loss"] for x in whole.losses], abs=1e-6)
    assert [v["val_loss"] for v in resumed.val_losses] == pytest.approx([v["val_loss"] for v in whole.val_losses], abs=1e-6)
    a, b = load_file(whole.adapter_dir / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k


def test_rerun_is_idempotent_and_other_data_never_overwrites(llama: ModelHandle, tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    exs = examples(llama, 2)
    cfg = replace(TINY, epochs=1)
    first = train(llama, exs, [], cfg, out, progress=False)
    weights = (out / "adapter_model.safetensors").read_bytes()
    again = train(llama, exs, [], cfg, out, progress=False, on_step=lambda *a: pytest.fail("trained again"))
    assert not again.trained and again.losses == first.losses and again.data_hash == first.data_hash
    with pytest.raises(UserError, match="different data_hash"):
        train(llama, examples(llama, 2, offset=1), [], cfg, out, progress=False)
    with pytest.raises(UserError, match="different config"):
        train(llama, exs, [], replace(cfg, lr=1e-3), out, progress=False)
    assert (out / "adapter_model.safetensors").read_bytes() == weights
    (tmp_path / "foreign").mkdir()
    with pytest.raises(UserError, match="no finished adapter"):
        train(llama, exs, [], cfg, tmp_path / "foreign", progress=False)


def test_a_resume_checkpoint_left_beside_a_finished_adapter_is_removed(llama: ModelHandle, tmp_path: Path) -> None:
    """A run killed after its adapter was renamed into place, before its `.resume` was removed;
    and the temp file of a killed resume save."""
    out, exs, cfg = tmp_path / "adapter", examples(llama, 2), replace(TINY, epochs=1)
    train(llama, exs, [], cfg, out, progress=False)
    leftover = tmp_path / ".adapter.resume"
    leftover.write_bytes(b"the finished run's last resume checkpoint")
    killed_save = tmp_path / ".adapter.resume.k9x2.tmp"
    killed_save.write_bytes(b"half a checkpoint")
    os.utime(killed_save, (time.time() - 3600, time.time() - 3600))
    again = train(llama, exs, [], cfg, out, progress=False, on_step=lambda *a: pytest.fail("trained again"))
    assert not again.trained and not leftover.exists() and not killed_save.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".adapter.lock", "adapter"]


def test_presets_and_config_checks() -> None:
    paper = PRESETS["paper"]
    assert (paper.rank, paper.lr, paper.epochs, paper.effective_batch_size) == (32, 2e-5, 1, 16)
    assert PRESETS["quick"].target_modules == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    with pytest.raises(ValueError, match="lr_schedule"):
        FinetuneConfig(lr_schedule="cosine")
    with pytest.raises(ValueError, match="attn_implementation"):
        FinetuneConfig(attn_implementation="flash")
    assert PRESETS["quick"].effective_batch_size == 8 and PRESETS["quick"].attn_implementation == "sdpa"
    assert FinetuneConfig(target_modules=["q_proj"]).target_modules == ("q_proj",)


def test_a_corrupt_resume_checkpoint_or_sidecar_is_a_one_line_user_error_that_deletes_nothing(llama: ModelHandle, tmp_path: Path) -> None:
    """Atomic writes never leave these torn; a damaged disk or a hand edit can. Both are refused
    naming the file and what to delete, and the files stay for the user to inspect."""
    exs, cfg = examples(llama, 2), replace(TINY, epochs=1)
    resume = tmp_path / ".adapter.resume"
    resume.write_bytes(b"PK\x03\x04 half a checkpoint")
    with pytest.raises(UserError, match=r"resume checkpoint .*\.adapter\.resume is corrupt .*— delete it to train this adapter from the start"):
        train(llama, exs, [], cfg, tmp_path / "adapter", progress=False, on_step=lambda *a: pytest.fail("trained"))
    assert resume.read_bytes() == b"PK\x03\x04 half a checkpoint"
    resume.unlink()
    done = train(llama, exs, [], cfg, tmp_path / "adapter", progress=False).adapter_dir
    (done / ADAPTER_SIDECAR).write_text('{"data_hash": "ab')  # torn
    with pytest.raises(UserError, match=rf"{ADAPTER_SIDECAR} is corrupt: not valid JSON .*— the adapter in .* is damaged: delete that folder"):
        train(llama, exs, [], cfg, tmp_path / "adapter", progress=False, on_step=lambda *a: pytest.fail("trained"))
    assert (done / ADAPTER_SIDECAR).read_text() == '{"data_hash": "ab'
