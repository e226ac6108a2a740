"""Inference benchmark: a naive per-prompt `generate` loop, the Engine, a plain batched forward.

All three run in one process on the same prompts: the held-out `animals` task's val items
rendered as object-level prompts with format demonstrations (`PromptConfig()`), decoded greedily
up to the task's `max_new_tokens`. Measured:

(a) naive: `handle.model.generate` one prompt at a time (a subset: it is slow), prompts/s;
(b) engine: `Engine.greedy` over all prompts, prompts/s and (prompt + generated tokens)/s;
(c) plain forward: one `model(**left-padded batch)` per batch of the same prompts (length-sorted
    like the engine's buckets, no generation), prompt tokens/s: the rate of pure prefill.

Each path is warmed up once on two prompts first (the engine with a separate instance, so its
memoised shared prefix does not carry into the timed run). Torch threads stay at the default.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from experiments.bench_common import Machine, machine, save_result, timed
from introspect_mi.batching import left_pad
from introspect_mi.generate import cut_at_stop
from introspect_mi.inference import Engine
from introspect_mi.models import ModelHandle, load
from introspect_mi.prompts import PromptConfig, object_prompt
from introspect_mi.tasks import load_items, task_spec

TASK = "animals"


@dataclass
class Result(Machine):
    """What the benchmark prints and writes to runs/benchmarks/inference.json."""

    batch_size: int
    n_prompts: int
    max_new_tokens: int
    mean_prompt_tokens: float
    mean_generated_tokens: float  # engine, over all prompts
    naive_prompts: int
    naive_mean_generated_tokens: float
    naive_seconds: float
    naive_prompts_per_s: float
    engine_seconds: float
    engine_prompts_per_s: float
    engine_vs_naive: float
    engine_tokens_per_s: float  # (prompt + generated tokens) / s
    forward_seconds: float
    forward_tokens_per_s: float  # prompt tokens / s
    engine_vs_forward: float
    answers_equal: int  # of the naive subset, engine answer == naive answer
    answers_compared: int
    target_engine_vs_naive_met: bool  # >= 4
    target_engine_vs_forward_met: bool  # >= 0.7


def build_prompts(handle: ModelHandle, n: int) -> tuple[list[str], int]:
    """The rendered prompts and the task's max_new_tokens."""
    spec = task_spec(TASK)
    items = load_items(TASK, "val", n)
    return [object_prompt(handle.prompt_format, item, spec, PromptConfig()).text for item in items], spec.max_new_tokens


@torch.no_grad()
def naive_generate(handle: ModelHandle, prompts: list[str], max_new_tokens: int) -> tuple[list[str], list[int]]:
    """One `generate` call per prompt (no batching, no padding): answers and generated token counts."""
    stops = handle.prompt_format.stop_strings
    extra: dict[str, Any] = {"stop_strings": list(stops), "tokenizer": handle.tokenizer} if stops else {}
    answers, counts = [], []
    for prompt in prompts:
        ids = torch.tensor([handle.prompt_format.encode(prompt)], device=handle.device)
        out = handle.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
            do_sample=False, temperature=None, top_p=None, top_k=None,
            eos_token_id=handle.stop_token_ids, pad_token_id=handle.pad_token_id, **extra,
        )
        new = out[0, ids.shape[1]:]
        counts.append(int(new.shape[0]))
        answers.append(cut_at_stop(handle.tokenizer.decode(new, skip_special_tokens=True), stops))
    return answers, counts


@contextmanager
def counting_generated(model: torch.nn.Module, n_prompts: int) -> Iterator[list[int]]:
    """Count the Engine's generated tokens: each prompt's first token comes from its prefill, each
    later one from a decode step that feeds one token per live row with the running cache."""
    total = [n_prompts]

    def hook(_module: torch.nn.Module, _args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] == 1 and kwargs.get("cache") is not None:
            total[0] += int(ids.shape[0])

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield total
    finally:
        handle.remove()


@torch.no_grad()
def plain_forward(handle: ModelHandle, seqs: list[list[int]], batch_size: int) -> None:
    """One plain forward per length-sorted, left-padded batch (all positions' logits, as HF does)."""
    order = sorted(range(len(seqs)), key=lambda k: len(seqs[k]))
    for start in range(0, len(order), batch_size):
        batch = left_pad([seqs[k] for k in order[start : start + batch_size]], handle.pad_token_id).to(handle.device)
        handle.model(**batch.model_inputs())


def benchmark(model: str, n: int, batch_size: int, naive_n: int) -> Result:
    """`measure` on a model loaded by name or path."""
    return measure(load(model), n, batch_size, naive_n)


