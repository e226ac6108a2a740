"""Activation patching and attribution patching on HF models, through the place vocabulary.

A `Run` is one clean forward pass of a prompt: its final-position logits, the residual stream
entering every layer, its KV cache and any other places asked for. A `Cell` names what to
overwrite: one place at one or more target token positions, from the given source positions (a
cross-prompt alignment maps source tokens to target tokens). `patch` runs many (target, source,
cell) rows and returns a metric per row; `sweep` is the place × position grid of one pair;
`attribution` estimates that grid from one forward and one backward pass.

Speed, each step exact (PITFALLS.md "Speed"):
- row i of a batch patches cell i; rows may hold different targets (left-padded);
- the clean cache is reused both ways. Below a batch's first patched layer nothing is
  recomputed: the forward starts from the clean residual stream there (fed as `inputs_embeds`;
  the lower decoder blocks are swapped for pass-throughs while it runs). Before its first
  patched position nothing is recomputed either: a patch at token t cannot change tokens < t
  (causal attention), so their keys and values come from the clean KV cache;
- logits only at the final position (`logits_to_keep=1`); with `read=place` the metric reads
  that place instead and the forward stops right after it;
- a cell whose source vectors equal the target's own (a shared prompt prefix, self-patching)
  changes nothing and is answered from the clean run without a forward.

Numerics (CPU fp32): patching every position of resid_post[l] from a source recomputes the
layers above with the source run's shapes and returns its logits bit for bit (tested); a cell run
alone through the clean cache recomputes a shorter suffix (at least MIN_SUFFIX tokens), which on
this CPU also reproduced the clean logits bit for bit, but other shapes may take other kernels on
another CPU, so that is tested to float rounding. Cells batched together go through taller matrices, and MKL picks
kernels (and summation orders) by shape, so batched and one-at-a-time results agree to float
rounding (~1e-7 on logits of size 1), not always bitwise; the same holds between two loads of
equal weights. On GPU, and in bf16, expect more.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from math import sqrt
from typing import Any

import torch

from introspect_mi.batching import Batch, left_pad
from introspect_mi.hooks import Edit, editing, recording, site_of
from introspect_mi.inference import sliding_window
from introspect_mi.places import Place, PlaceKind, resid_post

MIN_SUFFIX = 16
"""Tokens a forward recomputes at least: BLAS switches kernels for matrices of very few rows,
whose last bits then differ from the clean run's; 16 rows keep the engine bit-equal to a plain
forward on CPU fp32 (tested) at a negligible cost."""

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

    The KV cache is kept unless a sliding-attention window is shorter than the prompt (the
    cache then holds only the window, so patching recomputes from the first token).
    """
    streams = [Place(PlaceKind.RESID_PRE, 0)] + [resid_post(l) for l in range(n_layers(model))]
    want = list(dict.fromkeys([*streams, *(p for p in places if p.kind is not PlaceKind.RESID_PRE or not p.layer)]))
    device = next(model.parameters()).device
    x = torch.tensor([list(ids)], device=device)
    with recording(model, want) as acts:
        out = model(input_ids=x, use_cache=True, logits_to_keep=1)
    window = sliding_window(model.config)
    kv = None
    if window is None or len(ids) < window:
        kv = tuple((layer.keys[0], layer.values[0]) for layer in out.cache.layers)
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


@contextmanager
def _starting_at(model: torch.nn.Module, layer: int) -> Iterator[None]:
    """Swap blocks [0, layer) for pass-throughs, so `inputs_embeds` enters block `layer` as is."""
    path = site_of(model, Place(PlaceKind.RESID_PRE, 0)).path.rsplit(".", 1)[0]
    blocks = model.get_submodule(path)
    kept = [blocks[i] for i in range(layer)]
    try:
        for i in range(layer):
            blocks[i] = _PassThrough()
        yield
    finally:
        for i, block in enumerate(kept):
            blocks[i] = block


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


def copies_target(p: Patch) -> bool:
    """Whether a patch writes the target's own vectors (a shared prefix): it changes nothing."""
    c = p.cell
    return torch.equal(p.source.act(c.place)[list(c.source_positions)], p.target.act(c.place)[list(c.positions)])


def _check(p: Patch, layers: int) -> None:
    c = p.cell
    if c.place.kind is not PlaceKind.FINAL_NORM and not 0 <= c.place.layer < layers:
        raise ValueError(f"{c.place}: the model has layers 0..{layers - 1}")
    if not all(0 <= t < len(p.target) for t in c.positions) or not all(0 <= s < len(p.source) for s in c.source_positions):
        raise ValueError(f"cell {c}: positions outside the target ({len(p.target)} tokens) or source ({len(p.source)} tokens)")


