"""Patching benchmark: a full layer × position sweep of resid_post, batched engine vs one forward
per cell, and attribution patching against it.

Setup: two `animals` val items (`generate("val", 2, 0)`), their hypothetical prompts for one
property (`PromptConfig()`: two format demonstrations), source = item 0, target = item 1,
aligned with `align_ends` (shared prefix and suffix; the differing spans have other lengths, so
they stay unaligned). Metric: logit difference between the source's and the target's answer
tokens (the greedy first tokens of their clean runs). Grid: resid_post at every layer × every
aligned target token. Measured, in one process after a warm-up:

(a) engine: `sweep` with default settings; the cells whose source and target vectors are
    identical (the shared prefix) are answered from the clean run, the rest run batched;
(b) naive: one plain forward per cell (whole prompt, logits at every position, a hook writing
    the source vector), on `naive_n` cells spread evenly over the grid; its mean time per cell
    × the grid size is the extrapolated naive sweep. Its values are compared with (a)'s;
(c) the engine with one cell per forward and no identical-cell shortcut, on the same cells:
    what reusing the clean cache (layers below, tokens before, final-position logits) buys alone;
(d) attribution patching: one forward + backward; Pearson r with (a)'s exact effects, over
    every cell and over the cells (a) had to run.
"""

from __future__ import annotations

import argparse
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
    logit_diff,
    patch,
    sweep,
)
from introspect_mi.places import resid_post
from introspect_mi.prompts import PromptConfig, hypothetical_prompt
from introspect_mi.properties import get_property
from introspect_mi.tasks import get_task

TASK = "animals"
TARGET_SPEEDUP = 10.0


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
    cells_identical: int  # answered from the clean run
    batch_size: int
    engine_seconds: float
    engine_seconds_per_run_cell: float
    naive_cells: int
    naive_seconds_per_cell: float
    naive_sweep_seconds_extrapolated: float
    one_cell_engine_seconds_per_cell: float  # (c) on the naive cells
    naive_vs_engine_max_abs_diff: float
    speedup: float  # extrapolated naive sweep / engine sweep
    speedup_one_cell_engine: float  # naive / (c), per cell
    target_speedup_met: bool
    attribution_seconds: float
    pearson_all_cells: float
    pearson_run_cells: float
    effect_range: tuple[float, float]


def build_runs(handle: ModelHandle, prop_name: str) -> tuple[Run, Run, list[str]]:
    """(target, source, [target item id, source item id]): clean runs of the two hypothetical prompts."""
    task = get_task(TASK)
    items = task.generate("val", 2, 0)
    prop = get_property(prop_name)
    source, target = (hypothetical_prompt(handle.prompt_format, it, task.spec, prop, PromptConfig()).text for it in items)
    runs = [clean_run(handle.model, handle.prompt_format.encode(text)) for text in (target, source)]
    return runs[0], runs[1], [items[1].item_id, items[0].item_id]


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


def benchmark(model: str, prop: str, batch_size: int, naive_n: int) -> Result:
    """`measure` on a model loaded by name or path."""
    return measure(load(model), prop, batch_size, naive_n)


