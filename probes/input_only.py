"""Input-only predictor: what a classifier reading only P's text predicts about the answer to P.

The control of Singh, Linzen & Ravfogel (2026): when a classifier that never sees a model's
weights or states matches its self-predictions, the self-predictions need not read anything
internal. Trained on the same labels and training tasks as the cross model, scored on the same
held-out (item, property) pairs, it sits beside self and cross in every table.

Features (`features`): hashed counts (log1p, `dim` buckets, crc32 so runs agree) of P's
lowercased character 1–4-grams and word 1–2-grams, plus position-tagged character n-grams of the
first and last word of P's last line (a sequence task's sequence), so "the answer starts like the
last word of the sequence" is one feature away. Model: one multinomial logistic regression per
property (probes.logistic), L2 strength chosen by item-grouped cross-validation on the training
rows only.

Pointer labels (open-set properties: characters and words). A logistic model can only output
values it was trained on, and a held-out task's words (animals) never occur in the training
tasks (countries); a model that copies the sequence would then look unpredictable from the input
when it is not. So an open-set label that equals the property of an *anchor* of the item's own
text (`ANCHORS`: the last line from its first word on, or its last word) becomes the anchor's
name, and a predicted anchor name is read back on the item being predicted. Closed-set
properties (true/false, even/odd) keep their values.

Limits, by design: a value seen fewer than `min_count` times in training is left out of the
training rows (only the `max_classes` most common values are kept, which bounds memory), so it is
never predicted; a property with no training rows predicts nothing (None: scored wrong).
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from introspect_mi.evaluation import Pair, object_value
from introspect_mi.metrics import most_common
from probes.config import ProbeConfig
from probes.logistic import Probe, fit_probe
from probes.splits import group_folds

ANCHORS = ("@first", "@last")
"""Anchor names of pointer labels: the item's last line from its first word on / its last word."""


@dataclass(frozen=True)
class InputOnlyConfig:
    """Settings of the input-only predictor."""

    dim: int = 1024
    """Hash buckets of the n-gram features (memory of a fit: about 12 × rows × dim × 4 bytes)."""
    c_grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    """Inverse L2 strengths tried by item-grouped cross-validation on the training rows."""
    folds: int = 5
    """Cross-validation folds (item-grouped), for choosing C and for the in-distribution variant."""
    min_count: int = 2
    """Training rows a label needs to be learnt (rarer labels' rows are left out)."""
    max_classes: int = 50
    """Most common labels kept per property (bounds the weight tensor)."""
    max_iter: int = 50
    """L-BFGS iterations at most per fit (as the quick probing preset: later steps no longer change predictions)."""
    tol: float = 1e-3
    """Gradient tolerance of a fit."""
    seed: int = 0
    """Seed of the cross-validation folds."""


def _last_line_words(text: str) -> list[str]:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].lower().split() if lines else []


def anchor_values(pair: Pair) -> dict[str, str | None]:
    """Each anchor's property value on the pair's own text (None where the anchor has none)."""
    words = _last_line_words(pair.item.text)
    texts = {"@first": " ".join(words), "@last": " ".join(words[-1:])}
    return {name: (pair.prop.extract(texts[name], pair.item.target) if texts[name] else None) for name in ANCHORS}


def encode_label(pair: Pair, value: str) -> str:
    """The training label of `value`: the first anchor it equals (open-set properties), else itself."""
    if pair.prop.answer_set is None:
        for name, anchored in anchor_values(pair).items():
            if anchored == value:
                return name
    return value


def decode_label(pair: Pair, label: str | None) -> str | None:
    """The property value a predicted label stands for on `pair` (an anchor read on its text)."""
    return anchor_values(pair)[label] if label in ANCHORS else label


def _ngrams(text: str, n_max: int) -> list[str]:
    return [text[i : i + n] for n in range(1, n_max + 1) for i in range(len(text) - n + 1)]


def _feature_names(text: str) -> list[str]:
    low = text.lower()
    words = low.split()
    names = [f"c:{g}" for g in _ngrams(low, 4)]
    names += [f"w:{w}" for w in words] + [f"w:{a} {b}" for a, b in zip(words, words[1:])]
    last_line = _last_line_words(text)
    if last_line:
        names += [f"f:{g}" for g in _ngrams(f"^{last_line[0]}$", 3)] + [f"l:{g}" for g in _ngrams(f"^{last_line[-1]}$", 3)]
    return names


