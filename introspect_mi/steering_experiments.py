"""Steering experiment D (issue 7): does the self-prediction follow a change of the object-level
behaviour made without finetuning? (Concept injection, E, is `introspect_mi.concepts`.)

A steering vector — the mean difference of object-level activations between items whose
property value is X and items whose value is Y, cross-fitted (each item is steered by the
vector of the other fold of items) — is added at one layer, at one of three position sets:
(i) P's tokens, (ii) the tokens after P (the question and final tokens), (iii) every token;
in the object-level run and in the hypothetical run of each item, pushing each item toward the
other value. Equal-norm random vectors are the control, and the dose is stated: the scale
sweep reports ‖scale × v‖ / ‖residual‖ at the site and goes on doubling the scale until a random
vector also changes the object answers (or a largest scale is reached), so a null is not merely
under-dosing. Per condition: how far the object answer's property moves toward the pushed value,
how far the self-prediction does, and whether the self-prediction follows the steered object
behaviour (new) or the unsteered one (old). The three hypotheses predict different patterns
(`steering_pattern`): reading P's state and re-computing the answer both predict that (i) moves
the object answer and the self-prediction with it; a shortcut at the question predicts that (ii)
moves the self-prediction while the object answer stays.

Tests (`sweep_tests`, METHODS.md): at every sweep scale, per item, steer − random on "the object
answer equals the pushed value", a paired sign-flip p over items, Holm-adjusted over the sweep's
scales (one family per subject, `SWEEP_FAMILY`, confirmatory); the self-prediction's test at each
scale and the position sets at the chosen scale (chosen on the data) are exploratory.

Answers are read from the first answer token (greedy): the object answer's property from that
token's text (first characters and option letters are decided by it), the self-prediction as the
normalised token.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from introspect_mi.actstore import ActivationStore
from introspect_mi.models import ModelHandle
from introspect_mi.multiplicity import CONFIRMATORY, EXPLORATORY, holm, paired_effect
from introspect_mi.patching_pairs import ItemPrompts
from introspect_mi.places import resid_post
from introspect_mi.properties import get_property
from introspect_mi.steering import RowSteer, Steerer, random_like, steering_vector

POSITION_SETS = {"P": "(i) P's tokens", "after_P": "(ii) question and final tokens", "all": "(iii) every token"}


def position_set(name: str, n_tokens: int, p_tokens: Sequence[int]) -> frozenset[int] | None:
    """Token indices steered under a position set (None: every token)."""
    if name == "P":
        return frozenset(p_tokens)
    if name == "after_P":
        return frozenset(range(max(p_tokens) + 1, n_tokens))
    if name == "all":
        return None
    raise ValueError(f"unknown position set {name!r}: use one of {', '.join(POSITION_SETS)}")


def layer_at(depth: float, n_layers: int) -> int:
    """The layer at a fraction of the depth (0: first, 1: last)."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth {depth} is not a fraction between 0 and 1")
    return int(round(depth * (n_layers - 1)))


def read_answers(handle: ModelHandle, logits: torch.Tensor, prop_name: str, kind: str, targets: Sequence[str | None]) -> list[str | None]:
    """The property value of each row's greedy first token: of the object answer (`kind`
    "object") or as a self-prediction ("hypothetical"); None where unreadable."""
    prop = get_property(prop_name)
    texts = [handle.tokenizer.decode([int(t)], skip_special_tokens=True) for t in logits.argmax(-1)]
    if kind == "object":
        return [prop.extract(t, target) for t, target in zip(texts, targets)]
    return [prop.normalize_hypothetical(t) for t in texts]


# ---------------------------------------------------------------------------- D: steering


def steer_values(items: Sequence[ItemPrompts]) -> tuple[str, str]:
    """X and Y: the two most common object values (first seen wins ties); cross-fitting needs at
    least two items of each."""
    common = Counter(it.value for it in items if it.value is not None).most_common(2)
    if len(common) < 2 or common[1][1] < 2:
        raise ValueError(f"steering needs two values with at least two items each; the most common are {dict(common)}")
    return common[0][0], common[1][0]


