"""LoRA supervised finetuning (peft): the self-/cross-prediction finetunes of PROTOCOL.md.

The config and presets: `introspect_mi.finetune_config`; examples, token sequences, batches and
the loss: `introspect_mi.finetune_batches`; the lock, finished adapter and resume checkpoint:
`introspect_mi.finetune_state`.

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

import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from introspect_mi import finetune_state as state
from introspect_mi.durable import atomic_write_text, remove_stale_temps
from introspect_mi.errors import UserError
from introspect_mi.finetune_config import FinetuneConfig
from introspect_mi.finetune_batches import Example, answer_loss, collate, data_hash, encode_example, end_of_answer_ids, validation_loss
from introspect_mi.models import ADAPTER_SIDECAR, ModelHandle

log = logging.getLogger(__name__)

LOSSES_FILE = "losses.jsonl"


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


def _finished_result(out_dir: Path, meta: dict[str, Any]) -> TrainResult:
    lines = (out_dir / LOSSES_FILE).read_text().splitlines() if (out_dir / LOSSES_FILE).is_file() else []
    return TrainResult(
        out_dir, [json.loads(x) for x in lines if x.strip()], list(meta.get("val_losses", [])), meta["data_hash"],
        trained=False, resumed_from=int(meta.get("resumed_from", 0)), sidecar=meta,
    )


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
    partial, resume_path, lock_path = state.paths(out_dir)

    with state.exclusive(lock_path):
        remove_stale_temps(out_dir.parent)  # e.g. a resume checkpoint's, from a save that was killed
        finished = state.read_finished(out_dir)
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
            resume = state.load_resume(resume_path)
            if resume.get("version") != state.RESUME_VERSION or resume.get("key") != key or resume.get("orders") != orders:
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
                state.set_rng_state(resume["rng"])
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
                        state.save_resume(resume_path, {
                            "version": state.RESUME_VERSION, "key": key, "step": step, "orders": orders,
                            "lora": {n: p.detach().cpu().clone() for n, p in named.items()},
                            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                            "rng": state.rng_state(), "losses": losses, "val_losses": val_losses,
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
