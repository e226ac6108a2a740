"""Capture benchmark: capture-to-disk vs a plain batched forward vs a per-prompt `run_with_cache`
loop, and peak resident memory while capturing thousands of prompts.

Setup: zero-shot object-level and hypothetical (first_character) prompts of `animals` train
items (`PromptConfig(shots=0)`), half of each; `resid_post` of every layer at p_last, final and
answer_first (the quick capture's places and positions), fp16 storage. Measured in one process
after a warm-up:

(a) plain batched forward: the capture's own left-padded forward (prompt + the one cached step
    that appends the greedy answer token) with no hooks and nothing stored, over `n` prompts;
(b) capture to disk: `capture()` of the same `n` prompts into a fresh store (tokenising,
    hooks, slicing the three positions, fp16 shards, records table);
    (a) and (b) alternate `repeats` times and the fastest of each counts;
(c) per-prompt loop: TransformerBridge `run_with_cache` of every layer's `hook_out` (the
    TransformerLens idiom), one prompt per call, on `naive_n` of the prompts (its per-prompt time
    × n is the extrapolated loop; it skips the answer step and the disk, so it is favoured);
(d) memory: `capture()` of `memory_prompts` prompts into another store while a thread samples
    the process's resident set size every 20 ms; reported as the peak over the RSS before the
    capture began, beside what the store would take if held in memory whole.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from experiments.bench_common import Machine, machine, save_result, timed
from introspect_mi.capture import CapturePrompt, CaptureSpec, all_places, batches, capture, encode, forward
from introspect_mi.engines import run_bridge
from introspect_mi.models import ModelHandle, load
from introspect_mi.prompts import PromptConfig, hypothetical_prompt, object_prompt
from introspect_mi.properties import get_property
from introspect_mi.tasks import get_task

TASK, PROPERTY = "animals", "first_character"
POSITIONS = ("p_last", "final", "answer_first")
TARGET_RATIO = 1.25


@dataclass
class Result(Machine):
    """What the benchmark prints and writes to runs/benchmarks/capture.json."""

    layers: int
    d_model: int
    positions: tuple[str, ...]
    batch_size: int
    prompts: int
    repeats: int  # (a) and (b) timed alternately this many times each; the fastest of each counts
    mean_prompt_tokens: float
    plain_forward_seconds: float
    capture_seconds: float
    capture_vs_plain: float  # (b) / (a)
    target_ratio_met: bool
    naive_prompts: int
    run_with_cache_seconds_per_prompt: float
    run_with_cache_loop_seconds_extrapolated: float
    loop_vs_capture: float  # (c) extrapolated / (b)
    memory_prompts: int
    memory_capture_seconds: float
    rss_before_mb: float
    rss_peak_mb: float
    rss_growth_mb: float  # peak - before
    store_mb: float  # the store on disk after the memory capture
    store_in_memory_mb: float  # every captured vector held at once, at the storage dtype
    shard_records: int


def bench_prompts(handle: ModelHandle, n: int) -> list[CapturePrompt]:
    """`n` prompts: object-level and hypothetical prompts of ⌈n/2⌉ animals train items, alternating."""
    task, prop, config = get_task(TASK), get_property(PROPERTY), PromptConfig(shots=0)
    out = []
    for item in task.generate("train", (n + 1) // 2, 0):
        obj = object_prompt(handle.prompt_format, item, task.spec, config)
        hyp = hypothetical_prompt(handle.prompt_format, item, task.spec, prop, config)
        out.append(CapturePrompt(obj.text, obj.p_span, {"item_id": item.item_id, "kind": "object", "task": TASK, "property": None}))
        out.append(CapturePrompt(hyp.text, hyp.p_span, {"item_id": item.item_id, "kind": "hypothetical", "task": TASK, "property": PROPERTY}))
    return out[:n]


def plain_forward(handle: ModelHandle, prompts: list[CapturePrompt], batch_size: int) -> None:
    """The capture's forward (same tokenising, padding and answer step) with no hooks, nothing kept."""
    for chunk in batches(prompts, batch_size):
        forward(handle, [encode(handle, p) for p in chunk], [], answer_step="answer_first" in POSITIONS)


def run_with_cache_loop(handle: ModelHandle, prompts: list[CapturePrompt]) -> None:
    """The TransformerLens idiom: one `run_with_cache` per prompt, every layer's resid_post cached."""
    places = all_places(handle)
    for p in prompts:
        run_bridge(handle, torch.tensor([handle.prompt_format.encode(p.text)], device=handle.device), places)


class PeakRSS:
    """Samples this process's resident set size on a thread; `peak_mb` is the largest seen."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval, self.peak_mb, self._stop = interval, rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, rss_mb())

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())


def rss_mb() -> float:
    """Current resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def benchmark(model: str, n: int, naive_n: int, memory_prompts: int, batch_size: int, shard_records: int,
              repeats: int = 2) -> Result:
    """`measure` on a model loaded by name or path."""
    return measure(load(model), n, naive_n, memory_prompts, batch_size, shard_records, repeats)


