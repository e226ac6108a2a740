"""`python -m experiments.sae_features`: its pieces on hand-made data, and the whole experiment on
a tiny random Llama (a fake finished study, a real capture, SAEs trained then reused)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from experiments import sae_features as sf
from experiments.behavioral_config import StudyConfig
from introspect_mi import evaluation as ev
from introspect_mi.alignment import Alignment
from introspect_mi.errors import UserError
from introspect_mi.models import load
from introspect_mi.saes.analysis import Attribution
from introspect_mi.store import RunDir
from tests.test_models import make_adapter

STUDY = "study-tiny"


# --- pieces ------------------------------------------------------------------------------------


def records_table() -> pd.DataFrame:
    """12 hypothetical records over two tasks (every third without a correct value) and their objects."""
    rows = [{"record": i, "kind": "object", "task": "t", "item_id": f"o{i}", "object_value": None, "correct": None} for i in range(2)]
    for i in range(12):
        rows.append({"record": 2 + i, "kind": "hypothetical", "task": ["animals", "words"][i % 2], "item_id": f"i{i}",
                     "object_value": None if i % 3 == 2 else "a", "correct": i % 3 == 0})
    return pd.DataFrame(rows)


def test_chosen_records_have_a_value_spread_over_tasks_and_half_correct() -> None:
    chosen = sf.choose_records(records_table(), 6, seed=0)
    assert len(chosen) == 6 and chosen["object_value"].notna().all() and (chosen["kind"] == "hypothetical").all()
    assert chosen["correct"].sum() == 3  # half of 6 from the 4 correct records with a value
    assert set(chosen["task"]) == {"animals", "words"}
    assert chosen["record"].is_monotonic_increasing
    assert sf.choose_records(records_table(), 6, seed=0).equals(chosen)
    assert len(sf.choose_records(records_table(), 100, seed=0)) == 8  # all there are


def test_folds_split_in_halves_by_seed() -> None:
    fold = sf.folds(9, seed=3)
    assert sorted(np.bincount(fold)) == [4, 5]
    assert (sf.folds(9, seed=3) == fold).all() and not all((sf.folds(9, seed=s) == fold).all() for s in range(4, 9))


def test_ablation_table_by_hand() -> None:
    logits = {"clean": torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]]), "L1 top-k": torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 1.0]])}
    info = {"clean": {"layer": None, "condition": "clean", "draw": None, "features": ""},
            "L1 top-k": {"layer": 1, "condition": "top-k", "draw": None, "features": "3 4"}}
    table = sf.ablation_table("untrained", logits, info, targets=[0, 2]).set_index("condition")
    assert table.loc["clean", "accuracy"] == 1.0 and table.loc["top-k", "accuracy"] == 0.0
    assert table.loc["top-k", "d_accuracy"] == -1.0
    assert table.loc["clean", "logit"] == pytest.approx(2.5) and table.loc["top-k", "d_logit"] == pytest.approx(0.5 - 2.5)
    lp = torch.log_softmax(logits["clean"], -1)
    assert table.loc["clean", "logprob"] == pytest.approx(float((lp[0, 0] + lp[1, 2]) / 2))


def test_attribution_tables_sum_p_and_question_tokens_by_hand() -> None:
    records = pd.DataFrame({"record": [5, 6], "item_id": ["a", "b"], "task": ["t", "t"], "property": ["p", "q"]})
    prompts = sf.Prompts(records, [], [[2, 3, 4], [1, 2]], [{2, 3}, {1}], [0, 0])
    attr = [torch.tensor([[1.0, 0.0], [-2.0, 0.5], [0.0, 3.0]]), torch.tensor([[0.25, 0.0], [0.0, -1.0]])]
    acts = [torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 0.0]])]
    a = Attribution([[2, 3, 4], [1, 2]], acts, attr, torch.tensor([1.5, -0.5]))
    items, features = sf.attribution_tables("untrained", prompts, {7: a})
    first, second = items.iloc[0], items.iloc[1]
    assert (first["attr_p"], first["attr_q"], first["abs_p"], first["abs_q"], first["n_p"], first["n_q"]) == (-0.5, 3.0, 3.5, 3.0, 2, 1)
    assert (second["attr_p"], second["attr_q"], second["n_p"]) == (0.25, -1.0, 1)
    assert features["feature"].tolist() == [1, 0] and features["rank"].tolist() == [1, 2]  # ranked by total attribution
    top = features.iloc[0]
    assert (top["total"], top["at_p"], top["at_q"], top["items_active"]) == (2.5, 0.5, 2.0, 1)
    summary = sf.attribution_summary(items)
    assert summary.loc[0, "share_p"] == pytest.approx((3.5 + 0.25) / (3.5 + 0.25 + 3.0 + 1.0))
    assert summary.loc[0, "abs_q_per_token"] == pytest.approx(4.0 / 2)


def store_acts() -> sf.StoreActs:
    """Two items, one hypothetical record each (item b's p_last is not an aligned token)."""
    def alignment(last_h: int, aligned: bool) -> dict:
        pairs = [(3, last_h)] if aligned else []
        return Alignment(pairs, [], [], 3, last_h).to_dict()

    def meta(position: str) -> pd.DataFrame:
        return pd.DataFrame({
            "kind": ["object", "object", "hypothetical", "hypothetical"], "item_id": ["a", "b", "a", "b"], "property": [None, None, "p", "p"],
            "positions": [{"p_last": [3]}, {"p_last": [3]}, {"p_last": [9]}, {"p_last": [9]}],
            "alignment": [None, None, alignment(9, True), alignment(9, False)]})

    acts = {(1, "p_last"): torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
            (1, "final"): torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])}
    return sf.StoreActs(acts, {"p_last": meta("p_last"), "final": meta("final")})


