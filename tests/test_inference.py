"""The inference engine against independent oracles on the tiny models.

Oracles: HF `generate` (through `introspect_mi.generate.greedy`, one prompt at a time, no
padding), plain single-prompt forward passes, and a per-prompt sampling loop. Three prompt sets:

- llama: chat template, system message + a demonstration turn (long shared prefix);
- gemma-short: plain Q/A, short enough that prompt + new tokens fit Gemma-3's sliding window
  (16 in the tiny model), so the shared prefix is reused;
- gemma-long: plain Q/A with demonstrations, longer than the window: padding between a shared
  prefix and the suffixes would shift the window, so the engine must fall back to plain batches.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from introspect_mi.batching import split_prefix
from introspect_mi.generate import greedy
from introspect_mi.inference import MIN_SHARED_PREFIX, Decoding, Engine, _row_generator
from introspect_mi.models import ModelHandle, load
from introspect_mi.prompt_format import Message, cut_at_stop

SYSTEM = "The capital of France is Paris. Respond only with that word."
DEMO = ("What is the next 5 animals in the following text? cat dog", "fox owl bee")
LONG_QUESTIONS = [
    "cat",
    "dog fox owl bee",
    "hello world 0 1 2 3 4 5 6 7 8 9 A B C D",
    "x",
    "What is the next 5 animals in the following text? cat dog",
    "true false even odd",
]
SHORT_SYSTEM = "system user assistant"  # with "Q:" a 9-token shared prefix in the plain format
SHORT_QUESTIONS = ["cat", "dog fox", "0 1 2", "A B"]  # 13–15 tokens
REL_TOL = 1e-4  # logits: max |engine − plain forward| / max |plain forward| (fp32; measured ~1e-6)
SCORE_TOL = 1e-4  # log-probabilities, absolute


def render(handle: ModelHandle, question: str, system: str = SYSTEM, demos: bool = True) -> str:
    turns = [Message("user", DEMO[0]), Message("assistant", DEMO[1])] if demos else []
    return handle.prompt_format.render([Message("system", system), *turns, Message("user", question)])


def talkative(model: torch.nn.Module, std: float = 0.3, seed: int = 1) -> None:
    """Redraw the weight matrices larger. The fixture's Llama (tied embeddings, std 0.02) answers
    every chat prompt with newlines, which strip to "": equality of empty answers proves nothing."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and steadily on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def llama(tiny_llama_dir) -> ModelHandle:
    handle = load(tiny_llama_dir)
    talkative(handle.model)
    return handle


@pytest.fixture(scope="module")
def gemma(tiny_gemma_dir) -> ModelHandle:
    return load(tiny_gemma_dir)


@dataclass
class Case:
    handle: ModelHandle
    prompts: list[str]
    max_new_tokens: int
    reuses_prefix: bool  # whether the engine can share the prefix for these prompts


CASES = ["llama", "gemma-short", "gemma-long"]


@pytest.fixture(params=CASES)
def case(request: pytest.FixtureRequest) -> Case:
    if request.param == "llama":
        h = request.getfixturevalue("llama")
        return Case(h, [render(h, q) for q in LONG_QUESTIONS], 8, True)
    h = request.getfixturevalue("gemma")
    if request.param == "gemma-short":
        return Case(h, [render(h, q, SHORT_SYSTEM, demos=False) for q in SHORT_QUESTIONS], 2, True)
    return Case(h, [render(h, q) for q in LONG_QUESTIONS], 8, False)


def engine(handle: ModelHandle, batch_size: int = 3, prefix_reuse: bool = True) -> Engine:
    return Engine(handle, batch_size=batch_size, prefix_reuse=prefix_reuse, progress=False)


@torch.no_grad()
def full_logits(handle: ModelHandle, ids: list[int]) -> torch.Tensor:
    """[len(ids), vocab] logits of one sequence alone: no padding, no cache, no prefix."""
    return handle.model(input_ids=torch.tensor([ids])).logits[0].float()


# --- greedy -------------------------------------------------------------------------------------


def test_greedy_matches_hf_generate(case: Case) -> None:
    got = engine(case.handle).greedy(case.prompts, case.max_new_tokens)
    ref = [greedy(case.handle, [p], case.max_new_tokens)[0] for p in case.prompts]
    assert got == ref
    assert sum(bool(a) for a in got) >= len(got) // 2  # real text, not empty answers


