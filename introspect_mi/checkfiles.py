"""Cheap structural checks of model files, so a truncated download fails with a clear message
instead of a deep stack trace (or, worse, a model with silently missing weights)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from introspect_mi.errors import UserError


def check_safetensors(path: Path) -> None:
    """Header parses and the file is exactly as long as the header says."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n <= 0 or 8 + n > size:
                raise ValueError("header length exceeds the file")
            header = json.loads(f.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, struct.error, KeyError, TypeError) as exc:
        raise _corrupt(path, f"unreadable safetensors header ({exc})") from None
    if 8 + n + end != size:
        raise _corrupt(path, f"{size} bytes on disk but the header describes {8 + n + end}")


def check_gguf(path: Path) -> None:
    """Magic number and a full metadata/tensor-table parse by the gguf reader."""
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise _corrupt(path, "no GGUF magic number at the start")
    from gguf import GGUFReader

    try:
        GGUFReader(path)
    except Exception as exc:  # the reader raises a variety of types on damaged files
        raise _corrupt(path, f"the GGUF reader failed: {type(exc).__name__}: {exc}") from None


def _corrupt(path: Path, why: str) -> UserError:
    return UserError(f"{path} is truncated or corrupt: {why}", "download or convert it again")
