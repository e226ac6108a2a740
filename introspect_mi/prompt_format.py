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
from typing import Any, Protocol


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


def _ids(tokenizer: Any, text: str, add_special_tokens: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


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


def format_for(tokenizer: Any) -> PromptFormat:
    """The chat template if the tokenizer has one, otherwise the plain Q/A format."""
    return ChatTemplateFormat(tokenizer) if getattr(tokenizer, "chat_template", None) else PlainFormat(tokenizer)


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """The answer up to the first stop string (plain-format answers end at a newline), stripped."""
    for stop in stops:
        if stop in text:
            text = text[: text.index(stop)]
    return text.strip()