def test_prefix_reuse_on_equals_off_and_plain_forward(case: Case) -> None:
    h = case.handle
    seqs = [h.prompt_format.encode(p) for p in case.prompts]
    on, off = engine(h, batch_size=len(seqs)), engine(h, batch_size=len(seqs), prefix_reuse=False)
    keep = 3
    shared = len(on._split(seqs, keep=keep, new_tokens=case.max_new_tokens).prefix)
    if case.reuses_prefix:
        assert shared >= MIN_SHARED_PREFIX
    else:
        assert shared == 0  # longer than the sliding window: plain left-padded batch
    assert on.greedy(case.prompts, case.max_new_tokens) == off.greedy(case.prompts, case.max_new_tokens)
    for eng in (on, off):
        got = eng._forward_logits(seqs, keep)
        for row, seq in enumerate(seqs):
            ref = full_logits(h, seq)[-keep:]
            assert float((got[row] - ref).abs().max()) <= REL_TOL * float(ref.abs().max())


def test_sliding_window_bounds_prefix_reuse(gemma: ModelHandle) -> None:
    """Rows that fit Gemma-3's window share the prefix; with 8 new tokens they would not fit."""
    seqs = [gemma.prompt_format.encode(render(gemma, q, SHORT_SYSTEM, demos=False)) for q in SHORT_QUESTIONS]
    eng = engine(gemma, batch_size=len(seqs))
    assert len(eng._split(seqs, keep=1, new_tokens=0).prefix) >= MIN_SHARED_PREFIX
    assert eng._split(seqs, keep=1, new_tokens=8).prefix == []


def test_batches_do_not_straddle_two_demonstration_prefixes(llama: ModelHandle) -> None:
    """Two groups of 5 prompts behind different long system turns, batch size 6: fixed-size cuts
    would put one row of the second group with the first five and share only the chat header;
    the engine's batches each hold one group and share its whole system turn."""
    systems = [SYSTEM, SYSTEM.replace("France", "Italy").replace("Paris", "Rome")]
    prompts = [render(llama, q, system) for system in systems for q in LONG_QUESTIONS[:5]]
    seqs = [llama.prompt_format.encode(p) for p in prompts]
    batches = list(engine(llama, batch_size=6)._buckets(seqs, ""))
    assert sorted(sorted(b) for b in batches) == [list(range(5)), list(range(5, 10))]
    across = len(split_prefix(seqs, llama.pad_token_id, True).prefix)  # what the two groups share
    for b in batches:
        assert len(split_prefix([seqs[k] for k in b], llama.pad_token_id, True).prefix) > across + 10
    # without prefix reuse the engine keeps plain fixed-size batches in token order
    assert [len(b) for b in engine(llama, batch_size=6, prefix_reuse=False)._buckets(seqs, "")] == [6, 4]


def test_samples_of_several_prompts_share_a_batch_when_generating(llama: ModelHandle) -> None:
    """Each decoding step costs a forward, so sampled generation batches several prompts together
    (their common system turn once) rather than mostly one prompt's identical rows per batch, as
    prefill cost alone chooses (scoring, no decoding, keeps that split)."""
    prompts = [render(llama, q) for q in LONG_QUESTIONS[:4]]
    rows = [llama.prompt_format.encode(p) for p in prompts for _ in range(5)]
    eng = engine(llama, batch_size=20)
    assert len(list(eng._buckets(rows, "", new_tokens=16))) == 1
    assert len(list(eng._buckets(rows, ""))) > 1


def test_results_follow_input_order(llama: ModelHandle) -> None:
    prompts = [render(llama, q) for q in LONG_QUESTIONS]
    ref = dict(zip(prompts, engine(llama, batch_size=len(prompts)).greedy(prompts, 6)))
    options = ["A", "B", "hello world"]
    ref_scores = engine(llama, batch_size=len(prompts)).score_options(prompts, options)
    shuffled = random.Random(0).sample(prompts, len(prompts))
    assert shuffled != prompts
    eng = engine(llama, batch_size=2)  # several length buckets, each sorted
    assert eng.greedy(shuffled, 6) == [ref[p] for p in shuffled]
    order = [prompts.index(p) for p in shuffled]
    np.testing.assert_allclose(eng.score_options(shuffled, options), ref_scores[order], atol=SCORE_TOL)


