"""How a model is prompted: its chat template, or a documented plain Q/A format.

A format turns a conversation into the exact text the model continues, and that text into token
ids, in one place, so that training, evaluation and capture see identical ids (PITFALLS.md: a
chat template already emits its special tokens; tokenizing it with special tokens again would
double the BOS).

Plain format (models without a chat template, e.g. Gemma-3-270M base)::

    <system>\\n\\n                 (only when the system message is non-empty)
    Q: <user>\\nA: <assistant>\\n\\n (each earlier turn: format demonstrations)
    Q: <user>\\nA:                 (the model continues from here; its answer ends at a newline)

Token ids of the plain format get the tokenizer's own BOS once.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence
from functools import cached_property
from itertools import accumulate
from typing import Any, Protocol

from tokenizers import decoders

from introspect_mi.errors import UserError


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


class PromptFormat(Protocol):
    name: str
    stop_strings: tuple[str, ...]
    answer_prefix: str  # what separates the rendered prompt from the answer text

    def render(self, messages: list[Message]) -> str:
        """The text the model continues; it ends where the assistant's answer begins."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of a rendered text, with exactly one BOS where the model wants one."""
        ...

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """`encode(text)` plus each token's character span; added BOS/EOS get (0, 0)."""
        ...


def _ids(tokenizer: Any, text: str, add_special_tokens: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def _byte_of_char() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte (GPT-2's bytes_to_unicode), inverted."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {chr(b): b for b in printable} | {chr(256 + i): b for i, b in enumerate(others)}


_BYTE_OF_CHAR = _byte_of_char()


def _ids_and_spans(tokenizer: Any, text: str, add_special_tokens: bool) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids (as `_ids`) and the characters each token really covers.

    The tokenizer's offsets are exact except for byte-level BPE with `trim_offsets`, where
    "Ġword" may report "word" without its space. For byte-level tokenizers the spans are
    therefore rebuilt from each token's own bytes, checked against the text byte by byte; a
    token that starts or ends inside a multi-byte character covers that whole character.
    Tokens the tokenizer adds (BOS) cover nothing: (0, 0).
    """
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = [(int(s), int(e)) if e > s else (0, 0) for s, e in enc["offset_mapping"]]
    backend = tokenizer.backend_tokenizer
    if not isinstance(backend.decoder, decoders.ByteLevel):
        return ids, offsets
    data = text.encode()
    byte_at = list(accumulate((len(ch.encode()) for ch in text), initial=0))  # char index -> byte index
    char_at = [i for i, ch in enumerate(text) for _ in ch.encode()]  # byte index -> char index
    added = backend.get_added_tokens_decoder()
    spans: list[tuple[int, int]] = []
    cursor = 0  # bytes of `text` covered so far
    for token_id, (start, end) in zip(ids, offsets):
        if token_id in added:  # matched literally in the text (exact offsets) or added: (0, 0)
            spans.append((start, end))
            cursor = byte_at[end] if end > start else cursor
            continue
        piece = bytes(_BYTE_OF_CHAR[c] for c in backend.id_to_token(token_id))
        if not piece or data[cursor : cursor + len(piece)] != piece:
            raise ValueError(f"token {backend.id_to_token(token_id)!r} does not match the text at byte {cursor}: "
                             "a byte-level tokenizer with a normalizer or an added prefix space is not supported")
        spans.append((char_at[cursor], char_at[cursor + len(piece) - 1] + 1))
        cursor += len(piece)
    return ids, spans


@dataclass
class ChatTemplateFormat:
    """The tokenizer's own chat template (SmolLM2-Instruct, Llama-3-Instruct)."""

    tokenizer: Any
    name: str = "chat_template"
    stop_strings: tuple[str, ...] = ()
    answer_prefix: str = ""

    def render(self, messages: list[Message]) -> str:
        chat = [{"role": m.role, "content": m.content} for m in messages]
        return self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)

    def encode(self, text: str) -> list[int]:
        return _ids(self.tokenizer, text, add_special_tokens=False)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        return _ids_and_spans(self.tokenizer, text, add_special_tokens=False)

    @cached_property
    def end_of_turn_id(self) -> int:
        """The token the template writes after an assistant answer, read off the template itself.

        Not `tokenizer.eos_token`: Llama-3.0's names `<|end_of_text|>` while its turns end with
        `<|eot_id|>` (SmolLM2: `<|im_end|>` both). A model must learn to stop with, and
        generation must stop at, the token its template ends a turn with.
        """
        answer = "Zebra"
        chat = [{"role": "user", "content": "Name an animal."}, {"role": "assistant", "content": answer}]
        text = self.tokenizer.apply_chat_template(chat, tokenize=False)
        after = text[text.rindex(answer) + len(answer):]
        ids = _ids(self.tokenizer, after.lstrip(), add_special_tokens=False)
        if not ids or ids[0] not in self.tokenizer.added_tokens_decoder:
            raise UserError(f"the chat template ends an assistant turn with {after[:40]!r}, not with a special token, "
                            "so no token tells where an answer ends",
                            "give the model a chat template whose assistant turns end with a special token, "
                            "or delete its chat template to use the plain Q/A format")
        return ids[0]


@dataclass
class PlainFormat:
    """`Q: …\\nA:` turns for base models without a chat template (see the module docstring)."""

    tokenizer: Any
    name: str = "plain_qa"
    stop_strings: tuple[str, ...] = ("\n",)
    answer_prefix: str = " "

    def render(self, messages: list[Message]) -> str:
        parts: list[str] = []
        for m in messages:
            if m.role == "system":
                if m.content:
                    parts.append(f"{m.content}\n\n")
            elif m.role == "user":
                parts.append(f"Q: {m.content}\nA:")
            else:
                parts.append(f" {m.content}\n\n")
        if not messages or messages[-1].role != "user":
            raise ValueError("a prompt must end with a user message")
        return "".join(parts)

    def encode(self, text: str) -> list[int]:
        return _ids(self.tokenizer, text, add_special_tokens=True)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        return _ids_and_spans(self.tokenizer, text, add_special_tokens=True)


def format_for(tokenizer: Any) -> PromptFormat:
    """The chat template if the tokenizer has one, otherwise the plain Q/A format."""
    return ChatTemplateFormat(tokenizer) if getattr(tokenizer, "chat_template", None) else PlainFormat(tokenizer)


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """The answer up to the first stop string (plain-format answers end at a newline), stripped."""
    for stop in stops:
        if stop in text:
            text = text[: text.index(stop)]
    return text.strip()
