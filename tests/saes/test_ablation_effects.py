"""Per-prompt ablation effects and the paired top-k vs matched random comparison over items."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from introspect_mi.saes.ablation_effects import CLEAN, RANDOM, TOP, ablation_items, ablation_summary, paired_effects
from introspect_mi.saes.answers import AnswerTokens

INFO = {"clean": {"layer": None, "condition": CLEAN, "draw": None, "features": ""},
        "L3 top-k": {"layer": 3, "condition": TOP, "draw": None, "features": "1 2"},
        "L3 r0": {"layer": 3, "condition": RANDOM, "draw": 0, "features": "4 5"},
        "L3 r1": {"layer": 3, "condition": RANDOM, "draw": 1, "features": "6 7"}}


def records(n: int, items: list[str] | None = None) -> pd.DataFrame:
    return pd.DataFrame({"record": range(10, 10 + n), "item_id": items or [f"i{r}" for r in range(n)], "task": "t", "property": "p"})


def test_items_by_hand() -> None:
    answers = AnswerTokens([0, 1], [[1], [2]])
    logits = {"clean": torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]]), "L3 top-k": torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 1.0]]),
              "L3 r0": torch.tensor([[2.0, 0.0, 0.0], [5.0, 1.0, 0.0]]), "L3 r1": torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])}
    table = ablation_items("untrained", logits, INFO, answers, records(2)).set_index(["condition", "draw", "record"])
    clean = table.xs(CLEAN, level="condition")
    assert clean["logit_difference"].tolist() == [2.0, -2.0] and clean["accuracy"].tolist() == [1.0, 0.0]
    assert clean["compliance"].tolist() == [1.0, 1.0] and clean["d_logit_difference"].tolist() == [0.0, 0.0]
    top = table.xs(TOP, level="condition")
    assert top["d_logit_difference"].tolist() == [-1.0 - 2.0, 1.0 + 2.0] and top["d_accuracy"].tolist() == [-1.0, 1.0]
    r0 = table.xs((RANDOM, 0), level=("condition", "draw"))
    assert r0["compliance"].tolist() == [1.0, 0.0]  # row 2's argmax (token 0) starts no valid value
    summary = ablation_summary(ablation_items("untrained", logits, INFO, answers, records(2))).set_index(["condition", "draw"])
    assert summary.loc[(TOP, np.nan), "n"] == 2 and summary.loc[(TOP, np.nan), "d_logit_difference"] == 0.0
    assert summary.loc[(RANDOM, 0.0), "d_compliance"] == -0.5


def synthetic_items(top_shift: float, n_items: int = 12, per_item: int = 2, seed: int = 0) -> pd.DataFrame:
    """Items with noisy clean logit differences; top-k lowers them by `top_shift`, random draws by noise only."""
    rng = np.random.default_rng(seed)
    n = n_items * per_item
    base = rng.normal(2.0, 1.0, n)
    frames = []
    for name, info in INFO.items():
        value = base.copy()
        if info["condition"] == TOP:
            value = base - top_shift + rng.normal(0, 0.3, n)
        elif info["condition"] == RANDOM:
            value = base + rng.normal(0, 0.3, n)
        frames.append(pd.DataFrame({"subject": "s", **info, "record": range(n), "item_id": np.repeat(np.arange(n_items), per_item),
                                    "logit_difference": value, "compliance": 1.0, "accuracy": (value > 0).astype(float), "logit": value}))
    table = pd.concat(frames, ignore_index=True)
    clean = table[table["condition"] == CLEAN].set_index("record")
    for m in ("logit_difference", "compliance", "accuracy", "logit"):
        table[f"d_{m}"] = table[m] - table["record"].map(clean[m])
    return table


def test_a_real_drop_is_found_with_an_interval_that_excludes_zero() -> None:
    effects = paired_effects(synthetic_items(top_shift=2.0), n_boot=500, sign_flips=2000, seed=0).set_index("measure")
    row = effects.loc["logit_difference"]
    assert row["n_items"] == 12 and row["n_prompts"] == 24 and row["draws"] == 2
    assert row["top_minus_random"] == pytest.approx(row["top_k"] - row["matched_random"])
    assert row["ci_high"] < 0 and row["p_value"] < 0.01 and row["top_minus_random"] == pytest.approx(-2.0, abs=0.3)


def test_no_difference_gives_no_claim_and_constant_measures_give_zero() -> None:
    effects = paired_effects(synthetic_items(top_shift=0.0, seed=1), n_boot=500, sign_flips=2000, seed=0).set_index("measure")
    row = effects.loc["logit_difference"]
    assert row["ci_low"] < 0 < row["ci_high"] and row["p_value"] > 0.05
    assert effects.loc["compliance", "top_minus_random"] == 0.0 and effects.loc["compliance", "p_value"] == 1.0


def test_the_unit_is_the_item_not_the_prompt() -> None:
    """Duplicating every prompt of an item changes neither the estimate nor the p-value."""
    once = paired_effects(synthetic_items(2.0, per_item=1), n_boot=300, sign_flips=500, seed=0).set_index("measure")
    twice_items = synthetic_items(2.0, per_item=1)
    copy = twice_items.assign(record=twice_items["record"] + 1000)
    twice = paired_effects(pd.concat([twice_items, copy], ignore_index=True), n_boot=300, sign_flips=500, seed=0).set_index("measure")
    assert twice.loc["logit_difference", "n_items"] == once.loc["logit_difference", "n_items"] == 12
    assert twice.loc["logit_difference", "p_value"] == once.loc["logit_difference", "p_value"]
    assert math.isclose(twice.loc["logit_difference", "top_minus_random"], once.loc["logit_difference", "top_minus_random"])
