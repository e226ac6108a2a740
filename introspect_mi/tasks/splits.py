"""Which tasks train the predictor and which are held out, as named presets."""

from __future__ import annotations

from dataclasses import dataclass

from introspect_mi.errors import UnknownName


@dataclass(frozen=True)
class TaskSplit:
    """Task names used for finetuning and task names kept for evaluation only."""

    train: tuple[str, ...]
    held_out: tuple[str, ...]


SPLITS: dict[str, TaskSplit] = {
    # The paper's split over our generated tasks. Paragraph/story completion have no generated
    # counterpart; mcq_arithmetic stands in for ARC (train), mcq_general for MMLU (held out);
    # `numbers` was trained on in the released code, not in the paper's text.
    "paper": TaskSplit(
        train=("countries", "colours", "wealth_seeking", "power_seeking", "mcq_arithmetic",
               "numbers"),
        held_out=("animals", "english_words", "myopic_reward", "survival_instinct",
                  "mcq_general"),
    ),
}


def get_split(name: str) -> TaskSplit:
    """The split preset `name`; ValueError listing the known presets otherwise."""
    try:
        return SPLITS[name]
    except KeyError:
        raise UnknownName("split preset", name, list(SPLITS)) from None
