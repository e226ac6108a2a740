"""Patching experiments on pairs of items (issue 7, A–C): which states carry the property
decision into the self-prediction.

A pair is two held-out items of one task × property whose object-level property values (and those
values' first tokens) differ: the source P_a and the target P_b. The metric is the logit
difference logit[v_a] - logit[v_b] at the hypothetical prompt's final token (v: the first token of
an item's property value, with which a correct self-prediction starts), normalised so that 0 is the
clean target run and 1 the clean source run; where those two differ by less than `min_gap` the
normalised value is NaN and only the raw change is kept.

A. hypothetical → hypothetical: P_a's hypothetical run into P_b's, per layer and position group:
   P's tokens, the question's tokens (after P, before the final token) and the final token, each
   group one multi-position cell. Attribution patching estimates the full layer × token grid from
   one backward pass; it is checked against exact patching (group cells, and single cells on a
   subset).
B. object → hypothetical across contexts: P_a's object-level run at P's tokens into P_b's
   hypothetical run at the aligned tokens (P_a object → P_a hypothetical by the capture alignment,
   then → P_b hypothetical by the shared prefix and suffix).
C. object answer → hypothetical: the object run's final token (where the answer is about to be
   produced) into the hypothetical final token.
B and C have a control with the target's own object run as the source: what bringing in
object-level context does by itself, P unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from introspect_mi.alignment import align, p_token_indices
from introspect_mi.models import ModelHandle
from introspect_mi.nnsight_engine import NnsightEngine
from introspect_mi.patching import Cell, Patch, Run, align_ends, attribution, clean_run, logit_diff, patch
from introspect_mi.places import resid_post
from introspect_mi.prompts import RenderedPrompt

GROUPS = ("P", "question", "final")
"""Position groups of a hypothetical prompt, in prompt order (tokens before P: "context")."""
EXPERIMENTS = {
    "A": "hypothetical → hypothetical",
    "B": "object (P tokens) → hypothetical",
    "B-control": "own object (P tokens) → hypothetical",
    "C": "object final → hypothetical final",
    "C-control": "own object final → hypothetical final",
}


@dataclass(frozen=True)
class ItemPrompts:
    """One held-out item × property, tokenised: P asked (object) and P quoted (hypothetical)."""

    item_id: str
    task: str
    property: str
    value: str | None
    """The object answer's property value: what a correct self-prediction says."""
    target: str | None
    """A/B tasks: the option letter that shows the behaviour (property values depend on it)."""
    predicted: str | None
    """The study's hypothetical answer value (None: non-compliant)."""
    object_ids: tuple[int, ...]
    object_p_tokens: tuple[int, ...]
    hyp_ids: tuple[int, ...]
    hyp_p_tokens: tuple[int, ...]
    alignment: tuple[tuple[int, int], ...]
    """(object index, hypothetical index) of P's tokens that are the same token in both prompts."""

    @property
    def correct(self) -> bool:
        return self.value is not None and self.predicted == self.value


def tokenise(handle: ModelHandle, item_id: str, task: str, prop: str, object_prompt: RenderedPrompt,
             hyp_prompt: RenderedPrompt, value: str | None, target: str | None, predicted: str | None) -> ItemPrompts:
    """Both prompts as token ids, P's tokens in each and their alignment (as capture stores it)."""
    fmt = handle.prompt_format
    o_ids, o_off = fmt.encode_with_offsets(object_prompt.text)
    h_ids, h_off = fmt.encode_with_offsets(hyp_prompt.text)
    pairs = align(o_off, object_prompt.p_span, h_off, hyp_prompt.p_span, o_ids, h_ids).pairs
    return ItemPrompts(item_id, task, prop, value, target, predicted, tuple(o_ids), tuple(p_token_indices(o_off, object_prompt.p_span)),
                       tuple(h_ids), tuple(p_token_indices(h_off, hyp_prompt.p_span)), tuple(map(tuple, pairs)))


@dataclass(frozen=True)
class Pair:
    """Source and target items of one task × property, with their values' first tokens."""

    source: ItemPrompts
    target: ItemPrompts
    source_token: int
    target_token: int

    @property
    def id(self) -> str:
        return f"{self.source.task}/{self.source.property}/{self.source.item_id}>{self.target.item_id}"


