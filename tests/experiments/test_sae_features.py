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
from introspect_mi import evaluation as ev
from introspect_mi.errors import UserError
from introspect_mi.multiplicity import CONFIRMATORY, EXPLORATORY, holm
from introspect_mi.saes.analysis import Attribution
from introspect_mi.saes.controls import top_attributed
from introspect_mi.store import RunDir
from tests.test_models import make_adapter

STUDY = "study-tiny"
ANSWERS = ("dog cat owl", "emu ant bee", "fox yak gnu")


# --- pieces ------------------------------------------------------------------------------------


def effect_items(top_shift: dict[tuple[str, int], float]) -> pd.DataFrame:
    """Per-prompt ablation rows: 10 items, clean logit difference 1, top-k lowers it by `top_shift[subject, layer]`, random draws by 0."""
    rows = []
    for (subject, layer), shift in top_shift.items():
        for record in range(10):
            base = {"subject": subject, "record": record, "item_id": f"i{record}", "compliance": 1.0, "accuracy": 1.0, "logit": 1.0}
            rows.append({**base, "layer": None, "condition": "clean", "draw": None, "logit_difference": 1.0})
            rows.append({**base, "layer": layer, "condition": "top-k", "draw": None, "logit_difference": 1.0 - shift * (1 + record % 3)})
            for d in range(2):
                rows.append({**base, "layer": layer, "condition": "matched random", "draw": d, "logit_difference": 1.0})
    table = pd.DataFrame(rows)
    for m in ("logit_difference", "compliance", "accuracy", "logit"):
        table[f"d_{m}"] = table[m] - 1.0
    return table


def test_only_the_logit_difference_is_confirmatory_and_holm_adjusted_within_its_family() -> None:
    shifts = {("untrained", 8): 1.0, ("untrained", 16): 0.0, ("self", 8): 0.5}
    config = sf.SAEFeaturesConfig(n_boot=200, sign_flips=1000)
    table = sf.ablation_effects(effect_items(shifts), config)
    confirmatory = table[table["family"] == CONFIRMATORY]
    assert (confirmatory["measure"] == "logit_difference").all() and len(confirmatory) == len(shifts)
    assert table.loc[table["family"] == EXPLORATORY, "p_holm"].isna().all()
    assert np.allclose(confirmatory["p_holm"], holm(confirmatory["p_value"].to_numpy()))
    assert (confirmatory["p_holm"] >= confirmatory["p_value"]).all()


def test_ablation_conditions_ablate_each_fold_with_the_other_folds_top_k_and_its_matched_partners() -> None:
    gen = torch.Generator().manual_seed(0)
    acts = [torch.rand(3, 40, generator=gen) * (torch.rand(3, 40, generator=gen) < 0.4) for _ in range(6)]
    attr = [a * torch.randn(3, 40, generator=gen) for a in acts]
    attrs = {5: Attribution([[0, 1, 2]] * 6, acts, attr, torch.zeros(6))}
    sae = SimpleNamespace(sae="the sae")
    fold = np.array([0, 1, 0, 1, 0, 1])
    config = sf.SAEFeaturesConfig(ablate_k=3, random_draws=2, match_bins=2)
    conditions, info, matching = sf.ablation_conditions({5: sae}, attrs, fold, config)
    assert list(conditions) == ["clean", "L5 top-k", "L5 matched random 0", "L5 matched random 1"] and conditions["clean"] == []
    top = conditions["L5 top-k"]
    for f in (0, 1):
        assert top[f].rows == frozenset(np.flatnonzero(fold == f).tolist())
        assert top[f].features.tolist() == top_attributed(attr, np.flatnonzero(fold == 1 - f), 3).tolist()  # chosen out of fold
        for d in range(2):
            partners = conditions[f"L5 matched random {d}"][f]
            assert partners.rows == top[f].rows and len(partners.features) == 3
            assert not set(partners.features.tolist()) & set(top[0].features.tolist() + top[1].features.tolist())
    assert info["L5 matched random 1"]["draw"] == 1 and info["L5 top-k"]["condition"] == "top-k"
    assert 0 <= matching["L5"]["exact_share"] <= 1


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
            answer = ANSWERS[i // len(config["properties"]) % len(ANSWERS)]  # per item: properties with several values
            value = p.prop.extract(answer, p.item.target)
            rows.append({"item_id": p.item.item_id, "task": p.spec.name, "property": p.prop.name, "object_answer": answer,
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
    effects = metrics["ablation_effects"]
    assert len(effects) == 2 * 2 * 3  # subjects × layers × measures
    assert {e["family"] for k, e in effects.items() if k.endswith("logit_difference")} == {"confirmatory"}
    assert {e["family"] for k, e in effects.items() if not k.endswith("logit_difference")} == {"exploratory"}
    assert all(e["n_items"] >= 1 and e["ci_low"] <= e["top_minus_random"] <= e["ci_high"] for e in effects.values())
    for key, a in metrics["attribution"].items():
        assert 0 < a["error_share"] < 1 and a["relative_error"] > 0 and a["family"] == "exploratory"
    assert {"untrained L0 final", "self L2 final"} <= set(metrics["overlap"])  # P's last tokens here: no other item ends in the same one
    assert all(o["n"] > 0 and o["family"] == "exploratory" for o in metrics["overlap"].values())
    assert metrics["families"]["confirmatory"].startswith("top-k")
    for subject in ("untrained", "self"):
        assert metrics["checks"][subject]["max_abs_clean_vs_attribution_logit_difference"] < 1e-3
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
    for key in ("overlap", "attribution", "ablation", "ablation_effects", "differential_top"):
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
