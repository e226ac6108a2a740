"""Left-padded batches with explicit masks and positions (PITFALLS.md: "Padding, positions, BOS").

The attention mask is built from the sequence lengths, never from `ids != pad_id` (SmolLM2's
pad token is its `<|im_end|>`, which is real content inside chat prompts), and position ids
count real tokens only, so a left-padded row computes exactly what it would alone.

Shared-prefix batches (the inference engine and capture): the token prefix common to a batch is
computed once, its KV cache repeated over the rows, and each row's suffix left-padded after it
(padding between prefix and suffix, mask from lengths, position ids counting real tokens);
`prefix_fits` is the sliding-window rule, `prefix_batches` forms batches that share long prefixes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # [batch, seq], left-padded
    attention_mask: torch.Tensor  # [batch, seq], 1 at real tokens
    position_ids: torch.Tensor  # [batch, seq], 0 at each row's first real token
    lengths: list[int]

    @property
    def width(self) -> int:
        return int(self.input_ids.shape[1])

    def real_slice(self, row: int) -> slice:
        """The columns of row `row` that hold real tokens (its prompt, left-padded)."""
        return slice(self.width - self.lengths[row], self.width)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device), self.lengths)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}


def left_pad(sequences: list[list[int]], pad_id: int) -> Batch:
    """Left-pad token id lists into one batch."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("left_pad needs at least one non-empty sequence")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq):] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return Batch(ids, mask, positions, [len(s) for s in sequences])


# --- shared-prefix batches (the inference engine and capture) ------------------------------------

MIN_SHARED_PREFIX = 8  # tokens; below this a shared-prefix pass costs more than it saves


@dataclass
class Prefixed:
    """A batch as (shared prefix, left-padded suffixes) with masks built from lengths.

    Padding sits between the prefix and each row's suffix: a row's token index `t ≥ len(prefix)`
    is suffix column `width - len(row) + t`; the prefix's tokens are one row shared by all."""

    prefix: list[int]
    suffix_ids: torch.Tensor  # [B, S]
    mask: torch.Tensor  # [B, P + S]
    positions: torch.Tensor  # [B, S]

    @property
    def width(self) -> int:
        """Columns of the suffix grid."""
        return int(self.suffix_ids.shape[1])


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def shared_prefix_len(seqs: Sequence[Sequence[int]], keep: int = 1) -> int:
    """Tokens a batch of `seqs` shares as its prefix: their common prefix, leaving each row `keep`
    own tokens (the positions whose logits are read); 0 when below MIN_SHARED_PREFIX or one row."""
    if len(seqs) < 2:
        return 0
    shared = max(min(len(s) for s in seqs) - keep, 0)
    first = seqs[0]
    for s in seqs[1:]:
        shared = min(shared, common_prefix_len(first[:shared], s))
    return shared if shared >= MIN_SHARED_PREFIX else 0


def split_prefix(seqs: list[list[int]], pad_id: int, reuse: bool, keep: int = 1) -> Prefixed:
    """`seqs` split into their shared prefix (none unless `reuse`) and left-padded suffixes.
    `keep`: own (suffix) tokens every row keeps at least, the positions whose logits are read."""
    shared = shared_prefix_len(seqs, keep) if reuse else 0
    suffix = left_pad([s[shared:] for s in seqs], pad_id)
    mask = torch.cat([torch.ones((len(seqs), shared), dtype=torch.long), suffix.attention_mask], dim=1)
    return Prefixed(list(seqs[0][:shared]), suffix.input_ids, mask, shared + suffix.position_ids)


def sliding_window(config: object) -> int | None:
    """The sliding-attention window of a model that has sliding layers (Gemma-3, Mistral), else None."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if window is None or (types is not None and "sliding_attention" not in types):
        return None
    return int(window)


def prefix_fits(config: object, seqs: Sequence[Sequence[int]], new_tokens: int) -> bool:
    """Whether a batch of `seqs` may share a prefix on this model. Padding between the shared
    prefix and the suffixes shifts columns against positions, and sliding-window masks count
    columns: only when every column fed (prompt + new tokens but the last) fits in one window."""
    window = sliding_window(config)
    return window is None or max(len(s) for s in seqs) + max(new_tokens - 1, 0) <= window


def repeat_cache(cache: Any, rows: int) -> Any:
    """A copy of a one-row KV cache repeated over `rows` rows (the original stays as it was)."""
    cache = copy.deepcopy(cache)
    cache.batch_repeat_interleave(rows)
    return cache


class PrefixMemo:
    """The last shared prefix's result (its KV cache, and whatever else was read in that pass),
    kept while batches repeat the prefix (a task's demonstrations span several batches)."""

    def __init__(self) -> None:
        self._key: Hashable = None
        self._value: Any = None

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        if self._key is None or self._key != key:
            self._value = compute()
            self._key = key
        return self._value


def prefix_batches(seqs: Sequence[Sequence[int]], max_batch: int, keep: int = 1, overhead: int = 32,
                   max_tokens: int | None = None) -> list[list[int]]:
    """Batches (indices into `seqs`) for shared-prefix forwards: the rows sorted by their tokens,
    cut into runs of at most `max_batch` where the modelled cost is least. Cost counts the tokens
    a forward computes (the batch's shared prefix once, each row's suffix padded to the longest)
    plus `overhead` tokens per forward, so rows of one prefix (a task's demonstrations) share a
    batch rather than straddle two. `max_tokens` bounds a batch's suffix grid (rows × padded
    suffix; a single row always fits). Batches come in token order."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be ≥ 1, not {max_batch}")
    order = sorted(range(len(seqs)), key=lambda k: list(seqs[k]))
    s = [seqs[k] for k in order]
    adjacent = [common_prefix_len(s[k], s[k + 1]) for k in range(len(s) - 1)]
    best = [0.0] + [float("inf")] * len(s)
    start = [0] * (len(s) + 1)
    for end in range(1, len(s) + 1):  # the last batch is s[i:end]
        lcp, shortest, longest = len(s[end - 1]), len(s[end - 1]), len(s[end - 1])
        for i in range(end - 1, max(end - max_batch, 0) - 1, -1):
            if i < end - 1:
                lcp = min(lcp, adjacent[i])  # sorted rows: the common prefix of a run is its adjacent pairs' least
                shortest, longest = min(shortest, len(s[i])), max(longest, len(s[i]))
            rows = end - i
            shared = min(lcp, shortest - keep) if rows > 1 else 0
            if shared < MIN_SHARED_PREFIX:
                shared = 0
            if max_tokens is not None and rows > 1 and rows * (longest - shared) > max_tokens:
                continue
            cost = best[i] + overhead + shared + rows * (longest - shared)
            if cost < best[end]:
                best[end], start[end] = cost, i
    out, end = [], len(s)
    while end:
        out.append(order[start[end] : end])
        end = start[end]
    return out[::-1]
