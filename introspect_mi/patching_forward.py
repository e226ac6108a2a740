"""The batched forward of patched runs (`introspect_mi.patching`'s engine).

One forward runs many patched copies of one target (`forward_from_prefix`): rows enter the decoder
at their own start layers (`joining_at`: the blocks below are pass-throughs, a block some rows have
not reached runs only the others), the tokens before the batch's first patched one are not
recomputed (`attending_to_prefix`: attention reads the clean run's keys and values once for the
batch), each row's source vectors are written at its columns (`patch_edits`), and with a `read`
place the forward stops right after it (`reading`). `forward_padded` is the plain path for checks.
The numerics of each step are in `introspect_mi.patching`'s docstring.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import torch

from introspect_mi.batching import left_pad
from introspect_mi.hooks import Edit, editing, site_of
from introspect_mi.places import Place, PlaceKind

if TYPE_CHECKING:
    from introspect_mi.patching import Patch


def n_layers(model: torch.nn.Module) -> int:
    return int(model.config.num_hidden_layers)


def start_layer(place: Place, layers: int) -> int:
    """First decoder block a change at `place` has to run through."""
    if place.kind is PlaceKind.FINAL_NORM:
        return layers
    return place.layer + 1 if place.kind is PlaceKind.RESID_POST else place.layer


class _PassThrough(torch.nn.Module):
    """Stands in for a decoder block below the start layer: the stream goes through untouched."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


def _block_list(model: torch.nn.Module) -> torch.nn.ModuleList:
    return model.get_submodule(site_of(model, Place(PlaceKind.RESID_PRE, 0)).path.rsplit(".", 1)[0])


@contextmanager
def starting_at(model: torch.nn.Module, layer: int) -> Iterator[None]:
    """Swap blocks [0, layer) for pass-throughs, so `inputs_embeds` enters block `layer` as is."""
    blocks = _block_list(model)
    kept = [blocks[i] for i in range(layer)]
    try:
        for i in range(layer):
            blocks[i] = _PassThrough()
        yield
    finally:
        for i, block in enumerate(kept):
            blocks[i] = block


def _rows_only(block: torch.nn.Module, active: torch.Tensor, clean_out: torch.Tensor) -> Callable[..., Any]:
    """A forward for `block` that runs only the batch rows `active`; the other rows leave it with
    `clean_out` ([tokens, d_model]: their stream is still the clean run's there). Hooks on the
    block itself see the whole batch, hooks inside it only the active rows."""
    forward = type(block).forward

    def run(*args: Any, **kwargs: Any) -> Any:
        x = args[0] if args else kwargs["hidden_states"]
        rows = x.shape[0]

        def pick(v: Any) -> Any:  # per-row tensors (an eager attention mask) follow the rows
            if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == rows:
                return v.index_select(0, active)
            if isinstance(v, tuple) and any(isinstance(u, torch.Tensor) and u.dim() and u.shape[0] == rows > 1 for u in v):
                raise NotImplementedError(f"{type(block).__name__}: a per-row tuple argument; patch with reuse_prefix=False")
            return v

        args = (x.index_select(0, active), *(pick(a) for a in args[1:])) if args else ()
        kwargs = {k: pick(v) for k, v in kwargs.items()}
        if not args:
            kwargs["hidden_states"] = x.index_select(0, active)
        out = forward(block, *args, **kwargs)
        y = out[0] if isinstance(out, tuple) else out
        full = clean_out.to(y.dtype).expand(rows, *clean_out.shape).clone()
        full[active] = y
        return (full, *out[1:]) if isinstance(out, tuple) else full

    return run


@contextmanager
def joining_at(model: torch.nn.Module, starts: Sequence[int], clean: Callable[[int], torch.Tensor]) -> Iterator[None]:
    """Row i of the batch enters the decoder at block starts[i]: blocks below every start are
    pass-throughs, a block that some rows have not reached runs only the others (`_rows_only`,
    the rest take `clean(l + 1)`, the clean stream leaving block l). `inputs_embeds` is the
    clean stream entering block min(starts)."""
    blocks, low, high = _block_list(model), min(starts), max(starts)
    swapped = []
    try:
        with starting_at(model, low):
            for layer in range(low, high):
                active = torch.tensor([i for i, s in enumerate(starts) if s <= layer], device=clean(layer + 1).device)
                blocks[layer].forward = _rows_only(blocks[layer], active, clean(layer + 1))
                swapped.append(blocks[layer])
            yield
    finally:
        for block in swapped:
            del block.forward


