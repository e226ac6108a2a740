from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    """The tiny random Llama (d_model 64, 3 layers) as a ModelHandle."""
    from introspect_mi.models import load

    return load(tiny_llama_dir)


@pytest.fixture(scope="module")
def token_lists(tiny):
    """Four token sequences of different lengths (so batches are left-padded)."""
    from tests.tiny import CORPUS

    return [tiny.tokenizer(text)["input_ids"][: 6 + 3 * i] for i, text in enumerate(CORPUS)]
