"""Crash- and concurrency-safe file primitives: atomic writes, advisory locks, stale-temp clean-up.

`atomic_file` writes a temp file `.<name>.<random>.tmp` beside the target, holds an exclusive
`flock` on it while writing, fsyncs it and renames it over the target, so readers see the old file
or the new one, never a torn one. A writer killed by SIGKILL leaves its temp file behind;
`remove_stale_temps` removes such a file only when no live process holds its lock (the kernel
drops a dead process's locks) and it was last modified at least `STALE_TEMP_SECONDS` ago (which
covers the instants between creating it and locking it, and between unlocking and renaming it).

`file_lock` is the one lock the toolkit takes around read-modify-write and check-then-write steps
(run folders, the answer cache, model conversion, SAE staging): `flock` on a lock file, released
by the kernel when its holder dies, so a killed process never leaves a lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

STALE_TEMP_SECONDS = 600
"""A temp file nobody holds a lock on is left alone until it is this old (seconds since its last write)."""


@contextmanager
def file_lock(path: Path, *, shared: bool = False, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive (or shared) `flock` on `path` (created if absent) for the block.

    Blocks until the lock is free; `on_wait` is called once first when another process holds it,
    so a caller can say why it waits. Separate `file_lock`s exclude each other across processes
    and across threads of one process.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A binary file object whose content replaces `path` atomically when the block ends without error.

    Temp file in the same folder (same filesystem), locked while written (see `remove_stale_temps`),
    fsync, `os.replace`, fsync of the folder. On an error the temp file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name.removeprefix('.')}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # a live writer's temp file is never taken for stale
            yield f
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `path` so readers see the old file or the new one, never a torn one."""
    with atomic_file(path) as f:
        f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in `folder` durable (best effort: not every OS allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temps(folder: Path, recursive: bool = False, min_age_s: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Remove the `.*.tmp` files that killed writers left in `folder`; return the paths removed.

    A temp file is removed only when no process holds a lock on it and it is at least `min_age_s`
    old, so a write in progress in another process is never disturbed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for tmp in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
        if _remove_if_stale(tmp, min_age_s):
            removed.append(tmp)
    if removed:
        log.info("removed %d temp file(s) left by interrupted writes in %s", len(removed), folder)
    return removed


def _remove_if_stale(tmp: Path, min_age_s: float) -> bool:
    try:
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False  # gone already, a link, or unreadable: not ours to judge
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False  # a live writer holds it
            raise
        st = os.fstat(fd)
        if time.time() - st.st_mtime < min_age_s:
            return False
        try:
            if os.stat(tmp, follow_symlinks=False).st_ino != st.st_ino:
                return False  # replaced since we opened it
            tmp.unlink()
        except FileNotFoundError:
            return False
        return True
    finally:
        os.close(fd)
