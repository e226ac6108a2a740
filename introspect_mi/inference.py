"""The inference engine: batched greedy and sampled generation, option scoring, next-token
distributions, all through one forward routine.

Speed comes from four things, each safe for the numbers:
- buckets: prompts are sorted by their tokens before batching, so each batch holds prompts with
  a long common prefix and similar lengths (results return in input order);
- shared-prefix reuse: the token prefix common to a batch (system turn, demonstrations, the
  instruction) is computed once and its KV cache shared by every row;
- logits only where they are read (the last position while decoding, the answer positions when
  scoring): the vocabulary projection dominates small models' cost, Gemma-3's 262k most of all;
- finished rows leave the batch, and decoding stops when every row is done.

Padding sits between the shared prefix and each row's suffix; the attention mask is built from
lengths and position ids count real tokens only, so a row computes what it would alone
(tested against single-prompt runs). Sampling draws each (prompt, sample) row from its own
generator seeded by (seed, prompt, sample index): results do not depend on batch composition.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np
import torch
from tqdm.auto import tqdm

from introspect_mi.batching import (  # noqa: F401  (MIN_SHARED_PREFIX, sliding_window: imported from here too)
    MIN_SHARED_PREFIX, Prefixed, PrefixMemo, common_prefix_len, prefix_batches, prefix_fits, repeat_cache, sliding_window,
    split_prefix,
)
from introspect_mi.models import ModelHandle
from introspect_mi.prompt_format import cut_at_stop


@dataclass(frozen=True)
class Decoding:
    """How answers are decoded; part of every cache key."""

    max_new_tokens: int
    temperature: float = 0.0  # 0 = greedy
    n: int = 1  # samples per prompt (greedy: 1)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature == 0 and self.n != 1:
            raise ValueError("greedy decoding gives one answer per prompt: use n=1 or temperature > 0")

    def key(self) -> dict[str, float | int]:
        return asdict(self)


def _row_generator(seed: int, prompt: str, sample: int) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}\x00{sample}\x00{prompt}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


FORWARD_OVERHEAD_TOKENS = 32
"""What one forward costs beyond its tokens, in tokens (`batching.prefix_batches`'s cost model)."""


class Engine:
    """Fast batched inference for one model handle."""

    def __init__(self, handle: ModelHandle, batch_size: int = 32, prefix_reuse: bool = True, progress: bool = True) -> None:
        self.handle = handle
        self.batch_size = batch_size
        self.prefix_reuse = prefix_reuse
        self.progress = progress
        self._prefix_memo = PrefixMemo()

    # --- public API -------------------------------------------------------------------------

    def generate(self, prompts: Sequence[str], decoding: Decoding, desc: str = "generating") -> list[list[str]]:
        """`decoding.n` answers per rendered prompt, cut at the format's stop strings."""
        rows = [(i, j) for i in range(len(prompts)) for j in range(decoding.n)]
        seqs = [self.encode(prompts[i]) for i, _ in rows]
        out: list[list[str]] = [[""] * decoding.n for _ in prompts]
        for idx in self._buckets(seqs, desc, decoding.max_new_tokens):
            gens = None
            if decoding.temperature > 0:
                gens = [_row_generator(decoding.seed, prompts[rows[k][0]], rows[k][1]) for k in idx]
            texts = self._decode_batch([seqs[k] for k in idx], decoding, gens)
            for k, text in zip(idx, texts):
                i, j = rows[k]
                out[i][j] = text
        return out

    def greedy(self, prompts: Sequence[str], max_new_tokens: int, desc: str = "generating") -> list[str]:
        return [a[0] for a in self.generate(prompts, Decoding(max_new_tokens), desc)]

    def score_options(self, prompts: Sequence[str], options: Sequence[str], desc: str = "scoring") -> np.ndarray:
        """log P(option | prompt) for every prompt × option, summed over the option's tokens."""
        sep = self.handle.prompt_format.answer_prefix
        rows, seqs, spans = [], [], []
        for i, prompt in enumerate(prompts):
            head = self.encode(prompt)
            for j, option in enumerate(options):
                full = self.encode(prompt + sep + option)
                cut = common_prefix_len(head, full)
                if cut == len(full):
                    raise ValueError(f"option {option!r} adds no tokens to the prompt")
                rows.append((i, j))
                seqs.append(full)
                spans.append(len(full) - cut)  # option tokens = the last `spans` tokens
        scores = np.zeros((len(prompts), len(options)))
        for idx in self._buckets(seqs, desc):
            keep = max(spans[k] for k in idx) + 1
            logp = torch.log_softmax(self._forward_logits([seqs[k] for k in idx], keep), dim=-1)
            for b, k in enumerate(idx):
                target = torch.tensor(seqs[k][-spans[k]:])
                picked = logp[b, keep - spans[k] - 1 : keep - 1].gather(-1, target[:, None])
                scores[rows[k]] = float(picked.sum())
        return scores

    def next_token_distribution(self, prompts: Sequence[str], top_k: int = 50, desc: str = "next-token") -> list[dict[str, float]]:
        """The first answer token's top-k probabilities, keyed by decoded token text."""
        seqs = [self.encode(p) for p in prompts]
        out: list[dict[str, float]] = [{} for _ in prompts]
        for idx in self._buckets(seqs, desc):
            probs = torch.softmax(self._forward_logits([seqs[k] for k in idx], 1)[:, -1], dim=-1)
            top = probs.topk(top_k, dim=-1)
            for b, k in enumerate(idx):
                dist: dict[str, float] = {}
                for p, t in zip(top.values[b].tolist(), top.indices[b].tolist()):
                    text = self.handle.tokenizer.decode([t])
                    dist[text] = dist.get(text, 0.0) + p
                out[k] = dist
        return out

    def encode(self, prompt: str) -> list[int]:
        return self.handle.prompt_format.encode(prompt)

    # --- internals --------------------------------------------------------------------------

    @cached_property
    def _stop_ids(self) -> torch.Tensor:
        """EOS ids, plus every token whose text contains a stop string (plain format: newline)."""
        ids = set(self.handle.stop_token_ids)
        stops = self.handle.prompt_format.stop_strings
        if stops:
            vocab = self.handle.tokenizer.convert_ids_to_tokens(list(range(len(self.handle.tokenizer))))
            for i, tok in enumerate(vocab):
                if tok is not None and any(s in self.handle.tokenizer.convert_tokens_to_string([tok]) for s in stops):
                    ids.add(i)
        return torch.tensor(sorted(ids))

    def _buckets(self, seqs: list[list[int]], desc: str, new_tokens: int = 0) -> Iterator[list[int]]:
        # Token order (not length) groups prompts that share a prefix (same task, property and
        # demonstrations); `prefix_batches` cuts that order where a batch would straddle two
        # prefixes (fixed-size cuts made every 2-shot hypothetical batch of 32 span two properties'
        # demonstrations and recompute most of them per row). Generation pays the per-forward
        # overhead once more for each decoding step, so a batch is worth more there (with the
        # prefill overhead alone, sampled calibration cut 10 samples of each of 30 object prompts
        # into 30 batches of one prompt each, which ran slower than 10 batches of three).
        if self.prefix_reuse:
            batches = prefix_batches(seqs, self.batch_size, overhead=FORWARD_OVERHEAD_TOKENS * (1 + new_tokens))
        else:
            order = sorted(range(len(seqs)), key=lambda k: seqs[k])
            batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        yield from tqdm(batches, desc=desc, unit="batch", disable=not self.progress or len(batches) < 2, leave=False)

    def _prefix_kv(self, prefix: list[int]) -> object:
        """KV cache of a shared prefix (the last one is memoised: tasks repeat their prefix)."""
        def compute() -> object:
            ids = torch.tensor([prefix], device=self.handle.device)
            return self.handle.model(input_ids=ids, use_cache=True, logits_to_keep=1).cache
        return self._prefix_memo.get(tuple(prefix), compute)

    def _split(self, seqs: list[list[int]], keep: int, new_tokens: int) -> Prefixed:
        """The batch split for the forward pass: the shared prefix reused only where the model's
        sliding window allows it (`batching.prefix_fits`)."""
        reuse = self.prefix_reuse and prefix_fits(self.handle.config, seqs, new_tokens)
        return split_prefix(seqs, self.handle.pad_token_id, reuse, keep)

    def _run(self, batch: Prefixed, logits_to_keep: int) -> tuple[torch.Tensor, object]:
        dev = self.handle.device
        cache = None
        if batch.prefix:
            cache = repeat_cache(self._prefix_kv(batch.prefix), batch.suffix_ids.shape[0])
        out = self.handle.model(
            input_ids=batch.suffix_ids.to(dev), attention_mask=batch.mask.to(dev), position_ids=batch.positions.to(dev),
            cache=cache, use_cache=True, logits_to_keep=logits_to_keep,
        )
        return out.logits.float(), out.cache

    @torch.no_grad()
    def _forward_logits(self, seqs: list[list[int]], logits_to_keep: int) -> torch.Tensor:
        batch = self._split(seqs, keep=logits_to_keep, new_tokens=0)
        return self._run(batch, logits_to_keep)[0].cpu()

    @torch.no_grad()
    def _decode_batch(self, seqs: list[list[int]], decoding: Decoding, gens: list[torch.Generator] | None) -> list[str]:
        batch = self._split(seqs, keep=1, new_tokens=decoding.max_new_tokens)
        logits, cache = self._run(batch, 1)
        dev = self.handle.device
        stop_ids = self._stop_ids.to(dev)
        live = torch.arange(len(seqs))  # original row of each live batch row
        mask, pos = batch.mask.to(dev), batch.positions[:, -1:].to(dev)
        tokens: list[list[int]] = [[] for _ in seqs]
        pick = _sampler(decoding.temperature, gens)
        for step in range(decoding.max_new_tokens):
            nxt = pick(logits[:, -1], live)
            done = torch.isin(nxt, stop_ids)
            for b, row in enumerate(live.tolist()):
                tokens[row].append(int(nxt[b]))  # a stop token is kept: text before a stop string in it counts
            keep = (~done).nonzero().flatten()
            if len(keep) == 0 or step == decoding.max_new_tokens - 1:
                break
            if len(keep) < len(live):
                live, nxt, mask, pos = live[keep.cpu()], nxt[keep], mask[keep], pos[keep]
                cache.batch_select_indices(keep)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos = pos + 1
            out = self.handle.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, cache=cache, use_cache=True, logits_to_keep=1)
            logits, cache = out.logits.float(), out.cache
        stops = self.handle.prompt_format.stop_strings
        eos = set(self.handle.stop_token_ids)
        texts = []
        for toks in tokens:
            toks = [t for t in toks if t not in eos]
            text = self.handle.tokenizer.decode(toks, skip_special_tokens=True)
            texts.append(cut_at_stop(text, stops))
        return texts


def _sampler(temperature: float, gens: list[torch.Generator] | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if temperature == 0:
        return lambda logits, live: logits.argmax(dim=-1)

    def sample(logits: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits / temperature, dim=-1).cpu()
        picks = [torch.multinomial(probs[b], 1, generator=gens[int(r)]) for b, r in enumerate(live)]
        return torch.cat(picks).to(logits.device)

    return sample
