"""Where the project keeps its artifacts (overridable by environment variables)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def checkpoints_dir() -> Path:
    """`checkpoints/` of the checkout, or `$INTROSPECT_MI_CHECKPOINTS`."""
    return Path(os.environ.get("INTROSPECT_MI_CHECKPOINTS", PROJECT_ROOT / "checkpoints"))


def runs_dir() -> Path:
    """`runs/` of the checkout, or `$INTROSPECT_MI_RUNS`."""
    return Path(os.environ.get("INTROSPECT_MI_RUNS", PROJECT_ROOT / "runs"))
