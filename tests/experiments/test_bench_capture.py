"""The capture benchmark runs end to end on a tiny model and reports consistent numbers."""

from __future__ import annotations

import mmap
import time
from pathlib import Path

import numpy as np

from experiments.bench_capture import PeakRSS, bench_prompts, benchmark, report, rss_mb
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
    r = benchmark(str(tiny_llama_dir), n=8, naive_n=2, memory_prompts=12, batch_size=4, shard_records=4, repeats=2)
    assert r.prompts == 8 and r.memory_prompts == 12 and r.layers == 3 and r.repeats == 2
    assert np.isclose(r.capture_vs_plain, r.capture_seconds / r.plain_forward_seconds)
    assert r.target_ratio_met == (r.capture_vs_plain <= 1.25)
    # every vector of 12 prompts × 3 layers × 3 positions, fp16; the records table and shards add to it
    assert np.isclose(r.store_in_memory_mb, 12 * 3 * 3 * r.d_model * 2 / 2**20)
    assert r.store_mb > r.store_in_memory_mb
    assert r.rss_peak_mb >= r.rss_before_mb
    assert "capture / plain forward" in report(r)
