"""Atomic writes, file locks and the clean-up of temp files that killed writers leave."""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

import pytest

from introspect_mi.durable import atomic_file, atomic_write_text, file_lock, remove_stale_temps


def test_temp_files_of_dead_writers_go_those_of_live_writers_stay(tmp_path: Path) -> None:
    dead = tmp_path / ".a.json.dead.tmp"  # left by a killed writer: nobody holds its lock
    dead.write_bytes(b"half")
    nested = tmp_path / "sub" / ".c.json.x.tmp"
    nested.parent.mkdir()
    nested.write_bytes(b"")
    (tmp_path / "keep.tmp").write_bytes(b"not one of ours: no leading dot")

    with atomic_file(tmp_path / "live.json") as f:  # a write in progress (this thread stands in for another process)
        f.write(b"{}")
        [live] = tmp_path.glob(".live.json.*.tmp")
        assert remove_stale_temps(tmp_path) == [dead]
        assert live.exists() and nested.exists()
    assert (tmp_path / "live.json").read_bytes() == b"{}" and not live.exists()
    assert remove_stale_temps(tmp_path, recursive=True) == [nested]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["keep.tmp", "live.json", "sub"]


def test_a_clean_up_between_creating_and_locking_a_temp_file_does_not_break_the_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one instant a live writer's temp file is unlocked: the writer notices and starts over."""
    real_mkstemp, made = tempfile.mkstemp, []

    def mkstemp_then_clean_up(**kwargs):  # noqa: ANN003, ANN202 - tempfile's signature
        fd, tmp = real_mkstemp(**kwargs)
        made.append(tmp)
        if len(made) == 1:
            assert remove_stale_temps(tmp_path) == [Path(tmp)]  # another process's clean-up, right now
        return fd, tmp

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_then_clean_up)
    atomic_write_text(tmp_path / "a.json", "{}")
    assert len(made) == 2 and (tmp_path / "a.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


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
