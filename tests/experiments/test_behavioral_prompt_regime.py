"""The prompt-regime measurements (experiments/behavioral_prompt_regime.py) on hand-counted answers:
four animals items, property first_character (the value is the answer's first letter; an empty
answer is non-compliant)."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments import behavioral_prompt_regime as pr
from introspect_mi import evaluation as ev
from introspect_mi.store import RunDir


@pytest.fixture(scope="module")
def pairs() -> list[ev.Pair]:
    return ev.make_pairs(ev.load_task_items(["animals"], "val", 4, 0), ["first_character"])


def answers(pairs: list[ev.Pair], words: list[str]) -> dict[str, list[str]]:
    return {p.item.item_id: [w] for p, w in zip(pairs, words)}


def letters(*xs: str) -> list[list[str]]:
    return [[x] for x in xs]


def test_agreement_counts_pairs_compliant_under_both_prompts(pairs: list[ev.Pair]) -> None:
    # k-shot c d o b; 0-shot c d (none) a: item 2 drops out, items 0 and 1 agree, item 3 differs → 2 of 3
    a = pr.agreement(pairs, answers(pairs, ["cat", "dog", "owl", "bee"]), answers(pairs, ["cow", "deer", "", "ant"]), n_boot=200, seed=0)
    assert (a["n_pairs"], a["n_both_compliant"]) == (4, 3)
    assert (a["k_shot_compliant"], a["zero_shot_compliant"]) == (1.0, 0.75)
    assert a["agreement"] == pytest.approx(2 / 3) and a["agreement_ci_low"] <= 2 / 3 <= a["agreement_ci_high"]


def test_agreement_without_any_pair_compliant_under_both_has_no_estimate(pairs: list[ev.Pair]) -> None:
    a = pr.agreement(pairs, answers(pairs, ["cat", "dog", "owl", "bee"]), answers(pairs, [""] * 4), n_boot=50, seed=0)
    assert a["n_both_compliant"] == 0 and "agreement" not in a


def test_zero_shot_truth_rescores_the_same_answers_against_the_other_behaviour(tmp_path: Path, pairs: list[ev.Pair]) -> None:
    run = RunDir.create(tmp_path, "r", {"x": 1}, seed=0)
    truth = answers(pairs, ["cow", "deer", "", "ant"])  # values c d (none) a
    hyps = {"self": letters("c", "d", "o", "b"), "cross": letters("c", "x", "o", "a")}
    out = pr.zero_shot_truth(run, pairs, truth, hyps, n_boot=100, seed=0)
    # 3 pairs with a compliant target: self right on 0, 1; cross right on 0, 3
    assert (out["first"], out["second"], out["n_pairs"]) == ("self", "cross", 3)
    assert out["first_accuracy"] == pytest.approx(2 / 3) and out["second_accuracy"] == pytest.approx(2 / 3)
    assert (out["only_first"], out["only_second"], out["diff"]) == (1, 1, 0.0)
    assert out["excluded_cells"] == []  # c, d, a: no value above 70%
    assert out["overall"]["self"]["accuracy"] == pytest.approx(2 / 3)
    assert list(run.read_table("rows_zero_shot_truth_1")["correct"]) == [True, False, False, True]


def test_zero_shot_truth_applies_the_exclusion_rule_to_the_new_target(tmp_path: Path, pairs: list[ev.Pair]) -> None:
    run = RunDir.create(tmp_path, "r", {"x": 1}, seed=0)
    truth = answers(pairs, ["cat", "cow", "crow", "cod"])  # one value on every pair: the cell is degenerate
    out = pr.zero_shot_truth(run, pairs, truth, {"self": letters("c", "c", "c", "c"), "cross": letters("d", "d", "d", "d")}, n_boot=50, seed=0)
    assert out["n_pairs"] == 0 and [c["mode_value"] for c in out["excluded_cells"]] == ["c"]


def test_untrained_prompt_effect_is_zero_shot_minus_k_shot_on_the_same_target(pairs: list[ev.Pair]) -> None:
    truth = answers(pairs, ["cat", "dog", "owl", "bee"])
    out = pr.untrained_prompt_effect(pairs, truth, letters("c", "x", "x", "x"), letters("c", "d", "o", "x"), n_boot=100, seed=0)
    assert (out["first_accuracy"], out["second_accuracy"]) == (0.25, 0.75)
    assert out["diff"] == pytest.approx(-0.5) and (out["only_first"], out["only_second"]) == (0, 2)


def test_regime_text_names_each_measurement(tmp_path: Path, pairs: list[ev.Pair]) -> None:
    run = RunDir.create(tmp_path, "r", {"x": 1}, seed=0)
    k_shot, zero = answers(pairs, ["cat", "dog", "owl", "bee"]), answers(pairs, ["cow", "deer", "", "ant"])
    r = {"k": 2, "k_hypothetical": 2, "truth_model": "self-trained M1",
         "agreement": {"M1": pr.agreement(pairs, k_shot, zero, n_boot=50, seed=0), "M2": pr.agreement(pairs, k_shot, answers(pairs, [""] * 4), n_boot=50, seed=0)},
         "zero_shot_truth": pr.zero_shot_truth(run, pairs, zero, {"self": letters("c", "d", "o", "b"), "cross": letters("c", "x", "o", "a")}, n_boot=50, seed=0),
         "untrained_prompt_effect": pr.untrained_prompt_effect(pairs, k_shot, letters("c", "x", "x", "x"), letters("c", "d", "o", "x"), n_boot=50, seed=0)}
    text = pr.regime_text(r)
    assert "M1: compliant 75% 0-shot / 100% 2-shot; property value agrees on 66.7%" in text
    assert "M2:" in text and "no pair compliant under both" in text
    assert "self-trained M1's 0-shot behaviour" in text and "asked 0-shot − 2-shot" in text
    assert list(pr.as_frame(r)["model"]) == ["M1", "M2"]
