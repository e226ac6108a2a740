"""Steering experiment D: position sets, cross-fitted vectors from a store, equal-norm controls, the
dose sweep, the summaries, the paired tests and the pattern read from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from introspect_mi.actstore import ActivationStore, StoreWriter, tensor_key
from introspect_mi.models import ModelHandle, load
from introspect_mi.multiplicity import CONFIRMATORY, EXPLORATORY, holm
from introspect_mi.places import resid_post
from introspect_mi.steering import Steerer
from introspect_mi.steering_experiments import (
    POSITION_SETS, SteeringSetup, assign_folds, balanced, layer_at, position_set, random_controls, run_steering, site_norm,
    steer_values, steering_pattern, store_steering_vectors, summarise_steering, sweep_tests,
)
from tests.test_patching_pairs import item


@pytest.fixture(scope="module")
def handle(tiny_llama_dir: Path) -> ModelHandle:
    return load(tiny_llama_dir)


def test_position_sets() -> None:
    assert position_set("P", 10, [3, 4, 5]) == {3, 4, 5}
    assert position_set("after_P", 10, [3, 4, 5]) == {6, 7, 8, 9}
    assert position_set("all", 10, [3, 4, 5]) is None
    assert list(POSITION_SETS) == ["P", "after_P", "all"]
    with pytest.raises(ValueError, match="unknown position set"):
        position_set("question", 10, [3])
    assert (layer_at(0.0, 30), layer_at(0.5, 30), layer_at(1.0, 30)) == (0, 14, 29)


def test_values_folds_and_balanced_items() -> None:
    items = [item(f"i{k}", v) for k, v in enumerate("xyxxzyxy")]
    assert steer_values(items) == ("x", "y")
    folds = assign_folds(items, ("x", "y"))
    assert set(folds) == {"i0", "i1", "i2", "i3", "i5", "i6", "i7"}
    for v in "xy":
        members = [folds[it.item_id] for it in items if it.value == v]
        assert abs(members.count(0) - members.count(1)) <= 1
    chosen = balanced(items, ("x", "y"), 5)
    assert [it.value for it in chosen] == ["x", "y", "x", "y", "x"]
    with pytest.raises(ValueError, match="two values with at least two items each"):
        steer_values([item("a", "x"), item("b", None)])
    with pytest.raises(ValueError, match="two values with at least two items each"):
        steer_values([item("a", "x"), item("b", "x"), item("c", "y")])


def test_store_vectors_are_cross_fitted_mean_differences(tmp_path: Path) -> None:
    place, d = resid_post(1), 4
    info = {"places": [str(place)], "positions": ["p_last"], "dtype": "float32", "n_records": 6, "d_model": d}
    writer = StoreWriter(tmp_path, info, shard_records=4)
    rows = [("i0", "x", 0), ("i1", "x", 1), ("i2", "y", 0), ("i3", "y", 1), ("i4", "x", 1), ("h", "x", 0)]
    vecs = {}
    for k, (item_id, value, _) in enumerate(rows):
        vecs[item_id] = torch.arange(d, dtype=torch.float32) * (k + 1)
        kind = "hypothetical" if item_id == "h" else "object"
        writer.add({"record": k, "item_id": item_id, "kind": kind, "task": "t", "values": {"p": value}, "positions": {"p_last": [2]}},
                   {tensor_key(place, "p_last"): vecs[item_id][None]})
    writer.flush()
    folds = {item_id: f for item_id, _, f in rows}
    got = store_steering_vectors(ActivationStore.open(tmp_path), 1, "p_last", "t", "p", ("x", "y"), folds)
    torch.testing.assert_close(got[0], (vecs["i1"] + vecs["i4"]) / 2 - vecs["i3"])  # fold 0 is steered by fold 1's items
    torch.testing.assert_close(got[1], vecs["i0"] - vecs["i2"])  # hypothetical records never count
    # the residual a vector is added to: the median norm over the task's object records (‖arange(4)‖ = √14, × 1..5)
    assert site_norm(ActivationStore.open(tmp_path), 1, "p_last", "t") == pytest.approx(3 * 14 ** 0.5, rel=1e-6)


def test_dose_is_the_pushed_norm_over_the_residual_norm() -> None:
    setup = SteeringSetup("p", 1, ("x", "y"), {0: torch.full((4,), 2.0), 1: torch.full((4,), 4.0)}, {}, residual_norm=12.0)
    assert setup.dose(2.0) == pytest.approx(2.0 * 6.0 / 12.0)  # folds' mean norm (4 and 8) = 6
    assert np.isnan(SteeringSetup("p", 1, ("x", "y"), {0: torch.ones(4)}, {}).dose(1.0))  # not measured


def test_random_controls_have_each_folds_norm_and_a_new_direction() -> None:
    vectors = {0: torch.full((8,), 2.0), 1: torch.arange(8.0)}
    for seed in (0, 1):
        controls = random_controls(vectors, seed)
        for f, v in vectors.items():
            torch.testing.assert_close(controls[f].norm(), v.norm())
            assert abs(float(torch.nn.functional.cosine_similarity(controls[f], v, dim=0))) < 0.9
    assert not torch.equal(random_controls(vectors, 0)[0], random_controls(vectors, 1)[0])


def steering_rows() -> pd.DataFrame:
    """4 items pushed toward "y" ("x" before); the steering vector moves 2 object answers and the
    self-prediction of one of them to "y"; the random vector moves nothing."""
    rows = []
    for vec in ("steer", "random-0"):
        for k in range(4):
            moved = vec == "steer" and k < 2
            rows.append({"position_set": "P", "vector": vec, "item_id": f"i{k}", "toward": "y", "object_before": "x",
                         "object_after": "y" if moved else "x", "hyp_before": "x", "hyp_after": "y" if moved and k == 0 else "x"})
    return pd.DataFrame(rows)


def test_summarise_steering_counts_by_hand() -> None:
    (row,) = summarise_steering(steering_rows()).to_dict("records")
    assert row["object_to_target"] == 0.5 and row["hyp_to_target"] == 0.25 and row["n_object_moved"] == 2
    assert row["follows_new"] == 0.5 and row["follows_old"] == 0.5 and row["new_before"] == 0.0 and row["old_before"] == 1.0
    assert row["random_object_to_target_max"] == 0.0 and row["random_hyp_changed_mean"] == 0.0


def summary(p: tuple[float, float], q: tuple[float, float], a: tuple[float, float] = (0.0, 0.0)) -> pd.DataFrame:
    """(object, self-prediction) shifts per position set, random controls at 0.05."""
    return pd.DataFrame([{"position_set": name, "object_to_target": o, "hyp_to_target": h, "random_object_to_target_max": 0.05,
                          "random_hyp_to_target_max": 0.05, "n_object_moved": 3, "follows_new": 0.5, "follows_old": 0.5,
                          "new_before": 0.0, "old_before": 1.0}
                         for name, (o, h) in zip(POSITION_SETS, (p, q, a))])


@pytest.mark.parametrize(("p", "q", "pattern"), [
    ((0.5, 0.4), (0.0, 0.0), "P-state"),
    ((0.0, 0.0), (0.0, 0.5), "question shortcut"),
    ((0.5, 0.0), (0.1, 0.1), "none"),
    ((0.5, 0.5), (0.0, 0.5), "mixed"),
])
def test_steering_pattern(p: tuple[float, float], q: tuple[float, float], pattern: str) -> None:
    got, sentences = steering_pattern(summary(p, q), min_effect=0.15)
    assert got == pattern and len(sentences) == 3
    assert sentences[0].startswith("(i) P's tokens: ")


def test_run_steering_on_a_tiny_model(handle: ModelHandle) -> None:
    items = [item(f"i{k}", "xy"[k % 2]) for k in range(4)]
    vectors = {0: torch.ones(64), 1: -torch.ones(64)}
    setup = SteeringSetup("first_character", 1, ("x", "y"), vectors, assign_folds(items, ("x", "y")))
    sweep, sweep_items, rows, scale = run_steering(handle, Steerer(handle.model, handle.pad_token_id), items, setup, [1.0, 4.0],
                                                   n_random=1, max_scale=4.0, progress=False)
    assert scale in (1.0, 4.0)
    assert len(sweep) == 4 and set(sweep["vector"]) == {"steer", "random"} and set(sweep["position_set"]) == {"P"}
    assert {"dose", "object_to_target", "hyp_to_target", "object_changed", "hyp_changed"} <= set(sweep.columns)
    assert len(rows) == 2 * len(POSITION_SETS) * len(items) and set(rows["vector"]) == {"steer", "random-0"}
    assert (rows["toward"] == np.where(rows["value"] == "x", "y", "x")).all()
    # the per-item sweep is what the sweep's shares were computed from
    assert len(sweep_items) == 2 * 2 * 2 * len(items)  # scales × vectors × kinds × items
    for r in sweep.itertuples():
        g = sweep_items[(sweep_items["scale"] == r.scale) & (sweep_items["vector"] == r.vector) & (sweep_items["kind"] == "object")]
        assert r.object_to_target == pytest.approx((g["after"] == g["toward"]).mean() - (g["before"] == g["toward"]).mean())
        assert r.object_changed == pytest.approx(np.mean([a != b for a, b in zip(g["after"], g["before"])]))  # None == None: unchanged


def test_sweep_doubles_the_scale_until_a_random_push_changes_the_answers(handle: ModelHandle) -> None:
    """A vector too small to change anything: the sweep goes on doubling to `max_scale` (never
    stopping at a dose that cannot matter); every scale ties at no effect, and the tie goes to the
    largest scale. With `dose_until` = 0 the listed scales are all that run."""
    items = [item(f"i{k}", "xy"[k % 2]) for k in range(4)]
    vectors = {0: torch.full((64,), 1e-9), 1: torch.full((64,), -1e-9)}
    setup = SteeringSetup("first_character", 1, ("x", "y"), vectors, assign_folds(items, ("x", "y")), residual_norm=1.0)
    steerer = Steerer(handle.model, handle.pad_token_id)
    sweep, sweep_items, _, scale = run_steering(handle, steerer, items, setup, [1.0], n_random=1, max_scale=16.0, progress=False)
    assert sorted(sweep["scale"].unique()) == [1.0, 2.0, 4.0, 8.0, 16.0] and scale == 16.0
    assert (sweep["object_changed"] == 0).all() and (sweep["hyp_changed"] == 0).all()
    np.testing.assert_allclose(sweep["dose"], sweep["scale"] * 8e-9, rtol=1e-5)  # ‖1e-9 × ones(64)‖ = 8e-9
    tests = sweep_tests(sweep_items)  # nothing moved: every gain is exactly 0 and no test is significant
    assert len(tests) == 2 * 5 and (tests["gain_mean"] == 0).all() and (tests["gain_p"] == 1.0).all()
    sweep, _, _, _ = run_steering(handle, steerer, items, setup, [1.0, 2.0], n_random=1, dose_until=0.0, progress=False)
    assert sorted(sweep["scale"].unique()) == [1.0, 2.0]


def sweep_item_rows(moved_by_steer: dict[float, int], n: int = 12) -> pd.DataFrame:
    """At each scale the steering vector moves the first k object answers to the pushed value "y",
    the random vector moves none; self-predictions never move."""
    rows = []
    for scale, k in moved_by_steer.items():
        for vec in ("steer", "random"):
            for kind in ("object", "hypothetical"):
                for i in range(n):
                    after = "y" if (vec == "steer" and kind == "object" and i < k) else "x"
                    rows.append({"scale": scale, "vector": vec, "kind": kind, "item_id": f"i{i}", "toward": "y", "before": "x", "after": after})
    return pd.DataFrame(rows)


def test_sweep_tests_gain_by_hand_and_holm_over_the_scales() -> None:
    tests = sweep_tests(sweep_item_rows({4.0: 0, 8.0: 6, 16.0: 12}), seed=1)
    obj = tests[tests["kind"] == "object"].set_index("scale")
    assert obj["gain_mean"].tolist() == [0.0, 0.5, 1.0] and (obj["n"] == 12).all()
    assert (obj["status"] == CONFIRMATORY).all()
    np.testing.assert_allclose(obj["p_holm"], holm(obj["gain_p"].to_numpy()))  # the family: the object rows, nothing else
    assert obj.loc[16.0, "gain_p"] < 0.001 and obj.loc[4.0, "gain_p"] == 1.0
    hyp = tests[tests["kind"] == "hypothetical"]
    assert (hyp["status"] == EXPLORATORY).all() and hyp["p_holm"].isna().all() and (hyp["gain_mean"] == 0).all()


def test_summarise_steering_paired_gain_over_the_random_mean() -> None:
    rows = steering_rows()
    extra = rows[rows["vector"] == "random-0"].assign(vector="random-1", object_after="y")  # a second random vector moves everything
    (row,) = summarise_steering(pd.concat([rows, extra])).to_dict("records")
    # per item: steer hit − mean(random-0 hit, random-1 hit) = [1 − 0.5, 1 − 0.5, 0 − 0.5, 0 − 0.5]
    assert row["object_gain_mean"] == pytest.approx(0.0) and row["hyp_gain_mean"] == pytest.approx(0.25)
    assert row["status"] == EXPLORATORY and row["object_gain_ci_low"] <= 0.0 <= row["object_gain_ci_high"]
