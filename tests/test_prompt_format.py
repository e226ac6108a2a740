"""A rendered prompt has one tokenization everywhere it is used (no doubled BOS)."""

from __future__ import annotations

import pytest

from introspect_mi.models import load
from introspect_mi.prompt_format import ChatTemplateFormat, Message, PlainFormat, format_for

CONVERSATION = [
    Message("system", ""),
    Message("user", "What is the next 5 animals in the following text? cat dog"),
    Message("assistant", "fox owl bee cat dog"),
    Message("user", "What is the capital of France?"),
]


def test_chat_encoding_equals_the_tokenizers_own_template_ids(tiny_llama_dir) -> None:
    fmt = load(tiny_llama_dir).prompt_format
    assert isinstance(fmt, ChatTemplateFormat)
    chat = [{"role": m.role, "content": m.content} for m in CONVERSATION]
    reference = fmt.tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert fmt.encode(fmt.render(CONVERSATION)) == list(reference)


def test_plain_format_layout_and_single_bos(tiny_gemma_dir) -> None:
    fmt = load(tiny_gemma_dir).prompt_format
    assert isinstance(fmt, PlainFormat)
    text = fmt.render(CONVERSATION)
    assert text == (
        "Q: What is the next 5 animals in the following text? cat dog\nA: fox owl bee cat dog\n\n"
        "Q: What is the capital of France?\nA:"
    )
    ids = fmt.encode(text)
    bos = fmt.tokenizer.bos_token_id
    assert ids[0] == bos and ids.count(bos) == 1
    assert fmt.tokenizer.decode(ids[1:]) == text


def test_plain_format_keeps_a_non_empty_system_message(tiny_gemma_dir) -> None:
    fmt = load(tiny_gemma_dir).prompt_format
    assert fmt.render([Message("system", "Be brief."), Message("user", "Hi")]) == "Be brief.\n\nQ: Hi\nA:"
    with pytest.raises(ValueError, match="end with a user message"):
        fmt.render([Message("user", "Hi"), Message("assistant", "Hello")])


@pytest.mark.slow
def test_embedded_smollm2_prompt_has_one_leading_im_start() -> None:
    handle = load("smollm2-135m-instruct")
    fmt = handle.prompt_format
    ids = fmt.encode(fmt.render(CONVERSATION))
    chat = [{"role": m.role, "content": m.content} for m in CONVERSATION]
    assert ids == list(handle.tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=True, return_dict=False))
    start = handle.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[0] == start and ids[1] != start  # not doubled by a second tokenization
    assert format_for(load("gemma3-270m").tokenizer).name == "plain_qa"


def test_the_end_of_turn_token_is_read_off_the_template() -> None:
    from introspect_mi.errors import UserError
    from tests.tiny import make_tokenizer

    tok = make_tokenizer(chat=True)
    assert ChatTemplateFormat(tok).end_of_turn_id == tok.convert_tokens_to_ids("<|im_end|>")
    tok.chat_template = tok.chat_template.replace("<|im_end|>", "<|endoftext|>")  # the turn's end, not the EOS
    assert ChatTemplateFormat(tok).end_of_turn_id == tok.convert_tokens_to_ids("<|endoftext|>") != tok.eos_token_id
    tok.chat_template = tok.chat_template.replace("<|endoftext|>", "")  # a turn ends with a newline only
    with pytest.raises(UserError, match="ends an assistant turn with '\\\\n', not with a special token"):
        ChatTemplateFormat(tok).end_of_turn_id
