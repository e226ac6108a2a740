"""Capture activations on object-level and hypothetical prompts into an activation store.

`forward` is the one instrumented forward pass: left-padded batch (masks from lengths, position
ids counting real tokens), raw HF hooks through the place vocabulary (the reference engine the
bridge and nnsight are tested against), and optionally one more step that appends the model's
greedy first answer token (the `answer_first` position). `capture` streams its results into an
`actstore.StoreWriter`, resuming after the last complete shard. Given an `NnsightEngine`, the
same forward runs as nnsight traces (locally, or on NDIF with `remote=True`), bit for bit equal.

Shared-prefix reuse (`CaptureSpec.prefix_reuse`, on by default), as in the inference engine
(`batching`): each shard's prompts are sorted by their tokens and cut into batches whose rows
share a long prefix (`batching.prefix_batches`: the quick preset's 2-shot prompts share ~230 of
their ~290 tokens with the other prompts of their task × property); the batch's common prefix is
computed once as one row (its activations recorded once and its KV cache repeated over the rows,
the last one memoised), and the rows' suffixes are left-padded after it. Records are still
written in input order with the same indices, shard by shard. Activations equal the plain
batched forward's within the batched-vs-single tolerance (tests/tolerance.py; tested for every
position kind, with and without the answer step). Models with sliding-window layers (Gemma-3)
reuse a prefix only where the batch fits in one window (`batching.prefix_fits`). The nnsight
path has no prefix reuse: it runs the plain left-padded batches in input order (the switch is
ignored there), so it stays bit for bit equal to the hooks with `prefix_reuse=False`.
Measured on the quick preset's 2-shot hypothetical prompts: see the README's speed table
(`python -m experiments.benchmark capture`).

Adapters: a merged adapter is just other weights; a peft-mode handle is captured with its
adapter on or off (`adapter_enabled`), so one process can capture both sides of a finetune.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from introspect_mi.actstore import ActivationStore, StoreWriter, check_positions, tensor_key
from introspect_mi.alignment import p_token_indices
from introspect_mi.batching import PrefixMemo, left_pad, prefix_batches, prefix_fits, repeat_cache, split_prefix
from introspect_mi.hooks import recording
from introspect_mi.models import ModelHandle
from introspect_mi.nnsight_engine import NnsightEngine
from introspect_mi.places import Place, PlaceKind


@dataclass(frozen=True)
class CapturePrompt:
    """A prompt to capture: its text, where P sits in it, and the record stored beside it."""

    text: str
    p_span: tuple[int, int]
    record: dict[str, Any] = field(default_factory=dict)
    """item_id, kind ("object"/"hypothetical"), task, property and labels: stored verbatim."""


@dataclass
class Encoded:
    """A tokenised capture prompt."""

    ids: list[int]
    offsets: list[tuple[int, int]]
    p_tokens: list[int]


@dataclass
class Forward:
    """Activations of one batch: place → [batch, width(+1), d] on the left-padded grid.

    With a shared prefix (`prefix_len` > 0) the grid holds the rows' suffixes (padding between
    prefix and suffix) and `prefix_acts` the prefix's activations, [1, prefix_len, d], one row
    shared by all: read a row's tokens through `gather`, which looks in the right one."""

    encoded: list[Encoded]
    acts: dict[Place, torch.Tensor]
    width: int  # the grid's prompt columns (the appended answer token is one more)
    answer_ids: list[int] | None  # each row's greedy first answer token (with answer_first)
    prefix_acts: dict[Place, torch.Tensor] | None = None
    prefix_len: int = 0

    def column(self, row: int, token_index: int) -> int:
        """Grid column of a row's token index (the appended answer token is index len(ids));
        with a shared prefix, of a token at or after it."""
        if token_index < self.prefix_len:
            raise ValueError(f"token {token_index} is in the shared prefix ({self.prefix_len} tokens): read it through gather")
        return self.width - len(self.encoded[row].ids) + token_index

    def gather(self, place: Place, row: int, token_indices: Sequence[int]) -> torch.Tensor:
        """[len(token_indices), d]: a row's activations at `place` at those token indices (the
        answer token is index len(ids)), from the shared prefix's or the row's own grid."""
        grid = self.acts[place]
        idx = torch.as_tensor(list(token_indices), dtype=torch.long, device=grid.device)
        cols = idx + (self.width - len(self.encoded[row].ids))
        if not self.prefix_len:
            return grid[row, cols]
        in_prefix = idx < self.prefix_len
        out = grid.new_empty((len(idx), grid.shape[-1]))
        out[in_prefix] = self.prefix_acts[place][0, idx[in_prefix]]
        out[~in_prefix] = grid[row, cols[~in_prefix]]
        return out


