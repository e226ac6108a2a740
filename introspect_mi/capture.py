"""Capture activations on object-level and hypothetical prompts into an activation store.

`forward` is the one instrumented forward pass: left-padded batch (masks from lengths, position
ids counting real tokens), raw HF hooks through the place vocabulary (the reference engine the
bridge and nnsight are tested against), and optionally one more step that appends the model's
greedy first answer token (the `answer_first` position). `capture` streams its results into an
`actstore.StoreWriter`, resuming after the last complete shard. Given an `NnsightEngine`, the
same forward runs as nnsight traces (locally, or on NDIF with `remote=True`), bit for bit equal.

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
from introspect_mi.batching import left_pad
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
    """Activations of one batch: place → [batch, width(+1), d] on the left-padded grid."""

    encoded: list[Encoded]
    acts: dict[Place, torch.Tensor]
    width: int
    answer_ids: list[int] | None  # each row's greedy first answer token (with answer_first)

    def column(self, row: int, token_index: int) -> int:
        """Grid column of a row's token index (the appended answer token is index len(ids))."""
        return self.width - len(self.encoded[row].ids) + token_index


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
            adapter_enabled: bool = True, nnsight: NnsightEngine | None = None) -> Forward:
    """Run one left-padded batch, recording `places`; with `answer_step`, append each row's greedy
    first answer token and record it too (a cached one-token step, same masks and positions).
    Raw hooks, or the same forward as nnsight traces when `nnsight` is given."""
    if nnsight is not None:
        with _adapter_state(handle, adapter_enabled):
            acts, answer_ids = nnsight.forward([e.ids for e in encoded], places, answer_step)
        return Forward(encoded, acts, max(len(e.ids) for e in encoded), answer_ids)
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
    shard_records: int = 128


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
    todo = prompts[writer.done :]
    answer_step = "answer_first" in spec.positions
    bar = tqdm(total=len(prompts), initial=min(writer.done, len(prompts)), desc=f"capture {handle.name}", unit="prompt", disable=not progress)
    for start, chunk in zip(range(writer.done, len(prompts), spec.batch_size), batches(todo, spec.batch_size)):
        encoded = [encode(handle, p) for p in chunk]
        fw = forward(handle, encoded, places, answer_step, adapter_enabled, nnsight)
        for row, (prompt, enc) in enumerate(zip(chunk, encoded)):
            pos = positions_of(enc, spec.positions)
            vectors = {}
            for place in places:
                grid = fw.acts[place][row]
                for kind, idx in pos.items():
                    vectors[tensor_key(place, kind)] = grid[[fw.column(row, i) for i in idx]]
            record = {"record": start + row, **prompt.record, "text": prompt.text, "tokens": token_strings(handle, enc.ids), "p_tokens": enc.p_tokens,
                      "positions": pos}
            if fw.answer_ids is not None:
                record["answer_token_id"] = fw.answer_ids[row]
                record["answer_token"] = handle.tokenizer.decode([fw.answer_ids[row]])
            writer.add(record, vectors)
        bar.update(len(chunk))
    writer.flush()
    bar.close()
    return ActivationStore.open(folder)


def token_strings(handle: ModelHandle, ids: Sequence[int]) -> list[str]:
    """Each token as the text it stands for (readable in tables and the explorer)."""
    return [handle.tokenizer.decode([i]) for i in ids]