def measure(handle: ModelHandle, prop: str, batch_size: int, naive_n: int) -> Result:
    """(a)-(d) on a loaded model."""
    target, source, item_ids = build_runs(handle, prop)
    tok = handle.tokenizer
    src_answer, tgt_answer = int(source.logits.argmax()), int(target.logits.argmax())
    metric = logit_diff(src_answer, tgt_answer)
    pairs = align_ends(source.ids, target.ids)
    places = [resid_post(l) for l in range(handle.n_layers)]
    cols = [t for _, t in pairs]
    grid_cells = [Cell(p, (t,), (s,)) for p in places for s, t in pairs]
    step = max(1, len(grid_cells) // naive_n)
    sampled = grid_cells[step // 2 :: step][:naive_n]
    same = torch.tensor([torch.equal(source.act(c.place)[c.source_positions[0]], target.act(c.place)[c.positions[0]]) for c in grid_cells])

    # Warm-up: each path once.
    naive(handle, target, source, sampled[:1], metric)
    patch(handle.model, [Patch(target, source, sampled[-1])], metric, skip_identical=False)
    attribution(handle.model, target, source, places[-2:], metric, alignment=pairs)

    grid, engine_s = timed(handle, lambda: sweep(handle.model, target, source, places, metric, alignment=pairs,
                                                  batch_size=batch_size, pad_id=handle.pad_token_id))
    naive_values, naive_s = timed(handle, naive, handle, target, source, sampled, metric)
    _, one_cell_s = timed(handle, lambda: patch(handle.model, [Patch(target, source, c) for c in sampled], metric,
                                                 batch_size=1, skip_identical=False))
    estimate, attribution_s = timed(handle, lambda: attribution(handle.model, target, source, places, metric, alignment=pairs))

    engine_values = torch.stack([grid[c.place.layer, c.positions[0]] for c in sampled])
    clean = metric(target.logits[None], [target])[0].cpu()
    exact = (grid - clean)[:, cols].flatten()
    approx = estimate[:, cols].flatten()
    identical = int(same.sum())
    cells, run_cells = len(grid_cells), len(grid_cells) - identical
    naive_per_cell = naive_s / len(sampled)
    return Result(
        **machine(handle), property=prop, target_item=item_ids[0], source_item=item_ids[1],
        target_tokens=len(target), source_tokens=len(source), first_differing_token=next(i for i, (a, b) in enumerate(zip(target.ids, source.ids)) if a != b),
        source_answer=tok.decode([src_answer]), target_answer=tok.decode([tgt_answer]),
        layers=handle.n_layers, positions=len(cols), cells=cells, cells_run=run_cells, cells_identical=identical,
        batch_size=batch_size, engine_seconds=engine_s, engine_seconds_per_run_cell=engine_s / max(run_cells, 1),
        naive_cells=len(sampled), naive_seconds_per_cell=naive_per_cell, naive_sweep_seconds_extrapolated=naive_per_cell * cells,
        one_cell_engine_seconds_per_cell=one_cell_s / len(sampled),
        naive_vs_engine_max_abs_diff=float((naive_values - engine_values).abs().max()),
        speedup=naive_per_cell * cells / engine_s, speedup_one_cell_engine=naive_s / one_cell_s,
        target_speedup_met=naive_per_cell * cells / engine_s >= TARGET_SPEEDUP,
        attribution_seconds=attribution_s, pearson_all_cells=pearson(exact, approx), pearson_run_cells=pearson(exact[~same], approx[~same]),
        effect_range=(float(exact.min()), float(exact.max())),
    )


def report(r: Result) -> str:
    """The printed summary."""
    return "\n".join([
        f"patching benchmark: {r.model} on {r.device} ({r.dtype}, {r.torch_threads} torch threads, load {r.load_average:.1f}), "
        f"task {TASK} val, property {r.property}",
        f"  target {r.target_item} ({r.target_tokens} tokens), source {r.source_item} ({r.source_tokens} tokens): "
        f"{r.positions} aligned tokens, first differing token {r.first_differing_token}",
        f"  metric logit[{r.source_answer!r}] - logit[{r.target_answer!r}] (source's vs target's answer), effects {r.effect_range[0]:.2f}..{r.effect_range[1]:.2f}",
        f"  grid: resid_post × {r.layers} layers × {r.positions} tokens = {r.cells} cells "
        f"({r.cells_identical} with identical source and target vectors, {r.cells_run} run)",
        "",
        f"  {'method':44s} {'cells timed':>11s} {'s/cell':>9s} {'full sweep (s)':>15s}",
        f"  {'one plain forward per cell (naive)':44s} {r.naive_cells:11d} {r.naive_seconds_per_cell:9.3f} "
        f"{r.naive_sweep_seconds_extrapolated:15.0f}  (extrapolated from {r.naive_cells} cells)",
        f"  {'engine, one cell per forward, no shortcut':44s} {r.naive_cells:11d} {r.one_cell_engine_seconds_per_cell:9.3f} "
        f"{'':15s}  (clean-cache reuse alone: {r.speedup_one_cell_engine:.1f}x)",
        f"  {'engine, batched sweep (batch %d)' % r.batch_size:44s} {r.cells:11d} {r.engine_seconds / r.cells:9.4f} "
        f"{r.engine_seconds:15.1f}  ({r.engine_seconds_per_run_cell:.3f} s per cell run)",
        "",
        f"  speedup, full sweep batched vs one forward per cell: {r.speedup:.1f}x "
        f"(target >= {TARGET_SPEEDUP:.0f}x: {'met' if r.target_speedup_met else 'NOT met'})",
        f"  engine == naive on the {r.naive_cells} timed cells: max |difference| {r.naive_vs_engine_max_abs_diff:.2e}",
        f"  attribution patching: {r.attribution_seconds:.1f} s (one forward + backward); Pearson r with exact patching "
        f"{r.pearson_all_cells:.3f} over all {r.cells} cells, {r.pearson_run_cells:.3f} over the cells that differ",
    ])


def run(args: argparse.Namespace) -> None:
    result = benchmark(args.model, args.property, args.batch_size, args.naive_n)
    print(report(result))
    save_result("patching", result)


def add_parser(sub: Any) -> None:
    """Register the `patching` subcommand."""
    p = sub.add_parser("patching", help="layer × position patching sweep: batched engine vs one forward per cell; attribution patching")
    p.add_argument("--model", default="smollm2-135m-instruct", help="embedded name or checkpoint folder")
    p.add_argument("--property", default="second_character", help="property of the hypothetical question (the two items' answers differ for the default)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--naive-n", type=int, default=12, help="cells timed one plain forward each (spread over the grid)")
    p.set_defaults(run=run)
