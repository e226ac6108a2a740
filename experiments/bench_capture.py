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
    capture began, beside what the store would take if held in memory whole;
(e) shared-prefix reuse: `capture()` with `prefix_reuse` off (plain left-padded batches in input
    order, the capture before issue 18) and on, alternating `repeats` times, fastest of each, on
    the first `reuse_n` of the quick preset's 2-shot hypothetical prompts of the untrained subject
    (built as `experiments.capture` builds them from the preset's [study] and [capture] sections:
    places, positions, dtype, batch size, shard size; no study run needed, labels left empty).
    Beside the times: the tokens each computes (load-free), the largest difference of the stored
    vectors, and of float32 captures of the first `diff_n` prompts (the activations themselves).

(a)-(d) run the capture's plain batches (`prefix_reuse=False`, zero-shot prompts share little).
`--parts reuse` runs (e) alone: a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from experiments.bench_common import Machine, machine, save_result, timed
from introspect_mi.actstore import ActivationStore
from introspect_mi.batching import prefix_fits, shared_prefix_len
from introspect_mi.capture import CapturePrompt, CaptureSpec, all_places, batches, capture, encode, forward, shard_batches
from introspect_mi.engines import run_bridge
from introspect_mi.models import ModelHandle, load
from introspect_mi.prompts import PromptConfig, hypothetical_prompt, object_prompt
from introspect_mi.properties import get_property
from introspect_mi.tasks import get_task

TASK, PROPERTY = "animals", "first_character"
POSITIONS = ("p_last", "final", "answer_first")
TARGET_RATIO = 1.25
REUSE_TARGET = 3.0  # issue 18: capture with prefix reuse ≥ 3× faster on the quick preset's 2-shot hypotheticals
PARTS = ("classic", "reuse")  # (a)-(d), (e)


@dataclass
class Reuse:
    """(e): capture with vs without shared-prefix reuse on the quick preset's 2-shot hypothetical prompts."""

    prompts: int
    mean_prompt_tokens: float
    places: int
    positions: tuple[str, ...]
    dtype: str
    batch_size: int
    shard_records: int
    repeats: int  # each variant timed this many times, alternating; the fastest counts
    plain_seconds: float  # prefix_reuse off: plain left-padded batches in input order
    reuse_seconds: float
    speedup: float  # plain / reuse
    target_met: bool  # speedup ≥ REUSE_TARGET
    plain_tokens: int  # tokens the prompt forwards compute (padding included; answer step not counted)
    reuse_tokens: int  # each batch's shared prefix once plus its padded suffixes (a memoised prefix counted again)
    token_ratio: float
    plain_batches: int
    reuse_batches: int
    mean_shared_prefix: float  # tokens, over the reuse batches
    max_abs_diff_stored: float  # between the two timed stores, every place and position, at the storage dtype
    max_abs_stored: float  # the largest stored value (scale of the difference)
    diff_prompts: int
    max_abs_diff_float32: float  # float32 captures of the first diff_prompts prompts, both ways
    max_rel_diff_float32: float  # max over vectors of max |difference| / max |value| of that vector
    answer_tokens_equal: bool  # the greedy first answer token of every timed prompt
    load_before: float  # 1-minute load average when (e) started (the machine's other work skews times)


@dataclass
class Result(Machine):
    """What the benchmark prints and writes to runs/benchmarks/capture.json (parts not run: None)."""

    layers: int
    d_model: int
    positions: tuple[str, ...]
    batch_size: int
    prompts: int | None = None
    repeats: int | None = None  # (a) and (b) timed alternately this many times each; the fastest of each counts
    mean_prompt_tokens: float | None = None
    plain_forward_seconds: float | None = None
    capture_seconds: float | None = None
    capture_vs_plain: float | None = None  # (b) / (a)
    target_ratio_met: bool | None = None
    naive_prompts: int | None = None
    run_with_cache_seconds_per_prompt: float | None = None
    run_with_cache_loop_seconds_extrapolated: float | None = None
    loop_vs_capture: float | None = None  # (c) extrapolated / (b)
    memory_prompts: int | None = None
    memory_capture_seconds: float | None = None
    rss_before_mb: float | None = None
    rss_peak_mb: float | None = None
    rss_growth_mb: float | None = None  # peak - before
    store_mb: float | None = None  # the store on disk after the memory capture
    store_in_memory_mb: float | None = None  # every captured vector held at once, at the storage dtype
    shard_records: int | None = None
    prefix_reuse: Reuse | None = None  # (e)


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


