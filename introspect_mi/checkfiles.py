"""Cheap structural checks of model and adapter files, so a truncated download or a damaged file
fails with a clear message instead of a deep stack trace (or, worse, a model with silently missing
weights). Each check reads headers only, never the weights: constant memory on a 140 GB model."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path
from typing import Any

from introspect_mi.errors import UserError

MAX_SAFETENSORS_HEADER = 100_000_000
"""The safetensors format's own limit on its JSON header (bytes); a larger length is corruption."""


REDOWNLOAD = "download or convert it again"


def check_safetensors(path: Path, fix: str = REDOWNLOAD) -> None:
    """Header length fits the format's limit and the file, the header is a JSON object of tensors,
    and the file is exactly as long as the header says. The length is checked before the header is
    read, so a bogus length never makes us read the file into memory."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n <= 0 or n > MAX_SAFETENSORS_HEADER or 8 + n > size:
                raise ValueError(f"header length {n} does not fit a {size}-byte file")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError(f"the header is a JSON {type(header).__name__}, not an object")
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, struct.error, KeyError, TypeError, IndexError) as exc:
        raise _corrupt(path, f"unreadable safetensors header ({exc})", fix) from None
    if not isinstance(end, int) or 8 + n + end != size:
        raise _corrupt(path, f"{size} bytes on disk but the header describes {8 + n + end if isinstance(end, int) else end!r}", fix)


def check_torch_bin(path: Path, fix: str = REDOWNLOAD) -> None:
    """A `.bin` weight file in torch's zip format opens as a zip archive (its central directory is
    at the end: a truncated file has none). Legacy pickle-format files are not checked."""
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        return
    try:
        with zipfile.ZipFile(path) as z:
            z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _corrupt(path, f"not a readable torch zip archive ({exc})", fix) from None


def check_weight_files(files: list[Path], fix: str = REDOWNLOAD) -> None:
    """check_safetensors / check_torch_bin by suffix."""
    for f in files:
        if f.suffix == ".safetensors":
            check_safetensors(f, fix)
        elif f.suffix == ".bin":
            check_torch_bin(f, fix)


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


def read_json_object(path: Path, fix: str) -> dict[str, Any]:
    """A small JSON file that must hold an object (a sidecar, a config); anything else is a user
    error naming the file and `fix`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is corrupt: not valid JSON ({exc})", fix) from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is corrupt: a JSON {type(data).__name__}, not an object", fix)
    return data


def check_adapter_files(folder: Path, config_name: str, sidecar_name: str) -> dict[str, Any] | None:
    """Validate a peft adapter folder before peft reads it: its config and our sidecar are JSON
    objects and its weight files are whole. Returns the sidecar (None when there is none)."""
    fix = f"the adapter folder {folder} is damaged: copy it again, or delete it and rerun the finetune that wrote it"
    read_json_object(folder / config_name, fix)
    check_weight_files(sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin")), fix)
    sidecar = folder / sidecar_name
    return read_json_object(sidecar, fix) if sidecar.is_file() else None


def _corrupt(path: Path, why: str, fix: str = REDOWNLOAD) -> UserError:
    return UserError(f"{path} is truncated or corrupt: {why}", fix)