def test_overlap_pairs_aligned_p_last_and_finals_with_a_control_by_hand() -> None:
    table = sf.overlap_table("untrained", store_acts(), [1]).set_index(["position", "pairing"])
    assert table.loc[("p_last", "same item"), "n"] == 1  # item b's p_last is not the same token: left out
    assert table.loc[("p_last", "same item"), "jaccard"] == pytest.approx(1 / 2)
    assert table.loc[("p_last", "other item"), "jaccard"] == 0.0  # a's hypothetical vs b's object
    assert table.loc[("final", "same item"), "n"] == 2
    assert table.loc[("final", "same item"), "jaccard"] == pytest.approx((1 + 1 / 2) / 2)
    assert table.loc[("final", "other item"), "jaccard"] == pytest.approx((0 + 1 / 2) / 2)


def test_own_prompt_differential_pairs_the_same_item_and_property() -> None:
    a = store_acts()
    b = sf.StoreActs({k: v.flip(0) for k, v in a.acts.items()}, {k: m.iloc[::-1].reset_index(drop=True) for k, m in a.meta.items()})
    same = sf.differential_table(*sf.own_prompt_acts(a, b), "own prompts")
    assert same["n"].iloc[0] == 2 and np.allclose(same["diff"], 0.0) and (same["inputs"] == "own prompts").all()
    b.acts[1, "final"][0, 2] = 4.0  # item b's hypothetical (row 0 after the flip) gains latent 2
    changed = sf.differential_table(*sf.own_prompt_acts(a, b), "own prompts")
    assert changed.iloc[0]["feature"] == 2 and changed.iloc[0]["diff"] == pytest.approx(2.0) and changed.iloc[0]["rank"] == 1


def test_training_sequences_use_only_the_training_tasks_train_split(tiny_llama_dir) -> None:
    handle = load(tiny_llama_dir)
    study = StudyConfig(train_tasks=("colours", "countries"), held_out_tasks=("animals",), properties=("first_character", "first_word"))
    config = sf.SAEFeaturesConfig(train_items=3, hypotheticals_per_item=2)
    seqs = sf.training_sequences(handle, SimpleNamespace(config=study), config)
    texts = [handle.tokenizer.decode(s) for s in seqs]
    assert len(seqs) == 2 * 3 * (1 + 2)
    assert "colors" in texts[0] and "countries" in texts[3]  # tasks alternate: colours item, its 2 hypotheticals, countries item
    assert sum("Previously, you were asked" in t for t in texts) == 12
    train = {i.text for i, _ in ev.load_task_items(study.train_tasks, "train", 3, study.seed)}
    val = {i.text for i, _ in ev.load_task_items(study.train_tasks, "val", 3, study.seed)}
    assert all(any(t in text for t in train) for text in texts) and not any(t in text for t in val for text in texts)
    with pytest.raises(Exception, match="overlap"):
        sf.training_sequences(handle, SimpleNamespace(config=StudyConfig(train_tasks=("animals",), held_out_tasks=("animals",))), config)


