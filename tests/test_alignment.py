"""Token spans from the prompt format, and P's tokens aligned between the two prompts.

Oracles: the ids of `encode`, the tokenizer's own `decode` of each token (or of the byte tokens
that share one character), and hand-written expectations of which edge tokens merge with the
characters around P.
"""

from __future__ import annotations

import pytest
from tokenizers import processors

from introspect_mi.alignment import Alignment, align, p_token_indices
from introspect_mi.paths import checkpoints_dir
from introspect_mi.prompt_format import Message, PromptFormat, format_for
from introspect_mi.prompts import HYPOTHETICAL_TEMPLATE, RenderedPrompt
from tests.tiny import make_tokenizer

QUESTION = "What is the length of your response?"


def real_tokenizer(name: str):
    folder = checkpoints_dir() / "base" / name
    if not (folder / "tokenizer.json").is_file():
        pytest.skip(f"{folder} is absent (run `introspect-mi models prepare`)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def trimming_tokenizer():
    """The tiny chat tokenizer with byte-level `trim_offsets`: "Ġworld" reports "world"."""
    tok = make_tokenizer(chat=True)
    tok.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    return tok


TOKENIZERS = {
    "tiny-chat": lambda: make_tokenizer(chat=True),
    "tiny-plain": lambda: make_tokenizer(chat=False),
    "tiny-chat-trimmed": trimming_tokenizer,
    "smollm2": lambda: real_tokenizer("smollm2-135m-instruct"),
    "gemma3": lambda: real_tokenizer("gemma3-270m"),
}


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def named_fmt(request) -> tuple[str, PromptFormat]:
    return request.param, format_for(TOKENIZERS[request.param]())


@pytest.fixture(scope="module")
def fmt(named_fmt: tuple[str, PromptFormat]) -> PromptFormat:
    return named_fmt[1]


def rendered(fmt: PromptFormat, user: str, p: str) -> RenderedPrompt:
    text = fmt.render([Message("system", ""), Message("user", user)])
    start = text.rfind(p)
    return RenderedPrompt(text, (start, start + len(p)))


def prompts(fmt: PromptFormat, p: str) -> tuple[RenderedPrompt, RenderedPrompt]:
    return rendered(fmt, p, p), rendered(fmt, HYPOTHETICAL_TEMPLATE.format(p=p, question=QUESTION), p)


def aligned(fmt: PromptFormat, p: str):
    """(object prompt, hypothetical prompt, their token spans, alignment), checked for consistency."""
    obj, hyp = prompts(fmt, p)
    obj_ids, obj_spans = fmt.encode_with_offsets(obj.text)
    hyp_ids, hyp_spans = fmt.encode_with_offsets(hyp.text)
    a = align(obj_spans, obj.p_span, hyp_spans, hyp.p_span)
    check_alignment(a, obj, hyp, obj_ids, obj_spans, hyp_ids, hyp_spans)
    return obj, hyp, obj_spans, hyp_spans, a


def check_alignment(a: Alignment, obj, hyp, obj_ids, obj_spans, hyp_ids, hyp_spans) -> None:
    """What every alignment must satisfy, whatever the tokenizer."""
    obj_pairs, hyp_pairs = [o for o, _ in a.pairs], [h for _, h in a.pairs]
    assert len(set(obj_pairs)) == len(obj_pairs) and len(set(hyp_pairs)) == len(hyp_pairs)  # one-to-one
    assert obj_pairs == sorted(obj_pairs) and hyp_pairs == sorted(hyp_pairs)  # in P's order
    for o, h in a.pairs:
        assert obj_ids[o] == hyp_ids[h]
        rel_o = (obj_spans[o][0] - obj.p_span[0], obj_spans[o][1] - obj.p_span[0])
        rel_h = (hyp_spans[h][0] - hyp.p_span[0], hyp_spans[h][1] - hyp.p_span[0])
        assert rel_o == rel_h and 0 <= rel_o[0] < rel_o[1] <= len(obj.p)
    # matched and unmatched partition P's tokens in each prompt
    assert sorted(obj_pairs + a.unmatched_object) == p_token_indices(obj_spans, obj.p_span)
    assert sorted(hyp_pairs + a.unmatched_hypothetical) == p_token_indices(hyp_spans, hyp.p_span)
    for spans, prompt, last in ((obj_spans, obj, a.object_last), (hyp_spans, hyp, a.hypothetical_last)):
        s, e = spans[last]
        assert s < prompt.p_span[1] <= e
    assert Alignment.from_dict(a.to_dict()) == a


# --- encode_with_offsets -------------------------------------------------------------------

SAMPLE = 'Q: What is "the"  next\n\n animal? cat dog é中文 fox '


def test_offsets_come_with_exactly_the_ids_of_encode(fmt: PromptFormat) -> None:
    for text in (SAMPLE, *(r.text for r in prompts(fmt, SAMPLE))):
        ids, spans = fmt.encode_with_offsets(text)
        assert ids == fmt.encode(text) and len(spans) == len(ids)


def test_each_span_is_the_text_its_tokens_decode_to(fmt: PromptFormat) -> None:
    text = prompts(fmt, SAMPLE)[1].text
    ids, spans = fmt.encode_with_offsets(text)
    added = set(fmt.tokenizer.all_special_ids)
    groups: dict[tuple[int, int], list[int]] = {}
    for token_id, span in zip(ids, spans):
        if span != (0, 0):
            groups.setdefault(span, []).append(token_id)  # byte tokens of one character share a span
        else:
            assert token_id in added  # only tokens the tokenizer adds cover nothing
    for (s, e), group in groups.items():
        assert fmt.tokenizer.decode(group, clean_up_tokenization_spaces=False) == text[s:e]
    ordered = sorted(groups)
    assert all(a[1] == b[0] for a, b in zip(ordered, ordered[1:]))  # spans tile the text, no gaps
    assert ordered[0][0] == 0 and ordered[-1][1] == len(text)


def test_trimmed_offsets_are_restored_to_the_characters_covered() -> None:
    text = prompts(format_for(make_tokenizer()), SAMPLE)[1].text
    trimmed_fmt = format_for(trimming_tokenizer())
    raw = trimmed_fmt.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    spans = trimmed_fmt.encode_with_offsets(text)[1]
    assert any(tuple(r) != s for r, s in zip(raw, spans))  # the raw offsets really were trimmed
    assert spans == format_for(make_tokenizer()).encode_with_offsets(text)[1]


# --- align ---------------------------------------------------------------------------------

P_CASES = {
    "plain": "What is the next 5 animals in the following text? cat dog fox",
    "ends_in_space": "What is the next 5 animals? cat dog ",
    "inner_quotes": 'Which word comes after "cat" in the text? cat dog fox',
    "starts_with_quote": '"cat" is the first word. cat dog fox',
    "starts_with_newline": "\nWhat is the next? cat dog fox",
    "ends_with_newline": "What is the next? cat dog fox\n",
}

# Unmatched tokens (their text) in the (object, hypothetical) prompt, by hand from each
# tokenizer's merges; anything not listed has none. The tiny tokenizers' small vocabulary merges
# nothing across P's edges. SmolLM2's pre-tokenizer keeps the chat template's "\n" apart from a
# P starting (or ending) with a newline, but glues a space or a quote to the quote around P.
# Gemma's plain format puts "Q: " before P, and its "▁What" takes that space.
UNMATCHED = {
    ("smollm2", "ends_in_space"): ([" "], [' "']),
    ("smollm2", "starts_with_quote"): (['"'], [' ""']),
    ("gemma3", "plain"): ([" What"], ["What"]),
    ("gemma3", "ends_in_space"): ([" What", " "], ["What", ' "']),
    ("gemma3", "inner_quotes"): ([" Which"], ["Which"]),
    ("gemma3", "starts_with_quote"): ([' "'], [' ""']),
    ("gemma3", "ends_with_newline"): ([" What", "\n\n"], ["What", "\n"]),
}


@pytest.mark.parametrize("case", list(P_CASES))
def test_unmatched_tokens_are_the_edge_merges(named_fmt: tuple[str, PromptFormat], case: str) -> None:
    name, fmt = named_fmt
    obj, hyp, obj_spans, hyp_spans, a = aligned(fmt, P_CASES[case])
    shown = (
        [obj.text[slice(*obj_spans[i])] for i in a.unmatched_object],
        [hyp.text[slice(*hyp_spans[i])] for i in a.unmatched_hypothetical],
    )
    assert shown == UNMATCHED.get((name, case), ([], []))
    assert len(a.pairs) >= len(P_CASES[case].split()) - 2  # the rest of P is aligned


@pytest.mark.parametrize("case", list(P_CASES))
def test_last_token_holds_p_last_character_even_when_unmatched(fmt: PromptFormat, case: str) -> None:
    obj, hyp, obj_spans, hyp_spans, a = aligned(fmt, P_CASES[case])
    # e.g. ' "' after a trailing space, or the template's "\n" glued to P's final newline
    crosses = obj_spans[a.object_last][1] > obj.p_span[1] or hyp_spans[a.hypothetical_last][1] > hyp.p_span[1]
    assert (a.object_last in a.unmatched_object) == crosses == (a.hypothetical_last in a.unmatched_hypothetical)
    if not crosses:
        assert a.pairs[-1] == (a.object_last, a.hypothetical_last)


# --- align on hand-made spans (no tokenizer) ------------------------------------------------

def test_align_on_hand_made_spans() -> None:
    # object:       "u\nab cd" with P = "ab cd" at 2..7; tokens: u, \n, ab, " c", d
    obj = [(0, 1), (1, 2), (2, 4), (4, 6), (6, 7)]
    # hypothetical: 'Q "ab cd" x' with P at 3..8; tokens: Q, ' "a', b, " c", 'd"', " x"
    hyp = [(0, 1), (1, 4), (4, 5), (5, 7), (7, 9), (9, 11)]
    a = align(obj, (2, 7), hyp, (3, 8))
    assert a.pairs == [(3, 3)]
    assert a.unmatched_object == [2, 4] and a.unmatched_hypothetical == [1, 2, 4]
    assert (a.object_last, a.hypothetical_last) == (4, 4)


def test_byte_tokens_of_one_character_pair_only_when_they_split_alike() -> None:
    # P = "é" (one character, two byte tokens in the object prompt, one token in the other)
    assert align([(0, 1), (1, 2), (1, 2)], (1, 2), [(0, 1), (1, 2), (2, 3)], (1, 2)).pairs == []
    a = align([(0, 1), (1, 2), (1, 2)], (1, 2), [(0, 2), (2, 3), (2, 3)], (2, 3))
    assert a.pairs == [(1, 1), (2, 2)] and a.object_last == 2
    with_ids = align([(0, 1), (1, 2), (1, 2)], (1, 2), [(0, 2), (2, 3), (2, 3)], (2, 3), object_ids=[9, 5, 6], hyp_ids=[8, 5, 7])
    assert with_ids.pairs == [] and with_ids.unmatched_object == [1, 2]


def test_align_rejects_spans_of_different_lengths_and_empty_p() -> None:
    with pytest.raises(ValueError, match="different lengths"):
        align([(0, 3)], (0, 3), [(0, 2)], (0, 2))
    with pytest.raises(ValueError, match="empty"):
        align([(0, 3)], (1, 1), [(0, 3)], (1, 1))


def test_alignment_is_json_serialisable() -> None:
    import json

    a = Alignment(pairs=[(1, 4), (2, 5)], unmatched_object=[3], unmatched_hypothetical=[6], object_last=3, hypothetical_last=6)
    assert Alignment.from_dict(json.loads(json.dumps(a.to_dict()))) == a
