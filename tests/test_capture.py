"""Capture: stored activations equal the reference hooks, batching changes nothing, the appended
answer token is the greedy one, a killed capture resumes to the same shards, adapters toggle;
shared-prefix reuse equals the plain batches (every position kind, with and without the answer
step, Llama and Gemma-3 inside and beyond its sliding window)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from introspect_mi import capture as cap
from introspect_mi.actstore import ActivationStore
from introspect_mi.batching import MIN_SHARED_PREFIX
from introspect_mi.capture import CapturePrompt, CaptureSpec, all_places, capture
from introspect_mi.engines import run_hf
from introspect_mi.models import load
from introspect_mi.prompt_format import Message
from introspect_mi.places import resid_post
from tests.test_models import make_adapter
from tests.tolerance import BATCHED

QUESTIONS = ["cat dog fox owl bee", "What is the second character?", "Paris. Respond only with that word.",
             "hello world 0 1 2", "true false even odd A B C D", "the next 5 animals"]


def prompts(handle) -> list[CapturePrompt]:
    out = []
    for i, q in enumerate(QUESTIONS):
        text = handle.prompt_format.render([Message("user", f"Q{i}: {q}")])
        start = text.rfind(q)
        out.append(CapturePrompt(text, (start, start + len(q)), {"item_id": f"i{i}", "kind": "object"}))
    return out


def spec(handle, batch_size: int = 4, shard: int = 2, positions=("p_last", "final", "answer_first", "p_tokens")) -> CaptureSpec:
    return CaptureSpec(places=tuple(map(str, all_places(handle))), positions=positions, dtype="float32",
                       batch_size=batch_size, shard_records=shard)


@pytest.fixture(scope="module")
def handle(tiny_llama_dir: Path):
    return load(tiny_llama_dir)


def test_stored_resid_post_equals_reference_hooks(handle, tmp_path: Path) -> None:
    store = capture(handle, prompts(handle), spec(handle), tmp_path, progress=False)
    for record, prompt in enumerate(prompts(handle)):
        ids = torch.tensor([handle.prompt_format.encode(prompt.text)])
        ref = run_hf(handle, ids, all_places(handle))
        row = store.records.iloc[record]
        assert row["positions"]["final"] == [ids.shape[1] - 1]
        for layer in range(handle.n_layers):
            for kind in ("p_last", "final", "p_tokens"):
                x, _ = store.load("resid_post", layer, kind, filter={"record": record}, as_="torch")
                expected = ref[resid_post(layer)][0, row["positions"][kind]]
                torch.testing.assert_close(x, expected, rtol=1e-6, atol=1e-6)


def test_p_tokens_cover_p_and_p_last_is_its_end(handle, tmp_path: Path) -> None:
    store = capture(handle, prompts(handle), spec(handle), tmp_path, progress=False)
    for row, prompt in zip(store.records.itertuples(), prompts(handle)):
        text = "".join(row.tokens[i] for i in row.p_tokens)
        assert prompt.text[prompt.p_span[0]:prompt.p_span[1]] in text
        assert row.positions["p_last"] == [row.p_tokens[-1]]


def test_batched_equals_single(handle, tmp_path: Path) -> None:
    one = capture(handle, prompts(handle), spec(handle, batch_size=1), tmp_path / "one", progress=False)
    many = capture(handle, prompts(handle), spec(handle, batch_size=6), tmp_path / "many", progress=False)
    for kind in ("p_last", "final", "answer_first", "p_tokens"):
        for layer in range(handle.n_layers):
            a, _ = one.load("resid_post", layer, kind)
            b, _ = many.load("resid_post", layer, kind)
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert one.records["answer_token_id"].tolist() == many.records["answer_token_id"].tolist()


def test_answer_first_is_the_greedy_token_read_by_a_full_forward(handle, tmp_path: Path) -> None:
    store = capture(handle, prompts(handle), spec(handle), tmp_path, progress=False)
    places = all_places(handle)
    for record, prompt in enumerate(prompts(handle)):
        ids = handle.prompt_format.encode(prompt.text)
        with torch.no_grad():
            greedy = int(handle.model(torch.tensor([ids])).logits[0, -1].argmax())
        assert store.records.iloc[record]["answer_token_id"] == greedy
        ref = run_hf(handle, torch.tensor([ids + [greedy]]), places)
        x, _ = store.load("resid_post", handle.n_layers - 1, "answer_first", filter={"record": record}, as_="torch")
        torch.testing.assert_close(x[0], ref[places[-1]][0, -1], rtol=1e-5, atol=1e-5)


def test_killed_capture_resumes_to_the_same_shards(handle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    capture(handle, prompts(handle), spec(handle, batch_size=1), tmp_path / "whole", progress=False)
    real_forward, calls = cap.forward, []

    def dying_forward(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # killed during the 4th prompt: shard 0 done, record 2 pending
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(cap, "forward", dying_forward)
    with pytest.raises(KeyboardInterrupt):
        capture(handle, prompts(handle), spec(handle, batch_size=1), tmp_path / "killed", progress=False)
    monkeypatch.setattr(cap, "forward", real_forward)
    assert len(ActivationStore.open(tmp_path / "killed").records) == 2
    capture(handle, prompts(handle), spec(handle, batch_size=1), tmp_path / "killed", progress=False)
    whole = sorted(p.name for p in (tmp_path / "whole/shards").iterdir())
    assert whole == sorted(p.name for p in (tmp_path / "killed/shards").iterdir())
    for name in whole:
        assert (tmp_path / "whole/shards" / name).read_bytes() == (tmp_path / "killed/shards" / name).read_bytes()


def test_adapter_toggled_off_equals_base_and_on_equals_merged(tiny_llama_dir: Path, handle, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_llama_dir, tmp_path / "lora")
    toggled = load(tiny_llama_dir, adapter=adapter, adapter_mode="peft")
    merged = load(tiny_llama_dir, adapter=adapter)
    s = spec(handle, positions=("final",))
    base_store = capture(handle, prompts(handle), s, tmp_path / "base", progress=False)
    off = capture(toggled, prompts(handle), s, tmp_path / "off", adapter_enabled=False, progress=False)
    on = capture(toggled, prompts(handle), s, tmp_path / "on", progress=False)
    merged_store = capture(merged, prompts(handle), s, tmp_path / "merged", progress=False)
    last = handle.n_layers - 1
    np.testing.assert_allclose(off.load("resid_post", last, "final")[0], base_store.load("resid_post", last, "final")[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(on.load("resid_post", last, "final")[0], merged_store.load("resid_post", last, "final")[0], rtol=1e-4, atol=1e-4)
    assert not np.allclose(on.load("resid_post", last, "final")[0], off.load("resid_post", last, "final")[0], atol=1e-3)


# --- shared-prefix reuse ---------------------------------------------------------------------------

DEMOS = ["system user assistant Q: hello world 0 1 2 3 A: 4 5 6 7 8 9 Q: The capital of France is Paris. A: true\n",
         "Previously, you were asked the following question: what is the next 5 animals in the following text? A: owl\n"]
SHARED_QUESTIONS = ["cat dog fox owl bee 0", "cat dog", "cat dog fox owl bee 1 2 3 4 5", "cat dog fox owl bee 1 2 hello",
                    "What is the second character?", "even odd 7", "true false even odd A B C D"]
"""Questions (P) of different lengths; the first four begin alike, so a batch's shared prefix reaches into P."""
ALL_KINDS = ("p_last", "final", "answer_first", "p_tokens", "all")


