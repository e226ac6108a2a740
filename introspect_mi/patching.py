"""Activation patching and attribution patching on HF models, through the place vocabulary.

A `Run` is one clean forward pass of a prompt: its final-position logits, the residual stream
entering every layer, its KV cache and any other places asked for. A `Cell` names what to
overwrite: one place at one or more target token positions, from the given source positions (a
cross-prompt alignment maps source tokens to target tokens). `patch` runs many (target, source,
cell) rows and returns a metric per row; `sweep` is the place × position grid of one pair;
`attribution` estimates that grid from one forward and one backward pass.

Speed, each step exact up to float rounding (`python -m experiments.benchmark patching`):
- a cell that cannot change the final position is answered from the clean run without a
  forward (`unchanged`): one whose source vectors are the target's own (self-patching, or the
  tokens of a prompt prefix the source and target share, recognised by their tokens, so the
  share does not depend on whether a CPU gave both prompts' prefix the same last bits), or one
  after the last attention layer at a token other than the final one;
- a batch holds cells of one target. A patch at token t cannot change tokens < t (causal
  attention), so the forward computes only the tokens from the batch's first patched one; their
  attention reads the clean run's keys and values of the tokens before, once for the whole batch
  (`_prefix_attention`: not copied per row, not expanded per query head; sliding windows count
  positions, so Gemma-3's local layers reuse the prefix too);
- below a row's patched layer nothing is recomputed either: the batch starts from the clean
  residual stream at its lowest start layer (fed as `inputs_embeds`, the blocks below swapped
  for pass-throughs), and a block that some rows have not reached runs only the others (rows join
  at their own layer), so a position × layer sweep batches all layers of a token together;
- logits only at the final position (`logits_to_keep=1`); with `read=place` the metric reads
  that place instead and the forward stops right after it (rows then all start at one layer).
`reuse_prefix=False` is the plain path, for checks: whole left-padded targets, the model's own
attention, every row from the batch's lowest start layer.

Numerics (CPU fp32): patching every position of resid_post[l] from a source recomputes the
layers above with the source run's shapes and attention and returns its logits bit for bit
(tested). A cell after a cached prefix goes through `_prefix_attention` and shorter matrices, and
cells batched together through taller ones; MKL picks kernels (and summation orders) by shape,
so these agree with one plain forward per cell to float rounding, not bitwise (~1e-7 on logits
of size 1 on the tiny test models; 7.6e-6 on the benchmark's SmolLM2 logit differences, effects
up to 0.94); the same holds between two loads of equal weights. On GPU, and in bf16, expect more.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from introspect_mi.batching import left_pad
from introspect_mi.hooks import Edit, editing, recording, site_of
from introspect_mi.places import Place, PlaceKind, resid_post

Metric = Callable[[torch.Tensor, Sequence["Run"]], torch.Tensor]
"""(values [rows, vocab] final-position logits in float32 — or [rows, d_model] with `read` —,
each row's target run) -> [rows, ...] one result per row."""


def n_layers(model: torch.nn.Module) -> int:
    return int(model.config.num_hidden_layers)


@dataclass(frozen=True, eq=False)
class Run:
    """One clean forward pass of a prompt (batch of one, no padding), kept for patching."""

    ids: tuple[int, ...]
    logits: torch.Tensor  # [vocab] at the final position, float32
    acts: Mapping[Place, torch.Tensor]  # place -> [tokens, d_model]
    kv: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None  # per layer ([kv_heads, tokens, head_dim] keys, values)

    def __len__(self) -> int:
        return len(self.ids)

    def act(self, place: Place) -> torch.Tensor:
        """[tokens, d_model] at `place` (resid_pre[l] is resid_post[l-1], the same tensor)."""
        if place.kind is PlaceKind.RESID_PRE and place.layer:
            place = resid_post(place.layer - 1)
        if place not in self.acts:
            raise ValueError(f"{place} was not recorded in this run: pass it to clean_run(..., places=[...])")
        return self.acts[place]

    def stream(self, layer: int) -> torch.Tensor:
        """The residual stream entering decoder block `layer` (`layer` = n_layers: leaving the last)."""
        return self.act(Place(PlaceKind.RESID_PRE, layer))


@torch.no_grad()
def clean_run(model: torch.nn.Module, ids: Sequence[int], places: Sequence[Place] = ()) -> Run:
    """Run a prompt once, recording the residual stream at every layer, the KV cache and `places`.

    The KV cache keeps every token at every layer, sliding-window layers included (a cache built
    without the config: the forward and its masks are the same, only the cache keeps more).
    """
    from transformers import DynamicCache

    streams = [Place(PlaceKind.RESID_PRE, 0)] + [resid_post(l) for l in range(n_layers(model))]
    want = list(dict.fromkeys([*streams, *(p for p in places if p.kind is not PlaceKind.RESID_PRE or not p.layer)]))
    device = next(model.parameters()).device
    x = torch.tensor([list(ids)], device=device)
    with recording(model, want) as acts:
        out = model(input_ids=x, cache=DynamicCache(), use_cache=True, logits_to_keep=1)
    kept = [layer for layer in getattr(out.cache, "layers", None) or [] if getattr(layer, "keys", None) is not None]
    kv: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = tuple((layer.keys[0], layer.values[0]) for layer in kept)
    if len(kv) != n_layers(model) or any(k.shape[-2] != len(ids) for k, _ in kv):  # a forward that kept no cache
        kv = None
    return Run(tuple(ids), out.logits[0, -1].float(), {p: a[0] for p, a in acts.items()}, kv)


@dataclass(frozen=True)
class Cell:
    """Overwrite `place` at target `positions` with the source's vectors at `source_positions`."""

    place: Place
    positions: tuple[int, ...]
    source_positions: tuple[int, ...] = field(default=())  # default: the same positions

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", tuple(int(p) for p in self.positions))
        object.__setattr__(self, "source_positions", tuple(int(p) for p in self.source_positions) or self.positions)
        if not self.positions or len(self.positions) != len(self.source_positions):
            raise ValueError(f"cell at {self.place}: give one source position per target position (got {self.positions}, {self.source_positions})")

    @classmethod
    def aligned(cls, place: Place, alignment: Sequence[tuple[int, int]]) -> Cell:
        """A cell over every aligned token: `alignment` holds (source, target) position pairs."""
        return cls(place, tuple(t for _, t in alignment), tuple(s for s, _ in alignment))


@dataclass(frozen=True)
class Patch:
    """One row of a patching batch."""

    target: Run
    source: Run
    cell: Cell


def align_ends(source_ids: Sequence[int], target_ids: Sequence[int]) -> list[tuple[int, int]]:
    """(source, target) position pairs for two prompts that differ in one span: their common
    prefix and common suffix align token for token; the differing middle aligns only when both
    middles have the same length."""
    n_s, n_t = len(source_ids), len(target_ids)
    pre = 0
    while pre < min(n_s, n_t) and source_ids[pre] == target_ids[pre]:
        pre += 1
    suf = 0
    while suf < min(n_s, n_t) - pre and source_ids[n_s - 1 - suf] == target_ids[n_t - 1 - suf]:
        suf += 1
    middle = n_s - pre - suf
    pairs = [(i, i) for i in range(pre)]
    if middle == n_t - pre - suf:
        pairs += [(pre + i, pre + i) for i in range(middle)]
    return pairs + [(n_s - suf + i, n_t - suf + i) for i in range(suf)]


# ---------------------------------------------------------------------------- metrics


def logit_diff(a: int, b: int) -> Metric:
    """logit[a] - logit[b]: e.g. a = the source's property answer token, b = the target's."""
    return lambda values, _targets: values[:, a] - values[:, b]


def prob(token: int) -> Metric:
    """Probability of `token` (e.g. the first token of the source's property value)."""
    return lambda values, _targets: torch.softmax(values, dim=-1)[:, token]


def kl_to_clean() -> Metric:
    """KL(clean target || patched) over next-token distributions, per row.

    Its gradient vanishes at the clean run (a minimum), so attribution patching can't estimate it."""

    def kl(values: torch.Tensor, targets: Sequence[Run]) -> torch.Tensor:
        clean = torch.stack([t.logits for t in targets]).to(values.device).log_softmax(-1)
        return (clean.exp() * (clean - values.log_softmax(-1))).sum(-1)

    return kl


# ---------------------------------------------------------------------------- the engine


def _start(place: Place, layers: int) -> int:
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
def _starting_at(model: torch.nn.Module, layer: int) -> Iterator[None]:
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
def _joining_at(model: torch.nn.Module, starts: Sequence[int], clean: Callable[[int], torch.Tensor]) -> Iterator[None]:
    """Row i of the batch enters the decoder at block starts[i]: blocks below every start are
    pass-throughs, a block that some rows have not reached runs only the others (`_rows_only`,
    the rest take `clean(l + 1)`, the clean stream leaving block l). `inputs_embeds` is the
    clean stream entering block min(starts)."""
    blocks, low, high = _block_list(model), min(starts), max(starts)
    swapped = []
    try:
        with _starting_at(model, low):
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
def _attending_to_prefix(model: torch.nn.Module, kv: Sequence[tuple[torch.Tensor, torch.Tensor]], start: int) -> Iterator[None]:
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
def _reading(model: torch.nn.Module, place: Place | None, out: list[torch.Tensor]) -> Iterator[None]:
    if place is None:
        yield
        return

    def read(x: torch.Tensor, _pos: torch.Tensor) -> torch.Tensor:
        out.append(x[:, -1])
        raise _Stop

    with editing(model, [(place, read)]):
        try:
            yield
        except _Stop:
            pass


_ROUNDING = {torch.float32: 1e-5, torch.float64: 1e-12}
"""Relative difference (vector norms) below which two runs' vectors at a shared prefix token are the
same activation computed through matrices of other shapes (other lengths); 1e-2 for half types."""


def copies_target(p: Patch) -> bool:
    """Whether a patch writes the target's own vectors, so changes nothing: bit for bit, or, at
    tokens of a prefix the source and the target share (same tokens, same positions), to float
    rounding: two prompts of other lengths go through matrices of other shapes, for which MKL may
    pick other kernels, so whether their common prefix gets the same last bits depends on the CPU."""
    c = p.cell
    src, tgt = p.source.act(c.place)[list(c.source_positions)], p.target.act(c.place)[list(c.positions)]
    if torch.equal(src, tgt):
        return True
    end = max(c.positions) + 1
    if c.source_positions != c.positions or p.source.ids[:end] != p.target.ids[:end]:
        return False
    tol = _ROUNDING.get(tgt.dtype, 1e-2)
    return float((src.double() - tgt.double()).norm()) <= tol * float(tgt.double().norm())


def unseen(p: Patch, layers: int) -> bool:
    """Whether the final position cannot see a patch: it sits after the last attention layer
    (attn_out, mlp_out, resid_post of the last block, final_norm), where each token is computed
    on its own, and not at the final token."""
    kind, last = p.cell.place.kind, len(p.target) - 1
    after_attention = kind is PlaceKind.FINAL_NORM or (
        kind in (PlaceKind.ATTN_OUT, PlaceKind.MLP_OUT, PlaceKind.RESID_POST) and p.cell.place.layer == layers - 1)
    return after_attention and last not in p.cell.positions


def unchanged(p: Patch, layers: int) -> bool:
    """Whether a patch leaves the target's final position (its logits, any `read`) as in the
    clean run: `copies_target` or `unseen`. Such cells are answered from the clean run."""
    return unseen(p, layers) or copies_target(p)


def _check(p: Patch, layers: int) -> None:
    c = p.cell
    if c.place.kind is not PlaceKind.FINAL_NORM and not 0 <= c.place.layer < layers:
        raise ValueError(f"{c.place}: the model has layers 0..{layers - 1}")
    if not all(0 <= t < len(p.target) for t in c.positions) or not all(0 <= s < len(p.source) for s in c.source_positions):
        raise ValueError(f"cell {c}: positions outside the target ({len(p.target)} tokens) or source ({len(p.source)} tokens)")


def _batches(rows: list[int], patches: Sequence[Patch], batch_size: int, batch_tokens: int, layers: int) -> list[list[int]]:
    """Batches of one target each, rows in order of (first patched token, start layer): a batch
    computes the tokens from its earliest patched one, each row from its own start layer. A batch
    holds at most `batch_size` rows and `batch_tokens` rows × computed tokens (one row at least)."""
    groups: dict[int, list[int]] = {}
    for i in rows:
        groups.setdefault(id(patches[i].target), []).append(i)
    out: list[list[int]] = []
    for group in groups.values():
        group.sort(key=lambda i: (min(patches[i].cell.positions), _start(patches[i].cell.place, layers)))
        batch: list[int] = []
        width = 0  # tokens computed: from the batch's first row's first patched token
        for i in group:
            if batch and (len(batch) >= batch_size or (len(batch) + 1) * width > batch_tokens):
                out.append(batch)
                batch = []
            if not batch:
                width = len(patches[i].target) - min(patches[i].cell.positions)
            batch.append(i)
        out.append(batch)
    return out


def _forward(model: torch.nn.Module, rows: Sequence[Patch], read: Place | None) -> torch.Tensor:
    """One batched forward over one target, row i patched with rows[i].cell: final-position logits
    or read values. Tokens before the first patched one come from the clean KV cache; row i
    joins at its own start layer, below which its stream is the clean one."""
    layers, target = n_layers(model), rows[0].target
    starts = [_start(p.cell.place, layers) for p in rows]
    if read is not None:  # the read hook sees the whole batch: every row from one layer
        starts = [min(*starts, _start(read, layers))] * len(rows)
    n = len(target)
    start = min(min(p.cell.positions) for p in rows) if target.kv is not None else 0
    width = n - start
    clean = lambda layer: target.stream(layer)[start:]  # noqa: E731
    embeds = clean(min(starts)).expand(len(rows), width, -1).contiguous()
    positions = torch.arange(start, n, device=embeds.device)[None]
    prefix = _attending_to_prefix(model, target.kv, start) if start else nullcontext()
    read_out: list[torch.Tensor] = []
    with _joining_at(model, starts, clean), prefix, editing(model, _patch_edits(model, rows, width, starts)), _reading(model, read, read_out):
        out = model(inputs_embeds=embeds, position_ids=positions, use_cache=False, logits_to_keep=1)
    return read_out[0] if read is not None else out.logits[:, -1]


def _padded_batches(rows: list[int], patches: Sequence[Patch], batch_size: int, batch_tokens: int, layers: int) -> list[list[int]]:
    """reuse_prefix=False: rows sorted by start layer (a batch runs from its lowest), at most
    `batch_size` rows and `batch_tokens` rows × padded width."""
    groups: dict[int, int] = {}
    for i in rows:
        groups.setdefault(id(patches[i].target), len(groups))
    out: list[list[int]] = []
    batch: list[int] = []
    width = 0  # the batch's padded width
    for i in sorted(rows, key=lambda i: (_start(patches[i].cell.place, layers), groups[id(patches[i].target)])):
        wider = max(width, len(patches[i].target))
        if batch and (len(batch) >= batch_size or (len(batch) + 1) * wider > batch_tokens):
            out.append(batch)
            batch, wider = [], len(patches[i].target)
        batch.append(i)
        width = wider
    return out + [batch] if batch else out


def _forward_padded(model: torch.nn.Module, rows: Sequence[Patch], read: Place | None, pad_id: int) -> torch.Tensor:
    """reuse_prefix=False: one forward over the whole (left-padded) targets from the batch's lowest
    start layer, fed the clean stream there."""
    layers = n_layers(model)
    start = min(_start(p.cell.place, layers) for p in rows)
    if read is not None:  # resid_post[start - 1] is the stream fed in: readable too
        start = min(start, _start(read, layers))
    batch = left_pad([list(p.target.ids) for p in rows], pad_id)
    width = batch.width
    like = rows[0].target.stream(start)
    embeds = like.new_zeros((len(rows), width, like.shape[-1]))
    for i, p in enumerate(rows):
        embeds[i, width - len(p.target) :] = p.target.stream(start)
    read_out: list[torch.Tensor] = []
    with _starting_at(model, start), editing(model, _patch_edits(model, rows, width)), _reading(model, read, read_out):
        out = model(inputs_embeds=embeds, attention_mask=batch.attention_mask.to(like.device),
                    position_ids=batch.position_ids.to(like.device), use_cache=False, logits_to_keep=1)
    return read_out[0] if read is not None else out.logits[:, -1]


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


def _patch_edits(model: torch.nn.Module, rows: Sequence[Patch], width: int, starts: Sequence[int] | None = None) -> list[tuple[Place, Edit]]:
    """One edit per place: write each row's source vectors at its columns (`patch_writes`). A
    place inside a block that runs only some rows (`_joining_at`) sees those rows alone."""

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


@torch.no_grad()
def patch(
    model: torch.nn.Module,
    patches: Sequence[Patch],
    metric: Metric,
    *,
    batch_size: int = 256,
    batch_tokens: int = 8192,
    pad_id: int = 0,
    read: Place | None = None,
    reuse_prefix: bool = True,
    skip_identical: bool = True,
) -> torch.Tensor:
    """The metric of each patched run, stacked in the order of `patches` ([n, ...] float32).

    A forward holds at most `batch_size` cells and `batch_tokens` cells × tokens computed (its
    attention scores grow with that times the prompt length). `read`: the metric gets that
    place's final-position activation [rows, d_model] instead of logits (the forward stops there). `reuse_prefix=False` recomputes every token from the
    first and every row from the batch's lowest start layer, with the model's own attention (for
    checks); `skip_identical=False` runs a forward even for cells that cannot change the final
    position (`unchanged`). `pad_id` only fills padded columns (masks come from lengths).
    """
    layers = n_layers(model)
    if not patches:
        return torch.empty(0)
    results: list[torch.Tensor | None] = [None] * len(patches)
    clean: dict[int, torch.Tensor] = {}
    todo = []
    for i, p in enumerate(patches):
        _check(p, layers)
        if skip_identical and unchanged(p, layers):
            t = p.target
            if id(t) not in clean:
                values = t.logits if read is None else t.act(read)[-1].float()
                clean[id(t)] = metric(values[None], [t])[0]
            results[i] = clean[id(t)]
        else:
            todo.append(i)
    group = _batches if reuse_prefix else _padded_batches
    batches = group(todo, patches, batch_size, batch_tokens, layers)
    for chunk in batches:
        rows = [patches[i] for i in chunk]
        values = _forward(model, rows, read) if reuse_prefix else _forward_padded(model, rows, read, pad_id)
        for i, v in zip(chunk, metric(values.float(), [p.target for p in rows])):
            results[i] = v
    return torch.stack([r.detach().cpu() for r in results])


def _aligned_positions(target: Run, source: Run, alignment: Sequence[tuple[int, int]] | None) -> dict[int, int]:
    """target position -> source position."""
    if alignment is None:
        if len(target) != len(source):
            raise ValueError(f"target has {len(target)} tokens, source {len(source)}: pass an alignment (e.g. align_ends)")
        return {t: t for t in range(len(target))}
    return {t: s for s, t in alignment}


def sweep(
    model: torch.nn.Module,
    target: Run,
    source: Run,
    places: Sequence[Place],
    metric: Metric,
    *,
    alignment: Sequence[tuple[int, int]] | None = None,
    **options: Any,
) -> torch.Tensor:
    """Patch each place at each target token alone: [len(places), len(target)], NaN where a
    target token has no aligned source token. `options` go to `patch`."""
    src = _aligned_positions(target, source, alignment)
    cells = [Cell(place, (t,), (s,)) for place in places for t, s in sorted(src.items())]
    values = patch(model, [Patch(target, source, c) for c in cells], metric, **options)
    grid = torch.full((len(places), len(target)), float("nan"))
    cols = torch.tensor(sorted(src))
    grid[:, cols] = values.reshape(len(places), len(cols))
    return grid


def attribution(
    model: torch.nn.Module,
    target: Run,
    source: Run,
    places: Sequence[Place],
    metric: Metric,
    *,
    alignment: Sequence[tuple[int, int]] | None = None,
) -> torch.Tensor:
    """Attribution patching: metric(patched) - metric(clean) ≈ grad · (source − target) at each
    place and target token, from one forward and one backward pass over the target.

    [len(places), len(target)] like `sweep`, NaN where a target token has no aligned source
    token. Exact when the metric is linear in the place (final_norm and a logit difference).
    """
    layers = n_layers(model)
    src = _aligned_positions(target, source, alignment)
    start = min(_start(p, layers) for p in places)  # resid_post[start - 1] is the leaf fed in
    dev = target.logits.device
    embeds = target.stream(start)[None].detach().clone().requires_grad_(True)
    captured: dict[Place, torch.Tensor] = {}

    def grab(place: Place) -> Edit:
        def edit(x: torch.Tensor, _pos: torch.Tensor) -> torch.Tensor:
            captured[place] = x
            return x
        return edit

    n = len(target)
    with torch.enable_grad(), _starting_at(model, start), editing(model, [(p, grab(p)) for p in places]):
        out = model(inputs_embeds=embeds, attention_mask=torch.ones((1, n), dtype=torch.long, device=dev),
                    position_ids=torch.arange(n, device=dev)[None], use_cache=False, logits_to_keep=1)
        value = metric(out.logits[:, -1].float(), [target]).sum()
        grads = torch.autograd.grad(value, [captured[p] for p in places], allow_unused=True)
    grid = torch.full((len(places), n), float("nan"))
    cols = sorted(src)
    for k, (place, grad) in enumerate(zip(places, grads)):
        diff = source.act(place)[[src[t] for t in cols]] - target.act(place)[cols]
        g = torch.zeros_like(diff) if grad is None else grad[0, cols]
        grid[k, cols] = (g.float() * diff.float()).sum(-1).cpu()
    return grid