# --- the experiment on a tiny model ----------------------------------------------------------------


def make_study(runs: Path, checkpoints: Path, model: Path) -> None:
    """A finished study run as the capture reads it: config, metrics, rows per subject, the self adapter."""
    config = {"m1": str(model), "m2": str(model), "train_tasks": ["colours"], "held_out_tasks": ["animals"],
              "properties": ["first_character", "second_character"], "eval_items": 4, "seed": 0}
    run = RunDir.create(runs, STUDY, config, seed=0)
    run.write_json("metrics.json", {})
    pairs = ev.make_pairs(ev.load_task_items(["animals"], "val", 4, 0), config["properties"])
    for slug in (0, 1):
        rows = []
        for i, p in enumerate(pairs):
            value = p.prop.extract("dog cat owl", p.item.target)
            rows.append({"item_id": p.item.item_id, "task": p.spec.name, "property": p.prop.name, "object_answer": "dog cat owl",
                         "object_value": value, "hypothetical_answer": value if i % 2 else "z", "hypothetical_value": value if i % 2 else "z",
                         "correct": bool(i % 2)})
        run.write_table(f"rows_{slug}", pd.DataFrame(rows))
    make_adapter(model, checkpoints / "adapters" / STUDY / "self")


TINY = sf.SAEFeaturesConfig(study=STUDY, layers=(0, 2), train_items=4, eval_prompts=2, expansion=2, k=4, training_samples=1024,
                            sae_batch_size=128, analysis_items=4, ablate_k=2, random_draws=2, top_features=1, page_examples=3, batch_size=4,
                            differential_items=6)


@pytest.fixture(scope="module")
def experiment(tiny_llama_dir, tmp_path_factory):
    """The study, its capture (both subjects) and a first run of the experiment."""
    from experiments.capture import CaptureConfig, main_capture

    root = tmp_path_factory.mktemp("sae_features")
    patch = pytest.MonkeyPatch()
    patch.setenv("INTROSPECT_MI_RUNS", str(root / "runs"))
    patch.setenv("INTROSPECT_MI_CHECKPOINTS", str(root / "checkpoints"))
    make_study(root / "runs", root / "checkpoints", tiny_llama_dir)
    main_capture(CaptureConfig(study=STUDY, explorer_items=1, batch_size=4, dtype="float32"), "quick")
    metrics = sf.main_sae_features(TINY, "quick")
    yield root, metrics
    patch.undo()


def test_the_experiment_writes_report_pages_tables_and_metrics(experiment) -> None:
    root, metrics = experiment
    out = root / "runs" / f"mech-{STUDY}" / "sae"
    assert metrics["subjects"] == ["untrained", "self"] and metrics["missing"] == {}
    assert set(metrics["saes"]) == {"L0", "L2"} and not any(m["reused"] for m in metrics["saes"].values())
    ablation = pd.read_json(out / "ablation.jsonl", lines=True)
    assert len(ablation) == 2 * (1 + 2 * (1 + TINY.random_draws))  # per subject: clean, per layer top-k and the draws
    assert (ablation["n"] == TINY.analysis_items).all()
    for subject in ("untrained", "self"):
        assert metrics["checks"][subject]["max_abs_clean_logit_vs_attribution_logit"] < 1e-3
        assert metrics["checks"][subject]["max_relative_diff_live_vs_stored_final"] < 1e-4  # float32 stores here
    differential = pd.read_json(out / "differential.jsonl", lines=True)
    assert set(differential["inputs"]) == {"own prompts", "same prompts"}
    assert differential.loc[differential["inputs"] == "same prompts", "n"].iloc[0] == min(TINY.differential_items, 8)
    report = (out / "report.html").read_text()
    links = re.findall(r'<a href="([^"]+)"', report.split('<ul class="links">')[1].split("</ul>")[0])
    assert links and all((out / href).is_file() for href in links) and len(links) == metrics["pages"]
    assert report.count('<div id="fig-') == 5  # overlap, attribution, ablation, differential (own and same prompts)
    assert json.loads((out / "metrics.json").read_text())["pages"] == metrics["pages"]