def measure(handle: ModelHandle, n: int, batch_size: int, naive_n: int) -> Result:
    """Run the three paths once each (after a warm-up) and collect the numbers."""
    prompts, max_new = build_prompts(handle, n)
    seqs = [handle.prompt_format.encode(p) for p in prompts]
    naive_n = min(naive_n, n)

    # Warm-up: each path once on two prompts.
    naive_generate(handle, prompts[:2], max_new)
    Engine(handle, batch_size=batch_size, progress=False).greedy(prompts[:2], max_new)
    plain_forward(handle, seqs[:2], batch_size)

    (naive_answers, naive_counts), naive_s = timed(handle, naive_generate, handle, prompts[:naive_n], max_new)
    engine = Engine(handle, batch_size=batch_size, progress=False)
    with counting_generated(handle.model, len(prompts)) as generated:
        answers, engine_s = timed(handle, engine.greedy, prompts, max_new)
    _, forward_s = timed(handle, plain_forward, handle, seqs, batch_size)

    prompt_tokens = sum(len(s) for s in seqs)
    naive_rate, engine_rate = naive_n / naive_s, n / engine_s
    engine_tok = (prompt_tokens + generated[0]) / engine_s
    forward_tok = prompt_tokens / forward_s
    equal = sum(a == b for a, b in zip(answers[:naive_n], naive_answers))
    return Result(
        **machine(handle), batch_size=batch_size, n_prompts=n, max_new_tokens=max_new,
        mean_prompt_tokens=prompt_tokens / n, mean_generated_tokens=generated[0] / n,
        naive_prompts=naive_n, naive_mean_generated_tokens=sum(naive_counts) / naive_n,
        naive_seconds=naive_s, naive_prompts_per_s=naive_rate,
        engine_seconds=engine_s, engine_prompts_per_s=engine_rate, engine_vs_naive=engine_rate / naive_rate,
        engine_tokens_per_s=engine_tok, forward_seconds=forward_s, forward_tokens_per_s=forward_tok,
        engine_vs_forward=engine_tok / forward_tok, answers_equal=equal, answers_compared=naive_n,
        target_engine_vs_naive_met=engine_rate / naive_rate >= 4, target_engine_vs_forward_met=engine_tok / forward_tok >= 0.7,
    )


def report(r: Result) -> str:
    """The printed summary."""
    return "\n".join([
        f"inference benchmark: {r.model} on {r.device} ({r.dtype}, {r.torch_threads} torch threads), task {TASK} val",
        f"  batch size {r.batch_size}, {r.n_prompts} prompts, max_new_tokens {r.max_new_tokens}",
        f"  mean prompt length {r.mean_prompt_tokens:.1f} tokens, mean generated {r.mean_generated_tokens:.2f} tokens"
        f" (naive subset: {r.naive_mean_generated_tokens:.2f})",
        f"  naive generate loop   {r.naive_prompts_per_s:8.3f} prompts/s  ({r.naive_prompts} prompts in {r.naive_seconds:.1f} s)",
        f"  engine                {r.engine_prompts_per_s:8.3f} prompts/s  ({r.n_prompts} prompts in {r.engine_seconds:.1f} s)",
        f"  engine / naive        {r.engine_vs_naive:8.2f}x   (target >= 4x: {'met' if r.target_engine_vs_naive_met else 'NOT met'})",
        f"  engine token rate     {r.engine_tokens_per_s:8.1f} tokens/s (prompt + generated)",
        f"  plain forward rate    {r.forward_tokens_per_s:8.1f} tokens/s (prompt, in {r.forward_seconds:.1f} s)",
        f"  engine / forward      {r.engine_vs_forward:8.2f}x   (target >= 0.7x: {'met' if r.target_engine_vs_forward_met else 'NOT met'})",
        f"  engine answers == naive answers on the first {r.answers_compared}: "
        f"{'yes' if r.answers_equal == r.answers_compared else 'no'} ({r.answers_equal}/{r.answers_compared})",
    ])


def run(args: argparse.Namespace) -> None:
    result = benchmark(args.model, args.n, args.batch_size, args.naive_n)
    print(report(result))
    save_result("inference", result)


def add_parser(sub: Any) -> None:
    """Register the `inference` subcommand."""
    p = sub.add_parser("inference", help="naive generate loop vs the Engine vs a plain batched forward")
    p.add_argument("--model", default="smollm2-135m-instruct", help="embedded name or checkpoint folder")
    p.add_argument("--n", type=int, default=64, help="prompts for the engine and the plain forward")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--naive-n", type=int, default=16, help="prompts for the naive loop (the first of the n)")
    p.set_defaults(run=run)
