"""Patching benchmark: a full layer × position sweep of resid_post, batched engine vs one forward
per cell, and attribution patching against it.

The pair is fixed: task `animals`, val split, seed 0 (`generate("val", 2, 0)`); source =
animals-val-0, target = animals-val-1, their hypothetical prompts for one property (default
second_character; `PromptConfig()`: two format demonstrations), aligned with `align_ends` (shared
prefix and suffix; the differing spans have other lengths, so they stay unaligned). On SmolLM2
the prompts have 278 and 276 tokens and share their first 227, so 227 × 30 of the 266 × 30
cells copy the target's own vectors. Metric: logit difference between the source's and the
target's answer tokens (the greedy first tokens of their clean runs). Grid: resid_post at every
layer × every aligned target token. Measured, in one process after a warm-up:

(a) engine: `sweep` with default settings; the cells that cannot change the final position
    (`patching.unchanged`: the shared prefix, and the last layer at tokens before the final
    one) are answered from the clean run, the rest run batched;
(b) naive: one plain forward per cell (whole prompt, logits at every position, a hook writing
    the source vector), on `naive_n` cells spread evenly over the grid, half timed before (a)
    and half after (the machine's load drifts); its mean time per cell × the grid size is the
    extrapolated naive sweep. Its values are compared with (a)'s;
(c) the engine with one cell per forward and no shortcut, on the same cells: what reusing the
    clean run (layers below, tokens before, final-position logits) buys a cell alone;
(d) the engine with no shortcut at all: every layer of `prefix_n` tokens of the shared prefix,
    spread evenly over it, run batched; their time per token × the prefix's tokens + (a) is the
    sweep the engine would take if no cell were answered from the clean run;
(e) attribution patching: one forward + backward; Pearson r with (a)'s exact effects, over
    every cell and over the cells (a) had to run.

Ratios: full sweep = extrapolated naive sweep / (a); per cell run = naive s/cell / ((a) / cells
run); no shortcut = extrapolated naive sweep / (d).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

import torch

from experiments.bench_common import Machine, machine, save_result, timed
from introspect_mi.hooks import editing
from introspect_mi.models import ModelHandle, load
from introspect_mi.patching import (
    Cell,
    Patch,
    Run,
    align_ends,
    attribution,
    clean_run,
    copies_target,
    logit_diff,
    patch,
    sweep,
    unseen,
)
from introspect_mi.places import resid_post
from introspect_mi.prompts import PromptConfig, hypothetical_prompt
from introspect_mi.properties import get_property
from introspect_mi.tasks import get_task

TASK = "animals"
SOURCE_ITEM, TARGET_ITEM = "animals-val-0", "animals-val-1"
"""The fixed pair: the first two items of `generate("val", 2, 0)`."""
TARGET_SPEEDUP = 20.0


@dataclass
class Result(Machine):
    """What the benchmark prints and writes to runs/benchmarks/patching.json."""

    property: str
    target_item: str
    source_item: str
    target_tokens: int
    source_tokens: int
    first_differing_token: int
    source_answer: str
    target_answer: str
    layers: int
    positions: int  # aligned target tokens
    cells: int
    cells_run: int  # cells the engine ran a forward for
    cells_identical: int  # answered from the clean run: shared prefix + unseen
    cells_shared_prefix: int  # source vectors = the target's own (a shared prefix)
    cells_unseen: int  # after the last attention layer, at a token before the final one
    shortcut_share: float  # cells_identical / cells
    batch_size: int
    batch_tokens: int
    engine_seconds: float
    engine_seconds_per_run_cell: float
    naive_cells: int
    naive_seconds_per_cell: float
    naive_sweep_seconds_extrapolated: float
    one_cell_engine_seconds_per_cell: float  # (c) on the naive cells
    naive_vs_engine_max_abs_diff: float
    speedup: float  # full sweep: extrapolated naive sweep / engine sweep
    speedup_per_run_cell: float  # naive s/cell / (engine sweep / cells run)
    speedup_one_cell_engine: float  # naive / (c), per cell
    target_speedup_met: bool
    no_shortcut_tokens_timed: int  # (d): prefix tokens run at every layer
    no_shortcut_seconds_extrapolated: float  # (d): the sweep with every cell run
    speedup_no_shortcut: float  # extrapolated naive sweep / (d)
    attribution_seconds: float
    pearson_all_cells: float
    pearson_run_cells: float
    effect_range: tuple[float, float]
    load_average_start: float  # 1-minute load when the timed part began (load_average: when it ended)


def build_runs(handle: ModelHandle, prop_name: str) -> tuple[Run, Run, list[str]]:
    """(target, source, [target item id, source item id]): clean runs of the fixed pair's hypothetical prompts."""
    task = get_task(TASK)
    items = {it.item_id: it for it in task.generate("val", 2, 0)}
    if set(items) != {SOURCE_ITEM, TARGET_ITEM}:
        raise RuntimeError(f"the {TASK} task no longer generates {SOURCE_ITEM} and {TARGET_ITEM} first (got {sorted(items)}): the benchmark's pair changed")
    prop = get_property(prop_name)
    texts = [hypothetical_prompt(handle.prompt_format, items[i], task.spec, prop, PromptConfig()).text for i in (TARGET_ITEM, SOURCE_ITEM)]
    target, source = (clean_run(handle.model, handle.prompt_format.encode(text)) for text in texts)
    return target, source, [TARGET_ITEM, SOURCE_ITEM]


