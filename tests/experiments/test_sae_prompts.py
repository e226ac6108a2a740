"""The SAE experiment's analysed prompts and attribution tables, on hand-made records and attributions."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from experiments import sae_prompts as sp
from introspect_mi.saes.analysis import Attribution
from introspect_mi.saes.answers import AnswerTokens


def records_table() -> pd.DataFrame:
    """12 hypothetical records over two tasks (every third without a correct value) and their objects."""
    rows = [{"record": i, "kind": "object", "task": "t", "item_id": f"o{i}", "object_value": None, "correct": None} for i in range(2)]
    for i in range(12):
        rows.append({"record": 2 + i, "kind": "hypothetical", "task": ["animals", "words"][i % 2], "item_id": f"i{i}",
                     "object_value": None if i % 3 == 2 else "a", "correct": i % 3 == 0})
    return pd.DataFrame(rows)


def test_chosen_records_have_a_value_spread_over_tasks_and_half_correct() -> None:
    chosen = sp.choose_records(records_table(), 6, seed=0)
    assert len(chosen) == 6 and chosen["object_value"].notna().all() and (chosen["kind"] == "hypothetical").all()
    assert chosen["correct"].sum() == 3  # half of 6 from the 4 correct records with a value
    assert set(chosen["task"]) == {"animals", "words"}
    assert chosen["record"].is_monotonic_increasing
    assert sp.choose_records(records_table(), 6, seed=0).equals(chosen)
    assert len(sp.choose_records(records_table(), 100, seed=0)) == 8  # all there are


def test_only_prompts_with_another_valid_value_are_scorable(tiny_llama_dir) -> None:
    from introspect_mi.models import load

    handle = load(tiny_llama_dir)
    records = pd.DataFrame({"record": range(5), "kind": ["hypothetical"] * 4 + ["object"], "task": ["t", "t", "u", "t", "t"],
                            "property": ["first_word", "first_word", "first_word", "ethical_stance", "first_word"],
                            "object_value": ["dog", "owl", "cat", "true", "emu"]})
    kept = sp.scorable(handle, records)
    assert kept["record"].tolist() == [0, 1, 3]  # task u has one value only; the object record is not a prompt to score


def test_attribution_tables_sum_p_and_question_tokens_by_hand() -> None:
    records = pd.DataFrame({"record": [5, 6], "item_id": ["a", "b"], "task": ["t", "t"], "property": ["p", "q"]})
    prompts = sp.Prompts(records, [], [[2, 3, 4], [1, 2]], [{2, 3}, {1}], AnswerTokens([0, 0], [[1], [1]]))
    attr = [torch.tensor([[1.0, 0.0], [-2.0, 0.5], [0.0, 3.0]]), torch.tensor([[0.25, 0.0], [0.0, -1.0]])]
    acts = [torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 0.0]])]
    error_attr = [torch.tensor([1.0, -1.0, 0.5]), torch.tensor([0.0, 2.0])]
    error_sq, norm_sq = [torch.tensor([1.0, 0.0, 1.0]), torch.tensor([1.0, 1.0])], [torch.tensor([4.0, 2.0, 2.0]), torch.tensor([2.0, 4.0])]
    a = Attribution([[2, 3, 4], [1, 2]], acts, attr, torch.tensor([1.5, -0.5]), error_attr, error_sq, norm_sq)
    items, features = sp.attribution_tables("untrained", prompts, {7: a})
    first, second = items.iloc[0], items.iloc[1]
    assert (first["attr_p"], first["attr_q"], first["abs_p"], first["abs_q"], first["n_p"], first["n_q"]) == (-0.5, 3.0, 3.5, 3.0, 2, 1)
    assert (second["attr_p"], second["attr_q"], second["n_p"]) == (0.25, -1.0, 1)
    assert features["feature"].tolist() == [1, 0] and features["rank"].tolist() == [1, 2]  # ranked by total attribution
    top = features.iloc[0]
    assert (top["total"], top["at_p"], top["at_q"], top["items_active"]) == (2.5, 0.5, 2.0, 1)
    assert (first["attr_error"], first["abs_error"], first["error_sq"], first["norm_sq"]) == (0.5, 2.5, 2.0, 8.0)
    summary = sp.attribution_summary(items)
    assert summary.loc[0, "share_p"] == pytest.approx((3.5 + 0.25) / (3.5 + 0.25 + 3.0 + 1.0))
    assert summary.loc[0, "abs_q_per_token"] == pytest.approx(4.0 / 2)
    assert summary.loc[0, "error_share"] == pytest.approx((2.5 + 2.0) / (2.5 + 2.0 + 3.5 + 3.0 + 0.25 + 1.0))
    assert summary.loc[0, "attr_error"] == pytest.approx((0.5 + 2.0) / 2)  # mean per prompt
    assert summary.loc[0, "relative_error"] == pytest.approx((1 / 4 + 0 + 1 / 2 + 1 / 2 + 1 / 4) / 5)  # mean over tokens
    assert summary.loc[0, "relative_error_pooled"] == pytest.approx(4.0 / 14.0)
    no_error = Attribution(a.positions, a.acts, a.attr, a.metric)  # measured without the error term: no error columns
    assert "error_share" not in sp.attribution_summary(sp.attribution_tables("u", prompts, {7: no_error})[0])
