"""The one error every task reader raises: where a file is wrong, and how to fix it."""

from __future__ import annotations

from pathlib import Path

from introspect_mi.errors import UserError


class TaskFormatError(UserError, ValueError):
    """A task file is missing or holds a bad record.

    The message reads "<path>:<line>: <what is wrong> — <how to fix>" (no ":<line>" when the
    problem is the file itself), so editors and terminals can jump to the record. It is a
    UserError, so the CLI prints it as one line instead of a traceback.
    """

    def __init__(self, path: str | Path, line: int | None, problem: str, fix: str) -> None:
        self.path = str(path)
        self.line = line
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {problem}", fix)