def encode(handle: ModelHandle, prompt: CapturePrompt) -> Encoded:
    ids, offsets = handle.prompt_format.encode_with_offsets(prompt.text)
    p_tokens = p_token_indices(offsets, prompt.p_span)
    if not p_tokens:
        raise ValueError(f"P's span {prompt.p_span} covers no token of the prompt ending {prompt.text[-80:]!r}")
    return Encoded(ids, offsets, p_tokens)


def all_places(handle: ModelHandle, kinds: Sequence[str] = ("resid_post",)) -> list[Place]:
    """Every layer's place of each kind (`final_norm` once)."""
    out: list[Place] = []
    for kind in map(PlaceKind, kinds):
        out += [Place(kind)] if kind is PlaceKind.FINAL_NORM else [Place(kind, layer) for layer in range(handle.n_layers)]
    return out


def _adapter_state(handle: ModelHandle, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    if enabled:
        return contextlib.nullcontext()
    if handle.adapter_mode != "peft":
        raise ValueError("capturing with the adapter off needs a handle loaded with adapter_mode='peft'")
    return handle.model.disable_adapter()


@torch.no_grad()
def forward(handle: ModelHandle, encoded: list[Encoded], places: Sequence[Place], answer_step: bool,
            adapter_enabled: bool = True, nnsight: NnsightEngine | None = None, prefix_reuse: bool = False,
            memo: PrefixMemo | None = None) -> Forward:
    """Run one left-padded batch, recording `places`; with `answer_step`, append each row's greedy
    first answer token and record it too (a cached one-token step, same masks and positions).
    Raw hooks, or the same forward as nnsight traces when `nnsight` is given (never with a shared
    prefix). With `prefix_reuse`, the batch's common token prefix (≥ MIN_SHARED_PREFIX tokens, where
    the model's sliding window allows) runs once and its KV cache is shared by the rows; `memo`
    keeps the last prefix's cache and activations for the next batch that shares it."""
    if nnsight is not None:
        with _adapter_state(handle, adapter_enabled):
            acts, answer_ids = nnsight.forward([e.ids for e in encoded], places, answer_step)
        return Forward(encoded, acts, max(len(e.ids) for e in encoded), answer_ids)
    seqs = [e.ids for e in encoded]
    reuse = prefix_reuse and prefix_fits(handle.config, seqs, new_tokens=2 if answer_step else 0)
    split = split_prefix(seqs, handle.pad_token_id, reuse) if reuse else None
    if split is None or not split.prefix:
        return _plain_forward(handle, encoded, places, answer_step, adapter_enabled)
    dev = handle.device
    memo = memo if memo is not None else PrefixMemo()
    with _adapter_state(handle, adapter_enabled), recording(handle.model, places) as acts:
        def run_prefix() -> tuple[Any, dict[Place, torch.Tensor]]:
            out = handle.model(input_ids=torch.tensor([split.prefix], device=dev), use_cache=True, logits_to_keep=1)
            return out.cache, dict(acts)

        key = (tuple(split.prefix), tuple(places), adapter_enabled, id(handle.model))
        prefix_cache, prefix_acts = memo.get(key, run_prefix)
        mask, positions = split.mask.to(dev), split.positions.to(dev)
        out = handle.model(input_ids=split.suffix_ids.to(dev), attention_mask=mask, position_ids=positions,
                           cache=repeat_cache(prefix_cache, len(seqs)), use_cache=True, logits_to_keep=1)
        suffix_acts = dict(acts)
        if not answer_step:
            return Forward(encoded, suffix_acts, split.width, None, prefix_acts, len(split.prefix))
        next_ids = out.logits[:, -1].argmax(-1)
        handle.model(input_ids=next_ids[:, None], attention_mask=torch.cat([mask, torch.ones_like(mask[:, :1])], 1),
                     position_ids=positions[:, -1:] + 1, cache=out.cache, use_cache=True, logits_to_keep=1)
        step_acts = dict(acts)
    joined = {p: torch.cat([suffix_acts[p], step_acts[p]], dim=1) for p in places}
    return Forward(encoded, joined, split.width, next_ids.tolist(), prefix_acts, len(split.prefix))


def _plain_forward(handle: ModelHandle, encoded: list[Encoded], places: Sequence[Place], answer_step: bool,
                   adapter_enabled: bool) -> Forward:
    """The plain left-padded batch (no shared prefix)."""
    batch = left_pad([e.ids for e in encoded], handle.pad_token_id).to(handle.device)
    with _adapter_state(handle, adapter_enabled), recording(handle.model, places) as acts:
        out = handle.model(**batch.model_inputs(), use_cache=answer_step, logits_to_keep=1)
        prompt_acts = dict(acts)
        if not answer_step:
            return Forward(encoded, prompt_acts, batch.width, None)
        next_ids = out.logits[:, -1].argmax(-1)
        lengths = torch.tensor(batch.lengths, device=handle.device)
        handle.model(input_ids=next_ids[:, None], attention_mask=torch.cat([batch.attention_mask, torch.ones_like(next_ids)[:, None]], 1),
                     position_ids=lengths[:, None], cache=out.cache, use_cache=True, logits_to_keep=1)
        step_acts = dict(acts)
    joined = {p: torch.cat([prompt_acts[p], step_acts[p]], dim=1) for p in places}
    return Forward(encoded, joined, batch.width, next_ids.tolist())


def positions_of(enc: Encoded, kinds: Sequence[str]) -> dict[str, list[int]]:
    """Token indices of each position kind in one prompt (`answer_first` is the appended token)."""
    n = len(enc.ids)
    table = {"p_last": [enc.p_tokens[-1]], "final": [n - 1], "answer_first": [n], "p_tokens": list(enc.p_tokens),
             "all": list(range(n))}
    return {k: table[k] for k in kinds}


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True)
class CaptureSpec:
    """What to capture, recorded in the store's store.json."""

    places: tuple[str, ...]
    positions: tuple[str, ...] = ("p_last", "final", "answer_first")
    dtype: str = "float16"
    batch_size: int = 8
    """Prompts per forward (with prefix reuse: see PREFIX_ROWS)."""
    shard_records: int = 128
    prefix_reuse: bool = True
    """Share each batch's common token prefix (computed once); not recorded in store.json: like
    the batch size it changes activations only to float rounding."""