def assign_folds(items: Sequence[ItemPrompts], values: tuple[str, str]) -> dict[str, int]:
    """item_id → fold 0/1, alternating within each value (balanced folds)."""
    folds: dict[str, int] = {}
    for v in values:
        for k, it in enumerate(i for i in items if i.value == v):
            folds[it.item_id] = k % 2
    return folds


def balanced(items: Sequence[ItemPrompts], values: tuple[str, str], n: int) -> list[ItemPrompts]:
    """Up to `n` items with value X or Y, taking X and Y in turn."""
    by = [[it for it in items if it.value == v] for v in values]
    out = [it for pair in zip(*by) for it in pair]
    rest = [it for group in by for it in group[len(out) // 2 :]]
    return (out + rest)[:n]


def store_steering_vectors(store: ActivationStore, layer: int, position: str, task: str, prop: str,
                           values: tuple[str, str], folds: Mapping[str, int]) -> dict[int, torch.Tensor]:
    """fold → mean(X) - mean(Y) of the stored object-level activations of the *other* fold's items."""
    x, meta = store.load("resid_post", layer, position, filter=lambda r: (r["kind"] == "object") & (r["task"] == task), as_="torch")
    value = np.array([(v or {}).get(prop) if isinstance(v, dict) else None for v in meta["values"]], dtype=object)
    fold = np.array([folds.get(i, -1) for i in meta["item_id"]])
    out = {}
    for f in (0, 1):
        other = fold == 1 - f
        out[f] = steering_vector(x[torch.from_numpy(other & (value == values[0]))], x[torch.from_numpy(other & (value == values[1]))])
    return out


@dataclass(frozen=True)
class SteeringSetup:
    """Where and with what D steers."""

    property: str
    layer: int
    values: tuple[str, str]
    vectors: dict[int, torch.Tensor]  # fold -> X minus Y direction
    folds: dict[str, int]
    residual_norm: float = float("nan")  # median ‖residual‖ at the site (`site_norm`); NaN: not measured

    def dose(self, scale: float) -> float:
        """‖scale × v‖ / ‖residual‖ at the site (v: the folds' mean norm): how hard a scale pushes."""
        return scale * float(np.mean([float(v.norm()) for v in self.vectors.values()])) / self.residual_norm


def site_norm(store: ActivationStore, layer: int, position: str, task: str) -> float:
    """Median ‖resid_post[layer]‖ of the task's stored object-level activations at `position`: the
    residual a steering vector computed there is added to (a small dose ratio means a weak push)."""
    x, _ = store.load("resid_post", layer, position, filter=lambda r: (r["kind"] == "object") & (r["task"] == task), as_="torch")
    return float(x.float().norm(dim=-1).median())


def _condition(handle: ModelHandle, steerer: Steerer, items: Sequence[ItemPrompts], setup: SteeringSetup, kind: str,
               position_name: str, vectors: Mapping[int, torch.Tensor] | None, scale: float) -> list[str | None]:
    """Each item's answer value with its fold's vector (None: unsteered) pushing it toward its other value."""
    deltas: dict[tuple[int, int], torch.Tensor] = {}
    seqs, steers = [], []
    for it in items:
        ids, p = (it.object_ids, it.object_p_tokens) if kind == "object" else (it.hyp_ids, it.hyp_p_tokens)
        seqs.append(ids)
        if vectors is None:
            steers.append(RowSteer(None))
            continue
        f, sign = setup.folds[it.item_id], (1 if it.value == setup.values[1] else -1)
        if (f, sign) not in deltas:  # one tensor per fold and sign: rows sharing it may share a steered prefix
            deltas[(f, sign)] = sign * scale * vectors[f]
        steers.append(RowSteer(deltas[(f, sign)], position_set(position_name, len(ids), p)))
    logits = steerer.logits(seqs, steers, resid_post(setup.layer))
    return read_answers(handle, logits, setup.property, kind, [it.target for it in items])


def _toward(it: ItemPrompts, values: tuple[str, str]) -> str:
    return values[0] if it.value == values[1] else values[1]


def random_controls(vectors: Mapping[int, torch.Tensor], seed: int) -> dict[int, torch.Tensor]:
    """Per fold, a random vector of that fold's steering vector's norm."""
    return {f: random_like(v, seed * 100 + f) for f, v in vectors.items()}


class SteeringRun(NamedTuple):
    """What `run_steering` measured."""

    sweep: pd.DataFrame
    """One row per scale × vector (steer, random): shares of items, with the scale's dose."""
    sweep_items: pd.DataFrame
    """One row per scale × vector × kind (object, hypothetical) × item: the answer before and after (`sweep_tests`)."""
    rows: pd.DataFrame
    """One row per position set × vector × item at the chosen scale (`summarise_steering`)."""
    scale: float
    """The chosen scale."""


def run_steering(handle: ModelHandle, steerer: Steerer, items: Sequence[ItemPrompts], setup: SteeringSetup,
                 scales: Sequence[float], *, n_random: int = 2, seed: int = 0, dose_until: float = 0.5, max_scale: float = 64.0,
                 progress: bool = True) -> SteeringRun:
    """The scale sweep (every scale, per item too) and the position sets at the chosen scale.

    The sweep steers the object and the hypothetical runs at P's tokens with the steering vector
    and with one random vector of equal norm, at every scale in `scales` and then at doubling
    scales up to `max_scale` until the random vector changes at least `dose_until` of the object
    answers, so a null is reported up to a dose where even a random push changes the behaviour (a
    model whose behaviour survives `max_scale` is reported as such, with the doses reached). Every
    scale is a row (with its dose, ‖scale × v‖ / ‖residual‖).
    The chosen scale is the one where the steering vector beats the random vector by most in moving
    object answers toward the pushed value (the largest on ties). At that scale the steering vector
    and `n_random` other equal-norm random vectors (seeds not used in the sweep) steer object and
    hypothetical runs at every position set."""
    before = {kind: _condition(handle, steerer, items, setup, kind, "all", None, 0.0) for kind in ("object", "hypothetical")}
    toward = [_toward(it, setup.values) for it in items]
    base = {kind: np.mean([b == t for b, t in zip(before[kind], toward)]) for kind in before}
    sweep_random = random_controls(setup.vectors, seed * 1000 + 999)
    sweep, sweep_items, todo = [], [], list(scales)
    bar = tqdm(desc=f"steering scale sweep {handle.name}", unit="scale", disable=not progress)
    while todo:
        scale = todo.pop(0)
        for vec in ("steer", "random"):
            row = {"position_set": "P", "vector": vec, "scale": scale, "dose": setup.dose(scale)}
            for kind in ("object", "hypothetical"):
                after = _condition(handle, steerer, items, setup, kind, "P", setup.vectors if vec == "steer" else sweep_random, scale)
                sweep_items += [{"scale": scale, "vector": vec, "kind": kind, "item_id": it.item_id, "toward": t, "before": b, "after": a}
                                for it, t, b, a in zip(items, toward, before[kind], after)]
                short = "object" if kind == "object" else "hyp"
                row |= {f"{short}_to_target": np.mean([a == t for a, t in zip(after, toward)]) - base[kind],
                        f"{short}_changed": np.mean([a != b for a, b in zip(after, before[kind])]),
                        f"{short}_readable": np.mean([a is not None for a in after])}
            sweep.append(row)
        bar.update()
        if not todo and sweep[-1]["object_changed"] < dose_until and 2 * scale <= max_scale:
            todo.append(2 * scale)  # the random push has not broken the behaviour yet: push harder
    bar.close()
    sweep_df = pd.DataFrame(sweep)
    on_p = sweep_df.pivot(index="scale", columns="vector", values="object_to_target")
    gain = on_p["steer"] - on_p["random"]
    scale = float(gain[gain == gain.max()].index.max())
    kinds = {"steer": setup.vectors} | {f"random-{k}": random_controls(setup.vectors, seed * 1000 + k) for k in range(n_random)}
    rows = []
    steps = [(vec, name) for vec in kinds for name in POSITION_SETS]
    for vec, name in tqdm(steps, desc=f"steering {handle.name}", unit="condition", disable=not progress):
        after = {kind: _condition(handle, steerer, items, setup, kind, name, kinds[vec], scale) for kind in ("object", "hypothetical")}
        for k, it in enumerate(items):
            rows.append({"position_set": name, "vector": vec, "scale": scale, "item_id": it.item_id, "fold": setup.folds[it.item_id],
                         "value": it.value, "toward": toward[k], "object_before": before["object"][k], "object_after": after["object"][k],
                         "hyp_before": before["hypothetical"][k], "hyp_after": after["hypothetical"][k]})
    return SteeringRun(sweep_df, pd.DataFrame(sweep_items), pd.DataFrame(rows), scale)


SWEEP_FAMILY = ("D, per subject: at every scale of the sweep at P's tokens, steering vector minus its equal-norm random vector on "
                "'the object answer equals the pushed value', per item; one-sided sign-flip p over items, Holm over the scales")


def sweep_tests(sweep_items: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per scale × kind: the per-item gain of the steering vector over the random one in moving the
    answer to the pushed value (1, 0 or −1 per item), mean, 95% CI, sign-flip p. Object answers
    form the confirmatory family `SWEEP_FAMILY` (Holm over scales: `p_holm`); the
    self-prediction's rows are exploratory (`p` only). One subject's items."""
    out = []
    for kind in ("object", "hypothetical"):
        g = sweep_items[sweep_items["kind"] == kind]
        hit = (g["after"] == g["toward"]).astype(float)
        wide = g.assign(hit=hit).pivot_table(index=["scale", "item_id"], columns="vector", values="hit")
        for scale, per_item in wide.groupby(level="scale"):
            effect = paired_effect(per_item["steer"] - per_item["random"], seed)
            out.append({"scale": float(scale), "kind": kind, **{f"gain_{k}" if k != "n" else k: v for k, v in effect.items()},
                        "status": CONFIRMATORY if kind == "object" else EXPLORATORY})
    tests = pd.DataFrame(out)
    confirm = tests["status"] == CONFIRMATORY
    tests["p_holm"] = np.nan
    tests.loc[confirm, "p_holm"] = holm(tests.loc[confirm, "gain_p"].to_numpy())
    return tests


def _share(hits: pd.Series) -> float:
    return float(hits.mean()) if len(hits) else float("nan")


def _changed(after: pd.Series, before: pd.Series) -> pd.Series:
    """Answers that differ (two unreadable answers count as the same)."""
    return (after != before) & ~(after.isna() & before.isna())


def _rates(g: pd.DataFrame) -> dict[str, float]:
    moved = g[_changed(g["object_after"], g["object_before"]) & g["object_after"].notna() & g["object_before"].notna()]
    return {
        "n": len(g),
        "object_to_target": float((g["object_after"] == g["toward"]).mean() - (g["object_before"] == g["toward"]).mean()),
        "object_changed": float(_changed(g["object_after"], g["object_before"]).mean()),
        "hyp_to_target": float((g["hyp_after"] == g["toward"]).mean() - (g["hyp_before"] == g["toward"]).mean()),
        "hyp_changed": float(_changed(g["hyp_after"], g["hyp_before"]).mean()),
        "n_object_moved": len(moved),
        "follows_new": _share(moved["hyp_after"] == moved["object_after"]),
        "follows_old": _share(moved["hyp_after"] == moved["object_before"]),
        "new_before": _share(moved["hyp_before"] == moved["object_after"]),
        "old_before": _share(moved["hyp_before"] == moved["object_before"]),
        "hyp_readable": float(g["hyp_after"].notna().mean()),
    }


def _gain_over_random(g: pd.DataFrame, answer: str) -> dict[str, float]:
    """Per item: `answer` equals the pushed value under the steering vector minus the random
    vectors' mean share; `paired_effect` over items."""
    hit = g.assign(hit=(g[answer] == g["toward"]).astype(float)).pivot_table(index="item_id", columns="vector", values="hit")
    randoms = hit.drop(columns="steer")
    return paired_effect(hit["steer"] - randoms.mean(axis=1) if randoms.shape[1] else pd.Series(dtype=float))


def summarise_steering(rows: pd.DataFrame) -> pd.DataFrame:
    """Per position set: the steering vector's rates and the random vectors' mean and max.

    object_to_target / hyp_to_target: change in the share of answers equal to the pushed-toward
    value; *_changed: share of answers that changed at all; follows_new / follows_old: among the
    items whose object answer moved, the share of steered self-predictions equal to the new / old
    answer, and new_before / old_before the same for the unsteered self-predictions (a model that
    always says one value "follows" whenever the object answer moves to it). object_gain_* /
    hyp_gain_*: per item, steered minus the random vectors' mean on "equals the pushed value" (mean,
    95% CI, sign-flip p); exploratory, since the scale was chosen on the sweep's data."""
    out = []
    for name in POSITION_SETS:
        g = rows[rows["position_set"] == name]
        if not len(g):
            continue
        steer = _rates(g[g["vector"] == "steer"])
        randoms = pd.DataFrame([_rates(r) for _, r in g[g["vector"] != "steer"].groupby("vector")])
        row = {"position_set": name, "label": POSITION_SETS[name], **steer}
        for col in ("object_to_target", "hyp_to_target", "object_changed", "hyp_changed"):
            row[f"random_{col}_mean"] = float(randoms[col].mean()) if len(randoms) else float("nan")
            row[f"random_{col}_max"] = float(randoms[col].max()) if len(randoms) else float("nan")
        for short, col in (("object", "object_after"), ("hyp", "hyp_after")):
            row |= {f"{short}_gain_{k}": v for k, v in _gain_over_random(g, col).items() if k != "n"}
        out.append(row | {"status": EXPLORATORY})
    return pd.DataFrame(out)


def _moves(row: pd.Series, what: str, min_effect: float) -> bool:
    """The steering vector moved `what` beyond every random control by at least `min_effect`."""
    control = row[f"random_{what}_max"]
    control = 0.0 if not np.isfinite(control) else max(control, 0.0)
    return row[what] - control >= min_effect


def steering_pattern(summary: pd.DataFrame, min_effect: float = 0.15) -> tuple[str, list[str]]:
    """(pattern, one sentence per position set) from `summarise_steering`'s table.

    "P-state": steering P's tokens moves the object answer and the self-prediction follows (reading
    P's state or re-computing the answer; B and C tell these apart); "question shortcut": steering
    the question/final tokens moves the self-prediction but not the object answer; "none": no
    position set moves the self-prediction beyond the random controls; "mixed": anything else."""
    s = summary.set_index("position_set")
    moves = {name: (_moves(s.loc[name], "object_to_target", min_effect), _moves(s.loc[name], "hyp_to_target", min_effect)) for name in s.index}
    sentences = []
    for name, (obj, hyp) in moves.items():
        r = s.loc[name]
        what = {(True, True): "moved both the object answer and the self-prediction",
                (True, False): "moved the object answer but not the self-prediction",
                (False, True): "moved the self-prediction but not the object answer",
                (False, False): "moved neither beyond the random controls"}[(obj, hyp)]
        sentences.append(f"{POSITION_SETS[name]}: {what} (toward the pushed value: object {r['object_to_target']:+.2f} vs random "
                         f"≤ {r['random_object_to_target_max']:+.2f}, self-prediction {r['hyp_to_target']:+.2f} vs random "
                         f"≤ {r['random_hyp_to_target_max']:+.2f}; of {int(r['n_object_moved'])} moved object answers the steered "
                         f"self-prediction named the new one {_percent(r['follows_new'])} (unsteered: {_percent(r['new_before'])}), the old "
                         f"one {_percent(r['follows_old'])} (unsteered: {_percent(r['old_before'])})).")
    p_obj, p_hyp = moves.get("P", (False, False))
    q_obj, q_hyp = moves.get("after_P", (False, False))
    if not any(h for _, h in moves.values()):
        pattern = "none"
    elif p_obj and p_hyp and not (q_hyp and not q_obj):
        pattern = "P-state"
    elif q_hyp and not q_obj and not p_hyp:
        pattern = "question shortcut"
    else:
        pattern = "mixed"
    return pattern, sentences


def _percent(x: float) -> str:
    return "–" if not np.isfinite(x) else f"{x:.0%}"