# A patch at token t cannot change tokens before t (causal attention): their keys and values are the
# clean run's. The batch's forward computes only tokens from its first patched one (`start`); each
# attention layer attends to the clean keys and values of the tokens before it, kept once for the
# whole batch (not copied per row, not expanded per query head), through this attention function.
_PREFIX_ATTENTION = "introspect_mi_clean_prefix"
_prefix: list[tuple[Sequence[tuple[torch.Tensor, torch.Tensor]], int]] = []


def _prefix_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                      sliding_window: int | None = None, softcap: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Eager attention of the suffix queries [rows, heads, W, head_dim] over the clean prefix's keys
    and values (shared by every row) and the suffix's own (causal; a sliding window counts
    positions, so no padding can shift it)."""
    if module.training or kwargs.get("s_aux") is not None:
        raise NotImplementedError(f"{type(module).__name__}: the clean-prefix attention needs eval mode and no attention sinks — patch with reuse_prefix=False")
    kv, start = _prefix[-1]
    lo = 0 if sliding_window is None else max(0, start - sliding_window + 1)
    keys, values = (t[:, lo:start] for t in kv[module.layer_idx])  # [kv_heads, n, head_dim]
    rows, heads, width, dim = query.shape
    kv_heads, n = key.shape[1], start - lo
    group = heads // kv_heads  # query head h reads key/value head h // group
    q = (query * scaling).reshape(rows, kv_heads, group * width, dim)
    pre = torch.matmul(q.transpose(0, 1).reshape(kv_heads, rows * group * width, dim), keys.transpose(1, 2))
    own = torch.matmul(q, key.transpose(2, 3))
    if softcap is not None:
        pre, own = (torch.tanh(x / softcap) * softcap for x in (pre, own))
    q_pos = torch.arange(start, start + width, device=query.device)[:, None]  # [W, 1] query positions
    hidden = q_pos.T > q_pos  # [W, W] later suffix tokens
    if sliding_window is not None:  # and keys a window or more before the query
        hidden |= q_pos.T <= q_pos - sliding_window
        far = torch.arange(lo, start, device=query.device)[None] <= q_pos - sliding_window
        pre.view(kv_heads, rows, group, width, n).masked_fill_(far, float("-inf"))
    own.view(rows, kv_heads, group, width, width).masked_fill_(hidden, float("-inf"))
    scores = torch.cat([pre.view(kv_heads, rows, group * width, n), own.transpose(0, 1)], -1)
    probs = torch.softmax(scores, -1, dtype=torch.float32).to(query.dtype)
    out_pre = torch.matmul(probs[..., :n].reshape(kv_heads, rows * group * width, n), values)
    out_own = torch.matmul(probs[..., n:].transpose(0, 1), value)
    out = out_pre.view(kv_heads, rows, group, width, dim).permute(1, 3, 0, 2, 4) + out_own.view(rows, kv_heads, group, width, dim).permute(0, 3, 1, 2, 4)
    return out.reshape(rows, width, heads, dim), None


@contextmanager
def attending_to_prefix(model: torch.nn.Module, kv: Sequence[tuple[torch.Tensor, torch.Tensor]], start: int) -> Iterator[None]:
    """While inside, the model's attention layers run `_prefix_attention` over `kv`'s tokens before
    `start` (the attention-mask builder skips an implementation it does not know: no mask is built)."""
    from transformers import AttentionInterface, PretrainedConfig

    AttentionInterface.register(_PREFIX_ATTENTION, _prefix_attention)
    configs = {id(m.config): m.config for m in model.modules() if isinstance(getattr(m, "config", None), PretrainedConfig)}
    saved = {k: c._attn_implementation for k, c in configs.items()}
    _prefix.append((kv, start))
    try:
        for c in configs.values():
            c._attn_implementation = _PREFIX_ATTENTION
        yield
    finally:
        _prefix.pop()
        for k, c in configs.items():
            c._attn_implementation = saved[k]


class _Stop(Exception):
    """Raised by the read hook: the metric has what it needs, the rest of the forward is skipped."""


@contextmanager
def reading(model: torch.nn.Module, place: Place | None, out: list[torch.Tensor]) -> Iterator[None]:
    """Append `place`'s activation ([rows, tokens, d_model]) to `out` and skip the rest of the forward."""
    if place is None:
        yield
        return

    def read(x: torch.Tensor, _pos: torch.Tensor) -> torch.Tensor:
        out.append(x)
        raise _Stop

    with editing(model, [(place, read)]):
        try:
            yield
        except _Stop:
            pass


