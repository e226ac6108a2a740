"""LoRA supervised finetuning (peft): the self-/cross-prediction finetunes of PROTOCOL.md.

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

Files (`train(..., out_dir)`)::

    out_dir/                          peft adapter (adapter_config.json, adapter_model.safetensors)
        introspect_mi_adapter.json    base fingerprint, config, data hash, sizes, losses
        losses.jsonl                  one {"step", "loss", "lr"} line per optimizer step
    .<name>.partial/                  the adapter being written; renamed to out_dir when complete
    .<name>.resume                    resume checkpoint (every `save_every` steps), removed at the end
                                      (or, if a kill left it, by the next call that finds the adapter finished)
    .<name>.lock                      held while a process trains this adapter

The caller's model. `train` injects the LoRA layers into `handle.model` in place (no copy: a 70B
model has no room for a second one), and in all cases, errors included, unloads them at the end
and restores every parameter's `requires_grad` and the train/eval mode: `handle.model` computes
exactly what it did before. The trained adapter is loaded with `models.load(spec, adapter=out_dir)`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from introspect_mi.batching import left_pad
from introspect_mi.checkfiles import read_json_object
from introspect_mi.errors import UserError
from introspect_mi.models import ADAPTER_SIDECAR, ModelHandle
from introspect_mi.prompt_format import ChatTemplateFormat, PlainFormat, PromptFormat
from introspect_mi.durable import atomic_file, atomic_write_text, remove_stale_temps

T = TypeVar("T")

log = logging.getLogger(__name__)

LOSSES_FILE = "losses.jsonl"
RESUME_VERSION = 1
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# --- data ------------------------------------------------------------------------------------


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


# --- config ----------------------------------------------------------------------------------


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


# --- LoRA on the caller's model ----------------------------------------------------------------


def add_lora(model: torch.nn.Module, config: FinetuneConfig) -> Any:
    """Inject fresh LoRA layers (initialised from torch's current RNG) into `model`, in place."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        raise UserError(
            "the model already carries a peft adapter (adapter_mode='peft')",
            "load it with adapter_mode='merged' to finetune on top of that adapter",
        )
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in config.target_modules if m not in present]
    if missing:
        raise UserError(
            f"target_modules {missing} do not exist in {type(model).__name__}",
            "choose target_modules among the model's linear layers: " + ", ".join(sorted(m for m in present if m.endswith("proj"))),
        )
    lora = LoraConfig(
        r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout, target_modules=list(config.target_modules),
        bias="none", task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


@contextmanager
def lora_on(handle: ModelHandle, config: FinetuneConfig) -> Iterator[Any]:
    """A PeftModel around `handle.model` for the duration of the block, training with
    `config.attn_implementation`; the model is restored after (kernel, grads, mode)."""
    model = handle.model
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    kernel = model.config._attn_implementation
    model.set_attn_implementation(config.attn_implementation)
    peft_model = add_lora(model, config)
    try:
        yield peft_model
    finally:
        restored = peft_model.unload()
        assert restored is model
        model.set_attn_implementation(kernel)
        for name, p in model.named_parameters():
            p.requires_grad_(grads.get(name, p.requires_grad))
        model.train(was_training)


# --- training --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainResult:
    adapter_dir: Path
    losses: list[dict[str, Any]]  # {"step", "loss", "lr"} per optimizer step (1-based steps)
    val_losses: list[dict[str, Any]]  # {"epoch", "step", "val_loss"} after each epoch
    data_hash: str
    trained: bool = True  # False: out_dir already held this adapter
    resumed_from: int = 0  # optimizer steps restored from a resume checkpoint
    sidecar: dict[str, Any] = field(default_factory=dict)


StepCallback = Callable[[int, float, Any], None]  # (optimizer step, its loss, the PeftModel)


def plan_steps(n_train: int, config: FinetuneConfig) -> tuple[list[list[int]], list[list[list[int]]], int]:
    """(per-epoch data orders, per-step micro-batches of example indices, steps per epoch).

    Everything the run does, fixed up front from the seed, so a resumed run replays it exactly.
    """
    rng = random.Random(config.seed)
    orders, steps = [], []
    per_epoch = 0
    for _ in range(config.epochs):
        order = list(range(n_train))
        rng.shuffle(order)
        orders.append(order)
        micro = [order[i : i + config.batch_size] for i in range(0, n_train, config.batch_size)]
        epoch_steps = [micro[i : i + config.grad_accum] for i in range(0, len(micro), config.grad_accum)]
        per_epoch = len(epoch_steps)
        steps.extend(epoch_steps)
    if config.max_steps is not None:
        steps = steps[: config.max_steps]
    return orders, steps, per_epoch


def lr_factor(step: int, total: int, config: FinetuneConfig) -> float:
    """Multiplier of the peak lr for optimizer step index `step` (0-based)."""
    warmup = math.ceil(config.warmup_ratio * total)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if config.lr_schedule == "constant":
        return 1.0
    return max(0.0, (total - step) / max(1, total - warmup))


def _paths(out_dir: Path) -> tuple[Path, Path, Path]:
    parent = out_dir.parent
    return parent / f".{out_dir.name}.partial", parent / f".{out_dir.name}.resume", parent / f".{out_dir.name}.lock"


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another process is training {lock_path.name.removeprefix('.').removesuffix('.lock')} in {lock_path.parent}", "wait for it to finish, or choose another output folder") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _read_finished(out_dir: Path) -> dict[str, Any] | None:
    if not out_dir.exists():
        return None
    sidecar = out_dir / ADAPTER_SIDECAR
    if not sidecar.is_file():
        raise UserError(
            f"{out_dir} exists but holds no finished adapter of ours (no {ADAPTER_SIDECAR})",
            "choose another output folder, or remove this one",
        )
    return read_json_object(sidecar, f"the adapter in {out_dir} is damaged: delete that folder to train it again")


def _finished_result(out_dir: Path, meta: dict[str, Any]) -> TrainResult:
    lines = (out_dir / LOSSES_FILE).read_text().splitlines() if (out_dir / LOSSES_FILE).is_file() else []
    return TrainResult(
        out_dir, [json.loads(x) for x in lines if x.strip()], list(meta.get("val_losses", [])), meta["data_hash"],
        trained=False, resumed_from=int(meta.get("resumed_from", 0)), sidecar=meta,
    )


def _save_resume(path: Path, state: dict[str, Any]) -> None:
    """torch.save through `atomic_file`: never a torn checkpoint; a killed save's temp file is removed later."""
    with atomic_file(path) as f:
        torch.save(state, f)


def _load_resume(path: Path) -> dict[str, Any]:
    """A resume checkpoint; a damaged one is a user error (it is written atomically, so only a
    damaged disk or a hand edit makes one) that names the file to delete."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError … on damaged files
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UserError(f"resume checkpoint {path} is corrupt ({type(exc).__name__}: {first})",
                        "delete it to train this adapter from the start") from None
    if not isinstance(state, dict):
        raise UserError(f"resume checkpoint {path} is corrupt (not a checkpoint dict)", "delete it to train this adapter from the start")
    return state


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def train(
    handle: ModelHandle,
    train_examples: Sequence[Example],
    val_examples: Sequence[Example],
    config: FinetuneConfig,
    out_dir: Path,
    progress: bool = True,
    *,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """LoRA-finetune `handle.model` on the examples and save the adapter to `out_dir`.

    Idempotent: a finished adapter in `out_dir` with the same data, config and base weights is
    returned without training; one with different data or config raises (never overwritten).
    Resumable: a resume checkpoint with the same key continues at its step, replaying the same
    data order and RNG state, so the result matches an uninterrupted run.
    `on_step(step, loss, peft_model)` runs after each optimizer step (and after its checkpoint):
    for tests and monitoring.
    """
    out_dir = Path(out_dir)
    if not train_examples:
        raise ValueError("no training examples")
    dhash = data_hash(train_examples, val_examples)
    key = {"data_hash": dhash, "config": config.canonical(), "base_fingerprint": handle.base_fingerprint, "weights_fingerprint": handle.fingerprint}
    partial, resume_path, lock_path = _paths(out_dir)

    with _exclusive(lock_path):
        remove_stale_temps(out_dir.parent)  # e.g. a resume checkpoint's, from a save that was killed
        finished = _read_finished(out_dir)
        if finished is not None:
            if resume_path.exists():  # a run killed between finishing the adapter and removing its checkpoint
                log.info("removing %s: its adapter %s is finished", resume_path, out_dir)
                resume_path.unlink()
            old = {k: finished.get(k) for k in key}
            if old != key:
                diff = ", ".join(k for k in key if old[k] != key[k])
                raise UserError(
                    f"{out_dir} already holds an adapter trained with a different {diff}",
                    "choose another output folder for this finetune (adapters are never overwritten)",
                )
            return _finished_result(out_dir, finished)

        fmt, tok = handle.prompt_format, handle.tokenizer
        end_ids = end_of_answer_ids(fmt, tok)
        enc_train = [encode_example(fmt, end_ids, e, i) for i, e in enumerate(train_examples)]
        enc_val = [encode_example(fmt, end_ids, e, i) for i, e in enumerate(val_examples)]
        orders, steps, per_epoch = plan_steps(len(enc_train), config)
        total = len(steps)
        device = handle.device
        pad_id = handle.pad_token_id

        resume = None
        if resume_path.is_file():
            resume = _load_resume(resume_path)
            if resume.get("version") != RESUME_VERSION or resume.get("key") != key or resume.get("orders") != orders:
                log.warning("ignoring resume checkpoint %s: it was made for other data or another config", resume_path)
                resume = None

        started = time.monotonic()
        torch.manual_seed(config.seed)
        with lora_on(handle, config) as peft_model:
            params = [p for p in peft_model.parameters() if p.requires_grad]
            named = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
            optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, config))
            losses: list[dict[str, Any]] = []
            val_losses: list[dict[str, Any]] = []
            start = 0
            if resume is not None:
                with torch.no_grad():
                    for name, value in resume["lora"].items():
                        named[name].copy_(value)
                optimizer.load_state_dict(resume["optimizer"])
                scheduler.load_state_dict(resume["scheduler"])
                _set_rng_state(resume["rng"])
                losses, val_losses, start = list(resume["losses"]), list(resume["val_losses"]), int(resume["step"])
                log.info("resuming %s at optimizer step %d of %d", out_dir.name, start, total)

            peft_model.train()
            bar = _progress(total, start, f"finetune {handle.name}", progress)
            try:
                for s in range(start, total):
                    micro = steps[s]
                    n_step = sum(enc_train[i].n_target for mb in micro for i in mb)
                    step_loss = 0.0
                    for mb in micro:
                        batch = collate([enc_train[i] for i in mb], pad_id).to(device)
                        loss_sum, _ = answer_loss(peft_model, batch)
                        (loss_sum / n_step).backward()
                        step_loss += float(loss_sum.detach())
                    if config.max_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                    lr = optimizer.param_groups[0]["lr"]
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    step = s + 1
                    losses.append({"step": step, "loss": step_loss / n_step, "lr": lr})
                    bar.update(1)
                    bar.set_postfix(loss=f"{step_loss / n_step:.4f}")
                    if enc_val and (step % per_epoch == 0 or step == total):
                        val = validation_loss(peft_model, enc_val, config.batch_size, pad_id, device)
                        val_losses.append({"epoch": round(step / per_epoch, 4), "step": step, "val_loss": val})
                        if progress:
                            bar.write(f"epoch {step / per_epoch:g}: val_loss {val:.4f}")
                    if config.save_every and step % config.save_every == 0 and step < total:
                        _save_resume(resume_path, {
                            "version": RESUME_VERSION, "key": key, "step": step, "orders": orders,
                            "lora": {n: p.detach().cpu().clone() for n, p in named.items()},
                            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                            "rng": _rng_state(), "losses": losses, "val_losses": val_losses,
                        })
                    if on_step is not None:
                        on_step(step, losses[-1]["loss"], peft_model)
            finally:
                bar.close()

            peft_model.eval()
            meta = {
                "base_fingerprint": handle.base_fingerprint,
                "weights_fingerprint": handle.fingerprint,
                "model": handle.name,
                "parent_adapter": str(handle.adapter) if handle.adapter else None,
                "prompt_format": fmt.name,
                "end_of_answer_ids": end_ids,
                "config": config.canonical(),
                "data_hash": dhash,
                "n_train": len(enc_train),
                "n_val": len(enc_val),
                "n_train_target_tokens": sum(e.n_target for e in enc_train),
                "steps": total,
                "steps_per_epoch": per_epoch,
                "final_loss": losses[-1]["loss"] if losses else None,
                "final_val_loss": val_losses[-1]["val_loss"] if val_losses else None,
                "val_losses": val_losses,
                "resumed_from": start,
                "wall_s": round(time.monotonic() - started, 2),
                **_versions(),
            }
            shutil.rmtree(partial, ignore_errors=True)
            peft_model.save_pretrained(partial)
        atomic_write_text(partial / LOSSES_FILE, "".join(json.dumps(x) + "\n" for x in losses))
        atomic_write_text(partial / ADAPTER_SIDECAR, json.dumps(meta, indent=2) + "\n")  # last: marks it finished
        partial.rename(out_dir)
        resume_path.unlink(missing_ok=True)
        return TrainResult(out_dir, losses, val_losses, dhash, trained=True, resumed_from=start, sidecar=meta)


def _versions() -> dict[str, Any]:
    import peft
    import transformers

    return {"versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}}


def _progress(total: int, initial: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, unit="step")
