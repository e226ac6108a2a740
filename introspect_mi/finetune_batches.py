"""Training examples, their token sequences, batches and the loss of a LoRA finetune.

One training example is a prompt already rendered through the model's prompt format and the
answer the model should give. The training sequence is::

    encode(prompt + answer_prefix + answer) + end-of-answer token

where the end-of-answer token is the chat template's end-of-turn token (`<|im_end|>` for SmolLM2,
`<|eot_id|>` for Llama-3, whatever its tokenizer calls EOS) and a newline for the plain Q/A format
(its stop string), so the model also learns to stop. The loss is the mean cross-entropy over the
answer tokens and the end token only.

Logits only where the loss is. The paper's answers are one token or word after a ~150-token
prompt; computing the full `[batch, seq, vocab]` logits (262k vocabulary for Gemma-3) would spend
most of a step on numbers the loss ignores. `answer_loss` runs the decoder body, gathers the hidden
states at the positions that predict answer tokens (position t predicts token t+1), and applies
the CausalLM's own logits computation (`lm_logits`: lm_head, then Gemma's final-logit softcapping
where configured) there only. tests/test_finetune.py checks it against HF's full forward with
`labels`.

Batches are left-padded with the attention mask built from lengths, never from pad ids (SmolLM2's
pad is its EOS), and position ids from the mask (`introspect_mi.batching.left_pad`).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from introspect_mi.batching import left_pad
from introspect_mi.prompt_format import ChatTemplateFormat, PlainFormat, PromptFormat

T = TypeVar("T")


@dataclass(frozen=True)
class Example:
    """One supervised example. `prompt` is already rendered (it ends where the answer starts)."""

    prompt: str
    answer: str


@dataclass(frozen=True)
class Encoded:
    """Token ids of one training sequence; the loss covers `ids[n_prompt:]` (answer + end token)."""

    ids: tuple[int, ...]
    n_prompt: int

    @property
    def n_target(self) -> int:
        return len(self.ids) - self.n_prompt


def end_of_answer_ids(prompt_format: PromptFormat, tokenizer: Any) -> list[int]:
    """The token(s) that end an answer: the chat template's own end-of-turn token (read off the
    template: Llama-3.0's EOS is `<|end_of_text|>`, its turns end with `<|eot_id|>`), a newline
    for the plain format."""
    if isinstance(prompt_format, ChatTemplateFormat):
        return [prompt_format.end_of_turn_id]
    if isinstance(prompt_format, PlainFormat) or prompt_format.stop_strings:
        ids = list(tokenizer(prompt_format.stop_strings[0], add_special_tokens=False)["input_ids"])
    else:
        ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if not ids:
        raise ValueError(f"cannot tell which token ends an answer in the {prompt_format.name} format (tokenizer has no EOS)")
    return ids


def encode_example(prompt_format: PromptFormat, end_ids: Sequence[int], example: Example, index: int | None = None) -> Encoded:
    """`encode(prompt + answer_prefix + answer) + end_ids`, checking the prompt's ids are a prefix."""
    where = f"example {index}" if index is not None else "example"
    if not example.answer:
        raise ValueError(f"{where} has an empty answer (prompt …{example.prompt[-60:]!r})")
    prompt_ids = prompt_format.encode(example.prompt)
    full = prompt_format.encode(example.prompt + prompt_format.answer_prefix + example.answer)
    if full[: len(prompt_ids)] != prompt_ids or len(full) <= len(prompt_ids):
        raise ValueError(
            f"{where}: the tokens of the prompt are not a prefix of the tokens of prompt + answer "
            f"(the tokenizer merges across the boundary; prompt …{example.prompt[-60:]!r}, answer {example.answer!r}); "
            "the loss mask would be wrong: render the prompt so that it ends where the answer starts"
        )
    return Encoded(tuple(full) + tuple(end_ids), len(prompt_ids))


