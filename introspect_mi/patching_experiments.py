"""Patching experiments on token-aligned pairs of items (issue 7, A–C; issue 15 point 2): which
states carry the property decision into the self-prediction.

Pairs (`patching_pairs`): source P_a and target P_b of one task × property, values differing. The
metric is the logit difference logit[v_a] - logit[v_b] at the hypothetical prompt's final token (v:
the first token of an item's property value, with which a correct self-prediction starts),
normalised so that 0 is the clean target run and 1 the clean source run; where those two differ by
less than `min_gap` the normalised value is NaN and only the raw change is kept.

A. hypothetical → hypothetical: P_a's hypothetical run into P_b's, per layer and position group:
   P's tokens, the question's tokens (after P, before the final token) and the final token, each
   group one multi-position cell (at layer 0, patching P is swapping the input tokens). Attribution
   patching estimates the full layer × token grid from one backward pass; it is checked against
   exact patching (group cells of every pair, single cells on `exact_pairs` pairs).
B. object → hypothetical across contexts: P_a's object-level run at P's tokens into P_b's
   hypothetical run at the aligned tokens (P_a object → P_a hypothetical by the capture alignment;
   the pair's hypothetical prompts align token for token).
C. object answer → hypothetical: the object run's final token (where the answer is about to be
   produced) into the hypothetical final token.
B and C have a control with the target's own object run as the source: what bringing in
object-level context does by itself, P unchanged. Summaries: `patching_summary`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from introspect_mi.models import ModelHandle
from introspect_mi.nnsight_engine import NnsightEngine
from introspect_mi.patching import Cell, Patch, Run, attribution, clean_run, logit_diff, patch, unchanged
from introspect_mi.patching_forward import n_layers
from introspect_mi.patching_pairs import ItemPrompts, Pair, first_difference, group_of, position_groups, token_aligned
from introspect_mi.places import resid_post

EXPERIMENTS = {
    "A": "hypothetical → hypothetical",
    "B": "object (P tokens) → hypothetical",
    "B-control": "own object (P tokens) → hypothetical",
    "C": "object final → hypothetical final",
    "C-control": "own object final → hypothetical final",
}


def normalise(value: float, clean_target: float, clean_source: float, min_gap: float) -> float:
    """(value - clean target) / (clean source - clean target); NaN when that gap is 0 or below `min_gap`."""
    gap = clean_source - clean_target
    return float("nan") if gap == 0 or abs(gap) < min_gap or not np.isfinite(gap) else (value - clean_target) / gap


def group_cells(layer: int, groups: Mapping[str, Sequence[int]], to_source: Mapping[int, int], start: int = 0) -> dict[str, Cell]:
    """One multi-position cell per group at resid_post[layer]: the group's target tokens from
    `start` on that have a source partner (earlier tokens equal the source's already)."""
    cells = {}
    for name, members in groups.items():
        keep = [t for t in members if t >= start and t in to_source]
        if keep:
            cells[name] = Cell(resid_post(layer), tuple(keep), tuple(to_source[t] for t in keep))
    return cells


class Runs:
    """Clean runs of items' prompts, each made once (by `make`: ids → Run)."""

    def __init__(self, make: Callable[[Sequence[int]], Run]) -> None:
        self.make = make
        self._runs: dict[tuple[str, str, str], Run] = {}

    def hypothetical(self, item: ItemPrompts) -> Run:
        return self._get(("hypothetical", item.item_id, item.property), item.hyp_ids)

    def object(self, item: ItemPrompts) -> Run:
        return self._get(("object", item.item_id, ""), item.object_ids)

    def __len__(self) -> int:
        return len(self._runs)

    def _get(self, key: tuple[str, str, str], ids: Sequence[int]) -> Run:
        if key not in self._runs:
            self._runs[key] = self.make(ids)
        return self._runs[key]


@dataclass
class PatchingTables:
    """What `run_pairs` measures (one row per pair / patched cell / grid cell / checked cell) and what
    it cost (`cost`: counts of clean runs, patched cells that needed a forward, cells answered from a
    clean run, attribution passes, exact single cells)."""

    pairs: pd.DataFrame
    cells: pd.DataFrame
    grid: pd.DataFrame
    exact: pd.DataFrame
    cost: dict[str, int] = field(default_factory=dict)


def _spread(items: Sequence, n: int) -> list:
    """`n` items spread evenly over a sequence (all of them when it is shorter)."""
    if n >= len(items):
        return list(items)
    return [items[int(k)] for k in np.linspace(0, len(items) - 1, n).round().astype(int)]


@dataclass
class PairLayout:
    """A pair's clean hypothetical runs and how their tokens line up (made once per pair)."""

    hyp_a: Run  # the source's hypothetical run
    hyp_b: Run  # the target's
    groups: dict[str, list[int]]  # the target's position groups (P, question, final)
    start: int  # first token where the two prompts differ
    b_alignment: list[tuple[int, int]]  # (source object-run token, target hypothetical token) pairs of P

    @classmethod
    def of(cls, pair: Pair, runs: Runs) -> PairLayout:
        """Refuses a pair whose hypothetical prompts do not line up token for token (part of P would go unpatched)."""
        if not token_aligned(pair.source, pair.target):
            raise ValueError(f"{pair.id}: the hypothetical prompts are not aligned token for token "
                             f"({len(pair.source.hyp_ids)} vs {len(pair.target.hyp_ids)} tokens); choose pairs with select_pairs")
        hyp_a, hyp_b = runs.hypothetical(pair.source), runs.hypothetical(pair.target)
        return cls(hyp_a, hyp_b, position_groups(len(hyp_b), pair.target.hyp_p_tokens), first_difference(hyp_a.ids, hyp_b.ids),
                   list(pair.source.alignment))

    @property
    def identity(self) -> dict[int, int]:
        """target token → source token: the same position."""
        return {t: t for t in range(len(self.hyp_b))}


def pair_patches(pair: Pair, layout: PairLayout, runs: Runs, layers: Sequence[int],
                 group_layers: Sequence[int] | None = None) -> list[tuple[str, int, str, Patch]]:
    """(experiment, layer, group, patch) of A (at `group_layers`, default `layers`), and of B, C
    and their controls (at `layers`) for one pair."""
    src, tgt, hyp_a, hyp_b, groups = pair.source, pair.target, layout.hyp_a, layout.hyp_b, layout.groups
    obj_a, obj_b = runs.object(src), runs.object(tgt)
    b_maps = {"B": (obj_a, {t: s for s, t in layout.b_alignment}), "B-control": (obj_b, {t: s for s, t in tgt.alignment})}
    rows = [("A", layer, name, Patch(hyp_b, hyp_a, cell)) for layer in (layers if group_layers is None else group_layers)
            for name, cell in group_cells(layer, groups, layout.identity, layout.start).items()]
    for layer in layers:
        for exp, (source, mapping) in b_maps.items():
            rows += [(exp, layer, "P", Patch(hyp_b, source, cell)) for cell in group_cells(layer, {"P": groups["P"]}, mapping).values()]
        for exp, source in (("C", obj_a), ("C-control", obj_b)):
            rows.append((exp, layer, "final", Patch(hyp_b, source, Cell(resid_post(layer), (len(hyp_b) - 1,), (len(source) - 1,)))))
    return rows


def run_pairs(handle: ModelHandle, pairs: Sequence[Pair], layers: Sequence[int], *, group_layers: Sequence[int] | None = None,
              min_gap: float = 0.5, exact_pairs: int = 1, exact_cells: int = 48, batch_size: int = 16, progress: bool = True,
              nnsight: NnsightEngine | None = None) -> PatchingTables:
    """Experiments A (at `group_layers`, default `layers`), B and C with controls (at `layers`) on
    every pair, attribution over the full grid, and exact single-cell patching on `exact_cells` grid
    cells of `exact_pairs` pairs spread over the list (so over the task × property groups).

    With `nnsight`, clean runs and patched cells go through its traces (the same numbers); the
    attribution grid needs a backward pass through local weights, so a remote engine leaves it NaN."""
    model, tok = handle.model, handle.tokenizer
    cost = {"pairs": len(pairs), "clean_runs": 0, "patched_cells": 0, "cells_answered_clean": 0, "attribution_passes": 0, "exact_cells": 0}

    def patched(patches: list[Patch], metric: Callable) -> torch.Tensor:
        same = sum(unchanged(p, n_layers(model)) for p in patches)
        cost["cells_answered_clean"] += same
        cost["patched_cells"] += len(patches) - same
        if nnsight is not None:
            return nnsight.patch(patches, metric, batch_size=batch_size)
        return patch(model, patches, metric, batch_size=batch_size, pad_id=handle.pad_token_id)

    every_layer = [resid_post(l) for l in range(handle.n_layers)]
    checked = {id(p) for p in _spread(pairs, exact_pairs)} if exact_cells > 0 else set()
    pair_rows, cell_rows, grid_rows, exact_rows = [], [], [], []
    for pair in tqdm(pairs, desc=f"patching pairs {handle.name}", unit="pair", disable=not progress):
        runs = Runs((lambda ids: clean_run(model, ids)) if nnsight is None else nnsight.clean_run)  # per pair: a run holds every layer's stream and KV cache (~100 MB for an 8B model)
        layout = PairLayout.of(pair, runs)
        hyp_a, hyp_b, groups, start = layout.hyp_a, layout.hyp_b, layout.groups, layout.start
        metric = logit_diff(pair.source_token, pair.target_token)
        m_src, m_tgt = (float(metric(r.logits[None], [r])[0]) for r in (hyp_a, hyp_b))
        rows = pair_patches(pair, layout, runs, layers, group_layers)
        values = patched([r[3] for r in rows], metric)
        if nnsight is not None and nnsight.remote:
            grid = torch.full((handle.n_layers, len(hyp_b)), float("nan"))
        else:
            grid = attribution(model, hyp_b, hyp_a, every_layer, metric)
            cost["attribution_passes"] += 1
        for (exp, layer, name, p), value in zip(rows, values.tolist()):
            estimate = float(np.nansum(grid[layer, list(p.cell.positions)].numpy())) if exp == "A" else float("nan")
            cell_rows.append({"pair": pair.id, "experiment": exp, "layer": layer, "group": name, "n_positions": len(p.cell.positions),
                              "value": value, "delta": value - m_tgt, "normalised": normalise(value, m_tgt, m_src, min_gap),
                              "attribution": estimate})
        grid_rows += [{"pair": pair.id, "layer": layer, "position": t, "token": tok.decode([hyp_b.ids[t]]), "group": group_of(t, groups),
                       "attribution": float(grid[layer, t])} for layer in range(handle.n_layers) for t in range(min(groups["P"]), len(hyp_b))]
        if id(pair) in checked:
            chosen = _spread([(l, t) for l in range(handle.n_layers) for t in range(start, len(hyp_b))], exact_cells)
            exact = patched([Patch(hyp_b, hyp_a, Cell(resid_post(l), (t,))) for l, t in chosen], metric)
            cost["exact_cells"] += len(chosen)
            exact_rows += [{"pair": pair.id, "layer": l, "position": t, "group": group_of(t, groups), "exact": float(v) - m_tgt,
                            "attribution": float(grid[l, t])} for (l, t), v in zip(chosen, exact.tolist())]
        cost["clean_runs"] += len(runs)
        src, tgt = pair.source, pair.target
        pair_rows.append({
            "pair": pair.id, "task": src.task, "property": src.property, "source_item": src.item_id, "target_item": tgt.item_id,
            "source_value": src.value, "target_value": tgt.value, "source_token": tok.decode([pair.source_token]),
            "target_token": tok.decode([pair.target_token]), "clean_source": m_src, "clean_target": m_tgt, "gap": m_src - m_tgt,
            "normalisable": bool(np.isfinite(normalise(m_src, m_tgt, m_src, min_gap))), "tokens": len(hyp_b),
            "first_difference": start, "p_tokens": len(groups["P"]), "b_tokens_aligned": len(layout.b_alignment),
            "exact_checked": id(pair) in checked,
        })
    return PatchingTables(pd.DataFrame(pair_rows), pd.DataFrame(cell_rows), pd.DataFrame(grid_rows), pd.DataFrame(exact_rows), cost)