def select_pairs(items: Sequence[ItemPrompts], first_token: Callable[[str], int | None], per_group: int,
                 clean_logits: Mapping[tuple[str, str], torch.Tensor] | None = None) -> list[Pair]:
    """Up to `per_group` pairs per task × property (groups in first-seen order), no item twice in a
    group. Candidates: ordered item pairs whose values and value tokens differ. Preferred, in order:
    hypothetical prompts of equal length (every token then has a partner); the larger clean-run gap
    of the metric (from `clean_logits`, (item_id, property) → the hypothetical prompt's final
    logits; items without them are left out), or without logits more correct self-predictions and
    differing predictions; then the items' order."""
    groups: dict[tuple[str, str], list[ItemPrompts]] = {}
    for it in items:
        if it.value is not None and first_token(it.value) is not None and (clean_logits is None or (it.item_id, it.property) in clean_logits):
            groups.setdefault((it.task, it.property), []).append(it)

    def preference(a: ItemPrompts, b: ItemPrompts, ta: int, tb: int) -> tuple:
        if clean_logits is None:
            return (-(a.correct + b.correct), a.predicted == b.predicted)
        la, lb = clean_logits[(a.item_id, a.property)], clean_logits[(b.item_id, b.property)]
        return (-abs(float((la[ta] - la[tb]) - (lb[ta] - lb[tb]))),)

    out = []
    for members in groups.values():
        tokens = {it.item_id: first_token(it.value) for it in members}
        candidates = [(a, b) for a in members for b in members if a.value != b.value and tokens[a.item_id] != tokens[b.item_id]]
        keys = {id(c): (len(c[0].hyp_ids) != len(c[1].hyp_ids), *preference(*c, tokens[c[0].item_id], tokens[c[1].item_id]), k)
                for k, c in enumerate(candidates)}
        candidates.sort(key=lambda c: keys[id(c)])
        used: set[str] = set()
        chosen = []
        for a, b in candidates:
            if len(chosen) == per_group:
                break
            if a.item_id not in used and b.item_id not in used:
                used |= {a.item_id, b.item_id}
                chosen.append(Pair(a, b, tokens[a.item_id], tokens[b.item_id]))
        out += chosen
    return out


def position_groups(n_tokens: int, p_tokens: Sequence[int]) -> dict[str, list[int]]:
    """Token indices of each group in a hypothetical prompt of `n_tokens` tokens."""
    if not p_tokens or max(p_tokens) >= n_tokens - 1:
        raise ValueError(f"P's tokens {list(p_tokens)[:3]}… must lie before the final token of a {n_tokens}-token prompt")
    last = max(p_tokens)
    return {"P": sorted(p_tokens), "question": list(range(last + 1, n_tokens - 1)), "final": [n_tokens - 1]}


def group_of(position: int, groups: Mapping[str, Sequence[int]]) -> str:
    """The group a token belongs to ("context": before P)."""
    return next((name for name, members in groups.items() if position in members), "context")


