"""Labels for the two control probes, and selectivity.

- Shuffled labels: the training labels permuted. A probe trained on them and tested on the real
  test labels measures what the pipeline scores with no information at all (≈ chance, or the
  majority rate); accuracy far above it would mean leakage or a bug.
- Control task (Hewitt & Liang, 2019): every distinct key gets a random but fixed label, drawn
  from the training label distribution. The key must be a feature of the *input* (`p_last_word`:
  P's last word): a latent such as the object answer's first word is itself the self-simulation
  signal under test, so a probe decoding it is not "memorising identities". Reaching high
  accuracy on it needs memorising key → label from the activations, so it measures the probe's
  capacity to memorise identities rather than to read the property. Keys must recur between
  train and test (an item id would not: test keys would be unseen and the control at chance).
- Selectivity = probe accuracy − control-task accuracy: high when the property is read out
  rather than looked up from the identity of the input.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from probes.metrics import as_labels


def shuffled_labels(y: Sequence, seed: int = 0) -> np.ndarray:
    """A seeded permutation of the labels (same label counts, no link to the vectors)."""
    y = as_labels(y)
    return y[np.random.default_rng([seed, 3]).permutation(y.size)]


def control_task_labels(keys: Sequence, label_pool: Sequence, seed: int = 0) -> np.ndarray:
    """One label per vector: each distinct key's label is drawn from `label_pool`'s frequencies.

    Keys are sorted before drawing, so a key's label depends only on the key set and the seed,
    never on row order; pass train and test keys together so both sides share the mapping.
    """
    names, codes = np.unique(as_labels(keys), return_inverse=True)
    values, counts = np.unique(as_labels(label_pool), return_counts=True)
    drawn = np.random.default_rng([seed, 4]).choice(values, size=names.size, p=counts / counts.sum())
    return drawn[codes.reshape(-1)]


def p_last_word(tokens: Sequence[str], p_tokens: Sequence[int]) -> str:
    """The control task's key: the last whitespace-separated word of P's text (its tokens joined),
    read off the prompt alone; '' when P is empty. The same P gives the same key in any prompt."""
    words = "".join(tokens[i] for i in p_tokens).split()
    return words[-1] if words else ""


def selectivity(probe_accuracy: float, control_task_accuracy: float) -> float:
    """Probe accuracy minus control-task accuracy (Hewitt & Liang's selectivity)."""
    return probe_accuracy - control_task_accuracy