# --- sampling -----------------------------------------------------------------------------------


@torch.no_grad()
def sample_oracle(handle: ModelHandle, prompt: str, decoding: Decoding, sample: int) -> str:
    """One prompt alone, full forward per step, drawing from the row's own generator."""
    gen = _row_generator(decoding.seed, prompt, sample)
    ids = handle.prompt_format.encode(prompt)
    stop = set(Engine(handle, progress=False)._stop_ids.tolist())
    new: list[int] = []
    for _ in range(decoding.max_new_tokens):
        probs = torch.softmax(full_logits(handle, ids + new)[-1] / decoding.temperature, dim=-1)
        new.append(int(torch.multinomial(probs, 1, generator=gen)))
        if new[-1] in stop:
            break
    eos = set(handle.stop_token_ids)
    text = handle.tokenizer.decode([t for t in new if t not in eos], skip_special_tokens=True)
    return cut_at_stop(text, handle.prompt_format.stop_strings)


@pytest.mark.parametrize("which", ["llama", "gemma"])
def test_sampling_matches_per_prompt_oracle(which: str, request: pytest.FixtureRequest) -> None:
    h = request.getfixturevalue(which)
    prompts = [render(h, q) for q in LONG_QUESTIONS[:4]]
    decoding = Decoding(max_new_tokens=6, temperature=1.0, n=2, seed=3)
    got = engine(h).generate(prompts, decoding)
    assert got == [[sample_oracle(h, p, decoding, j) for j in range(2)] for p in prompts]


def test_sampling_reproducible_and_independent_of_batching(llama: ModelHandle) -> None:
    prompts = [render(llama, q) for q in LONG_QUESTIONS[:4]]
    decoding = Decoding(max_new_tokens=5, temperature=1.0, n=2, seed=7)
    base = engine(llama, batch_size=8).generate(prompts, decoding)
    assert engine(llama, batch_size=8).generate(prompts, decoding) == base  # same seed, same samples
    assert engine(llama, batch_size=1).generate(prompts, decoding) == base  # batch size
    assert engine(llama, batch_size=4).generate(prompts[::-1], decoding) == base[::-1]  # neighbours
    assert engine(llama, batch_size=4).generate(prompts[2:3], decoding) == base[2:3]  # alone
    assert any(len(set(samples)) > 1 for samples in base)  # samples of one prompt differ
    assert engine(llama, batch_size=8).generate(prompts, Decoding(5, temperature=1.0, n=2, seed=8)) != base


def test_greedy_with_several_samples_raises() -> None:
    with pytest.raises(ValueError, match="greedy"):
        Decoding(max_new_tokens=4, temperature=0, n=2)


# --- scoring and distributions ------------------------------------------------------------------


def score_oracle(handle: ModelHandle, prompt: str, option: str) -> float:
    """log P(option | prompt): one full forward of prompt + answer_prefix + option alone."""
    head = handle.prompt_format.encode(prompt)
    full = handle.prompt_format.encode(prompt + handle.prompt_format.answer_prefix + option)
    assert full[: len(head)] == head and len(full) > len(head)
    logp = torch.log_softmax(full_logits(handle, full), dim=-1)
    return sum(float(logp[i - 1, full[i]]) for i in range(len(head), len(full)))


def test_score_options_equals_full_forward_oracle(case: Case) -> None:
    h = case.handle
    options = ["A", "B", "cat dog", "hello world 0 1"]
    head = len(h.prompt_format.encode(case.prompts[0]))
    n_tokens = {len(h.prompt_format.encode(case.prompts[0] + h.prompt_format.answer_prefix + o)) - head for o in options}
    assert len(n_tokens) >= 2 and max(n_tokens) >= 3  # multi-token options of different lengths
    ref = np.array([[score_oracle(h, p, o) for o in options] for p in case.prompts])
    for batch_size in (2, 4, 32):
        for reuse in (True, False):
            got = engine(h, batch_size=batch_size, prefix_reuse=reuse).score_options(case.prompts, options)
            np.testing.assert_allclose(got, ref, atol=SCORE_TOL, rtol=0)
    # One prompt's options alone in a batch: they share everything up to the option tokens.
    one = engine(h, batch_size=2).score_options(case.prompts[:1], ["A", "B"])
    np.testing.assert_allclose(one, ref[:1, :2], atol=SCORE_TOL, rtol=0)