def shared_prompts() -> list[CapturePrompt]:
    """Two groups of prompts with a long common prefix each (demonstrations, then Q:), interleaved."""
    out = []
    for i, question in enumerate(SHARED_QUESTIONS):
        for d, demo in enumerate(DEMOS):
            text = f"{demo}Q: {question} A:"
            start = len(demo) + 3
            out.append(CapturePrompt(text, (start, start + len(question)), {"item_id": f"i{i}", "demo": d}))
    return out


@pytest.fixture(scope="module")
def gemma_wide_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Gemma-3 whose sliding window (64) holds the shared-prefix prompts."""
    from tests.tiny import make_gemma3, make_tokenizer, save_checkpoint

    tok = make_tokenizer(chat=False)
    return save_checkpoint(tmp_path_factory.mktemp("tiny_gemma_wide"), make_gemma3(len(tok), sliding_window=64), tok)


def spied_capture(monkeypatch: pytest.MonkeyPatch, *args, **kwargs) -> tuple[ActivationStore, list[tuple[int, list[int]]]]:
    """`capture`, and each forward's (shared prefix length, first P token of each row)."""
    real, seen = cap.forward, []

    def spy(handle, encoded, *a, **kw):
        fw = real(handle, encoded, *a, **kw)
        seen.append((fw.prefix_len, [e.p_tokens[0] for e in encoded]))
        return fw

    monkeypatch.setattr(cap, "forward", spy)
    try:
        return capture(*args, **kwargs), seen
    finally:
        monkeypatch.setattr(cap, "forward", real)


