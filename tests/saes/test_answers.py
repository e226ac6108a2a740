"""The logit difference of the correct value against the other valid values, and compliance."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from introspect_mi.saes.answers import AnswerTokens, answer_tokens, compliant, logit_difference, logit_difference_metric, valid_values


def test_valid_values_are_the_answer_set_or_the_tasks_object_values() -> None:
    records = pd.DataFrame({"task": ["a", "a", "a", "b", "a"], "property": ["first_word", "first_word", "ethical_stance", "first_word", "first_word"],
                            "object_value": ["dog", "cat", "true", "owl", None]})
    values = valid_values(records)
    assert values["a", "first_word"] == ["cat", "dog"] and values["b", "first_word"] == ["owl"]
    assert values["a", "ethical_stance"] == ["false", "true"]  # the finite set, whatever the answers were


def test_answer_tokens_leave_out_the_target_and_values_sharing_its_first_token(tiny) -> None:
    chosen = pd.DataFrame({"record": [1, 2], "task": ["t", "t"], "property": ["first_word", "first_word"], "object_value": ["cat", "dog"]})
    values = {("t", "first_word"): ["cat", "category", "dog", "owl"]}
    got = answer_tokens(tiny, chosen, values)
    first = {v: tiny.tokenizer(tiny.prompt_format.answer_prefix + v, add_special_tokens=False)["input_ids"][0] for v in values["t", "first_word"]}
    assert got.targets == [first["cat"], first["dog"]]
    assert set(got.others[0]) == {first[v] for v in ("category", "dog", "owl")} - {first["cat"]}
    assert first["cat"] not in got.others[0] and first["dog"] not in got.others[1]
    with pytest.raises(ValueError, match="include its correct token"):
        AnswerTokens([5], [[5, 6]])


def test_logit_difference_by_hand_and_nan_without_other_values() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0, 0.0], [0.0, 5.0, 0.0, 0.0]])
    got = logit_difference(logits, [2, 1], [[0, 1], []])
    assert got[0].item() == pytest.approx(3.0 - math.log(math.exp(1.0) + math.exp(2.0)))
    assert math.isnan(got[1].item())
    shifted = logit_difference(logits + 7.0, [2, 1], [[0, 1], []])  # a shift shared by every token changes nothing
    assert shifted[0].item() == pytest.approx(got[0].item())


def test_compliance_is_the_argmax_starting_any_valid_value() -> None:
    answers = AnswerTokens([0, 0, 0], [[1], [1], [2]])
    logits = torch.tensor([[3.0, 1.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0]])
    assert compliant(logits, answers).tolist() == [True, True, False]  # correct; another valid value; off format


def test_the_metric_reads_the_last_position_of_the_rows_given() -> None:
    answers = AnswerTokens([0, 1, 2], [[1], [2], [0]])
    logits = torch.randn(2, 5, 3)
    got = logit_difference_metric(answers)(logits, [2, 0])
    expected = torch.stack([logits[0, -1, 2] - logits[0, -1, 0], logits[1, -1, 0] - logits[1, -1, 1]])
    torch.testing.assert_close(got, expected)
