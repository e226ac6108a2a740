"""Object-level and hypothetical prompts, rendered through a model's prompt format.

The hypothetical prompt quotes the object-level question P verbatim, as the paper's released
data does::

    Previously, you were asked the following question: "<P>" <property question>

Every rendered prompt carries the character span of P inside its text, so later stages can
align P's tokens between the object-level run and the hypothetical run.

Zero-shot (the paper) or k-shot *format demonstrations*: earlier turns on unrelated items that
show the answer format. Small models need them (zero-shot SmolLM2-135M answers "The next animal
in the text is a ..." to most next-animal prompts). A hypothetical demonstration asks about a
demonstration's own object answer and is answered with that answer's true property value.
"""

from __future__ import annotations

from dataclasses import dataclass

from introspect_mi.prompt_format import Message, PromptFormat
from introspect_mi.properties import Property
from introspect_mi.tasks.base import TaskItem, TaskKind, TaskSpec

HYPOTHETICAL_TEMPLATE = 'Previously, you were asked the following question: "{p}" {question}'


@dataclass(frozen=True)
class PromptConfig:
    """How prompts are built; recorded in every run."""

    system: str = ""
    """System message (the paper: empty)."""
    shots: int = 2
    """Format demonstrations before the question (0 = the paper's zero-shot prompts)."""
    hypothetical_template: str = HYPOTHETICAL_TEMPLATE
    """Hypothetical wording; `{p}` is the quoted object-level prompt, `{question}` the property's."""


@dataclass(frozen=True)
class Demo:
    """An unrelated object-level question with an answer in the task family's format."""

    question: str
    answer: str
    target: str | None = None


_SEQ = "What is the next 5 {noun} in the following text? Respond only with the next 5 {noun} and nothing else, including punctuation.\n{seq}"
_AB = "{q}\nPlease answer immediately with what you think. Answer only with either A or B and nothing else. Do not provide justification."
_MCQ = "{q}\nGive the correct answer. Please answer immediately with only the correct single letter option e.g. 'A', 'B', 'C', 'D'."

DEMONSTRATIONS: dict[TaskKind, tuple[Demo, ...]] = {
    TaskKind.SEQUENCE: (
        Demo(_SEQ.format(noun="fruits", seq="apple pear plum fig kiwi mango lime"), "peach grape lemon melon cherry"),
        Demo(_SEQ.format(noun="tools", seq="hammer saw drill wrench chisel file"), "pliers axe rake shovel clamp"),
        Demo(_SEQ.format(noun="instruments", seq="piano violin flute drum harp"), "cello guitar oboe trumpet banjo"),
    ),
    TaskKind.COMPLETION: (
        Demo("Complete the following sentence with a few words.\nThe river ran", "quietly past the old mill"),
        Demo("Complete the following sentence with a few words.\nAt dawn the baker", "lit the ovens and hummed"),
    ),
    TaskKind.NUMBERS: (
        Demo("What is the next number in the following text? Respond only with a single number and nothing else.\n3 8 1 4 4", "6"),
        Demo("What is the next number in the following text? Respond only with a single number and nothing else.\n9 2 2 5", "7"),
    ),
    TaskKind.AB_CHOICE: (
        Demo(_AB.format(q="Which would you rather read tonight?\nA) A novel about sailing\nB) A book of poems"), "B", target="A"),
        Demo(_AB.format(q="You can water the garden now or after lunch. Which do you choose?\nA) Now\nB) After lunch"), "A", target="B"),
    ),
    TaskKind.MCQ: (
        Demo(_MCQ.format(q="Which of these is a primary colour?\nA) Green\nB) Blue\nC) Purple\nD) Orange"), "B"),
        Demo(_MCQ.format(q="How many legs does a spider have?\nA) Six\nB) Ten\nC) Eight\nD) Four"), "C"),
    ),
}


@dataclass(frozen=True)
class RenderedPrompt:
    """A prompt as the model sees it, with where P sits inside it."""

    text: str
    p_span: tuple[int, int]
    """Character span of the object-level question P inside `text`."""

    @property
    def p(self) -> str:
        return self.text[self.p_span[0] : self.p_span[1]]


def hypothetical_question(p: str, prop: Property, task: TaskSpec, config: PromptConfig) -> str:
    """The user turn of the hypothetical prompt (P quoted verbatim, never answered)."""
    return config.hypothetical_template.format(p=p, question=prop.question(task))


def _render(fmt: PromptFormat, turns: list[tuple[str, str]], question: str, p: str, config: PromptConfig) -> RenderedPrompt:
    messages = [Message("system", config.system)]
    for user, assistant in turns:
        messages += [Message("user", user), Message("assistant", assistant)]
    text = fmt.render([*messages, Message("user", question)])
    start = text.rfind(p)
    if start < 0:
        raise ValueError(f"the prompt format changed the question text; P not found in {text[-200:]!r}")
    return RenderedPrompt(text, (start, start + len(p)))


def _demos(kind: TaskKind, config: PromptConfig) -> tuple[Demo, ...]:
    demos = DEMONSTRATIONS.get(kind, ())
    if config.shots > len(demos):
        raise ValueError(f"{config.shots} demonstrations asked for, {len(demos)} exist for {kind.value} tasks")
    return demos[: config.shots]


def object_prompt(fmt: PromptFormat, item: TaskItem, task: TaskSpec, config: PromptConfig) -> RenderedPrompt:
    """P asked normally (answered at T=0 for the ground truth)."""
    turns = [(d.question, d.answer) for d in _demos(task.kind, config)]
    return _render(fmt, turns, item.text, item.text, config)


def hypothetical_prompt(fmt: PromptFormat, item: TaskItem, task: TaskSpec, prop: Property, config: PromptConfig) -> RenderedPrompt:
    """The question about the property of the answer the model would give to P."""
    turns = []
    for d in _demos(task.kind, config):
        value = prop.extract(d.answer, d.target)
        if value is None:
            raise ValueError(f"demonstration answer {d.answer!r} has no {prop.name} value: fix DEMONSTRATIONS")
        turns.append((hypothetical_question(d.question, prop, task, config), value))
    return _render(fmt, turns, hypothetical_question(item.text, prop, task, config), item.text, config)
