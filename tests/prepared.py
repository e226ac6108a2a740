"""The embedded models `make test` converted before pytest started, shared with tests that point
INTROSPECT_MI_CHECKPOINTS at a folder of their own (converting them again costs ~30 s each)."""

from __future__ import annotations

from pathlib import Path

from introspect_mi import embedded
from introspect_mi.paths import PROJECT_ROOT


def link_prepared_models(checkpoints: Path, source: Path = PROJECT_ROOT / "checkpoints") -> None:
    """Symlink each embedded model prepared under `source` (the checkout's checkpoints folder, where
    `make models` converts them) into `checkpoints/base/`; one not prepared there is left for the
    code under test to convert, as from a fresh clone."""
    for name in embedded.EMBEDDED:
        prepared, link = source / "base" / name, checkpoints / "base" / name
        if (prepared / embedded.MARKER).is_file() and not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(prepared, target_is_directory=True)
