"""Logit lens: the last layer read through the lens is the model's own output; ranks are exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from introspect_mi.capture import capture
from introspect_mi.logit_lens import first_rise, lens_summary, lens_table, unembed
from introspect_mi.models import load
from tests.test_capture import prompts, spec


@pytest.fixture(scope="module")
def handle(tiny_llama_dir: Path):
    return load(tiny_llama_dir)


def test_last_layer_lens_is_the_models_output_and_greedy_token_ranks_first(handle, tmp_path: Path) -> None:
    store = capture(handle, prompts(handle), spec(handle), tmp_path, progress=False)
    last = handle.n_layers - 1
    x, meta = store.load("resid_post", last, "final", as_="torch")
    for row, prompt in enumerate(prompts(handle)):
        with torch.no_grad():
            logits = handle.model(torch.tensor([handle.prompt_format.encode(prompt.text)])).logits[0, -1]
        torch.testing.assert_close(unembed(handle, x[row : row + 1])[0], logits, rtol=1e-5, atol=1e-5)
    greedy = store.records["answer_token_id"].tolist()
    table = lens_table(handle, store, "final", {"answer": greedy}, top_k=3)
    at_last = table[table["layer"] == last]
    assert (at_last["answer_rank"] == 0).all()
    decoded = [handle.tokenizer.decode([g]) for g in greedy]
    assert [t[0] for t in at_last["top_tokens"]] == decoded
    np.testing.assert_allclose([p[0] for p in at_last["top_probs"]], at_last["answer_prob"], rtol=1e-6)


def test_missing_targets_are_nan_and_summary_counts_top1() -> None:
    table = pd.DataFrame({"record": [0, 1, 0, 1], "layer": [0, 0, 1, 1], "a_rank": [5.0, np.nan, 0.0, 0.0],
                          "a_prob": [0.1, np.nan, 0.9, 0.8]})
    summary = lens_summary(table, ["a"])
    assert summary["a_median_rank"].tolist() == [5.0, 0.0]
    assert summary["a_top1"].tolist() == [0.0, 1.0]
    assert first_rise(summary, "a", threshold=1) == 1
    assert first_rise(summary, "a", threshold=6) == 0
