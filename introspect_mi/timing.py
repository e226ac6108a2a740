"""Wall time, CPU time and peak resident memory of each stage of a run, kept in its folder.

An experiment opens one `StageClock` per invocation and wraps each stage in `clock.stage(name)`;
after every stage the clock rewrites `timings.json` in the run folder (atomically), so a killed
run keeps the stages it finished. Each invocation is one entry of the file's `invocations` list
(a resumed or cached rerun adds an entry of its own; the last entry is the latest run)::

    {"invocations": [{"command": [...], "started_utc": ..., "seconds": ..., "stages": [
        {"stage": "finetune self", "seconds": 412.3, "cpu_seconds": 801.0,
         "rss_start_mb": 1480.2, "rss_peak_mb": 2210.9, "started_utc": ...}, ...]}]}

Resident memory is sampled every 0.1 s from /proc (Linux); elsewhere the process's lifetime peak
(`ru_maxrss`) stands in for the stage's peak. The file is run history, like provenance.json:
never part of a result's identity, and left out wherever results are compared.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from introspect_mi.durable import atomic_write_text
from introspect_mi.provenance import utc_now

TIMINGS_FILE = "timings.json"
SAMPLE_SECONDS = 0.1
_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20 if hasattr(os, "sysconf") else 4096 / 2**20


def rss_mb() -> float:
    """This process's resident memory now (MB); its lifetime peak where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE_MB
    except OSError:
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (MB; ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class _PeakSampler:
    """A daemon thread that keeps the highest resident memory seen since the last `take`."""

    def __init__(self) -> None:
        self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.peak = max(self.peak, rss_mb())

    def take(self) -> float:
        """The peak since the last take (or the start), and start a new window from now."""
        now = rss_mb()
        peak, self.peak = max(self.peak, now), now
        return peak

    def stop(self) -> None:
        self._stop.set()


def cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes (forked workers count)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class StageClock:
    """Times the stages of one invocation and records them in `folder/timings.json`.

    `with clock.stage(name):` times a block; `clock.lap(name)` closes a stage that began at the
    previous lap (or stage end, or the clock's start) for code that is simpler read as a sequence."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / TIMINGS_FILE
        self.started = time.perf_counter()
        self.entry: dict[str, Any] = {"command": list(sys.argv), "started_utc": utc_now(), "seconds": 0.0, "stages": []}
        self._previous = read_invocations(self.path)
        self._sampler = _PeakSampler()
        self._mark = self._now()

    @staticmethod
    def _now() -> dict[str, Any]:
        return {"wall": time.perf_counter(), "cpu": cpu_seconds(), "utc": utc_now(), "rss": rss_mb()}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage `name` (recorded when it ends, errors included)."""
        self._sampler.take()
        self._mark = self._now()
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            self.lap(name, failed)

    def lap(self, name: str, failed: bool = False) -> None:
        """Record stage `name` as everything since the last mark, and mark now."""
        mark, now = self._mark, self._now()
        row = {"stage": name, "started_utc": mark["utc"], "seconds": round(now["wall"] - mark["wall"], 2),
               "cpu_seconds": round(now["cpu"] - mark["cpu"], 2), "rss_start_mb": round(mark["rss"], 1),
               "rss_peak_mb": round(self._sampler.take(), 1), **({"failed": True} if failed else {})}
        self.entry["stages"].append(row)
        self._mark = now
        self._write()

    def laps(self) -> dict[str, dict[str, float]]:
        """stage → {"wall_s", "cpu_s"} of this invocation (rounded to 0.1 s)."""
        return {r["stage"]: {"wall_s": round(r["seconds"], 1), "cpu_s": round(r["cpu_seconds"], 1)} for r in self.entry["stages"]}

    def totals(self) -> dict[str, float]:
        """{"wall_s", "cpu_s"} summed over this invocation's stages."""
        laps = self.laps().values()
        return {k: round(sum(lap[k] for lap in laps), 1) for k in ("wall_s", "cpu_s")}

    def close(self) -> None:
        """Stop the memory sampler (the file is already written)."""
        self._sampler.stop()

    def _write(self) -> None:
        self.entry["seconds"] = round(time.perf_counter() - self.started, 2)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps({"invocations": [*self._previous, self.entry]}, indent=1) + "\n")


def read_invocations(path: Path) -> list[dict[str, Any]]:
    """The invocations recorded in a timings.json ([] when there is none or it is unreadable)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return []
    runs = doc.get("invocations") if isinstance(doc, dict) else None
    return list(runs) if isinstance(runs, list) else []
