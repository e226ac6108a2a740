"""experiments.behavioral_training: replicate names never collide and keep the study's own; stale
labels are counted against the trained model's own behaviour. And the behaviour-change printout."""

from __future__ import annotations

import pytest

from experiments.behavioral_study import MIN_CHANGED, behaviour_change_line
from experiments.behavioral_training import Replicate, stale_labels
from introspect_mi import finetune_data as fd
from introspect_mi.evaluation import make_pairs
from introspect_mi.tasks import load_items, task_spec


def test_the_studys_default_keeps_its_names_and_every_other_replicate_gets_its_own() -> None:
    assert (Replicate(0).name("self"), Replicate(0).name("cross")) == ("self", "cross")  # the study's adapters, reused
    assert Replicate(7, default_seed=7).name("cross", 2) == "cross_round2"
    assert Replicate(1).name("self", 2) == "self_seed1_round2" and Replicate(0, 0.25).name("cross") == "cross_frac25"
    names = {Replicate(seed, frac).name(kind, r) for seed in (0, 1, 2) for frac in (0.25, 0.5, 1.0) for kind in ("self", "cross") for r in (1, 2)}
    assert len(names) == 3 * 3 * 2 * 2
    with pytest.raises(ValueError):
        Replicate(0, rounds=0)
    with pytest.raises(ValueError):
        Replicate(0, fraction=0.0)


def test_stale_labels_count_labels_the_models_own_answers_contradict_noncompliant_included() -> None:
    spec = task_spec("animals")
    pairs = make_pairs([(i, spec) for i in load_items("animals", "train", n=4)], ["first_character"])
    rows = [fd.Labelled(p, label) for p, label in zip(pairs, "ccdo")]
    own = {pairs[0].item.item_id: ["cat"], pairs[1].item.item_id: ["dog"], pairs[2].item.item_id: ["sorry, I can't"],
           pairs[3].item.item_id: ["owl"]}  # agrees, differs, non-compliant, agrees
    assert stale_labels(rows, own) == {"n_labels": 4, "n_stale": 2, "share": 0.5}


def test_behaviour_change_line_reports_the_paired_test_and_warns_when_too_few_pairs_changed() -> None:
    proportion = {"value": 0.3}
    bc = {"n_changed": MIN_CHANGED - 1, "new": proportion, "old": {"value": 0.1}, "mcnemar": {"new_only": 12, "old_only": 3, "p_value": 0.035}}
    line = behaviour_change_line(bc)
    assert "15 discordant pairs: 12 new only, 3 old only, p = 0.035" in line and f"fewer than {MIN_CHANGED} pairs changed" in line
    assert "fewer than" not in behaviour_change_line({**bc, "n_changed": MIN_CHANGED})
