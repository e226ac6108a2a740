"""Embedded model conversion is idempotent, atomic, and safe beside other processes."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from introspect_mi import embedded, models
from tests.race import Race

NAME = "smollm2-135m-instruct"


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


def _fake_conversion(monkeypatch: pytest.MonkeyPatch, source: Path, before_copy=lambda: None) -> list[Path]:
    """Make `prepare(NAME)` copy `source` instead of converting a GGUF; returns the staging folders used."""
    staged: list[Path] = []

    def copy(gguf: Path, out: Path) -> None:
        before_copy()
        staged.append(out)
        shutil.copytree(source, out)

    monkeypatch.setattr(embedded, "convert_gguf", copy)
    return staged


def test_two_conversions_at_once_convert_once(checkpoints: Path, monkeypatch: pytest.MonkeyPatch, tiny_llama_dir: Path) -> None:
    """The second process starts while the first converts: it must neither remove the first's
    work in progress (its stale-folder clean-up) nor convert again and replace the finished checkpoint."""
    alive: list[bool] = []

    def pause_then_check() -> None:
        race.pause()
        alive.append(all(p.is_dir() for p in checkpoints.glob("base/.*.partial-*")) and any(checkpoints.glob("base/.*.partial-*")))

    staged = _fake_conversion(monkeypatch, tiny_llama_dir, pause_then_check)
    race = Race(lambda: embedded.prepare(NAME, log=lambda _m: None), lambda: embedded.prepare(NAME, log=lambda _m: None))
    outcome = race.run()
    final = embedded.checkpoint_dir(NAME)
    assert outcome == {"first": final, "second": final}
    assert len(staged) == 1 and all(alive)  # converted once; the staging folder was never removed under it
    assert embedded.is_prepared(NAME) and list(final.parent.glob(".*partial*")) == []


def test_reconversion_waits_for_a_process_loading_the_checkpoint(checkpoints: Path, monkeypatch: pytest.MonkeyPatch, tiny_llama_dir: Path) -> None:
    """`prepare(force=True)` starts while `models.load` reads the weights: the checkpoint must stay
    in place until the load is done, and be converted again after it."""
    from transformers import AutoModelForCausalLM

    _fake_conversion(monkeypatch, tiny_llama_dir)
    final = embedded.prepare(NAME, log=lambda _m: None)
    inode = (final / "model.safetensors").stat().st_ino
    real = AutoModelForCausalLM.from_pretrained
    unchanged: list[bool] = []

    def paused_from_pretrained(folder, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202 - transformers' signature
        race.pause()  # the re-conversion runs here unless the load holds the lock
        unchanged.append((Path(folder) / "model.safetensors").stat().st_ino == inode)
        return real(folder, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", paused_from_pretrained)
    race = Race(lambda: models.load(NAME), lambda: embedded.prepare(NAME, force=True, log=lambda _m: None))
    outcome = race.run()
    assert isinstance(outcome["first"], models.ModelHandle) and outcome["second"] == final, outcome
    assert unchanged == [True]
    assert embedded.is_prepared(NAME) and (final / "model.safetensors").stat().st_ino != inode  # converted again after


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
