"""Model calls through the run store: nothing already answered is asked again.

Results are cached per (model fingerprint incl. adapter, dtype, attention implementation,
decoding settings, rendered prompt). New answers are appended chunk by chunk, so a run killed at
any moment loses at most the chunk in flight and a rerun resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from introspect_mi.inference import Decoding, Engine
from introspect_mi.store import AnswerCache


@dataclass
class CallCounter:
    """How many prompts needed the model vs came from the cache, over a whole run."""

    model_calls: int = 0
    cached: int = 0

    def add(self, missing: int, total: int) -> None:
        self.model_calls += missing
        self.cached += total - missing


def _cached(engine: Engine, root: Path, what: str, settings: dict[str, Any], prompts: Sequence[str],
            compute: Callable[[list[str]], list[Any]], counter: CallCounter | None) -> list[Any]:
    """One result per prompt: cached ones read, missing ones computed and appended chunk by chunk."""
    handle = engine.handle
    key = {"what": what, **settings, "dtype": str(handle.placement.dtype), "attn": handle.attn_implementation}
    cache = AnswerCache(root, handle.fingerprint, key)
    todo = cache.missing(prompts)
    if counter is not None:
        counter.add(len(todo), len(set(prompts)))
    size = engine.batch_size * 4
    for chunk in (todo[i : i + size] for i in range(0, len(todo), size)):
        cache.put_many(list(zip(chunk, compute(chunk))))
    found = cache.get_many(prompts)
    return [found[p] for p in prompts]


def generate(engine: Engine, prompts: Sequence[str], decoding: Decoding, root: Path,
             counter: CallCounter | None = None, desc: str = "answers") -> list[list[str]]:
    """`decoding.n` answers per prompt, from the cache where present."""
    return _cached(engine, root, "generate", decoding.key(), prompts,
                   lambda chunk: engine.generate(chunk, decoding, desc=desc), counter)


def next_token_distributions(engine: Engine, prompts: Sequence[str], root: Path, top_k: int = 50,
                             counter: CallCounter | None = None) -> list[dict[str, float]]:
    """The first answer token's top-k distribution per prompt, from the cache where present."""
    return _cached(engine, root, "next_token", {"top_k": top_k}, prompts,
                   lambda chunk: engine.next_token_distribution(chunk, top_k=top_k), counter)
