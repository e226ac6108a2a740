"""Object-level and hypothetical prompts: P is quoted verbatim and its span is exact."""

from __future__ import annotations

import pytest

from introspect_mi.models import load
from introspect_mi.prompts import DEMONSTRATIONS, PromptConfig, hypothetical_prompt, object_prompt
from introspect_mi.properties import PROPERTIES, properties_for
from introspect_mi.tasks import TASKS, load_items, task_spec


@pytest.fixture(scope="module")
def formats(tiny_llama_dir, tiny_gemma_dir):
    return {"chat": load(tiny_llama_dir).prompt_format, "plain": load(tiny_gemma_dir).prompt_format}


@pytest.mark.parametrize("fmt_name", ["chat", "plain"])
@pytest.mark.parametrize("shots", [0, 2])
def test_quoted_p_is_exactly_the_object_prompt(formats, fmt_name: str, shots: int) -> None:
    fmt, config = formats[fmt_name], PromptConfig(shots=shots)
    for name in TASKS:
        spec = task_spec(name)
        item = load_items(name, "val", n=1)[0]
        obj = object_prompt(fmt, item, spec, config)
        assert obj.p == item.text
        for prop in properties_for(spec):
            hyp = hypothetical_prompt(fmt, item, spec, prop, config)
            assert hyp.p == obj.p == item.text
            assert hyp.text[hyp.p_span[0] - 1] == '"' and hyp.text[hyp.p_span[1]] == '"'
            assert f'Previously, you were asked the following question: "{item.text}" {prop.question(spec)}' in hyp.text


def test_zero_shot_chat_prompt_has_an_empty_system_turn_and_one_question(formats) -> None:
    spec = task_spec("animals")
    item = load_items("animals", "val", n=1)[0]
    text = object_prompt(formats["chat"], item, spec, PromptConfig(shots=0)).text
    assert text.startswith("<|im_start|>system\n<|im_end|>\n<|im_start|>user\n" + item.text)
    assert text.count("<|im_start|>user") == 1


def test_demonstrations_answer_hypotheticals_with_their_own_property_values(formats) -> None:
    spec = task_spec("animals")
    item = load_items("animals", "val", n=1)[0]
    prop = PROPERTIES["second_character"]
    text = hypothetical_prompt(formats["plain"], item, spec, prop, PromptConfig(shots=2)).text
    for demo in DEMONSTRATIONS[spec.kind][:2]:
        assert f'question: "{demo.question}" {prop.question(spec)}\nA: {prop.extract(demo.answer)}\n' in text


def test_too_many_shots_is_refused(formats) -> None:
    spec = task_spec("myopic_reward")
    item = load_items("myopic_reward", "val", n=1)[0]
    with pytest.raises(ValueError, match="demonstrations"):
        object_prompt(formats["chat"], item, spec, PromptConfig(shots=9))
