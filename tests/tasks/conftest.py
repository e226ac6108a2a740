"""Shared fixtures: the paper's released files (skipped when absent) and a JSONL writer."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

PAPER_DATA_ENV = "INTROSPECT_MI_PAPER_DATA"
DEFAULT_PAPER_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "paper_data"

WriteJsonl = Callable[[Path, list[Any]], Path]


def paper_data_dir() -> Path:
    """The paper's released files: $INTROSPECT_MI_PAPER_DATA, else ../shared/paper_data."""
    return Path(os.environ.get(PAPER_DATA_ENV) or DEFAULT_PAPER_DATA)


@pytest.fixture
def paper_data() -> Path:
    """The paper data folder; the test is skipped when it does not exist."""
    path = paper_data_dir()
    if not path.is_dir():
        pytest.skip(f"paper data not found at {path} (set {PAPER_DATA_ENV})")
    return path


def _write_jsonl(path: Path, records: list[Any]) -> Path:
    """Write records one a line: dicts as JSON, strings verbatim (to plant bad lines)."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def write_jsonl() -> WriteJsonl:
    """A function writing a JSONL fixture file and returning its path."""
    return _write_jsonl


def error_at(path: Path, line: int | None) -> str:
    """Regex of a TaskFormatError message pointing at path[:line]."""
    where = re.escape(str(path)) + ("" if line is None else f":{line}")
    return rf"^{where}: .+ — .+"


def count_records(path: Path) -> int:
    """Non-blank lines of a JSONL file (split on "\n" only: records may hold U+2029)."""
    with path.open(encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())
