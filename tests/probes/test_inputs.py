"""Specification of probes.inputs: the bag of a prompt's tokens, with its last tokens marked."""

from __future__ import annotations

import numpy as np

from probes.inputs import bag_of_tokens


def test_counts_per_doc_over_a_sorted_vocabulary() -> None:
    counts, vocab = bag_of_tokens([["b", "a", "b"], ["c"]])
    assert vocab == ["a", "b", "c"]
    np.testing.assert_array_equal(counts, [[1, 2, 0], [0, 0, 1]])
    assert counts.dtype == np.float32


def test_last_tokens_are_extra_positional_features() -> None:
    counts, vocab = bag_of_tokens([["x", "y"], ["y", "x"], ["z"]], last=2)
    assert vocab == ["last-1:x", "last-1:y", "last-1:z", "last-2:x", "last-2:y", "x", "y", "z"]
    np.testing.assert_array_equal(counts, [[0, 1, 0, 1, 0, 1, 1, 0],   # same bag as the next doc,
                                           [1, 0, 0, 0, 1, 1, 1, 0],   # told apart by the order
                                           [0, 0, 1, 0, 0, 0, 0, 1]])  # shorter than `last`: what it has
