"""Input-only features: what a classifier can read from the prompt's tokens with no model state.

A probe on activations can only claim the model *computes* something beyond its input when it
beats a classifier on the input itself; `bag_of_tokens` is that input (token counts, order lost but
for the last tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bag_of_tokens(docs: Sequence[Sequence[str]], last: int = 0) -> tuple[np.ndarray, list[str]]:
    """(counts [docs, features] float32, feature names sorted): how often each token occurs in
    each doc, plus, for each of the `last` final positions i, an indicator of the token there
    (named "last-i:<token>"; the last token of a prompt often says more than its bag)."""
    marked = [[*doc, *(f"last-{i}:{doc[-i]}" for i in range(1, min(last, len(doc)) + 1))] for doc in docs]
    vocab = sorted({tok for doc in marked for tok in doc})
    column = {tok: j for j, tok in enumerate(vocab)}
    counts = np.zeros((len(docs), len(vocab)), dtype=np.float32)
    for i, doc in enumerate(marked):
        for tok in doc:
            counts[i, column[tok]] += 1
    return counts, vocab
