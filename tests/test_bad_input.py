"""The bad-input table of docs/errors.md, case by case, through the real entry points.

Each case builds one bad input in a fresh folder that also holds finished work (a finished run and
an adapter), runs `main(argv)` of `introspect_mi.cli` or an experiment in-process, and checks the
contract of docs/errors.md: exit status 2; stderr is exactly one line `error: <problem> — <fix>`
with the fix's key words; no traceback; every file that existed before is still there with the same
bytes and modification time; and, unless the case says otherwise, nothing new was written (no run
folder left behind that would refuse the corrected command).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from introspect_mi.models import ADAPTER_SIDECAR

Main = Callable[[Sequence[str]], int]


@dataclass
class Ctx:
    """One case's folder (runs/ and checkpoints/ point into it) and the tiny models."""

    tmp: Path
    llama: Path
    gemma: Path
    adapter: Path
    monkeypatch: pytest.MonkeyPatch
    sockets: list[socket.socket]

    def model(self) -> Path:
        return Path(shutil.copytree(self.llama, self.tmp / "model"))

    def adapter_copy(self) -> Path:
        return Path(shutil.copytree(self.adapter, self.tmp / "adapter"))

    def preset(self, text: str) -> str:
        (self.tmp / "preset.toml").write_text(text)
        return str(self.tmp / "preset.toml")

    def study_args(self) -> list[str]:
        """Flags that keep a behavioural command on the tiny models, one task and one property."""
        return ["--m1", str(self.llama), "--m2", str(self.gemma), "--train-tasks", "countries", "--held-out-tasks", "animals",
                "--properties", "first_character"]


def cli(*argv: str) -> tuple[Main, list[str]]:
    from introspect_mi.cli import main

    return main, list(argv)


def behavioral(*argv: str) -> tuple[Main, list[str]]:
    from experiments.behavioral import main

    return main, list(argv)


def module_main(module: str, *argv: str) -> tuple[Main, list[str]]:
    import importlib

    return importlib.import_module(f"experiments.{module}").main, list(argv)


def generate(ctx: Ctx, model: Path | str, adapter: Path | None = None) -> tuple[Main, list[str]]:
    return cli("generate", "--model", str(model), *(["--adapter", str(adapter)] if adapter else []), "hi")


# --- damaged files ---------------------------------------------------------------------------


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def safetensors_with_header(path: Path, header: bytes, length: int | None = None) -> None:
    """A safetensors file whose header bytes (and declared length) are given."""
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + b"\0" * 64)


def as_bin(folder: Path, stem: str, bin_name: str) -> Path:
    """Replace `stem`.safetensors by the same tensors in torch's .bin (zip) format."""
    from safetensors.torch import load_file

    tensors = load_file(folder / f"{stem}.safetensors")
    (folder / f"{stem}.safetensors").unlink()
    torch.save(tensors, folder / bin_name)
    return folder / bin_name


def model_with(ctx: Ctx, damage: Callable[[Path], None]) -> tuple[Main, list[str]]:
    folder = ctx.model()
    damage(folder)
    return generate(ctx, folder)


def adapter_with(ctx: Ctx, damage: Callable[[Path], None]) -> tuple[Main, list[str]]:
    adapter = ctx.adapter_copy()
    damage(adapter)
    return generate(ctx, ctx.llama, adapter)


def explorer_run(ctx: Ctx) -> Path:
    from introspect_mi.explorer import explorer_path, write_explorer_data
    from tests.test_explorer import N_LAYERS, make_item

    run = ctx.tmp / "runs" / "mech"
    write_explorer_data(explorer_path(run, "M1"), [make_item("animals-0")], {"model": "tiny", "layers": list(range(N_LAYERS))})
    return run


