from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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


@pytest.fixture()
def checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty checkpoints folder for tests that write there."""
    monkeypatch.setenv("INTROSPECT_MI_CHECKPOINTS", str(tmp_path / "checkpoints"))
    return tmp_path / "checkpoints"