def quick_hypotheticals(handle: ModelHandle, n: int, preset: str = "quick") -> tuple[list[CapturePrompt], CaptureSpec]:
    """The first `n` hypothetical prompts the preset's capture stores for the untrained subject
    (2-shot in the quick preset), in capture order, and the preset's capture spec with prefix
    reuse off. Built by the study's and the capture's own code from the preset file: the held-out
    items and properties of its [study] section, rendered in `handle`'s format; labels empty."""
    from experiments.behavioral_config import StudyConfig
    from experiments.capture import CaptureConfig, capture_prompts
    from experiments.common import load_preset
    from experiments.mech import LABELS, render_pairs, study_pairs
    from introspect_mi import config as cfg

    study = cfg.build(StudyConfig, load_preset(preset, "study"))
    conf = cfg.build(CaptureConfig, load_preset(preset, "capture"))
    _, pairs = study_pairs(study)
    rendered = render_pairs(handle.prompt_format, [(p, dict.fromkeys(LABELS)) for p in pairs], PromptConfig(shots=study.object_shots),
                            study.untrained_shots)
    prompts = [p for p in capture_prompts(handle, rendered) if p.record["kind"] == "hypothetical"][:n]
    spec = CaptureSpec(places=tuple(map(str, all_places(handle, conf.place_kinds))), positions=conf.positions, dtype=conf.dtype,
                       batch_size=conf.batch_size, shard_records=conf.shard_records, prefix_reuse=False)
    return prompts, spec


def computed_tokens(handle: ModelHandle, prompts: list[CapturePrompt], spec: CaptureSpec) -> tuple[int, int, list[int]]:
    """(tokens the prompt forwards compute, number of forwards, each forward's shared prefix length)
    in the batches `capture` forms for `spec`, shard by shard (the answer step not counted)."""
    tokens, shared = 0, []
    answer_step = "answer_first" in spec.positions
    for chunk in batches(prompts, spec.shard_records):
        ids = [encode(handle, p).ids for p in chunk]
        for group in shard_batches(ids, spec.batch_size, spec.prefix_reuse):
            rows = [ids[k] for k in group]
            fits = spec.prefix_reuse and prefix_fits(handle.config, rows, 2 if answer_step else 0)
            p = shared_prefix_len(rows) if fits else 0
            tokens += p + len(rows) * (max(map(len, rows)) - p)
            shared.append(p)
    return tokens, len(shared), shared


def store_difference(a: ActivationStore, b: ActivationStore) -> tuple[float, float, float]:
    """(max |a − b|, max |a|, max over vectors of max |a − b| / max |a| of the vector), every place and position."""
    diff = scale = rel = 0.0
    for place in a.places:
        for position in a.positions:
            x, _ = a.load(place, position=position, as_="torch")
            y, _ = b.load(place, position=position, as_="torch")
            d = (x - y).abs()
            diff, scale = max(diff, float(d.max())), max(scale, float(x.abs().max()))
            rel = max(rel, float((d.amax(-1) / x.abs().amax(-1).clamp_min(1e-12)).max()))
    return diff, scale, rel


