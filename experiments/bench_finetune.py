"""Benchmark: LoRA training throughput with logits only where the loss is vs full-sequence logits.

`python -m experiments.benchmark finetune` (or `python -m experiments.bench_finetune`). On each
model, ~32 realistic finetuning examples (a ~150-token rendered prompt of random words, an answer
of 1-3 tokens plus the end-of-answer token) train a LoRA for a few optimizer steps; every step
computes forward+backward both ways, on the same batch at the same weights: with
`finetune_batches.answer_loss` (decoder body, lm_head at the answer positions only) and with HF's forward
with `labels` (logits at every position). The two must agree on loss and gradients.
Throughput counts the real (unpadded) tokens of each sequence.

Against the hardware (issue 18), per model, in the same run:
- the FLOP bound: FLOPs of one forward+backward LoRA step per real token, counted by torch's
  `FlopCounterMode` (matmuls and attention; for LoRA the frozen weights get no weight gradient,
  so this is about 4 × the non-embedding parameters, not 6 ×), and the machine's fp32 matmul
  rate measured on the model's own MLP shape; bound = rate / FLOPs per token, and each mode's
  tokens/s is reported as a fraction of it;
- the training step as the quick preset runs it vs before (`--configs`): each in a fresh
  process that loads the model and trains `--steps` optimizer steps of 8 examples, reporting
  s/step, tokens/s and the process's peak resident memory (the finetune's own, with one model
  loaded; the study process also holds the other models).
Results go to runs/benchmarks/finetune.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from introspect_mi.embedded import EMBEDDED
from introspect_mi.finetune import lora_on
from introspect_mi.finetune_config import PRESETS
from introspect_mi.finetune_batches import Encoded, Example, answer_loss, collate, encode_example, end_of_answer_ids, full_logits_loss
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
    parser.add_argument("--configs", nargs="*", default=["eager:8", "sdpa:8", "sdpa:2"],
                        help="training-step configurations KERNEL:MICRO_BATCH, each timed in a fresh process on steps of 8 "
                             "examples (eager:8 was the quick preset before issue 18, sdpa:8 is it now, sdpa:2 its low-memory variant; none: skip)")
    parser.add_argument("--one-config", default=None, help=argparse.SUPPRESS)  # the child process of --configs


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


def flop_bound(handle: ModelHandle, encoded: Sequence[Encoded], batch_size: int, preset: str) -> dict[str, Any]:
    """FLOPs per real token of one LoRA forward+backward (counted), the fp32 matmul rate of this
    machine on the model's MLP shape (measured), and the tokens/s bound they give."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = collate(list(encoded[:batch_size]), handle.pad_token_id).to(handle.device)
    with lora_on(handle, PRESETS[preset]) as peft_model:
        peft_model.train()
        with FlopCounterMode(display=False) as counter:
            loss, n = answer_loss(peft_model, batch)
            (loss / n).backward()
        flops = counter.get_total_flops()
    d, ff = int(handle.config.hidden_size), int(handle.config.intermediate_size)
    rows = int(batch.input_ids.numel())
    a, b = torch.randn(rows, d, device=handle.device), torch.randn(d, ff, device=handle.device)
    for _ in range(3):
        a @ b
    _sync(handle.device)
    reps, t0 = 20, time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(handle.device)
    rate = 2 * rows * d * ff * reps / (time.perf_counter() - t0)
    per_token = flops / batch.n_tokens  # padded positions cost FLOPs too: charged to the real tokens
    return {"flops_per_token": per_token, "flops_per_token_over_params": per_token / sum(p.numel() for p in handle.model.parameters()),
            "matmul_flops_per_s": rate, "bound_tokens_per_s": rate / per_token, "batch_tokens": batch.n_tokens, "batch_padded": rows}


