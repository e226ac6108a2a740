"""Make two threads race through a check-then-write step in the worst order, deterministically."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Race:
    """Run `first`; once it reaches the step under test (it calls `pause()` there), run `second`.

    `pause()` holds `first` inside the step until `second` has finished, or for `wait_s` when
    `second` cannot finish (it waits for a lock `first` holds). Without a lock, `second` therefore
    runs its whole check-then-write inside `first`'s; with one, it runs after. `run()` returns each
    side's result or the exception it raised.
    """

    def __init__(self, first: Callable[[], Any], second: Callable[[], Any], wait_s: float = 1.0) -> None:
        self.wait_s = wait_s
        self.outcome: dict[str, Any] = {}
        self._inside = threading.Event()
        self._second_started = threading.Event()
        self._first = threading.Thread(target=self._call, args=("first", first), name="race-first")
        self._second = threading.Thread(target=self._call, args=("second", second), name="race-second")

    def _call(self, side: str, fn: Callable[[], Any]) -> None:
        try:
            self.outcome[side] = fn()
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            self.outcome[side] = exc
        finally:
            self._inside.set()  # `first` ended without pausing: let `run` go on

    def pause(self) -> None:
        """Called from the step under test; pauses only the first thread, and only once."""
        if threading.current_thread() is self._first and not self._second_started.is_set():
            self._inside.set()
            self._second_started.wait()
            self._second.join(timeout=self.wait_s)

    def run(self) -> dict[str, Any]:
        self._first.start()
        assert self._inside.wait(timeout=60), "the first side never reached the step"
        self._second.start()
        self._second_started.set()
        self._first.join(timeout=120)
        self._second.join(timeout=120)
        assert not self._first.is_alive() and not self._second.is_alive(), "a side hung"
        return self.outcome