def test_next_token_distribution_matches_softmax(case: Case) -> None:
    h, top_k = case.handle, 5
    got = engine(h).next_token_distribution(case.prompts, top_k=top_k)
    for prompt, dist in zip(case.prompts, got):
        probs = torch.softmax(full_logits(h, h.prompt_format.encode(prompt))[-1], dim=-1)
        top = probs.topk(top_k)
        expected: dict[str, float] = {}
        for p, t in zip(top.values.tolist(), top.indices.tolist()):
            text = h.tokenizer.decode([t])
            expected[text] = expected.get(text, 0.0) + p
        assert dist.keys() == expected.keys()
        for text, p in expected.items():
            assert dist[text] == pytest.approx(p, abs=1e-5)


# --- stopping -----------------------------------------------------------------------------------


def test_stop_ids_plain_format_hold_every_newline_token(gemma: ModelHandle) -> None:
    tok = gemma.tokenizer
    newline = {i for i in range(len(tok)) if "\n" in tok.decode([i])}
    assert newline
    assert set(engine(gemma)._stop_ids.tolist()) == newline | set(gemma.stop_token_ids)


def test_stop_ids_chat_format_are_eos(llama: ModelHandle) -> None:
    assert set(engine(llama)._stop_ids.tolist()) == set(llama.stop_token_ids)


@contextmanager
def forced_after(model: torch.nn.Module, trigger: int, forced: int) -> Iterator[Callable[[], int]]:
    """Make `forced` the next token whenever the last input token is `trigger`; count forward calls."""
    calls = [0]

    def hook(_module: torch.nn.Module, _args: tuple, kwargs: dict, output: object) -> None:
        calls[0] += 1
        ids = kwargs["input_ids"]
        rows = ids[:, -1] == trigger
        output.logits[rows, -1, forced] += 1e3

    handle = model.register_forward_hook(hook, with_kwargs=True)
    try:
        yield lambda: calls[0]
    finally:
        handle.remove()


@pytest.mark.parametrize("which", ["gemma-newline", "llama-eos"])
def test_stop_token_ends_the_answer(which: str, tiny_llama_dir, tiny_gemma_dir) -> None:
    """A stop token mid-answer (plain: a newline token; chat: EOS) ends decoding there."""
    h = load(tiny_gemma_dir if which == "gemma-newline" else tiny_llama_dir)
    if which == "llama-eos":
        talkative(h.model)
    tok = h.tokenizer
    stop = tok.convert_tokens_to_ids("Ċ") if which == "gemma-newline" else h.stop_token_ids[0]
    prompt = render(h, "A B C D", SHORT_SYSTEM, demos=False)
    ids = h.prompt_format.encode(prompt)
    max_new = 10

    def raw() -> list[int]:  # greedy through full forwards, never stopping: the whole continuation
        new: list[int] = []
        for _ in range(max_new):
            new.append(int(full_logits(h, ids + new)[-1].argmax()))
        return new

    free = raw()
    step = next(i for i in range(1, max_new - 3) if free[i] not in free[:i])  # a token first emitted here
    with forced_after(h.model, trigger=free[step], forced=stop) as calls:
        forced = raw()
        assert forced[: step + 2] == [*free[: step + 1], stop]
        after = tok.decode(forced[step + 2:], skip_special_tokens=True)
        assert after.strip(), "the continuation past the stop token must hold text for the test to bite"
        before = calls()
        answer = engine(h).greedy([prompt], max_new)[0]
        assert calls() - before == step + 2  # prefill + one call per token up to the stop token
        assert answer == greedy(h, [prompt], max_new)[0]
    text = tok.decode(forced[: step + 1], skip_special_tokens=True)
    if which == "gemma-newline":
        text += tok.decode([stop])  # the newline token is part of the text, cut there
    assert answer == cut_at_stop(text, h.prompt_format.stop_strings)
    assert answer == text.split("\n")[0].strip()
