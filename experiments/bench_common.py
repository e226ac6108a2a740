"""What the benchmark modules share: device-synchronised timing and the result file."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from introspect_mi.models import ModelHandle
from introspect_mi.paths import runs_dir


def sync(handle: ModelHandle) -> None:
    """Wait for queued GPU work, so a timer measures the work, not its launch."""
    if handle.device.type == "cuda":
        torch.cuda.synchronize(handle.device)


def timed(handle: ModelHandle, fn: Any, *args: Any) -> tuple[Any, float]:
    """(fn(*args), wall seconds), synchronised on both sides."""
    sync(handle)
    start = time.perf_counter()
    out = fn(*args)
    sync(handle)
    return out, time.perf_counter() - start


def save_result(name: str, result: Any) -> Path:
    """runs/benchmarks/<name>.json from a result dataclass; prints where it went."""
    out = runs_dir() / "benchmarks" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(asdict(result), indent=2) + "\n")
    print(f"  written to {out}")
    return out
