"""Embedded model conversion is idempotent and atomic."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from introspect_mi import embedded


def test_interrupted_conversion_leaves_nothing_that_loads(checkpoints: Path, monkeypatch, tiny_llama_dir: Path) -> None:
    def crash_midway(gguf: Path, out: Path) -> None:
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")  # a half-written checkpoint
        raise KeyboardInterrupt

    monkeypatch.setattr(embedded, "convert_gguf", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        embedded.prepare("smollm2-135m-instruct", log=lambda _m: None)
    assert not embedded.is_prepared("smollm2-135m-instruct")
    assert not embedded.checkpoint_dir("smollm2-135m-instruct").exists()

    def copy_tiny(gguf: Path, out: Path) -> None:
        import shutil

        shutil.copytree(tiny_llama_dir, out)

    monkeypatch.setattr(embedded, "convert_gguf", copy_tiny)
    path = embedded.prepare("smollm2-135m-instruct", log=lambda _m: None)
    assert embedded.is_prepared("smollm2-135m-instruct") and (path / "config.json").is_file()
    assert list(path.parent.glob(".*partial*")) == []


def test_stale_partial_folders_are_cleaned(checkpoints: Path, monkeypatch, tiny_llama_dir: Path) -> None:
    stale = checkpoints / "base" / ".gemma3-270m.partial-abc"
    stale.mkdir(parents=True)
    def fake_gguf(tmp: Path) -> Path:
        (tmp / "x.gguf").write_bytes(b"GGUF")
        return tmp / "x.gguf"

    fake = embedded.EmbeddedModel("gemma3-270m", "", "", fake_gguf)
    monkeypatch.setattr(embedded, "EMBEDDED", {**embedded.EMBEDDED, "gemma3-270m": fake})
    monkeypatch.setattr(embedded, "convert_gguf", lambda gguf, out: __import__("shutil").copytree(tiny_llama_dir, out))
    embedded.prepare("gemma3-270m", log=lambda _m: None)
    assert not stale.exists()


@pytest.mark.slow
def test_second_prepare_is_fast_and_does_nothing() -> None:
    for name in embedded.EMBEDDED:
        embedded.prepare(name, log=lambda _m: None)
    before = {n: embedded.checkpoint_dir(n).stat().st_mtime_ns for n in embedded.EMBEDDED}
    start = time.monotonic()
    for name in embedded.EMBEDDED:
        embedded.prepare(name, log=lambda _m: None)
    assert time.monotonic() - start < 5
    assert before == {n: embedded.checkpoint_dir(n).stat().st_mtime_ns for n in embedded.EMBEDDED}
