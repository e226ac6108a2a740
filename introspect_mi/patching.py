"""Activation patching and attribution patching on HF models, through the place vocabulary.

A `Run` is one clean forward pass of a prompt: its final-position logits, the residual stream
entering every layer, its KV cache and any other places asked for. A `Cell` names what to
overwrite: one place at one or more target token positions, from the given source positions (a
cross-prompt alignment maps source tokens to target tokens). `patch` runs many (target, source,
cell) rows and returns a metric per row; `sweep` is the place × position grid of one pair;
`attribution` estimates that grid from one forward and one backward pass.

Speed, each step exact up to float rounding (`python -m experiments.benchmark patching`; the
batched forward lives in `introspect_mi.patching_forward`):
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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from introspect_mi.hooks import Edit, editing, recording
from introspect_mi.patching_forward import forward_from_prefix, forward_padded, n_layers, start_layer, starting_at
from introspect_mi.places import Place, PlaceKind, resid_post

Metric = Callable[[torch.Tensor, Sequence["Run"]], torch.Tensor]
"""(values [rows, vocab] final-position logits in float32 — or [rows, d_model] with `read` —,
each row's target run) -> [rows, ...] one result per row."""


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
        group.sort(key=lambda i: (min(patches[i].cell.positions), start_layer(patches[i].cell.place, layers)))
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


def _padded_batches(rows: list[int], patches: Sequence[Patch], batch_size: int, batch_tokens: int, layers: int) -> list[list[int]]:
    """reuse_prefix=False: rows sorted by start layer (a batch runs from its lowest), at most
    `batch_size` rows and `batch_tokens` rows × padded width."""
    groups: dict[int, int] = {}
    for i in rows:
        groups.setdefault(id(patches[i].target), len(groups))
    out: list[list[int]] = []
    batch: list[int] = []
    width = 0  # the batch's padded width
    for i in sorted(rows, key=lambda i: (start_layer(patches[i].cell.place, layers), groups[id(patches[i].target)])):
        wider = max(width, len(patches[i].target))
        if batch and (len(batch) >= batch_size or (len(batch) + 1) * wider > batch_tokens):
            out.append(batch)
            batch, wider = [], len(patches[i].target)
        batch.append(i)
        width = wider
    return out + [batch] if batch else out


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
        values = forward_from_prefix(model, rows, read) if reuse_prefix else forward_padded(model, rows, read, pad_id)
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
    start = min(start_layer(p, layers) for p in places)  # resid_post[start - 1] is the leaf fed in
    dev = target.logits.device
    embeds = target.stream(start)[None].detach().clone().requires_grad_(True)
    captured: dict[Place, torch.Tensor] = {}

    def grab(place: Place) -> Edit:
        def edit(x: torch.Tensor, _pos: torch.Tensor) -> torch.Tensor:
            captured[place] = x
            return x
        return edit

    n = len(target)
    with torch.enable_grad(), starting_at(model, start), editing(model, [(p, grab(p)) for p in places]):
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