def forward_from_prefix(model: torch.nn.Module, rows: Sequence[Patch], read: Place | None) -> torch.Tensor:
    """One batched forward over one target, row i patched with rows[i].cell: final-position logits
    or read values. Tokens before the first patched one come from the clean KV cache; row i
    joins at its own start layer, below which its stream is the clean one."""
    layers, target = n_layers(model), rows[0].target
    starts = [start_layer(p.cell.place, layers) for p in rows]
    if read is not None:  # the read hook sees the whole batch: every row from one layer
        starts = [min(*starts, start_layer(read, layers))] * len(rows)
    n = len(target)
    start = min(min(p.cell.positions) for p in rows) if target.kv is not None else 0
    width = n - start
    clean = lambda layer: target.stream(layer)[start:]  # noqa: E731
    embeds = clean(min(starts)).expand(len(rows), width, -1).contiguous()
    positions = torch.arange(start, n, device=embeds.device)[None]
    prefix = attending_to_prefix(model, target.kv, start) if start else nullcontext()
    read_out: list[torch.Tensor] = []
    with joining_at(model, starts, clean), prefix, editing(model, patch_edits(model, rows, width, starts)), reading(model, read, read_out):
        out = model(inputs_embeds=embeds, position_ids=positions, use_cache=False, logits_to_keep=1)
    return read_out[0][:, -1] if read is not None else out.logits[:, -1]


def forward_padded(model: torch.nn.Module, rows: Sequence[Patch], read: Place | None, pad_id: int) -> torch.Tensor:
    """reuse_prefix=False: one forward over the whole (left-padded) targets from the batch's lowest
    start layer, fed the clean stream there."""
    layers = n_layers(model)
    start = min(start_layer(p.cell.place, layers) for p in rows)
    if read is not None:  # resid_post[start - 1] is the stream fed in: readable too
        start = min(start, start_layer(read, layers))
    batch = left_pad([list(p.target.ids) for p in rows], pad_id)
    width = batch.width
    like = rows[0].target.stream(start)
    embeds = like.new_zeros((len(rows), width, like.shape[-1]))
    for i, p in enumerate(rows):
        embeds[i, width - len(p.target) :] = p.target.stream(start)
    read_out: list[torch.Tensor] = []
    with starting_at(model, start), editing(model, patch_edits(model, rows, width)), reading(model, read, read_out):
        out = model(inputs_embeds=embeds, attention_mask=batch.attention_mask.to(like.device),
                    position_ids=batch.position_ids.to(like.device), use_cache=False, logits_to_keep=1)
    return read_out[0][:, -1] if read is not None else out.logits[:, -1]


def patch_writes(rows: Sequence[Patch], width: int) -> dict[Place, tuple[list[int], list[int], torch.Tensor]]:
    """Per place, the (batch rows, columns, source vectors) that row i's cell writes into a
    left-padded batch: token j of a target with n tokens sits at column width - n + j."""
    by_place: dict[Place, tuple[list[int], list[int], list[torch.Tensor]]] = {}
    for i, p in enumerate(rows):
        r, c, v = by_place.setdefault(p.cell.place, ([], [], []))
        r += [i] * len(p.cell.positions)
        c += [width - len(p.target) + j for j in p.cell.positions]
        v.append(p.source.act(p.cell.place)[list(p.cell.source_positions)])
    return {place: (r, c, torch.cat(v)) for place, (r, c, v) in by_place.items()}


def patch_edits(model: torch.nn.Module, rows: Sequence[Patch], width: int, starts: Sequence[int] | None = None) -> list[tuple[Place, Edit]]:
    """One edit per place: write each row's source vectors at its columns (`patch_writes`). A
    place inside a block that runs only some rows (`joining_at`) sees those rows alone."""

    def write(r: list[int], c: list[int], v: torch.Tensor) -> Edit:
        def edit(x: torch.Tensor, _pos: torch.Tensor) -> torch.Tensor:
            x = x.clone()
            x[r, c] = v.to(x.dtype)
            return x
        return edit

    edits = []
    for place, (r, c, v) in patch_writes(rows, width).items():
        if starts is not None and place.kind in (PlaceKind.ATTN_OUT, PlaceKind.MLP_OUT):
            active = [i for i, s in enumerate(starts) if s <= place.layer]
            r = [active.index(i) for i in r]
        edits.append((place, write(r, c, v)))
    return edits