def one_config(args: argparse.Namespace) -> dict[str, Any]:
    """In this (fresh) process: load the model, train `args.steps` + 1 optimizer steps of 8 examples
    with the kernel and micro-batch of `args.one_config`; s/step (after the first), peak RSS."""
    from introspect_mi.timing import peak_rss_mb, rss_mb

    kernel, micro = args.one_config.split(":")
    handle = load(args.models[0])
    loaded = rss_mb()
    encoded = encoded_examples(handle, 8 * (args.steps + 1), args.prompt_tokens, args.seed)
    config = dataclasses.replace(PRESETS[args.preset], attn_implementation=kernel, batch_size=int(micro), grad_accum=8 // int(micro))
    seconds, tokens = 0.0, 0
    with lora_on(handle, config) as peft_model:
        params = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.lr)
        peft_model.train()
        for step in range(args.steps + 1):
            rows = encoded[8 * step : 8 * step + 8]
            n = sum(e.n_target for e in rows)
            t0 = time.perf_counter()
            for i in range(0, 8, config.batch_size):
                loss, _ = answer_loss(peft_model, collate(rows[i : i + config.batch_size], handle.pad_token_id).to(handle.device))
                (loss / n).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _sync(handle.device)
            if step:
                seconds += time.perf_counter() - t0
                tokens += sum(len(e.ids) for e in rows)
    return {"kernel": kernel, "micro_batch": int(micro), "s_per_step": seconds / args.steps, "tokens_per_s": tokens / seconds,
            "rss_loaded_mb": loaded, "peak_rss_mb": peak_rss_mb()}


def step_configs(args: argparse.Namespace, name: str) -> list[dict[str, Any]]:
    """`one_config` of each of `args.configs` in its own process (peak memory is per process)."""
    out = []
    for conf in args.configs:
        cmd = [sys.executable, "-m", "experiments.benchmark", "finetune", "--models", name, "--one-config", conf,
               "--steps", str(args.steps), "--prompt-tokens", str(args.prompt_tokens), "--preset", args.preset, "--seed", str(args.seed)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{conf} on {name} failed: {done.stderr[-2000:]}")
        out.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return out


def run(args: argparse.Namespace) -> int:
    out_path = args.out or runs_dir() / "benchmarks" / "finetune.json"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one_config:
        print(json.dumps(one_config(args)))
        return 0
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
        row["bound"] = flop_bound(handle, encoded, args.batch_size, args.preset)
        for mode in MODES:
            row[mode]["fraction_of_bound"] = row[mode]["tokens_per_s"] / row["bound"]["bound_tokens_per_s"]
        results[name] = row
        print(
            f"{name}: seq {row['mean_seq_tokens']:.0f} tokens ({row['mean_target_tokens']:.1f} trained), vocab {row['vocab_size']}, "
            f"micro-batch {args.batch_size}, {args.steps} timed steps | answer-only logits {a['tokens_per_s']:.0f} tok/s "
            f"({a['s_per_step']:.2f} s/step) | full-sequence logits {f['tokens_per_s']:.0f} tok/s ({f['s_per_step']:.2f} s/step) "
            f"| ratio {row['speedup']:.2f}x | max loss diff {row['max_loss_diff']:.1e}, max rel grad diff {row['max_rel_grad_diff']:.1e}",
            flush=True,
        )
        bound = row["bound"]
        print(f"  FLOP bound: {bound['flops_per_token'] / 1e9:.2f} GFLOP per token ({bound['flops_per_token_over_params']:.1f} × params), "
              f"fp32 matmul {bound['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s → {bound['bound_tokens_per_s']:.0f} tok/s; "
              f"answer-only logits reach {a['fraction_of_bound']:.0%} of it", flush=True)
        del handle
        if args.configs and args.configs != ["none"]:
            row["step_configs"] = step_configs(args, name)
            for c in row["step_configs"]:
                print(f"  training step {c['kernel']}, micro-batch {c['micro_batch']} (×{8 // c['micro_batch']}): {c['s_per_step']:.2f} s/step, "
                      f"{c['tokens_per_s']:.0f} tok/s ({c['tokens_per_s'] / bound['bound_tokens_per_s']:.0%} of the bound), "
                      f"peak resident {c['peak_rss_mb'] / 1024:.2f} GB (model loaded: {c['rss_loaded_mb'] / 1024:.2f} GB)", flush=True)
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
