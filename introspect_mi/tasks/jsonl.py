"""Reading JSONL task files record by record, with file:line errors and typed field access."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from introspect_mi.tasks.errors import TaskFormatError


@dataclass(frozen=True)
class JsonRecord:
    """One JSON object of a JSONL file and where it came from, for error messages."""

    path: Path
    line: int
    data: dict[str, Any]

    def error(self, problem: str, fix: str) -> TaskFormatError:
        """An error pointing at this record."""
        return TaskFormatError(self.path, self.line, problem, fix)

    def text(self, key: str) -> str:
        """Required field `key` as a non-empty string."""
        value = self.optional_text(key)
        if value is None:
            raise self.error(f'missing field "{key}"', f'add "{key}": "<non-empty string>"')
        return value

    def optional_text(self, key: str) -> str | None:
        """Field `key` as a non-empty string, or None when absent or null."""
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(
                f'field "{key}" is {type(value).__name__}, not a string',
                f'write "{key}" as a JSON string',
            )
        if not value.strip():
            raise self.error(f'field "{key}" is empty', f'give "{key}" some text or drop it')
        return value

    def only_fields(self, allowed: tuple[str, ...]) -> None:
        """Reject fields outside `allowed`, so a misspelt field is not silently ignored."""
        unknown = sorted(set(self.data) - set(allowed))
        if unknown:
            raise self.error(
                f"unknown field(s) {', '.join(map(repr, unknown))}",
                f"use only {', '.join(allowed)}",
            )

def read_jsonl(path: str | Path) -> Iterator[JsonRecord]:
    """Yield each non-blank line of `path` as a JSON object; anything else is a TaskFormatError."""
    path = Path(path)
    if not path.is_file():
        raise TaskFormatError(path, None, "file not found",
                              "check the path (a JSONL file is expected)")
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskFormatError(
                    path, line_no, f"invalid JSON ({exc.msg} at column {exc.colno})",
                    "write one complete JSON object per line",
                ) from exc
            if not isinstance(data, dict):
                raise TaskFormatError(
                    path, line_no, f"expected a JSON object, got {type(data).__name__}",
                    'wrap the record in {...} with named fields',
                )
            yield JsonRecord(path, line_no, data)
