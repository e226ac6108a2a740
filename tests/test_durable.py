"""Atomic writes, file locks and the clean-up of temp files that killed writers leave."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest

from introspect_mi.durable import atomic_file, file_lock, remove_stale_temps


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_only_unlocked_old_temp_files_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / ".a.json.dead.tmp"  # left by a killed writer: nobody holds it
    dead.write_bytes(b"half")
    _age(dead, 3600)
    fresh = tmp_path / ".b.json.new.tmp"  # maybe just created by a writer that has not locked it yet
    fresh.write_bytes(b"")
    nested = tmp_path / "sub" / ".c.json.x.tmp"
    nested.parent.mkdir()
    nested.write_bytes(b"")
    _age(nested, 3600)
    (tmp_path / "keep.tmp").write_bytes(b"not one of ours: no leading dot")
    _age(tmp_path / "keep.tmp", 3600)

    with atomic_file(tmp_path / "live.json") as f:  # a write in progress (this process stands in for another)
        f.write(b"{}")
        [live] = tmp_path.glob(".live.json.*.tmp")
        _age(live, 3600)
        assert remove_stale_temps(tmp_path) == [dead]
        assert live.exists() and fresh.exists() and nested.exists()
    assert (tmp_path / "live.json").read_bytes() == b"{}" and not live.exists()
    assert remove_stale_temps(tmp_path, recursive=True) == [nested]
    assert sorted(p.name for p in tmp_path.rglob("*")) == [".b.json.new.tmp", "keep.tmp", "live.json", "sub"]


def test_file_lock_excludes_writers_and_shares_readers(tmp_path: Path) -> None:
    lock = tmp_path / ".x.lock"
    waited: list[str] = []
    with file_lock(lock, shared=True), file_lock(lock, shared=True, on_wait=lambda: waited.append("reader")):
        pass  # readers share
    assert waited == []
    with file_lock(lock):
        fd = os.open(lock, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        finally:
            os.close(fd)
