"""Left-padded batches with explicit masks and positions (PITFALLS.md: "Padding, positions, BOS").

The attention mask is built from the sequence lengths, never from `ids != pad_id` (SmolLM2's
pad token is its `<|im_end|>`, which is real content inside chat prompts), and position ids
count real tokens only, so a left-padded row computes exactly what it would alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # [batch, seq], left-padded
    attention_mask: torch.Tensor  # [batch, seq], 1 at real tokens
    position_ids: torch.Tensor  # [batch, seq], 0 at each row's first real token
    lengths: list[int]

    @property
    def width(self) -> int:
        return int(self.input_ids.shape[1])

    def real_slice(self, row: int) -> slice:
        """The columns of row `row` that hold real tokens (its prompt, left-padded)."""
        return slice(self.width - self.lengths[row], self.width)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device), self.lengths)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}


def left_pad(sequences: list[list[int]], pad_id: int) -> Batch:
    """Left-pad token id lists into one batch."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("left_pad needs at least one non-empty sequence")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq):] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return Batch(ids, mask, positions, [len(s) for s in sequences])
