"""What the benchmark modules share: device-synchronised timing and the result file."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from introspect_mi.models import ModelHandle
from introspect_mi.paths import runs_dir


@dataclass
class Machine:
    """The fields every benchmark result starts with: what ran where."""

    model: str
    device: str
    dtype: str
    torch_threads: int
    load_average: float  # 1-minute load of the machine when the benchmark ended (shared CPUs skew timings)


def machine(handle: ModelHandle) -> dict[str, Any]:
    """`Machine`'s fields for a loaded model, now."""
    return {"model": handle.name, "device": str(handle.device), "dtype": str(handle.placement.dtype).removeprefix("torch."),
            "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()[0]}


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