def test_a_rerun_reuses_the_saes_and_gives_the_same_numbers_and_leaves_no_stale_page(experiment) -> None:
    root, first = experiment
    pages = root / "runs" / f"mech-{STUDY}" / "sae" / "features"
    stale = pages / "resid_post.99-f12345.html"
    stale.write_text("the page of a latent an earlier run chose")
    second = sf.main_sae_features(TINY, "quick")
    assert not stale.exists() and len(list(pages.glob("*.html"))) == second["pages"]
    assert not list(pages.parent.glob(".features.*"))  # no staging folder left behind
    assert all(m["reused"] for m in second["saes"].values())
    for key in ("overlap_jaccard", "attribution", "ablation", "differential_top"):
        assert second[key] == first[key]
    assert second["timing"]["SAEs (activations, training or reuse, spliced loss)"]["wall_s"] < \
        first["timing"]["SAEs (activations, training or reuse, spliced loss)"]["wall_s"]


def test_a_missing_store_is_reported_with_the_command_that_makes_it(experiment, capsys) -> None:
    root, _ = experiment
    source = root / "runs" / f"mech-{STUDY}"
    partial = root / "runs" / "cap-untrained"
    shutil.copytree(source / "untrained" / "store", partial / "untrained" / "store")
    shutil.copy(source / "config.json", partial / "config.json")
    metrics = sf.main_sae_features(sf.SAEFeaturesConfig(**{**TINY.__dict__, "capture": "cap-untrained"}), "quick")
    assert metrics["subjects"] == ["untrained"] and set(metrics["missing"]) == {"self"}
    assert "python -m experiments.capture --preset quick" in metrics["missing"]["self"]
    assert "not analysed: self" in capsys.readouterr().out
    assert not (partial / "sae" / "differential.jsonl").exists()
    assert "Needs the stores of both" in (partial / "sae" / "report.html").read_text()
    with pytest.raises(UserError, match="no capture run 'nope'"):
        sf.main_sae_features(sf.SAEFeaturesConfig(**{**TINY.__dict__, "capture": "nope"}), "quick")


def test_quick_preset_builds_a_valid_config() -> None:
    from experiments.common import preset_path
    from introspect_mi import config as cfg

    config = cfg.build(sf.SAEFeaturesConfig, cfg.load_preset(preset_path("quick"), "sae_features"))
    assert set(config.subjects) <= {"untrained", "self"} and all(0 <= layer < 30 for layer in config.layers)  # SmolLM2: 30 layers
    assert config.eval_prompts < config.train_items * 6 * (1 + config.hypotheticals_per_item)


def test_a_rerun_with_other_settings_is_refused_and_keeps_the_results(experiment) -> None:
    root, _ = experiment
    out = root / "runs" / f"mech-{STUDY}" / "sae"
    before = {p: p.read_bytes() for p in (out / "config.json", out / "metrics.json")}
    with pytest.raises(UserError, match="taken by a different config .*differs in: top_features"):
        sf.main_sae_features(sf.SAEFeaturesConfig(**{**TINY.__dict__, "top_features": 2}), "quick")
    assert {p: p.read_bytes() for p in before} == before


def test_an_incomplete_store_is_not_analysed(experiment) -> None:
    root, _ = experiment
    partial = root / "runs" / "cap-partial"
    shutil.copytree(root / "runs" / f"mech-{STUDY}" / "untrained" / "store", partial / "untrained" / "store")
    shutil.copy(root / "runs" / f"mech-{STUDY}" / "config.json", partial / "config.json")
    info = partial / "untrained" / "store" / "store.json"
    info.write_text(json.dumps({**json.loads(info.read_text()), "n_records": 10_000}))  # as if the capture were killed mid-way
    with pytest.raises(UserError, match="the capture of untrained is incomplete"):
        sf.main_sae_features(sf.SAEFeaturesConfig(**{**TINY.__dict__, "capture": "cap-partial", "subjects": ("untrained",)}), "quick")
    assert not (partial / "sae").exists()