def compose(first: Sequence[tuple[int, int]], second: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Alignments a→b and b→c chained into a→c (pairs whose middle token has a partner in both)."""
    onward = dict(second)
    return [(a, onward[b]) for a, b in first if b in onward]


def normalise(value: float, clean_target: float, clean_source: float, min_gap: float) -> float:
    """(value - clean target) / (clean source - clean target); NaN when that gap is 0 or below `min_gap`."""
    gap = clean_source - clean_target
    return float("nan") if gap == 0 or abs(gap) < min_gap or not np.isfinite(gap) else (value - clean_target) / gap


def first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    """Index of the first token where two prompts differ (tokens before it compute the same states)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


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

    def _get(self, key: tuple[str, str, str], ids: Sequence[int]) -> Run:
        if key not in self._runs:
            self._runs[key] = self.make(ids)
        return self._runs[key]


@dataclass
class PatchingTables:
    """What `run_pairs` measures (one row per pair / patched cell / grid cell / checked cell)."""

    pairs: pd.DataFrame
    cells: pd.DataFrame
    grid: pd.DataFrame
    exact: pd.DataFrame


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
    hyp_map: list[tuple[int, int]]  # (source, target) token pairs: shared prefix and suffix
    to_source: dict[int, int]  # target token → source token
    groups: dict[str, list[int]]  # the target's position groups (P, question, final)
    start: int  # first token where the two prompts differ
    b_alignment: list[tuple[int, int]]  # (source object-run token, target hypothetical token) pairs of P

    @classmethod
    def of(cls, pair: Pair, runs: Runs) -> PairLayout:
        hyp_a, hyp_b = runs.hypothetical(pair.source), runs.hypothetical(pair.target)
        hyp_map = align_ends(hyp_a.ids, hyp_b.ids)
        return cls(hyp_a, hyp_b, hyp_map, {t: s for s, t in hyp_map}, position_groups(len(hyp_b), pair.target.hyp_p_tokens),
                   first_difference(hyp_a.ids, hyp_b.ids), compose(pair.source.alignment, hyp_map))


def pair_patches(pair: Pair, layout: PairLayout, runs: Runs, layers: Sequence[int]) -> list[tuple[str, int, str, Patch]]:
    """(experiment, layer, group, patch) of A, B, C and the controls for one pair."""
    src, tgt, hyp_a, hyp_b, groups = pair.source, pair.target, layout.hyp_a, layout.hyp_b, layout.groups
    obj_a, obj_b = runs.object(src), runs.object(tgt)
    b_maps = {"B": (obj_a, {t: s for s, t in layout.b_alignment}), "B-control": (obj_b, {t: s for s, t in tgt.alignment})}
    rows = []
    for layer in layers:
        rows += [("A", layer, name, Patch(hyp_b, hyp_a, cell)) for name, cell in group_cells(layer, groups, layout.to_source, layout.start).items()]
        for exp, (source, mapping) in b_maps.items():
            rows += [(exp, layer, "P", Patch(hyp_b, source, cell)) for cell in group_cells(layer, {"P": groups["P"]}, mapping).values()]
        for exp, source in (("C", obj_a), ("C-control", obj_b)):
            rows.append((exp, layer, "final", Patch(hyp_b, source, Cell(resid_post(layer), (len(hyp_b) - 1,), (len(source) - 1,)))))
    return rows


def run_pairs(handle: ModelHandle, pairs: Sequence[Pair], layers: Sequence[int], *, min_gap: float = 0.5, exact_pairs: int = 1,
              exact_cells: int = 48, batch_size: int = 16, progress: bool = True, nnsight: NnsightEngine | None = None) -> PatchingTables:
    """Experiments A, B and C (with controls) on every pair, attribution over the full grid, and
    exact single-cell patching on `exact_cells` grid cells of the first `exact_pairs` pairs.

    With `nnsight`, clean runs and patched cells go through its traces (the same numbers); the
    attribution grid needs a backward pass through local weights, so a remote engine leaves it NaN."""
    model, tok = handle.model, handle.tokenizer

    def patched(patches: list[Patch], metric: Callable) -> torch.Tensor:
        if nnsight is not None:
            return nnsight.patch(patches, metric, batch_size=batch_size)
        return patch(model, patches, metric, batch_size=batch_size, pad_id=handle.pad_token_id)

    every_layer = [resid_post(l) for l in range(handle.n_layers)]
    pair_rows, cell_rows, grid_rows, exact_rows = [], [], [], []
    for k, pair in enumerate(tqdm(pairs, desc=f"patching pairs {handle.name}", unit="pair", disable=not progress)):
        runs = Runs((lambda ids: clean_run(model, ids)) if nnsight is None else nnsight.clean_run)  # per pair: a run holds every layer's stream and KV cache (~100 MB for an 8B model)
        layout = PairLayout.of(pair, runs)
        hyp_a, hyp_b, hyp_map, to_source, groups, start = (layout.hyp_a, layout.hyp_b, layout.hyp_map, layout.to_source, layout.groups,
                                                           layout.start)
        metric = logit_diff(pair.source_token, pair.target_token)
        m_src, m_tgt = (float(metric(r.logits[None], [r])[0]) for r in (hyp_a, hyp_b))
        rows = pair_patches(pair, layout, runs, layers)
        values = patched([r[3] for r in rows], metric)
        if nnsight is not None and nnsight.remote:
            grid = torch.full((handle.n_layers, len(hyp_b)), float("nan"))
        else:
            grid = attribution(model, hyp_b, hyp_a, every_layer, metric, alignment=hyp_map)
        for (exp, layer, name, p), value in zip(rows, values.tolist()):
            estimate = float(np.nansum(grid[layer, list(p.cell.positions)].numpy())) if exp == "A" else float("nan")
            cell_rows.append({"pair": pair.id, "experiment": exp, "layer": layer, "group": name, "n_positions": len(p.cell.positions),
                              "value": value, "delta": value - m_tgt, "normalised": normalise(value, m_tgt, m_src, min_gap),
                              "attribution": estimate})
        grid_rows += [{"pair": pair.id, "layer": layer, "position": t, "token": tok.decode([hyp_b.ids[t]]), "group": group_of(t, groups),
                       "attribution": float(grid[layer, t])} for layer in range(handle.n_layers) for t in range(min(groups["P"]), len(hyp_b))]
        if k < exact_pairs and exact_cells > 0:
            chosen = _spread([(l, t) for l in range(handle.n_layers) for t in range(start, len(hyp_b)) if t in to_source], exact_cells)
            exact = patched([Patch(hyp_b, hyp_a, Cell(resid_post(l), (t,), (to_source[t],))) for l, t in chosen], metric)
            exact_rows += [{"pair": pair.id, "layer": l, "position": t, "group": group_of(t, groups), "exact": float(v) - m_tgt,
                            "attribution": float(grid[l, t])} for (l, t), v in zip(chosen, exact.tolist())]
        src, tgt = pair.source, pair.target
        pair_rows.append({
            "pair": pair.id, "task": src.task, "property": src.property, "source_item": src.item_id, "target_item": tgt.item_id,
            "source_value": src.value, "target_value": tgt.value, "source_token": tok.decode([pair.source_token]),
            "target_token": tok.decode([pair.target_token]), "clean_source": m_src, "clean_target": m_tgt, "gap": m_src - m_tgt,
            "normalisable": bool(np.isfinite(normalise(m_src, m_tgt, m_src, min_gap))), "source_tokens": len(hyp_a),
            "target_tokens": len(hyp_b), "first_difference": start, "p_tokens": len(groups["P"]),
            "p_tokens_aligned": sum(t in to_source for t in groups["P"]),
            "b_tokens_aligned": len(layout.b_alignment),
        })
    return PatchingTables(pd.DataFrame(pair_rows), pd.DataFrame(cell_rows), pd.DataFrame(grid_rows), pd.DataFrame(exact_rows))


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson r over the finite pairs (NaN with fewer than 3 or no spread)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3 or x[keep].std() == 0 or y[keep].std() == 0:
        return float("nan")
    return float(np.corrcoef(x[keep], y[keep])[0, 1])


def flow_summary(cells: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """Per experiment × group: the mean normalised effect's peak (and its layer), the first layer
    where it reaches `threshold`, over normalisable pairs; and the mean raw change at the peak."""
    rows = []
    for (exp, group), g in cells.groupby(["experiment", "group"], sort=False):
        by_layer = g.groupby("layer").agg(normalised=("normalised", "mean"), delta=("delta", "mean"),
                                          n=("normalised", lambda s: int(s.notna().sum())))
        have = by_layer["normalised"].dropna()
        peak = int(have.idxmax()) if len(have) else None
        reach = have[have >= threshold]
        rows.append({"experiment": exp, "group": group, "pairs": int(by_layer["n"].max()),
                     "peak_normalised": float(have.max()) if len(have) else float("nan"), "peak_layer": peak,
                     f"first_layer_at_{threshold:g}": int(reach.index[0]) if len(reach) else None,
                     "mean_delta_at_peak": float(by_layer.loc[peak, "delta"]) if peak is not None else float("nan")})
    return pd.DataFrame(rows)