@torch.no_grad()
def naive(handle: ModelHandle, target: Run, source: Run, cells: list[Cell], metric: Any) -> torch.Tensor:
    """One plain forward per cell: the common slow path."""
    ids = torch.tensor([target.ids], device=handle.device)
    out = []
    for cell in cells:
        vectors = source.act(cell.place)[list(cell.source_positions)]

        def write(x: torch.Tensor, _pos: torch.Tensor, _c: Cell = cell, _v: torch.Tensor = vectors) -> torch.Tensor:
            x = x.clone()
            x[0, list(_c.positions)] = _v
            return x

        with editing(handle.model, [(cell.place, write)]):
            logits = handle.model(ids).logits[:, -1].float()
        out.append(metric(logits, [target])[0].cpu())
    return torch.stack(out)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])


def benchmark(model: str, prop: str, batch_size: int, naive_n: int, prefix_n: int = 4, batch_tokens: int = 8192) -> Result:
    """`measure` on a model loaded by name or path."""
    return measure(load(model), prop, batch_size, naive_n, prefix_n, batch_tokens)


def measure(handle: ModelHandle, prop: str, batch_size: int, naive_n: int, prefix_n: int = 4, batch_tokens: int = 8192) -> Result:
    """(a)-(e) on a loaded model."""
    target, source, item_ids = build_runs(handle, prop)
    tok, layers = handle.tokenizer, handle.n_layers
    src_answer, tgt_answer = int(source.logits.argmax()), int(target.logits.argmax())
    metric = logit_diff(src_answer, tgt_answer)
    pairs = align_ends(source.ids, target.ids)
    places = [resid_post(l) for l in range(layers)]
    cols = [t for _, t in pairs]
    grid_cells = [Cell(p, (t,), (s,)) for p in places for s, t in pairs]
    step = max(1, len(grid_cells) // naive_n)
    sampled = grid_cells[step // 2 :: step][:naive_n]
    half = len(sampled) // 2
    patches = [Patch(target, source, c) for c in grid_cells]
    same = torch.tensor([copies_target(p) for p in patches])
    hidden = torch.tensor([unseen(p, layers) and not copies_target(p) for p in patches])
    prefix = [t for t, all_same in zip(cols, same.reshape(layers, len(pairs)).all(0)) if all_same]  # tokens of the shared prefix
    timed_prefix = prefix[len(prefix) // (2 * prefix_n) :: max(1, len(prefix) // prefix_n)][:prefix_n]  # segment midpoints
    source_of = {t: s for s, t in pairs}
    no_shortcut = [Cell(p, (t,), (source_of[t],)) for t in timed_prefix for p in places]

    # Warm-up: each path once.
    naive(handle, target, source, sampled[:1], metric)
    patch(handle.model, [Patch(target, source, sampled[-1])], metric, skip_identical=False)
    attribution(handle.model, target, source, places[-2:], metric, alignment=pairs)

    load_start = os.getloadavg()[0]
    naive_first, naive_s1 = timed(handle, naive, handle, target, source, sampled[:half], metric)
    grid, engine_s = timed(handle, lambda: sweep(handle.model, target, source, places, metric, alignment=pairs,
                                                  batch_size=batch_size, batch_tokens=batch_tokens, pad_id=handle.pad_token_id))
    naive_last, naive_s2 = timed(handle, naive, handle, target, source, sampled[half:], metric)
    _, one_cell_s = timed(handle, lambda: patch(handle.model, [Patch(target, source, c) for c in sampled], metric,
                                                 batch_size=1, skip_identical=False))
    _, prefix_s = timed(handle, lambda: patch(handle.model, [Patch(target, source, c) for c in no_shortcut], metric,
                                               batch_size=batch_size, batch_tokens=batch_tokens, skip_identical=False))
    estimate, attribution_s = timed(handle, lambda: attribution(handle.model, target, source, places, metric, alignment=pairs))

    naive_values = torch.cat([naive_first, naive_last])
    engine_values = torch.stack([grid[c.place.layer, c.positions[0]] for c in sampled])
    clean = metric(target.logits[None], [target])[0].cpu()
    exact = (grid - clean)[:, cols].flatten()
    approx = estimate[:, cols].flatten()
    shortcut = same | hidden
    identical = int(shortcut.sum())
    cells, run_cells = len(grid_cells), len(grid_cells) - identical
    naive_per_cell = (naive_s1 + naive_s2) / len(sampled)
    naive_sweep = naive_per_cell * cells
    no_shortcut_s = engine_s + prefix_s / max(len(timed_prefix), 1) * len(prefix)
    return Result(
        **machine(handle), property=prop, target_item=item_ids[0], source_item=item_ids[1],
        target_tokens=len(target), source_tokens=len(source), first_differing_token=next(i for i, (a, b) in enumerate(zip(target.ids, source.ids)) if a != b),
        source_answer=tok.decode([src_answer]), target_answer=tok.decode([tgt_answer]),
        layers=layers, positions=len(cols), cells=cells, cells_run=run_cells, cells_identical=identical,
        cells_shared_prefix=int(same.sum()), cells_unseen=int(hidden.sum()), shortcut_share=identical / cells,
        batch_size=batch_size, batch_tokens=batch_tokens, engine_seconds=engine_s, engine_seconds_per_run_cell=engine_s / max(run_cells, 1),
        naive_cells=len(sampled), naive_seconds_per_cell=naive_per_cell, naive_sweep_seconds_extrapolated=naive_sweep,
        one_cell_engine_seconds_per_cell=one_cell_s / len(sampled),
        naive_vs_engine_max_abs_diff=float((naive_values - engine_values).abs().max()),
        speedup=naive_sweep / engine_s, speedup_per_run_cell=naive_per_cell * max(run_cells, 1) / engine_s,
        speedup_one_cell_engine=(naive_s1 + naive_s2) / one_cell_s,
        target_speedup_met=naive_sweep / engine_s >= TARGET_SPEEDUP,
        no_shortcut_tokens_timed=len(timed_prefix), no_shortcut_seconds_extrapolated=no_shortcut_s, speedup_no_shortcut=naive_sweep / no_shortcut_s,
        attribution_seconds=attribution_s, pearson_all_cells=pearson(exact, approx), pearson_run_cells=pearson(exact[~shortcut], approx[~shortcut]),
        effect_range=(float(exact.min()), float(exact.max())), load_average_start=load_start,
    )


def report(r: Result) -> str:
    """The printed summary."""
    return "\n".join([
        f"patching benchmark: {r.model} on {r.device} ({r.dtype}, {r.torch_threads} torch threads, load {r.load_average_start:.1f} → {r.load_average:.1f}), "
        f"task {TASK} val, property {r.property}",
        f"  pair (fixed): target {r.target_item} ({r.target_tokens} tokens), source {r.source_item} ({r.source_tokens} tokens): "
        f"{r.positions} aligned tokens, first differing token {r.first_differing_token}",
        f"  metric logit[{r.source_answer!r}] - logit[{r.target_answer!r}] (source's vs target's answer), effects {r.effect_range[0]:.2f}..{r.effect_range[1]:.2f}",
        f"  grid: resid_post × {r.layers} layers × {r.positions} tokens = {r.cells} cells; answered from the clean run: "
        f"{r.cells_identical} ({100 * r.shortcut_share:.1f}%: {r.cells_shared_prefix} shared prefix, {r.cells_unseen} last layer before the final token); "
        f"{r.cells_run} run",
        "",
        f"  {'method':44s} {'cells timed':>11s} {'s/cell':>9s} {'full sweep (s)':>15s}",
        f"  {'one plain forward per cell (naive)':44s} {r.naive_cells:11d} {r.naive_seconds_per_cell:9.3f} "
        f"{r.naive_sweep_seconds_extrapolated:15.0f}  (extrapolated from {r.naive_cells} cells)",
        f"  {'engine, one cell per forward, no shortcut':44s} {r.naive_cells:11d} {r.one_cell_engine_seconds_per_cell:9.3f} "
        f"{'':15s}  (clean-run reuse alone: {r.speedup_one_cell_engine:.1f}x)",
        f"  {'engine, batched, no shortcut at all':44s} {r.no_shortcut_tokens_timed * r.layers:11d} {'':9s} "
        f"{r.no_shortcut_seconds_extrapolated:15.0f}  (the shared prefix's cells run too: {r.no_shortcut_tokens_timed} of its tokens timed)",
        f"  {'engine, batched sweep (%d cells, %d tokens)' % (r.batch_size, r.batch_tokens):44s} {r.cells:11d} {r.engine_seconds / r.cells:9.4f} "
        f"{r.engine_seconds:15.1f}  ({r.engine_seconds_per_run_cell:.3f} s per cell run)",
        "",
        f"  speedup, full sweep vs one forward per cell: {r.speedup:.1f}x "
        f"(target >= {TARGET_SPEEDUP:.0f}x: {'met' if r.target_speedup_met else 'NOT met'}); "
        f"per cell run: {r.speedup_per_run_cell:.1f}x; with no shortcut at all: {r.speedup_no_shortcut:.1f}x",
        f"  engine == naive on the {r.naive_cells} timed cells: max |difference| {r.naive_vs_engine_max_abs_diff:.2e}",
        f"  attribution patching: {r.attribution_seconds:.1f} s (one forward + backward); Pearson r with exact patching "
        f"{r.pearson_all_cells:.3f} over all {r.cells} cells, {r.pearson_run_cells:.3f} over the cells run",
    ])


def run(args: argparse.Namespace) -> None:
    result = benchmark(args.model, args.property, args.batch_size, args.naive_n, args.prefix_n, args.batch_tokens)
    print(report(result))
    save_result("patching", result)


def add_parser(sub: Any) -> None:
    """Register the `patching` subcommand."""
    p = sub.add_parser("patching", help="layer × position patching sweep on a fixed pair: batched engine vs one forward per cell; attribution patching")
    p.add_argument("--model", default="smollm2-135m-instruct", help="embedded name or checkpoint folder")
    p.add_argument("--property", default="second_character", help="property of the hypothetical question (the two items' answers differ for the default)")
    p.add_argument("--batch-size", type=int, default=256, help="most cells per forward (patching.patch's default)")
    p.add_argument("--batch-tokens", type=int, default=8192, help="most cells × tokens computed per forward (patching.patch's default)")
    p.add_argument("--naive-n", type=int, default=12, help="cells timed one plain forward each (spread over the grid)")
    p.add_argument("--prefix-n", type=int, default=4, help="shared-prefix tokens whose every layer is run for the no-shortcut sweep")
    p.set_defaults(run=run)
