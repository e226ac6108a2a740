"""Content fingerprints of model files: every byte hashed, once per file version.

A checkpoint's fingerprint keys the answer cache, finetune and SAE reuse and the mechanistic
stores' identity, so it must change with any edit: one tensor, a merged LoRA, `config.json`, a
tokenizer file. Hashing a 140 GB checkpoint takes minutes, so each file's sha256 is cached on
disk under `checkpoints/fingerprints/`, keyed by its absolute path, size and mtime_ns: an
unchanged file is never read again, an edited one (new mtime) is hashed afresh. Cache entries
are written atomically and are the same whichever process writes them, so two processes may fill
the cache at once. An edit that keeps a file's size and mtime (forged with `touch -d`) is not
seen: delete the cache folder then.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from introspect_mi.paths import checkpoints_dir
from introspect_mi.store import atomic_write_text

CACHE = "fingerprints"
READ_CHUNK = 8 << 20
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model")
"""Files beside the weights that change what a checkpoint computes or how its text is tokenised."""


def cache_dir() -> Path:
    return checkpoints_dir() / CACHE


def file_digest(path: Path) -> str:
    """sha256 of every byte of `path` (read in 8 MiB chunks)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(READ_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def cached_digest(path: Path) -> str:
    """`file_digest(path)`, read from the on-disk cache when the file's (path, size, mtime_ns) is unchanged."""
    path = Path(path).resolve()
    st = path.stat()
    key = hashlib.sha256(json.dumps([str(path), st.st_size, st.st_mtime_ns]).encode()).hexdigest()
    entry = cache_dir() / key[:2] / f"{key}.json"
    try:
        got = json.loads(entry.read_text())
        if got.get("path") == str(path) and isinstance(got.get("sha256"), str):
            return got["sha256"]
    except (OSError, ValueError, AttributeError):
        pass  # absent or damaged entry: hash again and rewrite it
    digest = file_digest(path)
    try:
        atomic_write_text(entry, json.dumps({"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}) + "\n")
    except OSError:
        pass  # a read-only checkpoints folder: the fingerprint is still right, just not cached
    return digest


def model_files(folder: Path, weights: Sequence[Path]) -> list[Path]:
    """The weights plus the config, generation config, tokenizer and chat-template files present."""
    extra = [folder / n for n in MODEL_FILES if (folder / n).is_file()] + sorted(folder.glob("chat_template*"))
    return [*weights, *extra]


def folder_digest(folder: Path, files: Sequence[Path]) -> str:
    """16-hex id of `files` in `folder`: each one's path inside the folder and its full-content sha256."""
    h = hashlib.sha256()
    for f in files:
        h.update(Path(f).relative_to(folder).as_posix().encode())
        h.update(cached_digest(Path(f)).encode())
    return h.hexdigest()[:16]
