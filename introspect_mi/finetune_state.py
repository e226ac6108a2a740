"""A finetune's files between runs: its lock, the finished adapter, the resume checkpoint and RNG state.

`introspect_mi.finetune.train` writes the adapter to `.<name>.partial/` and renames it to
`<name>/` when complete; `.<name>.resume` holds the state to continue from (every `save_every`
steps); `.<name>.lock` is held while a process trains it.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from introspect_mi.checkfiles import read_json_object
from introspect_mi.durable import atomic_file
from introspect_mi.errors import UserError
from introspect_mi.models import ADAPTER_SIDECAR

RESUME_VERSION = 1


def paths(out_dir: Path) -> tuple[Path, Path, Path]:
    parent = out_dir.parent
    return parent / f".{out_dir.name}.partial", parent / f".{out_dir.name}.resume", parent / f".{out_dir.name}.lock"


@contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another process is training {lock_path.name.removeprefix('.').removesuffix('.lock')} in {lock_path.parent}", "wait for it to finish, or choose another output folder") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def read_finished(out_dir: Path) -> dict[str, Any] | None:
    if not out_dir.exists():
        return None
    sidecar = out_dir / ADAPTER_SIDECAR
    if not sidecar.is_file():
        raise UserError(
            f"{out_dir} exists but holds no finished adapter of ours (no {ADAPTER_SIDECAR})",
            "choose another output folder, or remove this one",
        )
    return read_json_object(sidecar, f"the adapter in {out_dir} is damaged: delete that folder to train it again")


def save_resume(path: Path, state: dict[str, Any]) -> None:
    """torch.save through `atomic_file`: never a torn checkpoint; a killed save's temp file is removed later."""
    with atomic_file(path) as f:
        torch.save(state, f)


def load_resume(path: Path) -> dict[str, Any]:
    """A resume checkpoint; a damaged one is a user error (it is written atomically, so only a
    damaged disk or a hand edit makes one) that names the file to delete."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError … on damaged files
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UserError(f"resume checkpoint {path} is corrupt ({type(exc).__name__}: {first})",
                        "delete it to train this adapter from the start") from None
    if not isinstance(state, dict):
        raise UserError(f"resume checkpoint {path} is corrupt (not a checkpoint dict)", "delete it to train this adapter from the start")
    return state


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