def capture(handle: ModelHandle, prompts: Sequence[CapturePrompt], spec: CaptureSpec, folder: Path,
            adapter_enabled: bool = True, extra_info: dict[str, Any] | None = None, progress: bool = True,
            nnsight: NnsightEngine | None = None) -> ActivationStore:
    """Capture `prompts` into the store at `folder` (resuming a partial one) and open it; through
    nnsight traces when `nnsight` is given (recorded in store.json as `engine`)."""
    check_positions(spec.positions)
    places = [Place.parse(p) for p in spec.places]
    info = {"model": handle.provenance(), "adapter_enabled": adapter_enabled, "places": [str(p) for p in places],
            "positions": list(spec.positions), "dtype": spec.dtype, "n_layers": handle.n_layers, "d_model": handle.d_model,
            "n_records": len(prompts), "processing": "raw HF modules, no weight processing",
            **({"engine": "nnsight", "remote": bool(nnsight.remote)} if nnsight else {}), **(extra_info or {})}
    writer = StoreWriter(folder, info, spec.shard_records)
    answer_step = "answer_first" in spec.positions
    reuse = spec.prefix_reuse and nnsight is None
    memo = PrefixMemo()
    bar = tqdm(total=len(prompts), initial=min(writer.done, len(prompts)), desc=f"capture {handle.name}", unit="prompt", disable=not progress)
    # One shard at a time (a resumed store starts at a shard boundary): with prefix reuse its
    # prompts run in token order, then go to the writer in input order.
    for start in range(writer.done, len(prompts), spec.shard_records):
        chunk = prompts[start : start + spec.shard_records]
        encoded = [encode(handle, p) for p in chunk]
        groups = shard_batches([e.ids for e in encoded], spec.batch_size, reuse)
        done: list[tuple[dict[str, Any], dict[str, torch.Tensor]] | None] = [None] * len(chunk)
        for group in groups:
            fw = forward(handle, [encoded[k] for k in group], places, answer_step, adapter_enabled, nnsight, prefix_reuse=reuse, memo=memo)
            for row, k in enumerate(group):
                done[k] = _record(handle, fw, row, start + k, chunk[k], places, spec.positions, writer.dtype)
            bar.update(len(group))
        for record, vectors in done:
            writer.add(record, vectors)
    writer.flush()
    bar.close()
    return ActivationStore.open(folder)