def measure_reuse(handle: ModelHandle, n: int, repeats: int, diff_n: int, root: Path) -> Reuse:
    """(e) on a loaded model, stores under `root`."""
    load_before = os.getloadavg()[0]
    prompts, plain_spec = quick_hypotheticals(handle, n)
    reuse_spec = dataclasses.replace(plain_spec, prefix_reuse=True)
    warm = prompts[: plain_spec.batch_size]
    capture(handle, warm, plain_spec, root / "warm-plain", progress=False)
    capture(handle, warm, reuse_spec, root / "warm-reuse", progress=False)
    seconds = {False: float("inf"), True: float("inf")}
    for k in range(repeats):  # alternated, fastest kept: a burst of other load hits one side less
        for spec in (plain_spec, reuse_spec):
            folder = root / f"{spec.prefix_reuse}-{k}"
            _, s = timed(handle, lambda: capture(handle, prompts, spec, folder, progress=False))
            seconds[spec.prefix_reuse] = min(seconds[spec.prefix_reuse], s)
    plain_store, reuse_store = ActivationStore.open(root / "False-0"), ActivationStore.open(root / "True-0")
    stored_diff, stored_scale, _ = store_difference(plain_store, reuse_store)
    answers_equal = plain_store.records["answer_token_id"].tolist() == reuse_store.records["answer_token_id"].tolist()
    f32 = {spec.prefix_reuse: capture(handle, prompts[:diff_n], dataclasses.replace(spec, dtype="float32"), root / f"f32-{spec.prefix_reuse}",
                                      progress=False) for spec in (plain_spec, reuse_spec)}
    f32_diff, _, f32_rel = store_difference(f32[False], f32[True])
    plain_tokens, plain_forwards, _ = computed_tokens(handle, prompts, plain_spec)
    reuse_tokens, reuse_forwards, shared = computed_tokens(handle, prompts, reuse_spec)
    speedup = seconds[False] / seconds[True]
    return Reuse(
        prompts=len(prompts), mean_prompt_tokens=sum(len(encode(handle, p).ids) for p in prompts) / len(prompts),
        places=len(plain_spec.places), positions=tuple(plain_spec.positions), dtype=plain_spec.dtype, batch_size=plain_spec.batch_size,
        shard_records=plain_spec.shard_records, repeats=repeats, plain_seconds=seconds[False], reuse_seconds=seconds[True],
        speedup=speedup, target_met=speedup >= REUSE_TARGET, plain_tokens=plain_tokens, reuse_tokens=reuse_tokens,
        token_ratio=plain_tokens / reuse_tokens, plain_batches=plain_forwards, reuse_batches=reuse_forwards,
        mean_shared_prefix=sum(shared) / len(shared), max_abs_diff_stored=stored_diff, max_abs_stored=stored_scale,
        diff_prompts=min(diff_n, len(prompts)), max_abs_diff_float32=f32_diff, max_rel_diff_float32=f32_rel,
        answer_tokens_equal=answers_equal, load_before=load_before,
    )


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
              repeats: int = 2, parts: Sequence[str] = PARTS, reuse_n: int = 128, diff_n: int = 32) -> Result:
    """`measure` on a model loaded by name or path."""
    return measure(load(model), n, naive_n, memory_prompts, batch_size, shard_records, repeats, parts, reuse_n, diff_n)


def measure(handle: ModelHandle, n: int, naive_n: int, memory_prompts: int, batch_size: int, shard_records: int,
            repeats: int = 2, parts: Sequence[str] = PARTS, reuse_n: int = 128, diff_n: int = 32) -> Result:
    """(a)-(d) (`classic`) and (e) (`reuse`) on a loaded model."""
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise ValueError(f"parts are some of {', '.join(PARTS)}, not {', '.join(unknown) or 'none'}")
    reuse = None
    if "reuse" in parts:
        with tempfile.TemporaryDirectory(prefix="bench-capture-reuse-") as tmp:
            reuse = measure_reuse(handle, reuse_n, repeats, diff_n, Path(tmp))
    if "classic" not in parts:
        return Result(**machine(handle), layers=handle.n_layers, d_model=handle.d_model, positions=POSITIONS, batch_size=batch_size,
                      prefix_reuse=reuse)
    spec = CaptureSpec(places=tuple(map(str, all_places(handle))), positions=POSITIONS, dtype="float16",
                       batch_size=batch_size, shard_records=shard_records, prefix_reuse=False)
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
        shard_records=shard_records, prefix_reuse=reuse,
    )


