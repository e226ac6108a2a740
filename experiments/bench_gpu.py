"""One-shot GPU check: every benchmark on a Llama-3-8B-shaped random model, in one command.

    python -m experiments.benchmark gpu              # CUDA: 32 layers, d 4096, 32/8 heads, FFN 14336, vocab 128256, bf16
    python -m experiments.benchmark gpu --size toy   # the same code at toy width (CPU is fine): what the test runs

No weights are downloaded: the model is random-initialised from a Llama-3.1-8B config (GQA,
`rope_scaling` of type llama3, untied embeddings) on the device; prompts are tokenised with the
embedded SmolLM2 tokenizer (a random model answers garbage; throughput, memory and agreement are
what count, and they depend on shapes, not on the tokenizer). Measured, reusing each benchmark's
own `measure`:

- inference: the Engine's tokens/s vs a plain batched forward and vs a naive `generate` loop;
- finetune: LoRA step tokens/s (answer-only and full-sequence logits) and the peak memory of the
  steps (`torch.cuda.max_memory_allocated`; None on CPU);
- capture: capture to disk vs the plain forward it instruments;
- patching: the batched layer × position sweep vs one forward per cell;
- agreement: raw hooks vs TransformerBridge vs nnsight at five places, max over tokens of
  ||a - b|| / ||b||, against a stated bf16 tolerance (equal computations: expect 0);
- placement: `models.plan_placement` for the 8B (and a 70B) on the visible GPUs and standard cases.

Results: runs/benchmarks/gpu.json (`--size toy`: gpu-toy.json, so a toy run never replaces a GPU table).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from experiments import bench_capture, bench_finetune, bench_inference, bench_patching
from experiments.bench_common import Machine, machine, save_result
from introspect_mi.engines import run_bridge, run_hf, run_nnsight
from introspect_mi.errors import UserError
from introspect_mi.generate import user_prompt
from introspect_mi.models import ModelHandle, Placement, plan_placement, resolve
from introspect_mi.places import Place, PlaceKind, resid_post
from introspect_mi.prompt_format import format_for

TOKENIZER = "smollm2-135m-instruct"
LLAMA3 = {"vocab_size": 128256, "max_position_embeddings": 131072, "rope_theta": 500000.0, "tie_word_embeddings": False,
          "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 8192}, "rms_norm_eps": 1e-5}
SIZES = {
    "8b": {"num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336},
    "toy": {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 224},
}
WORKLOAD = {  # per size, each benchmark's measure() arguments after the handle (finetune: examples, prompt tokens, batch, steps, warm-up)
    "8b": {"inference": (64, 32, 8), "finetune": (16, 150, 4, 3, 1), "capture": (64, 4, 64, 16, 64), "patching": (32, 8)},
    "toy": {"inference": (4, 4, 2), "finetune": (4, 40, 2, 1, 1), "capture": (4, 1, 4, 4, 4, 1), "patching": (8, 2)},
}
BF16_RTOL = 1e-2
"""Agreement tolerance, relative to each token's residual norm: bf16 keeps 8 significant bits
(one rounding is ≤ 2^-8 ≈ 3.9e-3), so 1e-2 allows about two roundings. At equal attention the
three engines run the very same computation and are expected to agree exactly (0.0)."""
TIME_LIMIT_S = 8 * 60
GB = 1e9
PARAMS_70B = 70.6e9
PLACEMENT_CASES = {"1 x 80 GB": [80 * 2**30], "2 x 80 GB": [80 * 2**30] * 2, "1 x 141 GB": [141 * 2**30], "8 x 80 GB": [80 * 2**30] * 8}


@dataclass
class Result(Machine):
    """What `python -m experiments.benchmark gpu` prints and writes."""

    size: str
    config: dict[str, Any]
    parameters: int
    build_seconds: float
    total_seconds: float
    under_8_minutes: bool
    inference: dict[str, Any]
    finetune: dict[str, Any]
    finetune_peak_memory_gb: float | None  # during the LoRA steps (CUDA only)
    capture: dict[str, Any]
    patching: dict[str, Any]
    agreement: dict[str, Any]
    placement: dict[str, Any]


def llama3_config(size: str, tokenizer: Any) -> Any:
    """A Llama-3.1-8B-shaped `LlamaConfig` at `size` (bos/eos from the tokenizer in use)."""
    from transformers import LlamaConfig

    return LlamaConfig(**LLAMA3, **SIZES[size], bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)


def build(size: str, device: str, folder: Path) -> ModelHandle:
    """A random Llama-3-shaped model on `device` (bf16 on CUDA, fp32 on CPU) as a ModelHandle; its
    config and tokenizer saved in `folder` (the bridge reads them there; no weights are written)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(resolve(TOKENIZER)[1])
    config = llama3_config(size, tokenizer)
    placement = plan_placement(0, 2.0, device, None, None, [])
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=placement.dtype, attn_implementation="eager").eval()
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return ModelHandle(name=f"llama3-{size}-shaped-random", checkpoint=folder, model=model, tokenizer=tokenizer,
                       prompt_format=format_for(tokenizer), placement=placement, attn_implementation="eager",
                       base_fingerprint=f"random-llama3-{size}-seed0")


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max over tokens of ||a - b|| / ||b|| (in float32)."""
    a, b = a.float(), b.float()
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-12)).max())


def agreement(handle: ModelHandle) -> dict[str, Any]:
    """Raw hooks vs bridge vs nnsight at five places on one prompt."""
    n = handle.n_layers
    places = [resid_post(0), resid_post(n // 2), Place(PlaceKind.ATTN_OUT, n // 2), resid_post(n - 1), Place(PlaceKind.FINAL_NORM)]
    ids = torch.tensor([handle.prompt_format.encode(user_prompt(handle, "What is the next animal? cat dog fox owl"))], device=handle.device)
    ref = run_hf(handle, ids, places)
    errors = {name: {str(p): relative_error(got[p], ref[p]) for p in places}
              for name, got in (("bridge", run_bridge(handle, ids, places)), ("nnsight", run_nnsight(handle, ids, places)))}
    worst = max(v for e in errors.values() for v in e.values())
    return {"dtype": str(handle.placement.dtype).removeprefix("torch."), "tokens": int(ids.shape[1]), "rtol": BF16_RTOL,
            "max_relative_error": errors, "worst": worst, "within_rtol": worst <= BF16_RTOL, "exact": worst == 0.0}


def placement_table(handle: ModelHandle) -> dict[str, Any]:
    """`plan_placement` for this model's and a 70B's bf16 weights, on the visible GPUs and standard cases."""
    gpus = [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())]
    sizes = {"this model": sum(p.numel() for p in handle.model.parameters()) * 2, "70B": int(PARAMS_70B * 2)}
    cases = {"visible GPUs": gpus, **PLACEMENT_CASES}

    def plan(weight_bytes: int, gpu_bytes: list[int]) -> dict[str, Any]:
        p: Placement = plan_placement(weight_bytes, 2.0, None, None, None, gpu_bytes)
        return {"device": p.device, "dtype": str(p.dtype).removeprefix("torch."), "device_map": p.device_map}

    return {"weights_gb": {k: v / GB for k, v in sizes.items()}, "visible_gpu_gb": [g / GB for g in gpus],
            "plans": {f"{model} on {case}": plan(weight, gpu) for model, weight in sizes.items() for case, gpu in cases.items()}}


def benchmark(size: str, property_: str = "second_character") -> Result:
    """Build the model, run every measurement, collect one result."""
    if size == "8b" and not torch.cuda.is_available():
        raise UserError("--size 8b needs a CUDA GPU (torch.cuda.is_available() is False here)",
                        "run it on the GPU machine, or use --size toy to run the same code at toy width on this CPU")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = WORKLOAD[size]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        handle = build(size, device, Path(tmp))
        build_s = time.perf_counter() - started
        inference = bench_inference.measure(handle, *work["inference"])
        n_examples, prompt_tokens, batch, steps, warmup = work["finetune"]
        args = argparse.Namespace(preset="quick", seed=0, batch_size=batch, steps=steps, warmup=warmup)
        encoded = bench_finetune.encoded_examples(handle, n_examples, prompt_tokens, 0)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        finetune = bench_finetune.measure(handle, encoded, args)
        peak = torch.cuda.max_memory_allocated() / GB if device == "cuda" else None
        # Patching before capture: capture's per-prompt loop boots the TransformerBridge view, after
        # which the HF model's own forward returns an empty KV cache (which patching's clean runs keep).
        patching = bench_patching.measure(handle, property_, *work["patching"])
        capture = bench_capture.measure(handle, *work["capture"])
        agree = agreement(handle)
        placement = placement_table(handle)
        total = time.perf_counter() - started
        return Result(**machine(handle), size=size, config=SIZES[size] | {k: LLAMA3[k] for k in ("vocab_size", "rope_scaling")},
                      parameters=sum(p.numel() for p in handle.model.parameters()), build_seconds=build_s, total_seconds=total,
                      under_8_minutes=total <= TIME_LIMIT_S, inference=asdict(inference), finetune=finetune, finetune_peak_memory_gb=peak,
                      capture=asdict(capture), patching=asdict(patching), agreement=agree, placement=placement)


def report(r: Result) -> str:
    """The printed table."""
    i, c, p, a = r.inference, r.capture, r.patching, r.agreement
    lora = r.finetune["answer_only_logits"]
    peak = "n/a (CPU)" if r.finetune_peak_memory_gb is None else f"{r.finetune_peak_memory_gb:.1f} GB"
    rows = [
        ("evaluation engine", f"{i['engine_tokens_per_s']:.0f} tokens/s", f"{i['engine_vs_forward']:.2f}x a plain batched forward "
         f"({i['forward_tokens_per_s']:.0f} tokens/s), {i['engine_vs_naive']:.1f}x a naive generate loop (prompts/s)"),
        ("LoRA step", f"{lora['tokens_per_s']:.0f} tokens/s", f"{lora['s_per_step']:.2f} s/step; full-sequence logits "
         f"{r.finetune['full_sequence_logits']['tokens_per_s']:.0f} tokens/s; peak memory {peak}"),
        ("capture", f"{c['capture_vs_plain']:.2f}x", f"capture to disk / plain forward ({c['prompts']} prompts)"),
        ("patching sweep", f"{p['speedup']:.1f}x", f"vs one forward per cell ({p['cells']} cells, engine {p['engine_seconds']:.1f} s)"),
        ("agreement", f"{a['worst']:.1e}", f"max relative error, bridge and nnsight vs raw hooks ({a['dtype']}; "
         f"tolerance {a['rtol']:.0e}: {'met' if a['within_rtol'] else 'NOT met'}{', exact' if a['exact'] else ''})"),
    ]
    plans = [f"    {k}: {v['device']} {v['dtype']}" + (f", device_map={v['device_map']}" if v["device_map"] else "")
             for k, v in r.placement["plans"].items() if k.endswith("visible GPUs") or k.startswith("70B")]
    return "\n".join([
        f"gpu check: {r.model} ({r.parameters / 1e9:.2f} B parameters) on {r.device} ({r.dtype}, load {r.load_average:.1f}); "
        f"built in {r.build_seconds:.0f} s, all measurements in {r.total_seconds:.0f} s "
        f"({'under' if r.under_8_minutes else 'OVER'} 8 minutes)",
        "", *(f"  {name:18s} {value:>16s}  {detail}" for name, value, detail in rows),
        "  placement (models.plan_placement):", *plans,
    ])


def run(args: argparse.Namespace) -> None:
    result = benchmark(args.size)
    print(report(result))
    save_result("gpu" if args.size == "8b" else f"gpu-{args.size}", result)


def add_parser(sub: Any) -> None:
    """Register the `gpu` subcommand."""
    p = sub.add_parser("gpu", help="one-shot GPU check on a Llama-3-8B-shaped random model (bf16): every benchmark, agreement, placement")
    p.add_argument("--size", choices=sorted(SIZES), default="8b", help="8b (needs CUDA) or toy (the same code at toy width, CPU is fine)")
    p.set_defaults(run=run)