@pytest.mark.parametrize("model", ["llama", "gemma_wide", "gemma_window_16"])
@pytest.mark.parametrize("positions", [ALL_KINDS, ("p_last", "final", "p_tokens", "all")], ids=["answer_step", "no_answer_step"])
def test_prefix_reuse_equals_plain_batches(model: str, positions, tiny_llama_dir: Path, tiny_gemma_dir: Path, gemma_wide_dir: Path,
                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = load({"llama": tiny_llama_dir, "gemma_wide": gemma_wide_dir, "gemma_window_16": tiny_gemma_dir}[model])
    ps = shared_prompts()
    s = spec(h, batch_size=4, shard=7, positions=positions)
    plain = capture(h, ps, CaptureSpec(**{**s.__dict__, "prefix_reuse": False}), tmp_path / "plain", progress=False)
    reused, seen = spied_capture(monkeypatch, h, ps, s, tmp_path / "reused", progress=False)
    shared = [n for n, _ in seen]
    if model == "gemma_window_16":
        assert max(shared) == 0  # the prompts are longer than the sliding window: no reuse
    else:
        assert min(shared) >= MIN_SHARED_PREFIX  # every batch shares its demonstrations
    assert max(len(firsts) for _, firsts in seen) <= cap.PREFIX_ROWS * 4
    if model == "llama":
        assert any(min(firsts) < n for n, firsts in seen)  # some batch's prefix reaches into P
    assert plain.info == reused.info
    assert plain.records.equals(reused.records)  # input order, record indices, tokens, positions, answer tokens
    assert reused.records["record"].tolist() == list(range(len(ps)))
    for place in all_places(h):
        for kind in positions:
            a, meta_a = plain.load(place, position=kind, as_="torch")
            b, meta_b = reused.load(place, position=kind, as_="torch")
            assert meta_a.equals(meta_b)
            torch.testing.assert_close(b, a, **BATCHED, msg=lambda m, _p=place, _k=kind: f"{_p} @ {_k}: {m}")


def test_prefix_reuse_equals_single_prompts(handle, tmp_path: Path) -> None:
    """Every token and the appended answer token, against one full forward per prompt."""
    store = capture(handle, shared_prompts(), spec(handle, batch_size=4, shard=7, positions=ALL_KINDS), tmp_path, progress=False)
    places = all_places(handle)
    for record, prompt in enumerate(shared_prompts()):
        ids = handle.prompt_format.encode(prompt.text)
        with torch.no_grad():
            greedy = int(handle.model(torch.tensor([ids])).logits[0, -1].argmax())
        assert store.records.iloc[record]["answer_token_id"] == greedy
        ref = run_hf(handle, torch.tensor([ids + [greedy]]), places)
        for place in places:
            for kind in ALL_KINDS:
                x, meta = store.load(place, position=kind, filter={"record": record}, as_="torch")
                torch.testing.assert_close(x, ref[place][0, meta["token_index"].tolist()], **BATCHED)


def test_killed_capture_with_prefix_reuse_resumes_to_the_same_shards(handle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = spec(handle, batch_size=4, shard=7, positions=ALL_KINDS)
    capture(handle, shared_prompts(), s, tmp_path / "whole", progress=False)
    real_forward = cap.forward

    def dying_forward(*args, **kwargs):
        if (tmp_path / "killed/shards/00000.safetensors").exists():
            raise KeyboardInterrupt  # killed in the second shard's first batch
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(cap, "forward", dying_forward)
    with pytest.raises(KeyboardInterrupt):
        capture(handle, shared_prompts(), s, tmp_path / "killed", progress=False)
    monkeypatch.setattr(cap, "forward", real_forward)
    assert len(ActivationStore.open(tmp_path / "killed").records) == 7
    capture(handle, shared_prompts(), s, tmp_path / "killed", progress=False)
    whole = sorted(p.name for p in (tmp_path / "whole/shards").iterdir())
    assert len(whole) == 4 and whole == sorted(p.name for p in (tmp_path / "killed/shards").iterdir())
    for name in whole:
        assert (tmp_path / "whole/shards" / name).read_bytes() == (tmp_path / "killed/shards" / name).read_bytes()
