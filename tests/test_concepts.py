"""Concept injection E: concept vectors, the relative log-prob of the concept's value against a
single-prompt steering oracle at both position sets, zero injection as the identity, and the
summary's shifts, chance level and confirmatory family by hand."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from introspect_mi.concepts import CONFIRMATORY_POSITIONS, answer_values, concept_vectors, run_concepts, summarise_concepts
from introspect_mi.logit_lens import first_token
from introspect_mi.models import ModelHandle, load
from introspect_mi.multiplicity import CONFIRMATORY, EXPLORATORY, holm
from introspect_mi.places import resid_post
from introspect_mi.properties import get_property
from introspect_mi.steering import Steer, Steerer, steering
from tests.test_patching_pairs import item


@pytest.fixture(scope="module")
def handle(tiny_llama_dir: Path) -> ModelHandle:
    return load(tiny_llama_dir)


def test_answer_values() -> None:
    assert answer_values(get_property("first_character")) == tuple(string.ascii_lowercase)
    assert answer_values(get_property("ethical_stance")) == ("true", "false")
    with pytest.raises(ValueError, match="finite answer set or a character property"):
        answer_values(get_property("first_word"))


def test_concept_vectors_subtract_the_baseline_mean(handle: ModelHandle) -> None:
    words = ["cat", "dog", "fox"]
    vectors = concept_vectors(handle, words, words, layer=1)  # baseline = the words: the vectors sum to zero
    torch.testing.assert_close(sum(vectors.values()), torch.zeros(64), atol=1e-4, rtol=0)
    assert all(v.norm() > 0 for v in vectors.values())


def test_zero_injection_changes_nothing(handle: ModelHandle) -> None:
    items = [item(f"i{k}", "x", prop="first_character") for k in range(3)]
    vectors = {"cat": torch.randn(64), "dog": torch.randn(64)}
    rows = run_concepts(handle, Steerer(handle.model, handle.pad_token_id), items, vectors, 1, [0.0], n_random=1, progress=False)
    assert len(rows) == 2 * (2 + 2) * len(items) * 2  # position sets × (2 concepts + 1 random each) × items × scored concepts
    for col in ("logprob", "logprob_full", "valid_mass"):
        np.testing.assert_allclose(rows[col], rows[f"{col}_clean"], atol=1e-4)
    assert (rows["valid_mass"] <= 1e-6).all() and (rows["logprob"] >= rows["logprob_full"] - 1e-5).all()  # P(value | valid) ≥ P(value)
    s = summarise_concepts(rows)
    assert set(s["concept"]) == {"cat", "dog"} and set(s["value"]) == {"c", "d"} and set(s["positions"]) == {"after_P", "all"}
    assert np.allclose(s[["shift_own", "shift_random", "shift_other", "vs_random_mean", "valid_mass_own"]].to_numpy(), 0.0, atol=1e-4)


@torch.no_grad()
def test_relative_logprob_matches_a_single_prompt_oracle_at_each_position_set(handle: ModelHandle) -> None:
    """Each row's log P(value | a letter) equals log_softmax over the 26 letters' first tokens of the
    logits of one prompt steered with `Steer` at every token, or at the tokens after P only."""
    items = [item("i0", "x", prop="first_character"), item("i1", "y", prop="first_character", n_hyp=23)]
    vectors = {"cat": torch.randn(64, generator=torch.Generator().manual_seed(1))}
    layer, scale = 1, 3.0
    rows = run_concepts(handle, Steerer(handle.model, handle.pad_token_id), items, vectors, layer, [scale], n_random=0, progress=False)
    letters = [first_token(handle, c) for c in string.ascii_lowercase]
    c_col = string.ascii_lowercase.index("c")
    for it in items:
        ids = torch.tensor([it.hyp_ids])
        clean = handle.model(ids).logits[0, -1]
        for where, positions in (("all", None), ("after_P", tuple(range(max(it.hyp_p_tokens) + 1, len(it.hyp_ids))))):
            with steering(handle.model, Steer(resid_post(layer), vectors["cat"], scale, positions)):
                logits = handle.model(ids).logits[0, -1]
            (row,) = rows[(rows["positions"] == where) & (rows["item_id"] == it.item_id)].to_dict("records")
            assert row["logprob"] == pytest.approx(float(logits[letters].log_softmax(-1)[c_col]), abs=1e-4)
            assert row["logprob_clean"] == pytest.approx(float(clean[letters].log_softmax(-1)[c_col]), abs=1e-4)
            assert row["valid_mass"] == pytest.approx(float(logits.log_softmax(-1)[letters].logsumexp(-1)), abs=1e-4)
    after, every = (rows[rows["positions"] == w]["logprob"].to_numpy() for w in ("after_P", "all"))
    assert not np.allclose(after, every)  # hitting P's tokens too is a different intervention


def concept_rows(n: int = 8) -> pd.DataFrame:
    """Two concepts (cat → c, dog → d), one random vector each, one scale, both position sets.
    After P the concept's own vector raises log P(own value | valid) by 1 on every item, every
    other vector by 0; at every token the own vector raises it by 1 on half the items, lowers
    it by 1 on the rest. Clean: 2 of n reports are the value."""
    rows = []
    for where in ("after_P", "all"):
        for owner, kind in (("cat", "concept"), ("dog", "concept"), ("cat", "random-0"), ("dog", "random-0")):
            name = owner if kind == "concept" else f"random-0 ({owner})"
            for i in range(n):
                for concept, value in (("cat", "c"), ("dog", "d")):
                    own = kind == "concept" and owner == concept
                    shift = (1.0 if where == "after_P" or i % 2 else -1.0) if own else 0.0
                    rows.append({"positions": where, "injected": name, "kind": kind, "owner": owner, "scale": 4.0, "item_id": f"i{i}",
                                 "concept": concept, "value": value, "n_values": 26, "logprob": -3.0 + shift, "logprob_clean": -3.0,
                                 "logprob_full": -5.0 + shift, "logprob_full_clean": -5.0, "valid_mass": -0.5, "valid_mass_clean": -0.25,
                                 "report": value if own and shift > 0 else "q", "report_clean": value if i < 2 else "q"})
    return pd.DataFrame(rows)


def test_summarise_concepts_by_hand() -> None:
    s = summarise_concepts(concept_rows(), seed=2).set_index(["positions", "concept"])
    after = s.loc["after_P"]
    assert (after["shift_own"] == 1.0).all() and (after["shift_random"] == 0.0).all() and (after["shift_other"] == 0.0).all()
    assert (after["vs_random_mean"] == 1.0).all() and (after["vs_random_p"] < 0.01).all() and (after["n"] == 8).all()
    assert (after["status"] == CONFIRMATORY).all() and CONFIRMATORY_POSITIONS == "after_P"
    np.testing.assert_allclose(after["p_holm"], holm(after["vs_random_p"].to_numpy()))  # the family: after-P cells only
    every = s.loc["all"]
    assert (every["status"] == EXPLORATORY).all() and every["p_holm"].isna().all()
    assert (every["shift_own"] == 0.0).all() and (every["vs_random_p"] > 0.3).all()
    # chance level and the secondary measures
    assert (s["clean_report_rate"] == 0.25).all() and s["clean_prob"].to_numpy() == pytest.approx(np.exp(-3.0))
    assert s["uniform"].to_numpy() == pytest.approx(1 / 26)
    assert (after["report_rate_own"] == 1.0).all() and (after["flips_own"] == 0.75).all() and (after["report_rate_random"] == 0.0).all()
    assert (s["valid_mass_own"] == -0.25).all() and (s["valid_mass_random"] == -0.25).all()