def measure(handle: ModelHandle, n: int, naive_n: int, memory_prompts: int, batch_size: int, shard_records: int,
            repeats: int = 2) -> Result:
    """(a)-(d) on a loaded model."""
    spec = CaptureSpec(places=tuple(map(str, all_places(handle))), positions=POSITIONS, dtype="float16",
                       batch_size=batch_size, shard_records=shard_records)
    prompts = bench_prompts(handle, max(n, memory_prompts))
    timed_prompts = prompts[:n]
    tokens = [len(handle.prompt_format.encode(p.text)) for p in timed_prompts]
    with tempfile.TemporaryDirectory(prefix="bench-capture-") as tmp:
        root = Path(tmp)
        # Warm-up: each path once.
        plain_forward(handle, timed_prompts[:batch_size], batch_size)
        capture(handle, timed_prompts[:batch_size], spec, root / "warm", progress=False)
        run_with_cache_loop(handle, timed_prompts[:1])

        plain_s = capture_s = float("inf")
        for k in range(repeats):  # alternated, fastest kept: a burst of other load hits one side less
            plain_s = min(plain_s, timed(handle, plain_forward, handle, timed_prompts, batch_size)[1])
            capture_s = min(capture_s, timed(handle, lambda: capture(handle, timed_prompts, spec, root / f"timed{k}", progress=False))[1])
        _, loop_s = timed(handle, run_with_cache_loop, handle, timed_prompts[:naive_n])

        before = rss_mb()
        start = time.perf_counter()
        with PeakRSS() as rss:
            capture(handle, prompts[:memory_prompts], spec, root / "memory")
        memory_s = time.perf_counter() - start
        store_mb = folder_mb(root / "memory")
    per_prompt = loop_s / naive_n
    vectors = memory_prompts * len(spec.places) * len(POSITIONS)
    return Result(
        **machine(handle), layers=handle.n_layers, d_model=handle.d_model,
        positions=POSITIONS, batch_size=batch_size, prompts=n, repeats=repeats, mean_prompt_tokens=sum(tokens) / len(tokens),
        plain_forward_seconds=plain_s, capture_seconds=capture_s, capture_vs_plain=capture_s / plain_s,
        target_ratio_met=capture_s / plain_s <= TARGET_RATIO, naive_prompts=naive_n, run_with_cache_seconds_per_prompt=per_prompt,
        run_with_cache_loop_seconds_extrapolated=per_prompt * n, loop_vs_capture=per_prompt * n / capture_s,
        memory_prompts=memory_prompts, memory_capture_seconds=memory_s, rss_before_mb=before, rss_peak_mb=rss.peak_mb,
        rss_growth_mb=rss.peak_mb - before, store_mb=store_mb, store_in_memory_mb=vectors * handle.d_model * 2 / 2**20,
        shard_records=shard_records,
    )


def report(r: Result) -> str:
    """The printed summary."""
    return "\n".join([
        f"capture benchmark: {r.model} on {r.device} ({r.dtype}, {r.torch_threads} torch threads, load {r.load_average:.1f}); "
        f"resid_post × {r.layers} layers at {', '.join(r.positions)}, fp16 storage, batch {r.batch_size}",
        f"  {r.prompts} prompts ({TASK} object-level and hypothetical/{PROPERTY}, zero-shot), {r.mean_prompt_tokens:.0f} tokens on average",
        "",
        f"  {'method':52s} {'seconds':>9s} {'prompts/s':>10s}",
        f"  {'(a) plain batched forward (no hooks, nothing kept)':52s} {r.plain_forward_seconds:9.1f} {r.prompts / r.plain_forward_seconds:10.1f}",
        f"  {'(b) capture to disk':52s} {r.capture_seconds:9.1f} {r.prompts / r.capture_seconds:10.1f}",
        f"  {'(c) run_with_cache per prompt (bridge), extrapolated':52s} {r.run_with_cache_loop_seconds_extrapolated:9.1f} "
        f"{1 / r.run_with_cache_seconds_per_prompt:10.1f}  (timed on {r.naive_prompts} prompts)",
        "",
        f"  capture / plain forward: {r.capture_vs_plain:.2f}x (target <= {TARGET_RATIO}x: {'met' if r.target_ratio_met else 'NOT met'})",
        f"  per-prompt run_with_cache loop / capture: {r.loop_vs_capture:.1f}x",
        f"  memory: capturing {r.memory_prompts} prompts took {r.memory_capture_seconds:.0f} s; resident set {r.rss_before_mb:.0f} MB before, "
        f"peak {r.rss_peak_mb:.0f} MB (+{r.rss_growth_mb:.0f} MB); store on disk {r.store_mb:.0f} MB "
        f"(all of it in memory would be {r.store_in_memory_mb:.0f} MB); shards of {r.shard_records} prompts",
    ])


def run(args: argparse.Namespace) -> None:
    result = benchmark(args.model, args.n, args.naive_n, args.memory_prompts, args.batch_size, args.shard_records, args.repeats)
    print(report(result))
    save_result("capture", result)


def add_parser(sub: Any) -> None:
    """Register the `capture` subcommand."""
    p = sub.add_parser("capture", help="capture to disk vs a plain batched forward vs per-prompt run_with_cache; peak memory")
    p.add_argument("--model", default="smollm2-135m-instruct", help="embedded name or checkpoint folder")
    p.add_argument("--n", type=int, default=256, help="prompts timed in (a) and (b)")
    p.add_argument("--naive-n", type=int, default=32, help="prompts timed one run_with_cache call each (c)")
    p.add_argument("--memory-prompts", type=int, default=5000, help="prompts captured while the resident set size is sampled (d)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward (the quick capture's)")
    p.add_argument("--shard-records", type=int, default=128, help="prompts per shard (the quick capture's)")
    p.add_argument("--repeats", type=int, default=2, help="times (a) and (b) are each timed, alternating; the fastest counts")
    p.set_defaults(run=run)
