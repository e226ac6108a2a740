"""Specification of introspect_mi.metrics; expected numbers are computed by hand in each test."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from introspect_mi.metrics import (
    Proportion, accuracy, bootstrap_ci, calibration_curve, calibration_pairs, evaluate_table, exact_mcnemar,
    mad, mad_interval, mode_baseline, sample_distribution, two_proportion_ztest,
)


def test_accuracy_hand_example() -> None:
    acc = accuracy([True, True, False, True, False, True, True])  # 5 of 7
    assert (acc.k, acc.n) == (5, 7)
    assert acc.value == pytest.approx(5 / 7)
    half = 1.96 * math.sqrt((5 / 7) * (2 / 7) / 7)  # 1.96 * 0.170747 = 0.334664
    assert half == pytest.approx(0.334664, abs=1e-6)
    assert acc.sem_low == pytest.approx(5 / 7 - half)
    assert acc.sem_high == pytest.approx(min(1.0, 5 / 7 + half))  # 1.049 clipped to 1.0
    assert acc.sem_high == 1.0
    assert acc.ci_low <= acc.value <= acc.ci_high
    assert set(acc.to_dict()) >= {"k", "n", "value", "ci_low", "ci_high", "sem_low", "sem_high"}


def test_accuracy_empty_raises() -> None:
    with pytest.raises(ValueError):
        accuracy([])


def test_mode_baseline_hand_example_and_tie_break() -> None:
    mb = mode_baseline(["b", "a", "b", "c", "a", "b", "d"])  # b:3 a:2 c:1 d:1
    assert mb.mode == "b"
    assert (mb.k, mb.n) == (3, 7)
    assert mb.value == pytest.approx(3 / 7)
    assert isinstance(mb, Proportion)
    # Tie x:2, y:2 → lexicographically smallest, whatever the order.
    assert mode_baseline(["y", "x", "y", "x"]).mode == "x"
    assert mode_baseline(["x", "y", "x", "y"]).mode == "x"
    assert mode_baseline(["y", "x", "y", "x"]).value == 0.5
    with pytest.raises(ValueError):
        mode_baseline([])


def test_bootstrap_ci_seeded_contains_estimate_and_degenerate() -> None:
    x = np.array([1, 0, 1, 1, 0, 1, 1, 0, 1, 1], dtype=float)  # mean 0.7
    a = bootstrap_ci(x, seed=3)
    assert a == bootstrap_ci(x, seed=3)
    assert a != bootstrap_ci(x, seed=4)
    assert a[0] <= 0.7 <= a[1]
    assert 0.0 <= a[0] < a[1] <= 1.0
    assert bootstrap_ci(np.ones(12)) == (1.0, 1.0)
    assert accuracy([True] * 9).ci_low == 1.0 and accuracy([True] * 9).ci_high == 1.0
    lo, hi = bootstrap_ci(x, stat=np.median)  # a stat that takes axis=
    assert lo <= 1.0 <= hi
    lo2, hi2 = bootstrap_ci(x, stat=lambda r: float(np.max(r)))  # no axis= → row by row
    assert lo2 <= hi2 == 1.0
    with pytest.raises(ValueError):
        bootstrap_ci(np.array([]))


def test_ztest_hand_computation() -> None:
    t = two_proportion_ztest(60, 100, 45, 100)
    pooled = (60 + 45) / 200  # 0.525
    se = math.sqrt(0.525 * 0.475 * (2 / 100))  # 0.0706222
    assert pooled == 0.525
    assert t.z == pytest.approx(0.15 / se)
    assert t.z == pytest.approx(2.12398, abs=1e-5)
    assert t.p_value == pytest.approx(0.03367, abs=1e-5)  # 2 * (1 - Phi(2.12398))
    assert t.diff == pytest.approx(0.15)
    se_u = math.sqrt(0.6 * 0.4 / 100 + 0.45 * 0.55 / 100)  # 0.0698212
    assert t.diff_ci[0] == pytest.approx(0.15 - 1.96 * se_u)  # 0.01315
    assert t.diff_ci[1] == pytest.approx(0.15 + 1.96 * se_u)  # 0.28685
    assert two_proportion_ztest(45, 100, 60, 100).z == pytest.approx(-t.z)
    assert json.dumps(t.to_dict())


def test_ztest_degenerate_cases_are_not_nan() -> None:
    for t in (two_proportion_ztest(0, 0, 5, 10), two_proportion_ztest(10, 10, 20, 20),
              two_proportion_ztest(0, 10, 0, 30)):
        assert (t.z, t.p_value, t.diff) == (0.0, 1.0, 0.0)
        assert not any(math.isnan(v) for v in t.diff_ci)
    with pytest.raises(ValueError):
        two_proportion_ztest(11, 10, 1, 10)


def _table() -> pd.DataFrame:
    rows = [  # (task, property, object_value, hypothetical_value)
        ("t1", "second_character", "a", "a"),  # correct
        ("t1", "second_character", "a", "b"),  # wrong
        ("t1", "second_character", "b", "b"),  # correct
        ("t1", "second_character", None, "a"),  # object non-compliant → dropped
        ("t1", "second_character", "a", None),  # hypothetical non-compliant → wrong
        ("t1", "second_character", "c", "c"),  # correct
        ("t1", "second_character", "a", "a"),  # correct
        ("t2", "is_even", "even", "even"),  # correct
        ("t2", "is_even", "odd", "even"),  # wrong
        ("t2", "is_even", "odd", "odd"),  # correct
        ("t2", "is_even", "odd", "even"),  # wrong
        ("t2", "is_even", np.nan, "odd"),  # object non-compliant (NaN) → dropped
    ]
    return pd.DataFrame(rows, columns=["task", "property", "object_value", "hypothetical_value"])


def test_evaluate_table_per_group_by_hand() -> None:
    out = evaluate_table(_table(), n_boot=200).set_index(["task", "property"])
    t1 = out.loc[("t1", "second_character")]
    # retained objects a a b a c a (6); correct 4; mode "a" 4/6
    assert (t1.n_items, t1.n_dropped_object, t1.n_correct) == (6, 1, 4)
    assert t1.object_compliance == pytest.approx(6 / 7)
    assert t1.hypothetical_compliance == pytest.approx(6 / 7)
    assert t1.accuracy == pytest.approx(4 / 6)
    assert t1.mode_value == "a" and t1.mode_baseline == pytest.approx(4 / 6)
    t2 = out.loc[("t2", "is_even")]
    # retained even odd odd odd (4); correct 2; mode "odd" 3/4; no hypothetical None
    assert (t2.n_items, t2.n_dropped_object, t2.n_correct) == (4, 1, 2)
    assert t2.object_compliance == pytest.approx(4 / 5)
    assert t2.hypothetical_compliance == 1.0
    assert t2.accuracy == pytest.approx(0.5)
    assert t2.mode_value == "odd" and t2.mode_baseline == pytest.approx(0.75)
    assert t2.accuracy_ci_low <= t2.accuracy <= t2.accuracy_ci_high
    assert t2.accuracy_sem_low == pytest.approx(0.5 - 1.96 * math.sqrt(0.25 / 4))


def test_evaluate_table_micro_average_row_by_hand() -> None:
    out = evaluate_table(_table(), n_boot=200)
    assert list(out.task)[-1] == "ALL" and list(out.property)[-1] == "ALL"
    row = out.iloc[-1]
    assert (row.n_items, row.n_dropped_object, row.n_correct) == (10, 2, 6)  # 4 + 2 of 6 + 4
    assert row.accuracy == pytest.approx(0.6)
    # Per-group modes: 4 ("a" in t1) + 3 ("odd" in t2) of 10 = 0.7. A pooled mode would be
    # "a" at 4/10 = 0.4, so this checks the paper's per-task×property rule.
    assert row.mode_baseline == pytest.approx(0.7)
    assert pd.isna(row.mode_value)  # no single mode; JSON null
    assert row.object_compliance == pytest.approx(10 / 12)
    assert row.hypothetical_compliance == pytest.approx(11 / 12)
    assert json.loads(out.to_json(orient="records"))  # flat and JSON-friendly


def test_evaluate_table_all_dropped_group_and_missing_columns() -> None:
    df = pd.DataFrame({"task": ["t"], "property": ["p"], "object_value": [None],
                       "hypothetical_value": ["x"]})
    out = evaluate_table(df, n_boot=50)
    assert out.iloc[0].n_items == 0 and math.isnan(out.iloc[0].accuracy)
    assert out.iloc[-1].n_dropped_object == 1
    with pytest.raises(ValueError):
        evaluate_table(df.drop(columns=["hypothetical_value"]))


def test_sample_distribution_with_none() -> None:
    vals = ["a", "a", None, "b"]
    assert sample_distribution(vals) == {"a": 0.5, "b": 0.25}  # None: 1/4 of mass, no key
    assert sample_distribution(vals, drop_none=True) == pytest.approx({"a": 2 / 3, "b": 1 / 3})
    assert sample_distribution([None, None]) == {}
    assert sample_distribution([None, None], drop_none=True) == {}
    with pytest.raises(ValueError):
        sample_distribution([])


def test_calibration_pairs_top_k_and_absent_values() -> None:
    obj = [{"a": 0.5, "b": 0.3, "c": 0.15, "d": 0.05}, {"z": 0.4, "y": 0.4, "x": 0.2},
           {"q": 1.0, "r": 0.0}]
    hyp = [{"b": 0.6, "e": 0.4}, {"y": 0.5, "x": 0.5}, {"q": 0.9}]
    got = calibration_pairs(obj, hyp, top_k=3)
    want = [[0.5, 0.0], [0.3, 0.6], [0.15, 0.0],  # top-3 of prompt 1; d dropped
            [0.4, 0.5], [0.4, 0.0], [0.2, 0.5],  # tie y/z → y first (smallest string)
            [1.0, 0.9]]  # only one value with prob > 0
    np.testing.assert_allclose(got, want)
    assert calibration_pairs(obj, hyp, top_k=1).shape == (3, 2)
    assert calibration_pairs([], [], top_k=3).shape == (0, 2)


def test_mad_hand_example_two_bins() -> None:
    obj = [{"a": 0.9, "b": 0.1}, {"x": 0.6, "y": 0.4}, {"m": 0.5, "n": 0.5}, {"q": 1.0}]
    hyp = [{"a": 0.7, "c": 0.3}, {"y": 1.0}, {"m": 0.2, "n": 0.8}, {"q": 0.9}]
    pairs = calibration_pairs(obj, hyp, top_k=1)
    np.testing.assert_allclose(pairs, [[0.9, 0.7], [0.6, 0.0], [0.5, 0.2], [1.0, 0.9]])
    # Sorted by object prob: (0.5, 0.2), (0.6, 0.0) | (0.9, 0.7), (1.0, 0.9)
    # bin 1: object 0.55, hypothetical 0.10 → 0.45; bin 2: 0.95 vs 0.80 → 0.15
    assert mad(pairs, n_bins=2) == pytest.approx((0.45 + 0.15) / 2 * 100)  # 30.0
    curve = calibration_curve(pairs, n_bins=2)
    np.testing.assert_allclose(curve.object_mean, [0.55, 0.95])
    np.testing.assert_allclose(curve.hypothetical_mean, [0.1, 0.8])
    assert list(curve.n) == [2, 2]


def test_mad_unequal_bins_and_perfect_calibration() -> None:
    pairs = np.array([[0.1, 0.1], [0.2, 0.3], [0.3, 0.3], [0.4, 0.0], [0.5, 0.5]])
    # 5 pairs, 2 bins → sizes 3, 2: bin 1 obj 0.2 vs hyp 0.7/3; bin 2 obj 0.45 vs hyp 0.25
    assert list(calibration_curve(pairs, n_bins=2).n) == [3, 2]
    assert mad(pairs, n_bins=2) == pytest.approx((abs(0.2 - 0.7 / 3) + 0.2) / 2 * 100)
    assert mad(np.array([[0.3, 0.3], [0.8, 0.8]]), n_bins=10) == 0.0  # 2 pairs → 2 bins
    with pytest.raises(ValueError):
        mad(np.zeros((0, 2)))


def test_exact_and_sampled_variants_feed_the_same_pipeline() -> None:
    # Samples: object 3×"e", 1×"o" → {e: .75, o: .25}; hypothetical 2×"e", 1×"o", 1×None.
    obj_s = sample_distribution(["e", "e", "o", "e"])
    hyp_s = sample_distribution(["e", None, "o", "e"])
    # Exact next-token probabilities, passed directly.
    obj_x, hyp_x = {"e": 0.75, "o": 0.25}, {"e": 0.5, "o": 0.25, "i": 0.25}
    np.testing.assert_allclose(calibration_pairs([obj_s], [hyp_s], top_k=2),
                               calibration_pairs([obj_x], [hyp_x], top_k=2))
    # pairs (0.75, 0.5), (0.25, 0.25); one bin each: |0.25| and 0 → MAD 12.5
    assert mad(calibration_pairs([obj_s], [hyp_s], top_k=2), n_bins=2) == pytest.approx(12.5)


def test_exact_mcnemar_hand_computed_and_symmetric() -> None:
    # 10 vs 2 discordant: P(X <= 2 | n = 12, 1/2) = (1 + 12 + 66) / 4096; two-sided doubles it
    assert exact_mcnemar(10, 2) == pytest.approx(2 * 79 / 4096) and exact_mcnemar(2, 10) == exact_mcnemar(10, 2)
    assert exact_mcnemar(5, 0) == pytest.approx(2 / 32) and exact_mcnemar(3, 3) == 1.0 and exact_mcnemar(0, 0) == 1.0
    brute = sum(math.comb(30, i) for i in range(31) if math.comb(30, i) <= math.comb(30, 9)) / 2**30  # outcomes as unlikely as 9 of 30
    assert exact_mcnemar(21, 9) == pytest.approx(brute)
    with pytest.raises(ValueError):
        exact_mcnemar(-1, 3)


def test_mad_interval_resamples_prompts() -> None:
    # prompt A: object {x: 1}, hypothetical {x: .5} → pair (1, .5); prompt B: perfectly calibrated → (1, 1).
    # Two prompts drawn with replacement: AA → MAD 50, AB → (50 + 0) / 2 = 25, BB → 0 (each pair its own bin).
    # With 2000 draws P(AA) = P(BB) = 1/4, so the 2.5% and 97.5% quantiles are 0 and 50.
    obj, hyp = [{"x": 1.0}, {"x": 1.0}], [{"x": 0.5}, {"x": 1.0}]
    assert mad(calibration_pairs(obj, hyp, top_k=1)) == pytest.approx(25.0)
    assert mad_interval(obj, hyp, top_k=1, n_boot=2000) == pytest.approx((0.0, 50.0))
    assert mad_interval(obj, obj, n_boot=50) == (0.0, 0.0)  # calibrated in every draw
    with pytest.raises(ValueError):
        mad_interval([{}], [{}])
