"""What a run records about where and with what it ran: library versions, git state, host, time."""

from __future__ import annotations

import platform
import socket
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from introspect_mi.paths import PROJECT_ROOT

PROVENANCE_PACKAGES = ("torch", "transformers", "peft", "transformer_lens", "nnsight", "sae_lens", "numpy", "pandas")


def utc_now() -> str:
    """Now, UTC, to the second (ISO 8601)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def library_versions() -> dict[str, str | None]:
    """Python and the main libraries' installed versions (None where not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("introspect-mi", *PROVENANCE_PACKAGES):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """{"commit", "dirty"} of the project checkout, both None when it is not a git checkout."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top.strip()).resolve() != Path(root).resolve():
        return {"commit": None, "dirty": None}  # not a checkout, or an unrelated repo above an install
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain")
    return {"commit": commit.strip() if commit else None, "dirty": bool(status.strip()) if status is not None else None}


def provenance(seed: int) -> dict[str, Any]:
    """What a run records about where and with what it ran."""
    return {
        "versions": library_versions(), "git": git_state(), "seed": seed,
        "hostname": socket.gethostname(), "started_utc": utc_now(),
    }