def _order(rows: list[int], patches: Sequence[Patch], batch_size: int, layers: int) -> list[int]:
    """Rows sorted into tiles of similar (start layer, first position): a batch costs about
    rows × (layers above its lowest start) × (tokens after its earliest position), so tiles are
    shaped a × b = batch_size with a/b = layers/tokens."""
    groups: dict[int, int] = {}
    for i in rows:
        groups.setdefault(id(patches[i].target), len(groups))

    def key(i: int) -> tuple[int, ...]:
        p = patches[i]
        start, first = _start(p.cell.place, layers), min(p.cell.positions)
        tile_l = max(1, round(sqrt(batch_size * layers / len(p.target))))
        tile_t = max(1, batch_size // tile_l)
        return (groups[id(p.target)], start // tile_l, first // tile_t, start, first)

    return sorted(rows, key=key)


def _split(model: torch.nn.Module, rows: Sequence[Patch], reuse_prefix: bool, pad_id: int) -> tuple[list[int], Batch]:
    """Each row's prefix taken from its target's KV cache (tokens before that target's earliest
    patched position in the batch, at least MIN_SUFFIX recomputed) and the left-padded rest."""
    firsts: dict[int, int] = {}
    for p in rows:
        firsts[id(p.target)] = min(firsts.get(id(p.target), len(p.target) - MIN_SUFFIX), *p.cell.positions)
    if not reuse_prefix or any(p.target.kv is None for p in rows):
        firsts = dict.fromkeys(firsts, 0)
    pre = [max(firsts[id(p.target)], 0) for p in rows]
    suffix = left_pad([list(p.target.ids[k:]) for p, k in zip(rows, pre)], pad_id)
    window = sliding_window(model.config)
    if max(pre) and window is not None and max(pre) + suffix.width > window:
        # Sliding-window masks count columns, and padding between prefix and suffix adds some.
        return _split(model, rows, False, pad_id)
    return pre, suffix


def _prefix_cache(model: torch.nn.Module, rows: Sequence[Patch], pre: list[int]) -> Any:
    """A KV cache holding each row's prefix, left-padded (padding masked out)."""
    from transformers import DynamicCache

    width = max(pre)
    kv = []
    for layer in range(n_layers(model)):
        like = rows[0].target.kv[layer][0]
        keys = like.new_zeros((len(rows), like.shape[0], width, like.shape[2]))
        values = torch.zeros_like(keys)
        for i, (p, k) in enumerate(zip(rows, pre)):
            keys[i, :, width - k :] = p.target.kv[layer][0][:, :k]
            values[i, :, width - k :] = p.target.kv[layer][1][:, :k]
        kv.append((keys, values))
    return DynamicCache(ddp_cache_data=kv, config=model.config)


def _forward(model: torch.nn.Module, rows: Sequence[Patch], read: Place | None, pad_id: int, reuse_prefix: bool) -> torch.Tensor:
    """One batched forward: row i patched with rows[i].cell; final-position logits or read values."""
    layers = n_layers(model)
    start = min(_start(p.cell.place, layers) for p in rows)
    if read is not None:  # resid_post[start - 1] is the stream fed in: readable too
        start = min(start, _start(read, layers))
    pre, suffix = _split(model, rows, reuse_prefix, pad_id)
    width, P = suffix.width, max(pre)
    like = rows[0].target.stream(start)
    embeds = like.new_zeros((len(rows), width, like.shape[-1]))
    for i, (p, k) in enumerate(zip(rows, pre)):
        embeds[i, width - len(p.target) + k :] = p.target.stream(start)[k:]
    prefix_mask = torch.tensor([[0] * (P - k) + [1] * k for k in pre], dtype=torch.long).reshape(len(rows), P)
    cache = _prefix_cache(model, rows, pre) if P else None
    read_out: list[torch.Tensor] = []
    with _starting_at(model, start), editing(model, _patch_edits(rows, width)), _reading(model, read, read_out):
        out = model(
            inputs_embeds=embeds, attention_mask=torch.cat([prefix_mask, suffix.attention_mask], 1).to(like.device),
            position_ids=(suffix.position_ids + torch.tensor(pre)[:, None]).to(like.device),
            cache=cache, use_cache=cache is not None, logits_to_keep=1,
        )
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


def _patch_edits(rows: Sequence[Patch], width: int) -> list[tuple[Place, Edit]]:
    """One edit per place: write each row's source vectors at its columns (`patch_writes`)."""

    def write(r: list[int], c: list[int], v: torch.Tensor) -> Edit:
        def edit(x: torch.Tensor, _pos: torch.Tensor) -> torch.Tensor:
            x = x.clone()
            x[r, c] = v.to(x.dtype)
            return x
        return edit

    return [(place, write(r, c, v)) for place, (r, c, v) in patch_writes(rows, width).items()]


@torch.no_grad()
def patch(
    model: torch.nn.Module,
    patches: Sequence[Patch],
    metric: Metric,
    *,
    batch_size: int = 32,
    pad_id: int = 0,
    read: Place | None = None,
    reuse_prefix: bool = True,
    skip_identical: bool = True,
) -> torch.Tensor:
    """The metric of each patched run, stacked in the order of `patches` ([n, ...] float32).

    `read`: the metric gets that place's final-position activation [rows, d_model] instead of
    logits (the forward stops there). `reuse_prefix=False` recomputes every token from the
    first (for checks); `skip_identical=False` runs a forward even for cells that copy the
    target's own vectors. `pad_id` only fills padded columns (masks come from lengths).
    """
    layers = n_layers(model)
    if not patches:
        return torch.empty(0)
    results: list[torch.Tensor | None] = [None] * len(patches)
    clean: dict[int, torch.Tensor] = {}
    todo = []
    for i, p in enumerate(patches):
        _check(p, layers)
        if skip_identical and copies_target(p):
            t = p.target
            if id(t) not in clean:
                values = t.logits if read is None else t.act(read)[-1].float()
                clean[id(t)] = metric(values[None], [t])[0]
            results[i] = clean[id(t)]
        else:
            todo.append(i)
    order = _order(todo, patches, batch_size, layers)
    for k in range(0, len(order), batch_size):
        chunk = order[k : k + batch_size]
        rows = [patches[i] for i in chunk]
        values = metric(_forward(model, rows, read, pad_id, reuse_prefix).float(), [p.target for p in rows])
        for i, v in zip(chunk, values):
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