def busy_port(ctx: Ctx) -> tuple[Main, list[str]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    ctx.sockets.append(sock)
    return cli("explore", str(explorer_run(ctx)), "--port", str(sock.getsockname()[1]), "--no-browser")


def disk_full(ctx: Ctx) -> tuple[Main, list[str]]:
    """`explore --static` over an existing page while every fsync fails with ENOSPC."""
    run = explorer_run(ctx)
    (ctx.tmp / "page.html").write_text("the page written earlier")

    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    ctx.monkeypatch.setattr(os, "fsync", full)
    return cli("explore", str(run), "--static", str(ctx.tmp / "page.html"))


def taken_run(ctx: Ctx) -> tuple[Main, list[str]]:
    from introspect_mi.store import RunDir

    RunDir.create(ctx.tmp / "runs", "taken", {"other": "config"}, seed=0).write_json("metrics.json", {"done": True})
    return behavioral(*ctx.study_args(), "--name", "taken")


def bad_task_file(ctx: Ctx) -> tuple[Main, list[str]]:
    (ctx.tmp / "mine.jsonl").write_text('{"not": "a task record"}\n')
    return behavioral(*ctx.study_args()[:6], "--held-out-tasks", str(ctx.tmp / "mine.jsonl"))


@dataclass(frozen=True)
class Case:
    setup: Callable[[Ctx], tuple[Main, list[str]]]
    words: tuple[str, ...]
    """Words the one line must contain: the problem's and the fix's key words."""
    writes: bool = False
    """True where the command does (and keeps) new work before it meets the bad input."""


CASES: dict[str, Case] = {
    # models (introspect-mi generate --model)
    "model path missing": Case(lambda c: generate(c, c.tmp / "nowhere"), ("does not exist", "check the path")),
    "unknown embedded name": Case(lambda c: generate(c, "smollm3-9000"), ("unknown embedded model", "known")),
    "folder without config.json": Case(lambda c: generate(c, c.tmp), ("no config.json", "folder that holds config.json")),
    "config.json but no weights": Case(lambda c: model_with(c, lambda f: (f / "model.safetensors").unlink()), ("no weights", "copy the weight files")),
    "a file that is not a .gguf": Case(lambda c: (c.tmp.joinpath("w.bin").write_bytes(b"x"), generate(c, c.tmp / "w.bin"))[1], ("not a .gguf", "give a .gguf file")),
    "damaged .gguf": Case(lambda c: (c.tmp.joinpath("m.gguf").write_bytes(b"GGUF" + b"\x03" * 60), generate(c, c.tmp / "m.gguf"))[1], ("truncated or corrupt", "download or convert it again")),
    "truncated .safetensors": Case(lambda c: model_with(c, lambda f: truncate(f / "model.safetensors")), ("truncated or corrupt", "download or convert it again")),
    "safetensors header JSON but not an object": Case(lambda c: model_with(c, lambda f: safetensors_with_header(f / "model.safetensors", b"[1, 2]")), ("not an object", "download or convert it again")),
    "safetensors header length bogus": Case(lambda c: model_with(c, lambda f: safetensors_with_header(f / "model.safetensors", b"{}", 1 << 40)), ("header length", "download or convert it again")),
    "truncated pytorch_model.bin": Case(lambda c: model_with(c, lambda f: truncate(as_bin(f, "model", "pytorch_model.bin"))), ("truncated or corrupt", "download or convert it again")),
    # adapters (introspect-mi generate --adapter)
    "adapter folder without adapter_config.json": Case(lambda c: generate(c, c.llama, c.tmp), ("not a peft adapter folder", "give the folder a LoRA finetune saved")),
    "adapter for other base weights": Case(lambda c: adapter_with(c, lambda a: (a / ADAPTER_SIDECAR).write_text('{"base_fingerprint": "0123456789abcdef"}')), ("trained for base weights", "load the adapter with the model")),
    "truncated adapter .safetensors": Case(lambda c: adapter_with(c, lambda a: truncate(a / "adapter_model.safetensors")), ("truncated or corrupt", "adapter folder", "copy it again")),
    "truncated adapter .bin": Case(lambda c: adapter_with(c, lambda a: truncate(as_bin(a, "adapter_model", "adapter_model.bin"))), ("truncated or corrupt", "adapter folder", "copy it again")),
    "corrupt adapter sidecar": Case(lambda c: adapter_with(c, lambda a: truncate(a / ADAPTER_SIDECAR)), (ADAPTER_SIDECAR, "not valid JSON", "copy it again")),
    "corrupt adapter_config.json": Case(lambda c: adapter_with(c, lambda a: truncate(a / "adapter_config.json")), ("adapter_config.json", "not valid JSON", "copy it again")),
    "adapter_config.json not an object": Case(lambda c: adapter_with(c, lambda a: (a / "adapter_config.json").write_text("[]")), ("adapter_config.json", "not an object", "copy it again")),
    # explorer (introspect-mi explore)
    "explore a missing folder": Case(lambda c: cli("explore", str(c.tmp / "nowhere")), ("does not exist", "capture")),
    "explore a folder without explorer data": Case(lambda c: cli("explore", str(c.tmp)), ("no explorer data", "experiments.capture")),
    "explore malformed explorer data": Case(lambda c: (c.tmp.joinpath("M1").mkdir(), c.tmp.joinpath("M1", "explorer.json").write_text("{}"), cli("explore", str(c.tmp)))[2], ("not explorer data", "experiments.capture", "write it again")),
    "explore --port 70000": Case(lambda c: cli("explore", str(explorer_run(c)), "--port", "70000", "--no-browser"), ("port 70000", "out of range", "--port 0")),
    "explore a busy port": Case(busy_port, ("in use", "--port 0")),
    "disk full": Case(disk_full, ("page.html", "no space left", "free disk space", "rerun")),
    # presets (python -m experiments.behavioral --preset)
    "preset file missing": Case(lambda c: behavioral("--preset", str(c.tmp / "nope.toml")), ("does not exist", "--preset quick|paper")),
    "preset not TOML": Case(lambda c: behavioral("--preset", c.preset("[study\n")), ("not valid TOML", "fix the syntax")),
    "preset unknown setting": Case(lambda c: behavioral("--preset", c.preset("[study]\neval_itemz = 3\n")), ("eval_itemz", "known settings")),
    "preset misspelled section": Case(lambda c: behavioral("--preset", c.preset("[studdy]\neval_items = 3\n")), ("[studdy]", "known sections", "[study]")),
    "preset setting outside any section": Case(lambda c: behavioral("--preset", c.preset("eval_items = 3\n[study]\n")), ("eval_items", "outside any [section]", "put each under")),
    "preset string for a list": Case(lambda c: behavioral("--preset", c.preset('[study]\ntrain_tasks = "countries"\n')), ("train_tasks", "a list of str", 'train_tasks = ["countries"]')),
    "preset string for an int": Case(lambda c: behavioral("--preset", c.preset('[study]\neval_items = "50"\n')), ("eval_items", "an int", "eval_items = 50")),
    "preset bool for a float": Case(lambda c: behavioral("--preset", c.preset("[study]\nobject_replay = true\n")), ("object_replay", "a float", "write it as")),
    # names and runs (python -m experiments.behavioral / evaluate / finetune_sweep)
    "unknown task": Case(lambda c: behavioral(*c.study_args(), "--held-out-tasks", "animalz"), ("unknown task 'animalz'", "known tasks")),
    "unknown property": Case(lambda c: behavioral(*c.study_args(), "--properties", "first_charcter"), ("unknown property 'first_charcter'", "known propertys")),
    "unknown calibration property": Case(lambda c: behavioral(*c.study_args(), "--calibration-property", "second_charcter"), ("second_charcter", "known propertys")),
    "unknown finetune preset": Case(lambda c: behavioral(*c.study_args(), "--finetune", "fast"), ("finetune preset 'fast'", "quick")),
    "bad record in a task file": Case(bad_task_file, ("mine.jsonl:1",)),
    "study model path missing": Case(lambda c: behavioral(*c.study_args(), "--m2", str(c.tmp / "nowhere")), ("does not exist", "check the path")),
    "run name taken by a different config": Case(taken_run, ("taken by a different config", "pick another --name")),
    "evaluate: unknown property": Case(lambda c: behavioral("evaluate", "--target", str(c.llama), "--predictor", str(c.llama), "--tasks", "animals", "--properties", "secnd_word"), ("secnd_word", "known propertys")),
    "evaluate: target path missing": Case(lambda c: behavioral("evaluate", "--target", str(c.tmp / "nowhere"), "--predictor", str(c.llama)), ("does not exist", "check the path")),
    "evaluate: predictor adapter missing": Case(lambda c: behavioral("evaluate", "--target", str(c.llama), "--predictor", str(c.llama), "--predictor-adapter", str(c.tmp / "no-adapter")), ("not a peft adapter folder", "checkpoints/adapters")),
    "finetune_sweep: unknown setting field": Case(lambda c: module_main("finetune_sweep", *c.study_args(), "--settings", "lr=1e-3,epoch=2"), ("unknown field 'epoch'", "epochs")),
    "finetune_sweep: setting without a number": Case(lambda c: module_main("finetune_sweep", *c.study_args(), "--settings", "lr=fast"), ("needs a number", "lr=5e-4")),
}


CACHES = ("checkpoints/fingerprints",)
"""Derived-data caches a command may add to while it checks its input (a file's hash)."""


def snapshot(root: Path) -> dict[str, tuple[int, bytes] | None]:
    """Every path under root but the caches: files with (mtime_ns, bytes), folders as None."""
    return {rel: (p.stat().st_mtime_ns, p.read_bytes()) if p.is_file() else None
            for p in sorted(root.rglob("*")) if not (rel := p.relative_to(root).as_posix()).startswith(CACHES)}


@pytest.fixture(scope="module")
def tiny_adapter(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.test_models import make_adapter

    return make_adapter(tiny_llama_dir, tmp_path_factory.mktemp("adapter") / "adapter")


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_loses_nothing(case: str, tiny_llama_dir: Path, tiny_gemma_dir: Path, tiny_adapter: Path,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("INTROSPECT_MI_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("INTROSPECT_MI_CHECKPOINTS", str(tmp_path / "checkpoints"))
    finished = tmp_path / "runs" / "finished"  # earlier work that no bad input may touch
    finished.mkdir(parents=True)
    (finished / "metrics.json").write_text('{"accuracy": 0.5}')
    shutil.copytree(tiny_adapter, tmp_path / "checkpoints" / "adapters" / "finished" / "self")
    ctx = Ctx(tmp_path, tiny_llama_dir, tiny_gemma_dir, tiny_adapter, monkeypatch, [])
    try:
        main, argv = CASES[case].setup(ctx)
        before = snapshot(tmp_path)
        capsys.readouterr()
        code = main(argv)
    finally:
        for sock in ctx.sockets:
            sock.close()

    out, err = capsys.readouterr()
    after = snapshot(tmp_path)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and " — " in lines[0], err
    for word in CASES[case].words:
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in err + out
    assert {k: v for k, v in after.items() if k in before} == before, "a file that existed before was changed or removed"
    if not CASES[case].writes:
        assert set(after) == set(before), f"new files left behind: {sorted(set(after) - set(before))}"


def test_docs_table_lists_exactly_the_cases_tested_here() -> None:
    """docs/errors.md "Bad inputs tried" is this file's table: no case documented but untested, none tested but undocumented."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "errors.md").read_text(encoding="utf-8")
    section = text.split("## Bad inputs tried", 1)[1]
    documented = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ") and not line.startswith("| case ")]
    assert documented == list(CASES) and len(CASES) >= 30
