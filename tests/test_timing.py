"""StageClock: each stage's wall and CPU time and peak resident memory, kept in timings.json."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest
import torch

from introspect_mi.timing import TIMINGS_FILE, StageClock, cpu_seconds, read_invocations, rss_mb


def test_a_stage_records_its_wall_time_cpu_time_and_is_written_at_once(tmp_path: Path) -> None:
    clock = StageClock(tmp_path)
    with clock.stage("sleep"):
        time.sleep(0.3)
    written = json.loads((tmp_path / TIMINGS_FILE).read_text())["invocations"]
    assert len(written) == 1 and [s["stage"] for s in written[0]["stages"]] == ["sleep"]
    row = written[0]["stages"][0]
    assert 0.3 <= row["seconds"] < 2.0
    assert row["cpu_seconds"] < 0.2  # sleeping costs no CPU
    assert row["rss_peak_mb"] >= row["rss_start_mb"] > 0
    clock.close()


def test_peak_memory_sees_an_allocation_freed_before_the_stage_ends(tmp_path: Path) -> None:
    clock = StageClock(tmp_path)
    with clock.stage("allocate"):
        before = rss_mb()
        big = torch.ones(300 * 2**20 // 4)  # 300 MB, touched
        time.sleep(0.4)  # at least three samples while it is held
        del big
    row = clock.entry["stages"][0]
    assert row["rss_peak_mb"] >= before + 250
    with clock.stage("small"):
        time.sleep(0.2)
    assert clock.entry["stages"][1]["rss_peak_mb"] < row["rss_peak_mb"] - 200  # each stage has its own window
    clock.close()


def test_a_failing_stage_is_recorded_as_failed_and_the_error_propagates(tmp_path: Path) -> None:
    clock = StageClock(tmp_path)
    with pytest.raises(KeyError):
        with clock.stage("breaks"):
            raise KeyError("x")
    assert read_invocations(tmp_path / TIMINGS_FILE)[0]["stages"][0]["failed"] is True
    clock.close()


def test_laps_split_a_sequence_and_every_invocation_is_kept(tmp_path: Path) -> None:
    first = StageClock(tmp_path)
    time.sleep(0.1)
    first.lap("a")
    time.sleep(0.2)
    first.lap("b")
    assert list(first.laps()) == ["a", "b"] and first.laps()["b"]["wall_s"] >= 0.2
    assert first.totals()["wall_s"] == pytest.approx(first.laps()["a"]["wall_s"] + first.laps()["b"]["wall_s"], abs=0.11)
    first.close()
    second = StageClock(tmp_path)  # a rerun appends; the first run's record stays
    second.lap("c")
    second.close()
    runs = read_invocations(tmp_path / TIMINGS_FILE)
    assert [[s["stage"] for s in r["stages"]] for r in runs] == [["a", "b"], ["c"]]
    assert runs[0]["seconds"] >= 0.3


def test_an_unreadable_file_reads_as_no_invocations(tmp_path: Path) -> None:
    (tmp_path / TIMINGS_FILE).write_text("{half")
    assert read_invocations(tmp_path / TIMINGS_FILE) == []
    assert read_invocations(tmp_path / "missing.json") == []


def _spin(seconds: float) -> None:
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass


def test_cpu_time_counts_finished_child_processes() -> None:
    """Probing fits in forked workers: their CPU time belongs to the stage that ran them."""
    before = cpu_seconds()
    child = multiprocessing.get_context("fork").Process(target=_spin, args=(0.3,))
    child.start()
    child.join()
    assert child.exitcode == 0
    assert cpu_seconds() - before >= 0.3
