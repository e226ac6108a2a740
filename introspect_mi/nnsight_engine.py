"""Capture and patching through nnsight traces that run unchanged on NDIF (`remote=True`).

The raw-hook engine (`capture.forward`, `patching.clean_run` / `patching.patch`) is the reference
and the fast path: it swaps modules and reuses KV caches, which needs the model in this process.
The functions here compute the same quantities with trace bodies that touch only envoys (reached
through `places.hf_site`, the one place → module mapping), tensors built before the trace and
saved values. So the very same function runs on a local `handle.nnsight()` and, with
`remote=True`, on a `nnsight.LanguageModel(<hub id>)` whose weights live on NDIF (`remote="local"`
is nnsight's serverless dry run of the remote path: the body is serialised and deserialised with
this project's modules hidden, as on the server).

Numerics: each forward is the one the raw engine runs with the same inputs (left-padded batch,
explicit masks and positions; capture's answer step through the first forward's KV cache), so
capture agrees bit for bit. Patching recomputes every token from the embeddings (no cache reuse,
no skipped layers), which equals the raw engine bit for bit when the raw engine runs the same
shapes (one cell per forward, `reuse_prefix=False`) and to float rounding otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import nnsight
import torch

from introspect_mi.batching import left_pad
from introspect_mi.patching import Metric, Patch, Run, unchanged
from introspect_mi.patching_forward import patch_writes
from introspect_mi.places import Place, PlaceKind, execution_order, nnsight_value, resid_post


@dataclass
class NnsightEngine:
    """An nnsight model and where its places live; `remote` goes to every trace/session."""

    lm: Any
    model_type: str
    n_layers: int
    pad_id: int
    device: torch.device
    """Where inputs go: the model's device; the CPU for a remote model (its local copy is on meta)."""
    remote: bool | str = False

    @classmethod
    def of(cls, handle: Any, remote: bool | str = False) -> NnsightEngine:
        """The engine over a loaded `ModelHandle` (its nnsight view: the very same weights)."""
        device = torch.device("cpu") if handle.device.type == "meta" else handle.device
        return cls(handle.nnsight(), handle.config.model_type, handle.n_layers, handle.pad_token_id, device, remote)

    @torch.no_grad()
    def forward(self, sequences: list[list[int]], places: Sequence[Place], answer_step: bool) -> tuple[dict[Place, torch.Tensor], list[int] | None]:
        """`capture.forward`'s quantities: place → [batch, width(+1), d] on the left-padded grid,
        and with `answer_step` each row's greedy first answer token, its activations appended
        (one cached step in the same session: on NDIF the cache never leaves the server)."""
        order = sorted(places, key=execution_order)
        kind = self.model_type
        batch = left_pad(sequences, self.pad_id).to(self.device)
        step_mask = torch.cat([batch.attention_mask, torch.ones_like(batch.attention_mask[:, :1])], 1)
        step_positions = torch.tensor(batch.lengths, device=self.device)[:, None]
        lm = self.lm
        # The session body is compiled from its source lines: one line per statement.
        with lm.session(remote=self.remote):
            with lm.trace(**batch.model_inputs(), use_cache=answer_step, logits_to_keep=1):
                first = nnsight.save([nnsight_value(lm, p, kind) for p in order])
                out = lm.output
            if answer_step:
                next_ids = out.logits[:, -1].argmax(-1)
                with lm.trace(input_ids=next_ids[:, None], attention_mask=step_mask, position_ids=step_positions, cache=out.cache, use_cache=True, logits_to_keep=1):
                    second = nnsight.save([nnsight_value(lm, p, kind) for p in order])
                answer = nnsight.save(next_ids)
        if not answer_step:
            return dict(zip(order, first)), None
        return {p: torch.cat([a, b], dim=1) for p, a, b in zip(order, first, second)}, answer.tolist()

    @torch.no_grad()
    def final_logits(self, sequences: list[list[int]], batch_size: int = 16) -> torch.Tensor:
        """[n, vocab] float32 next-token logits after each sequence (left-padded batches)."""
        out = []
        for start in range(0, len(sequences), batch_size):
            batch = left_pad(sequences[start : start + batch_size], self.pad_id).to(self.device)
            with self.lm.trace(**batch.model_inputs(), use_cache=False, logits_to_keep=1, remote=self.remote):
                logits = nnsight.save(self.lm.output.logits[:, -1])
            out.append(logits.float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def clean_run(self, ids: Sequence[int], places: Sequence[Place] = ()) -> Run:
        """`patching.clean_run` without a KV cache: the stream entering every layer, `places` and
        the final-position logits of one prompt."""
        streams = [Place(PlaceKind.RESID_PRE, 0)] + [resid_post(l) for l in range(self.n_layers)]
        want = sorted(dict.fromkeys([*streams, *(p for p in places if p.kind is not PlaceKind.RESID_PRE or not p.layer)]), key=execution_order)
        lm, kind = self.lm, self.model_type
        x = torch.tensor([list(ids)], device=self.device)
        with lm.trace(input_ids=x, use_cache=False, logits_to_keep=1, remote=self.remote):
            acts = nnsight.save([nnsight_value(lm, p, kind)[0] for p in want])
            logits = nnsight.save(lm.output.logits[0, -1])
        return Run(tuple(ids), logits.float(), dict(zip(want, acts)), None)

    @torch.no_grad()
    def patch(self, patches: Sequence[Patch], metric: Metric, *, batch_size: int = 32, read: Place | None = None,
              skip_identical: bool = True) -> torch.Tensor:
        """`patching.patch` computed by full forwards: each batch is one trace that writes every
        row's source vectors at its place and columns and reads the final-position logits (or
        `read`'s final-position activation). Rows run in the order given."""
        results: list[torch.Tensor | None] = [None] * len(patches)
        todo = []
        for i, p in enumerate(patches):
            if skip_identical and unchanged(p, self.n_layers):
                t = p.target
                values = t.logits if read is None else t.act(read)[-1].float()
                results[i] = metric(values[None], [t])[0]
            else:
                todo.append(i)
        for k in range(0, len(todo), batch_size):
            chunk = todo[k : k + batch_size]
            rows = [patches[i] for i in chunk]
            values = metric(self._patched(rows, read).float(), [p.target for p in rows])
            for i, v in zip(chunk, values):
                results[i] = v
        if not patches:
            return torch.empty(0)
        return torch.stack([r.detach().cpu() for r in results])

    def _patched(self, rows: Sequence[Patch], read: Place | None) -> torch.Tensor:
        """One trace over a left-padded batch of targets, row i patched with rows[i].cell."""
        batch = left_pad([list(p.target.ids) for p in rows], self.pad_id).to(self.device)
        writes = patch_writes(rows, batch.width)
        steps = [(place, "write") for place in writes] + ([(read, "read")] if read is not None else [])
        steps.sort(key=lambda s: (execution_order(s[0]), s[1] == "read"))  # forward order; a read sees the write
        plan = [(place, step, *(writes[place][:2] if step == "write" else ((), ())),
                 writes[place][2].to(self.device) if step == "write" else None) for place, step in steps]
        lm, kind = self.lm, self.model_type
        with lm.trace(**batch.model_inputs(), use_cache=False, logits_to_keep=1, remote=self.remote):
            got = nnsight.save([])
            for place, step, r, c, v in plan:
                value = nnsight_value(lm, place, kind)
                if step == "write":
                    value[r, c] = v.to(value.dtype)
                else:
                    got.append(value[:, -1])
            got.append(lm.output.logits[:, -1])
        return got[0] if read is not None else got[-1]