def report(r: Result) -> str:
    """The printed summary (of the parts that ran)."""
    lines = [f"capture benchmark: {r.model} on {r.device} ({r.dtype}, {r.torch_threads} torch threads, load {r.load_average:.1f}); "
             f"resid_post × {r.layers} layers"]
    if r.prompts is not None:
        lines += classic_report(r)
    if r.prefix_reuse is not None:
        lines += reuse_report(r.prefix_reuse)
    return "\n".join(lines)


def classic_report(r: Result) -> list[str]:
    return [
        f"  (a)-(d): at {', '.join(r.positions)}, fp16 storage, batch {r.batch_size}, plain batches (no prefix reuse)",
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
    ]


def reuse_report(u: Reuse) -> list[str]:
    return [
        "",
        f"  (e) shared-prefix reuse: {u.prompts} of the quick preset's 2-shot hypothetical prompts ({u.mean_prompt_tokens:.0f} tokens on "
        f"average), {u.places} places at {', '.join(u.positions)}, {u.dtype}, batch {u.batch_size}, shards of {u.shard_records}; "
        f"fastest of {u.repeats} alternating runs (load {u.load_before:.1f} at the start)",
        f"  {'capture':36s} {'seconds':>9s} {'prompts/s':>10s} {'forwards':>9s} {'tokens':>9s}",
        f"  {'prefix reuse off (plain batches)':36s} {u.plain_seconds:9.1f} {u.prompts / u.plain_seconds:10.2f} {u.plain_batches:9d} {u.plain_tokens:9d}",
        f"  {'prefix reuse on':36s} {u.reuse_seconds:9.1f} {u.prompts / u.reuse_seconds:10.2f} {u.reuse_batches:9d} {u.reuse_tokens:9d}",
        f"  reuse speedup: {u.speedup:.2f}x (target >= {REUSE_TARGET}x: {'met' if u.target_met else 'NOT met'}); "
        f"{u.token_ratio:.2f}x fewer tokens computed (mean shared prefix {u.mean_shared_prefix:.0f} tokens)",
        f"  activations, reuse vs plain: max |difference| {u.max_abs_diff_stored:.3g} as stored ({u.dtype}; values up to "
        f"{u.max_abs_stored:.3g}); float32 captures of {u.diff_prompts} prompts: max |difference| {u.max_abs_diff_float32:.3g}, "
        f"relative to the vector's largest value {u.max_rel_diff_float32:.2g}; answer tokens {'identical' if u.answer_tokens_equal else 'DIFFER'}",
    ]


def run(args: argparse.Namespace) -> None:
    result = benchmark(args.model, args.n, args.naive_n, args.memory_prompts, args.batch_size, args.shard_records, args.repeats,
                       args.parts, args.reuse_n, args.diff_n)
    print(report(result))
    save_result("capture", result)


def add_parser(sub: Any) -> None:
    """Register the `capture` subcommand."""
    p = sub.add_parser("capture", help="capture to disk vs a plain batched forward vs per-prompt run_with_cache; peak memory; "
                                       "capture with vs without shared-prefix reuse")
    p.add_argument("--model", default="smollm2-135m-instruct", help="embedded name or checkpoint folder")
    p.add_argument("--n", type=int, default=256, help="prompts timed in (a) and (b)")
    p.add_argument("--naive-n", type=int, default=32, help="prompts timed one run_with_cache call each (c)")
    p.add_argument("--memory-prompts", type=int, default=5000, help="prompts captured while the resident set size is sampled (d)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward in (a)-(d) (the quick capture's)")
    p.add_argument("--shard-records", type=int, default=128, help="prompts per shard in (a)-(d) (the quick capture's)")
    p.add_argument("--repeats", type=int, default=2, help="times (a) and (b), and each side of (e), are timed, alternating; the fastest counts")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                   help="classic: (a)-(d); reuse: (e), capture with vs without shared-prefix reuse (a few minutes alone)")
    p.add_argument("--reuse-n", type=int, default=128, help="quick-preset 2-shot hypothetical prompts timed in (e) (128: one shard)")
    p.add_argument("--diff-n", type=int, default=32, help="of those, prompts captured in float32 both ways for the activation difference (e)")
    p.set_defaults(run=run)
