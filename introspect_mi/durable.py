"""Crash- and concurrency-safe file primitives: atomic writes, advisory locks, stale-temp clean-up.

`atomic_file` writes a temp file `.<name>.<random>.tmp` beside the target, fsyncs it and renames
it over the target, so readers see the old file or the new one, never a torn one. It holds an
exclusive `flock` on the temp file from just after creating it until after the rename. A writer
killed by SIGKILL leaves its temp file behind, unlocked (the kernel drops a dead process's locks);
`remove_stale_temps` removes a temp file only if it can take that lock, so never one a live writer
is using. The one instant a live writer's file is unlocked, between creating and locking it, is
covered from the writer's side: after locking, it checks that its file still has its name, and
starts over with a new one if a clean-up removed it.

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

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

    Temp file in the same folder (same filesystem), locked until renamed (see the module docstring),
    fsync, `os.replace`, fsync of the folder. On an error the temp file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f, tmp = _locked_temp(path)
    try:
        with f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
            os.replace(tmp, path)  # still locked: a clean-up never takes this file for stale
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _locked_temp(path: Path) -> tuple[IO[bytes], str]:
    """A new temp file beside `path`, opened for writing and locked; made again if a clean-up
    removed it between its creation and the lock."""
    while True:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name.removeprefix('.')}.", suffix=".tmp")
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(tmp, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                return os.fdopen(fd, "wb"), tmp
        except FileNotFoundError:
            pass
        os.close(fd)


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


def remove_stale_temps(folder: Path, recursive: bool = False) -> list[Path]:
    """Remove the `.*.tmp` files that killed writers left in `folder`; return the paths removed.

    A temp file is removed only while this process holds its lock, so a write in progress in
    another process is never disturbed (every `.*.tmp` in the toolkit's folders is `atomic_file`'s).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for tmp in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
        if _remove_if_stale(tmp):
            removed.append(tmp)
    if removed:
        log.info("removed %d temp file(s) left by interrupted writes in %s", len(removed), folder)
    return removed


def _remove_if_stale(tmp: Path) -> bool:
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
        try:
            if os.stat(tmp, follow_symlinks=False).st_ino != os.fstat(fd).st_ino:
                return False  # replaced since we opened it
            tmp.unlink()
        except FileNotFoundError:
            return False
        return True
    finally:
        os.close(fd)