@lru_cache(maxsize=65536)
def _hashed(text: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(bucket indices, counts) of one text: cached, since cross-validation featurises a text many times."""
    counts = Counter(zlib.crc32(n.encode("utf-8")) % dim for n in _feature_names(text))
    return np.fromiter(counts.keys(), dtype=np.int64), np.fromiter(counts.values(), dtype=np.float32)


def features(texts: Sequence[str], dim: int) -> np.ndarray:
    """[texts, dim] float32: log1p of hashed feature counts (see the module docstring)."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for i, text in enumerate(texts):
        idx, counts = _hashed(text, dim)
        out[i, idx] = counts
    return np.log1p(out)


@dataclass(frozen=True)
class PropertyModel:
    """One property's predictor: a fitted probe, or a constant label (one class / too few items)."""

    probe: Probe | None
    constant: str | None

    def predict(self, X: np.ndarray) -> list[str | None]:
        if self.probe is None:
            return [self.constant] * len(X)
        return [str(v) for v in self.probe.predict(X)]


def _fit_property(X: np.ndarray, labels: Sequence[str], groups: Sequence[str], config: InputOnlyConfig) -> PropertyModel:
    counts = Counter(labels)
    kept = {v for v, c in counts.most_common(config.max_classes) if c >= config.min_count}
    rows = [i for i, v in enumerate(labels) if v in kept]
    if not rows:
        return PropertyModel(None, most_common(list(labels)) if labels else None)
    y = [labels[i] for i in rows]
    g = [groups[i] for i in rows]
    if len(kept) < 2 or len(set(g)) < 2:
        return PropertyModel(None, most_common(y))
    probe_config = ProbeConfig(c_grid=config.c_grid, folds=config.folds, max_iter=config.max_iter, tol=config.tol, seed=config.seed)
    return PropertyModel(fit_probe(X[rows], y, probe_config, groups=g), None)


@dataclass(frozen=True)
class InputOnlyPredictor:
    """Per-property models over P's text; `predict` gives property values (None: no prediction)."""

    models: dict[str, PropertyModel]
    config: InputOnlyConfig

    def predict(self, pairs: Sequence[Pair]) -> list[tuple[str | None, str | None]]:
        """(predicted label, the property value it stands for) per pair."""
        out: list[tuple[str | None, str | None]] = [(None, None)] * len(pairs)
        by_prop: dict[str, list[int]] = {}
        for i, p in enumerate(pairs):
            by_prop.setdefault(p.prop.name, []).append(i)
        for prop, idx in by_prop.items():
            model = self.models.get(prop)
            if model is None:
                continue
            labels = model.predict(features([pairs[i].item.text for i in idx], self.config.dim))
            for i, label in zip(idx, labels):
                out[i] = (label, decode_label(pairs[i], label))
        return out


def fit(pairs: Sequence[Pair], values: Sequence[str], config: InputOnlyConfig = InputOnlyConfig()) -> InputOnlyPredictor:
    """Train on (pair, property value of the target's answer) rows: one model per property."""
    if len(pairs) != len(values):
        raise ValueError(f"{len(pairs)} pairs but {len(values)} values")
    by_prop: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        by_prop.setdefault(p.prop.name, []).append(i)
    models = {}
    for prop, idx in by_prop.items():
        X = features([pairs[i].item.text for i in idx], config.dim)
        labels = [encode_label(pairs[i], values[i]) for i in idx]
        models[prop] = _fit_property(X, labels, [pairs[i].item.item_id for i in idx], config)
    return InputOnlyPredictor(models, config)


def rows(pairs: Sequence[Pair], objects: dict[str, list[str]], predictions: Sequence[tuple[str | None, str | None]]) -> pd.DataFrame:
    """Rows in `introspect_mi.evaluation.score_rows`'s shape: the target's answer and value, the
    predicted label (as `hypothetical_answer`) and value, and whether they match."""
    out = []
    for pair, (label, predicted) in zip(pairs, predictions):
        answer = objects[pair.item.item_id][0]
        value = object_value(pair.prop, answer, pair.item.target)
        out.append({"item_id": pair.item.item_id, "task": pair.spec.name, "property": pair.prop.name,
                    "object_answer": answer, "object_value": value, "hypothetical_answer": label,
                    "hypothetical_value": predicted, "correct": value is not None and predicted == value})
    return pd.DataFrame(out)


def held_out_rows(train_pairs: Sequence[Pair], train_values: Sequence[str], pairs: Sequence[Pair], objects: dict[str, list[str]],
                  config: InputOnlyConfig = InputOnlyConfig()) -> pd.DataFrame:
    """Fit on the training rows (the cross model's labels), predict the held-out `pairs`, score
    against `objects` (the target's behaviour)."""
    return rows(pairs, objects, fit(train_pairs, train_values, config).predict(pairs))


def in_distribution_rows(pairs: Sequence[Pair], objects: dict[str, list[str]], config: InputOnlyConfig = InputOnlyConfig()) -> pd.DataFrame:
    """The upper bound of what the input alone gives on these tasks: item-grouped
    cross-validation within `pairs` (each fold predicted by a model fitted, C chosen by inner
    CV, on the other folds' compliant pairs of the same target)."""
    values = [object_value(p.prop, objects[p.item.item_id][0], p.item.target) for p in pairs]
    fold = group_folds([p.item.item_id for p in pairs], config.folds, config.seed)
    predictions: list[tuple[str | None, str | None]] = [(None, None)] * len(pairs)
    for f in range(int(fold.max()) + 1):
        train = [i for i in range(len(pairs)) if fold[i] != f and values[i] is not None]
        test = [i for i in range(len(pairs)) if fold[i] == f]
        model = fit([pairs[i] for i in train], [str(values[i]) for i in train], config)
        for i, pred in zip(test, model.predict([pairs[i] for i in test])):
            predictions[i] = pred
    return rows(pairs, objects, predictions)