PREFIX_ROWS = 4
"""With prefix reuse a batch holds up to PREFIX_ROWS × batch_size rows (the KV cache of the prefix
is copied to each row), as long as its suffix grid holds no more tokens than batch_size whole
prompts of the shard would: rows of one prefix are short suffixes, so a plain batch's compute and
activations hold several times more of them (small forwards run GEMMs far below the CPU's rate)."""


def reuse_batches(seqs: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """A shard's batches for shared-prefix forwards (`batching.prefix_batches`, sized as PREFIX_ROWS says)."""
    return prefix_batches(seqs, PREFIX_ROWS * batch_size, max_tokens=batch_size * max(len(s) for s in seqs))


def shard_batches(seqs: Sequence[Sequence[int]], batch_size: int, prefix_reuse: bool) -> list[list[int]]:
    """A shard's batches (indices into `seqs`): `reuse_batches` with prefix reuse, else plain runs
    of `batch_size` in input order."""
    if prefix_reuse:
        return reuse_batches(seqs, batch_size)
    return [list(range(k, min(k + batch_size, len(seqs)))) for k in range(0, len(seqs), batch_size)]


def _record(handle: ModelHandle, fw: Forward, row: int, index: int, prompt: CapturePrompt, places: Sequence[Place],
            kinds: Sequence[str], dtype: torch.dtype) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """One prompt's record and its vectors (on the CPU at the storage dtype)."""
    enc = fw.encoded[row]
    pos = positions_of(enc, kinds)
    vectors = {tensor_key(place, kind): fw.gather(place, row, idx).to("cpu", dtype) for place in places for kind, idx in pos.items()}
    record = {"record": index, **prompt.record, "text": prompt.text, "tokens": token_strings(handle, enc.ids), "p_tokens": enc.p_tokens,
              "positions": pos}
    if fw.answer_ids is not None:
        record["answer_token_id"] = fw.answer_ids[row]
        record["answer_token"] = handle.tokenizer.decode([fw.answer_ids[row]])
    return record, vectors


def token_strings(handle: ModelHandle, ids: Sequence[int]) -> list[str]:
    """Each token as the text it stands for (readable in tables and the explorer)."""
    return [handle.tokenizer.decode([i]) for i in ids]

