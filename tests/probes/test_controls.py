"""Specification of probes.controls: shuffled labels, Hewitt & Liang control-task labels."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from probes.controls import control_task_labels, selectivity, shuffled_labels


def test_shuffled_labels_permute_with_a_seed() -> None:
    y = np.array(["a"] * 30 + ["b"] * 20 + ["c"] * 10)
    s = shuffled_labels(y, seed=0)
    assert Counter(s) == Counter(y)
    assert (s != y).mean() > 0.3  # not (nearly) the original order
    np.testing.assert_array_equal(s, shuffled_labels(y, seed=0))
    assert not np.array_equal(s, shuffled_labels(y, seed=1))


def test_control_task_is_a_fixed_function_of_the_key() -> None:
    keys = np.array(["cat", "dog", "cat", "emu", "dog", "cat"])
    labels = control_task_labels(keys, ["x", "y", "z"], seed=0)
    for key in set(keys):
        assert len(set(labels[keys == key])) == 1
    assert set(labels) <= {"x", "y", "z"}
    # The mapping depends on the key set and seed, not on row order.
    order = np.array([5, 3, 1, 0, 4, 2])
    np.testing.assert_array_equal(control_task_labels(keys[order], ["x", "y", "z"], seed=0), labels[order])


def test_control_task_follows_the_label_distribution() -> None:
    pool = ["a"] * 70 + ["b"] * 30
    labels = control_task_labels([f"w{i}" for i in range(5000)], pool, seed=0)
    # one draw per key: share of "a" ~ Binomial(5000, .7)/5000, SD √(.21/5000) ≈ 0.0065; 0.03 ≈ 4.6 SD
    assert abs(np.mean(labels == "a") - 0.7) < 0.03


def test_selectivity_is_probe_minus_control_accuracy() -> None:
    assert selectivity(0.9, 0.35) == pytest.approx(0.55)
    assert selectivity(0.6, 0.75) == pytest.approx(-0.15)


def test_the_input_control_key_is_p_last_word_only() -> None:
    """Same P in two prompts (different questions and answers around it): same key, same label;
    another last word: its own key. Nothing outside P's tokens enters."""
    from probes.controls import p_last_word

    obj = ["<s>", "Seq:", " cat", " dog", " lion", "\n", "Answer:", " zebra"]
    hyp = ["<s>", "Q:", " what", " would", " you", " say", "?", " cat", " dog", " lion", " >", " eel"]
    assert p_last_word(obj, [2, 3, 4]) == p_last_word(hyp, [7, 8, 9]) == "lion"
    assert p_last_word(obj, [2, 3]) == "dog" and p_last_word(obj, []) == ""
    assert p_last_word([" li", "on", " x"], [0, 1]) == "lion"  # subword tokens joined into the word
    keys = [p_last_word(obj, [2, 3, 4]), p_last_word(hyp, [7, 8, 9]), p_last_word(obj, [2, 3])]
    labels = control_task_labels(keys, ["a", "b", "c"] * 10, seed=3)
    assert labels[0] == labels[1]
