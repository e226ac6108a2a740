"""Benchmark: LoRA training throughput with logits only where the loss is vs full-sequence logits.

`python -m experiments.benchmark finetune` (or `python -m experiments.bench_finetune`). On each
model, ~32 realistic finetuning examples (a ~150-token rendered prompt of random words, an answer
of 1-3 tokens plus the end-of-answer token) train a LoRA for a few optimizer steps; every step
computes forward+backward both ways, on the same batch at the same weights: with
`finetune.answer_loss` (decoder body, lm_head at the answer positions only) and with HF's forward
with `labels` (logits at every position). The two must agree on loss and gradients.
Throughput counts the real (unpadded) tokens of each sequence. Results go to
runs/benchmarks/finetune.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from introspect_mi.embedded import EMBEDDED
from introspect_mi.finetune import (
    PRESETS,
    Encoded,
    Example,
    answer_loss,
    collate,
    encode_example,
    end_of_answer_ids,
    full_logits_loss,
    lora_on,
)
from introspect_mi.models import ModelHandle, load
from introspect_mi.paths import runs_dir
from introspect_mi.prompt_format import Message
from introspect_mi.store import atomic_write_text

VOCAB = (
    "river stone apple window seven quiet orange mountain paper silver garden music winter doctor "
    "yellow bridge candle forest ocean pencil thunder castle rabbit mirror planet engine harbor "
    "violet marble lantern meadow copper falcon whisper desert island basket velvet shadow"
).split()
ANSWERS = ("yes", "no", "A", "B", "even", "odd", "true", "false", "cat", "blue", "seven", "apple pie", "red fox")
MODES: dict[str, Callable[[torch.nn.Module, Any], tuple[torch.Tensor, int]]] = {
    "answer_only_logits": answer_loss,
    "full_sequence_logits": full_logits_loss,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=list(EMBEDDED), help="models to benchmark (embedded names or paths)")
    parser.add_argument("--examples", type=int, default=32, help="examples built per model")
    parser.add_argument("--prompt-tokens", type=int, default=150, help="approximate prompt length in tokens")
    parser.add_argument("--batch-size", type=int, default=4, help="micro-batch size (one micro-batch per optimizer step)")
    parser.add_argument("--steps", type=int, default=2, help="timed optimizer steps per mode")
    parser.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps per mode before timing")
    parser.add_argument("--preset", default="quick", choices=sorted(PRESETS), help="LoRA settings (rank, targets, lr)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default: runs/benchmarks/finetune.json)")


def build_examples(handle: ModelHandle, n: int, prompt_tokens: int, seed: int) -> list[Example]:
    """`n` examples: a rendered prompt of about `prompt_tokens` tokens and a 1-3 token answer."""
    rng = random.Random(seed)
    fmt = handle.prompt_format
    out = []
    for _ in range(n):
        words = ["Answer with one word. Which of these words names a colour:"]
        while len(fmt.encode(fmt.render([Message("user", " ".join(words))]))) < prompt_tokens:
            words.append(rng.choice(VOCAB))
        prompt = fmt.render([Message("user", " ".join(words))])
        answer = next(a for a in rng.sample(ANSWERS, len(ANSWERS)) if 1 <= _answer_tokens(handle, prompt, a) <= 3)
        out.append(Example(prompt, answer))
    return out


def encoded_examples(handle: ModelHandle, n: int, prompt_tokens: int, seed: int) -> list[Encoded]:
    """`build_examples`, tokenised as finetuning trains them (the template's own end of answer)."""
    fmt = handle.prompt_format
    eoa = end_of_answer_ids(fmt, handle.tokenizer)
    return [encode_example(fmt, eoa, e, i) for i, e in enumerate(build_examples(handle, n, prompt_tokens, seed))]


def _answer_tokens(handle: ModelHandle, prompt: str, answer: str) -> int:
    fmt = handle.prompt_format
    return len(fmt.encode(prompt + fmt.answer_prefix + answer)) - len(fmt.encode(prompt))


def measure(handle: ModelHandle, encoded: Sequence[Encoded], args: argparse.Namespace) -> dict[str, Any]:
    """Train a fresh LoRA for warmup + steps optimizer steps, computing every step's loss both ways.

    Each step runs forward+backward once per mode on the same batch at the same weights (the
    mode that goes first alternates, so a busy machine slows both alike), checks that the losses
    and gradients agree, and takes the optimizer step; the optimizer's time is added to both.
    """
    config = PRESETS[args.preset]
    device = handle.device
    torch.manual_seed(args.seed)
    stats = {mode: {"seconds": 0.0, "tokens": 0, "target_tokens": 0, "losses": []} for mode in MODES}
    max_loss_diff = max_grad_diff = 0.0
    with lora_on(handle, config) as peft_model:
        params = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.lr)
        peft_model.train()
        for step in range(args.warmup + args.steps):
            first = (step * args.batch_size) % len(encoded)
            batch = collate([encoded[(first + i) % len(encoded)] for i in range(args.batch_size)], handle.pad_token_id).to(device)
            order = list(MODES) if step % 2 == 0 else list(reversed(MODES))
            losses, grads, seconds = {}, {}, {}
            for mode in order:
                optimizer.zero_grad(set_to_none=True)
                t0 = time.perf_counter()
                loss_sum, n = MODES[mode](peft_model, batch)
                (loss_sum / n).backward()
                _sync(device)
                seconds[mode] = time.perf_counter() - t0
                losses[mode] = float(loss_sum.detach()) / n
                grads[mode] = torch.cat([p.grad.flatten() for p in params])
            t0 = time.perf_counter()
            optimizer.step()
            _sync(device)
            opt_s = time.perf_counter() - t0
            a, b = (grads[m] for m in MODES)
            max_grad_diff = max(max_grad_diff, float((a - b).abs().max() / b.abs().max()))
            max_loss_diff = max(max_loss_diff, abs(losses["answer_only_logits"] - losses["full_sequence_logits"]))
            if step >= args.warmup:
                for mode, st in stats.items():
                    st["seconds"] += seconds[mode] + opt_s
                    st["tokens"] += batch.n_tokens
                    st["target_tokens"] += n
                    st["losses"].append(losses[mode])
    for st in stats.values():
        st["tokens_per_s"] = st["tokens"] / st["seconds"]
        st["s_per_step"] = st["seconds"] / args.steps
    return {**stats, "max_loss_diff": max_loss_diff, "max_rel_grad_diff": max_grad_diff}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(args: argparse.Namespace) -> int:
    out_path = args.out or runs_dir() / "benchmarks" / "finetune.json"
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {}
    for name in args.models:
        handle = load(name)
        encoded = encoded_examples(handle, args.examples, args.prompt_tokens, args.seed)
        row: dict[str, Any] = {
            "vocab_size": int(handle.config.vocab_size), "n_layers": handle.n_layers,
            "mean_seq_tokens": sum(len(e.ids) for e in encoded) / len(encoded),
            "mean_target_tokens": sum(e.n_target for e in encoded) / len(encoded),
        }
        row.update(measure(handle, encoded, args))
        a, f = row["answer_only_logits"], row["full_sequence_logits"]
        row["speedup"] = a["tokens_per_s"] / f["tokens_per_s"]
        results[name] = row
        print(
            f"{name}: seq {row['mean_seq_tokens']:.0f} tokens ({row['mean_target_tokens']:.1f} trained), vocab {row['vocab_size']}, "
            f"micro-batch {args.batch_size}, {args.steps} timed steps | answer-only logits {a['tokens_per_s']:.0f} tok/s "
            f"({a['s_per_step']:.2f} s/step) | full-sequence logits {f['tokens_per_s']:.0f} tok/s ({f['s_per_step']:.2f} s/step) "
            f"| ratio {row['speedup']:.2f}x | max loss diff {row['max_loss_diff']:.1e}, max rel grad diff {row['max_rel_grad_diff']:.1e}",
            flush=True,
        )
        del handle
    doc = {
        "benchmark": "finetune", "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if not callable(v)},
        "lora": PRESETS[args.preset].canonical(), "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__,
        "results": results,
    }
    atomic_write_text(out_path, json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out_path}")
    return 0


def add_parser(sub: Any) -> None:
    """Register the `finetune` subcommand."""
    p = sub.add_parser("finetune", help="LoRA training tokens/s: logits only where the loss is vs full-sequence logits")
    add_arguments(p)
    p.set_defaults(run=run)
