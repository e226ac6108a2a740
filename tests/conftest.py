from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.llama3 import END_OF_TEXT, Lazy, Llama3, build as build_llama3  # noqa: E402
from tests.tiny import make_gemma3, make_llama, make_tokenizer, save_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 3-layer Llama with a SmolLM2-like chat tokenizer, saved as an HF checkpoint."""
    tok = make_tokenizer(chat=True)
    return save_checkpoint(tmp_path_factory.mktemp("tiny_llama"), make_llama(len(tok)), tok)


@pytest.fixture(scope="session")
def tiny_gemma_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Gemma-3 with a plain (no chat template) tokenizer."""
    tok = make_tokenizer(chat=False)
    return save_checkpoint(tmp_path_factory.mktemp("tiny_gemma"), make_gemma3(len(tok)), tok)


LLAMA3 = {
    "3.1": Llama3("3.1", tied=False, scripted=True),
    "3.0": Llama3("3.0", tied=True, scripted=True, seed=1),
    "3.0-eos-only": Llama3("3.0", tied=True, scripted=True, seed=1, generation_eos=(END_OF_TEXT,)),
}
"""Llama-3-shaped checkpoints (tests/llama3.py): 3.1-style (EOS <|eot_id|>, a pad token, untied),
3.0-style (EOS <|end_of_text|>, no pad, tied), and 3.0-style with a generation config whose EOS
list lacks <|eot_id|>. All scripted: each answers one letter, then <|eot_id|>."""


@pytest.fixture(scope="session")
def llama3_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The LLAMA3 checkpoints, each built once per session when first asked for."""
    root = tmp_path_factory.mktemp("llama3")
    return Lazy(lambda name: build_llama3(root / name, LLAMA3[name]))


@pytest.fixture()
def checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty checkpoints folder for tests that write there."""
    monkeypatch.setenv("INTROSPECT_MI_CHECKPOINTS", str(tmp_path / "checkpoints"))
    return tmp_path / "checkpoints"


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium through Playwright (`make browser` installs it; never `playwright install`)."""
    if os.environ.get("INTROSPECT_MI_SKIP_BROWSER") == "1":
        pytest.skip("INTROSPECT_MI_SKIP_BROWSER=1")
    if not (Path(CHROMIUM).is_file() or shutil.which("chromium")):
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium), or set INTROSPECT_MI_SKIP_BROWSER=1")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: pip install -e '.[test]' (never `playwright install`), or set INTROSPECT_MI_SKIP_BROWSER=1")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium"), args=CHROMIUM_ARGS)
        yield b
        b.close()
