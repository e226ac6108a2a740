"""The capture benchmark runs end to end on a tiny model and reports consistent numbers."""

from __future__ import annotations

import mmap
import time
from pathlib import Path

import numpy as np

from experiments.bench_capture import PeakRSS, bench_prompts, benchmark, quick_hypotheticals, report, rss_mb
from introspect_mi.models import load


def test_bench_prompts_alternate_object_and_hypothetical_and_quote_p(tiny_llama_dir: Path) -> None:
    handle = load(tiny_llama_dir)
    prompts = bench_prompts(handle, 5)
    assert [p.record["kind"] for p in prompts] == ["object", "hypothetical"] * 2 + ["object"]
    obj, hyp = prompts[0], prompts[1]
    p = obj.text[obj.p_span[0] : obj.p_span[1]]
    assert hyp.text[hyp.p_span[0] : hyp.p_span[1]] == p and obj.record["item_id"] == hyp.record["item_id"]


def test_peak_rss_sees_a_large_allocation() -> None:
    before = rss_mb()
    with PeakRSS(interval=0.005) as rss:
        # 64 MB of fresh anonymous pages, each touched: a malloc'd block may instead reuse memory
        # the process already holds from earlier tests, and then the resident set does not grow.
        block = mmap.mmap(-1, 64 * 2**20)
        for offset in range(0, len(block), mmap.PAGESIZE):
            block[offset] = 1
        # Keep it alive until the sampling thread has run (sleep releases the GIL); on a loaded
        # machine the thread may not be scheduled at all during a few ms.
        deadline = time.monotonic() + 30
        while rss.peak_mb < before + 48 and time.monotonic() < deadline:
            time.sleep(0.01)
        block.close()
    assert rss.peak_mb >= before + 48


def test_benchmark_on_a_tiny_model(tiny_llama_dir: Path) -> None:
    r = benchmark(str(tiny_llama_dir), n=8, naive_n=2, memory_prompts=12, batch_size=4, shard_records=4, repeats=2, parts=("classic",))
    assert r.prompts == 8 and r.memory_prompts == 12 and r.layers == 3 and r.repeats == 2 and r.prefix_reuse is None
    assert np.isclose(r.capture_vs_plain, r.capture_seconds / r.plain_forward_seconds)
    assert r.target_ratio_met == (r.capture_vs_plain <= 1.25)
    # every vector of 12 prompts × 3 layers × 3 positions, fp16; the records table and shards add to it
    assert np.isclose(r.store_in_memory_mb, 12 * 3 * 3 * r.d_model * 2 / 2**20)
    assert r.store_mb > r.store_in_memory_mb
    assert r.rss_peak_mb >= r.rss_before_mb
    assert "capture / plain forward" in report(r)


def test_quick_hypotheticals_are_the_capture_prompts_of_the_quick_preset(tiny_llama_dir: Path) -> None:
    handle = load(tiny_llama_dir)
    prompts, spec = quick_hypotheticals(handle, 40)
    assert len(prompts) == 40 and {p.record["kind"] for p in prompts} == {"hypothetical"}
    assert all(p.text.count("Previously, you were asked") == 3 for p in prompts)  # 2 demonstrations, then P
    assert (spec.batch_size, spec.shard_records, spec.dtype, spec.prefix_reuse) == (8, 128, "float16", False)
    assert spec.positions == ("p_last", "final", "answer_first") and len(spec.places) == handle.n_layers


def test_reuse_benchmark_on_a_tiny_model(tiny_llama_dir: Path) -> None:
    r = benchmark(str(tiny_llama_dir), n=8, naive_n=2, memory_prompts=12, batch_size=4, shard_records=4, repeats=1, parts=("reuse",),
                  reuse_n=24, diff_n=8)
    u = r.prefix_reuse
    assert r.prompts is None and u.prompts == 24 and u.diff_prompts == 8 and u.repeats == 1
    assert np.isclose(u.speedup, u.plain_seconds / u.reuse_seconds) and u.target_met == (u.speedup >= 3)
    # batches are cut where demonstration prefixes change, so there may be more of them, but far fewer tokens
    assert u.reuse_tokens < u.plain_tokens / 2 and u.mean_shared_prefix >= 8
    assert u.answer_tokens_equal and u.max_abs_diff_float32 <= 1e-5 * max(1.0, u.max_abs_stored)
    text = report(r)
    assert "reuse speedup" in text and "capture / plain forward" not in text
