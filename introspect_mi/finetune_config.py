"""The hyperparameters of a LoRA finetune (`FinetuneConfig`) and the named presets (`PRESETS`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class FinetuneConfig:
    """LoRA SFT hyperparameters (the field docstrings are the CLI's --help)."""

    rank: int = 16
    """LoRA rank r."""
    alpha: float = 32.0
    """LoRA alpha; the update is scaled by alpha / rank."""
    dropout: float = 0.0
    """Dropout on the LoRA input."""
    target_modules: tuple[str, ...] = ALL_LINEAR
    """Names of the linear layers that get LoRA (default: all attention and MLP projections)."""
    lr: float = 5e-4
    """Peak learning rate (AdamW)."""
    epochs: int = 1
    """Passes over the training examples."""
    batch_size: int = 8
    """Micro-batch size: examples per forward/backward pass."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (effective batch = batch_size * grad_accum)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (default: all epochs)."""
    val_fraction: float = 0.1
    """Fraction of the examples held out for the validation loss (split_examples)."""
    seed: int = 0
    """Seed of the LoRA initialisation, the data order, the split and dropout."""
    save_every: int = 50
    """Save a resume checkpoint every this many optimizer steps (0: never)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_ratio: float = 0.0
    """Fraction of the optimizer steps with a linear warm-up from 0 to lr."""
    lr_schedule: str = "linear"
    """After warm-up: 'linear' decay to 0 at the last step, or 'constant'."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient norm to this (None: no clipping)."""
    attn_implementation: str = "sdpa"
    """Attention kernel while training: 'sdpa' (fused; keeps no [heads, seq, seq] probabilities
    for the backward pass) or 'eager'. The model is switched back to its own kernel afterwards,
    so answers, hooks and captures still use the one it was loaded with."""

    def __post_init__(self) -> None:
        problems = []
        if self.rank < 1:
            problems.append(f"rank must be >= 1, not {self.rank}")
        if self.batch_size < 1 or self.grad_accum < 1 or self.epochs < 1:
            problems.append("batch_size, grad_accum and epochs must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps must be >= 1, not {self.max_steps}")
        if not 0 <= self.val_fraction < 1 or not 0 <= self.warmup_ratio < 1 or not 0 <= self.dropout < 1:
            problems.append("val_fraction, warmup_ratio and dropout must be in [0, 1)")
        if self.lr_schedule not in ("linear", "constant"):
            problems.append(f"lr_schedule must be 'linear' or 'constant', not {self.lr_schedule!r}")
        if self.attn_implementation not in ("sdpa", "eager"):
            problems.append(f"attn_implementation must be 'sdpa' or 'eager', not {self.attn_implementation!r}")
        if problems:
            raise ValueError("; ".join(problems))
        object.__setattr__(self, "target_modules", tuple(self.target_modules))

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size * self.grad_accum

    def canonical(self) -> dict[str, Any]:
        """The config as plain JSON data (tuples as lists), for sidecars and equality checks."""
        return json.loads(json.dumps(asdict(self)))


PRESETS: dict[str, FinetuneConfig] = {
    # The paper's Llama-3.1-70B finetune (PROTOCOL.md "Finetuning"): rank 32, 1 epoch, batch 16,
    # lr 2e-5. Alpha, dropout, warm-up and schedule are not reported: common LoRA defaults.
    "paper": FinetuneConfig(rank=32, alpha=64.0, dropout=0.05, lr=2e-5, epochs=1, batch_size=16, grad_accum=1, warmup_ratio=0.03),
    # CPU preset for the embedded 135M/270M models, chosen with `python -m experiments.finetune_sweep`
    # (README "Finetuning"): with the quick study's object-level replay, lr 1e-3 for 1 epoch raised
    # SmolLM2's self-prediction accuracy on the training tasks' val items from 19.2% to 35.6%
    # (n = 510, z = 5.9) in 409 s; 2 epochs at 5e-4 gave 39.0% in twice the time. Trained with
    # SDPA attention since issue 18. Micro-batches of 2 (batch_size=2, grad_accum=4: the same
    # steps) keep SmolLM2's finetune near 2 GB resident instead of ~3.3 GB but took 2.2-2.4x the
    # step time on 2 cores (python -m experiments.benchmark finetune), so the preset keeps 8.
    "quick": FinetuneConfig(rank=16, alpha=32.0, dropout=0.0, lr=1e-3, epochs=1, batch_size=8, grad_accum=1, warmup_ratio=0.05, save_every=25),
}