def data_hash(train_examples: Sequence[Example], val_examples: Sequence[Example]) -> str:
    """sha256 of the canonical JSON of the train and val examples (order matters: it seeds the shuffle)."""
    doc = {"train": [[e.prompt, e.answer] for e in train_examples], "val": [[e.prompt, e.answer] for e in val_examples]}
    return hashlib.sha256(json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")).hexdigest()


def split_examples(examples: Sequence[T], val_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Deterministic train/val split of any sequence; both parts keep the input order.

    `round(n * val_fraction)` examples (at least one when val_fraction > 0 and n > 1) go to val.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), not {val_fraction}")
    n = len(examples)
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n > 1:
        n_val = min(max(n_val, 1), n - 1)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    return [e for i, e in enumerate(examples) if i not in val_idx], [e for i, e in enumerate(examples) if i in val_idx]


# --- batches and the loss --------------------------------------------------------------------


@dataclass(frozen=True)
class TrainBatch:
    """A left-padded batch and where its loss is: `logits[rows, cols]` predict `targets`."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    rows: torch.Tensor  # [n_target] batch row of each target token
    cols: torch.Tensor  # [n_target] column whose hidden state predicts it (the token's column - 1)
    targets: torch.Tensor  # [n_target] the target token ids
    n_tokens: int  # real (unpadded) tokens in the batch

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}

    def to(self, device: torch.device | str) -> TrainBatch:
        return TrainBatch(
            self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device),
            self.rows.to(device), self.cols.to(device), self.targets.to(device), self.n_tokens,
        )

    def hf_labels(self) -> torch.Tensor:
        """`labels` for an HF CausalLM forward: the token ids at answer positions, -100 elsewhere."""
        labels = torch.full_like(self.input_ids, -100)
        labels[self.rows, self.cols + 1] = self.targets
        return labels


def collate(encoded: Sequence[Encoded], pad_id: int) -> TrainBatch:
    batch = left_pad([list(e.ids) for e in encoded], pad_id)
    rows, cols, targets = [], [], []
    for row, e in enumerate(encoded):
        start = batch.width - len(e.ids)  # column of the row's first real token
        for i in range(e.n_prompt, len(e.ids)):
            rows.append(row)
            cols.append(start + i - 1)
            targets.append(e.ids[i])
    return TrainBatch(
        batch.input_ids, batch.attention_mask, batch.position_ids, torch.tensor(rows), torch.tensor(cols),
        torch.tensor(targets), sum(batch.lengths),
    )


def causal_lm_of(model: torch.nn.Module) -> torch.nn.Module:
    """The HF *ForCausalLM inside a PeftModel (LoRA layers injected), or the model itself."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def lm_logits(causal_lm: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The CausalLM's logits from final-norm hidden states: lm_head, then final-logit softcapping.

    Mirrors LlamaForCausalLM / Gemma3ForCausalLM.forward after `self.model(...)` (transformers 5.24).
    """
    head = causal_lm.get_output_embeddings()
    logits = head(hidden.to(head.weight.device))
    cap = getattr(causal_lm.config, "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


def answer_loss(model: torch.nn.Module, batch: TrainBatch) -> tuple[torch.Tensor, int]:
    """(sum of the cross-entropy over the batch's target tokens, number of target tokens).

    Runs the decoder body once and applies the lm_head only at the positions that predict a
    target token: no `[batch, seq, vocab]` logits.
    """
    causal_lm = causal_lm_of(model)
    body = causal_lm.get_decoder()
    hidden = body(**batch.model_inputs(), use_cache=False).last_hidden_state
    picked = hidden[batch.rows.to(hidden.device), batch.cols.to(hidden.device)]
    logits = lm_logits(causal_lm, picked).float()
    loss = torch.nn.functional.cross_entropy(logits, batch.targets.to(logits.device), reduction="sum")
    return loss, int(batch.targets.numel())


def full_logits_loss(model: torch.nn.Module, batch: TrainBatch) -> tuple[torch.Tensor, int]:
    """The same summed loss through HF's full forward with `labels` (every position's logits).

    Reference and benchmark baseline only; training uses `answer_loss`.
    """
    out = causal_lm_of(model)(**batch.model_inputs(), labels=batch.hf_labels(), use_cache=False)
    n = int(batch.targets.numel())
    return out.loss * n, n


@torch.no_grad()
def validation_loss(model: torch.nn.Module, encoded: Sequence[Encoded], batch_size: int, pad_id: int, device: torch.device) -> float:
    """Mean token cross-entropy over the answer (+ end) tokens of `encoded`, in eval mode."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i in range(0, len(encoded), batch_size):
            loss, n = answer_loss(model, collate(encoded[i : i + batch_size], pad_id).to(device))
            total += float(loss)
            count += n
    finally:
        model.train(was_training)
    return total / max(count, 1)
