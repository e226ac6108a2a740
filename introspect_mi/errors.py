"""User-facing errors: one line naming what is wrong and how to fix it.

The CLI prints `error: <problem> — <fix>` and exits with status 2 for these; anything else is a
bug and keeps its traceback (shown in full with `--debug`). docs/errors.md maps each to its cause.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a path, a name, a file, a flag."""

    exit_code = 2

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem} — {fix}")
        self.problem = problem
        self.fix = fix

    def __reduce__(self) -> tuple:
        """Pickle as (class, problem, fix), whatever a subclass's __init__ takes: an error raised in
        a worker process (probing's forked fits) reaches the parent as the same one-line error."""
        return _rebuilt, (type(self), self.problem, self.fix)


def _rebuilt(cls: type[UserError], problem: str, fix: str) -> UserError:
    error = cls.__new__(cls)
    UserError.__init__(error, problem, fix)
    return error


class UnknownName(UserError, ValueError):
    """A name (task, property, preset, model) that is not in its registry."""

    def __init__(self, kind: str, name: str, known: list[str] | tuple[str, ...]) -> None:
        super().__init__(f"unknown {kind} {name!r}", f"known {kind}s: {', '.join(known)}")
