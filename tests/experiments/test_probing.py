"""The probing experiment's wiring on a tiny synthetic activation store with planted signals
(no model): which records and label columns each experiment reads, that C applies A's probes
to B's vectors, D's top-k restriction, E's features, F's label source; and the CLI end to end.

The store (d=16, 4 layers) plants, with orthonormal directions per value:
- object@p_last: the object value's direction u at layers 1-3;
- hypothetical@final: the object answer's first token (z) and M2's value (q) at layer 1, u at
  layer 2 (shared with the object run: transfer works), another direction w at layer 3
  (transfer fails, B still reads it);
- P's tokens: a token naming the value for second_character; for ethical_stance the naming
  token sits after P (so E cannot see it).
The hypothetical records' own prediction (`hypothetical_value`) is random: reading it instead
of `object_value` would score at chance.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from experiments.probing import Planner, ProbingConfig, layers_of, run_cells, subject_labels
from introspect_mi import config as cfg
from introspect_mi.actstore import ActivationStore, StoreWriter, tensor_key
from introspect_mi.places import Place, PlaceKind

ROOT = Path(__file__).resolve().parents[2]
D, LAYERS, STRENGTH = 16, 4, 4.0
CHARS, STANCES = ("a", "b", "c"), ("true", "false")
IDENTITIES = ("lion", "cat", "dog", "eel")  # first answer tokens: 24, 12, 8, 4 items
CONFIG = ProbingConfig(subjects=("untrained",), c_grid=(0.1,), folds=3, permutations=9, max_iter=60, tol=1e-3, n_boot=100, item_folds=4,
                       min_class_items=3, identity_min_items=3, top_k=2)


def _items() -> list[dict]:
    """48 second_character items on two tasks (two without a compliant answer), 20 ethical_stance items."""
    rng = np.random.default_rng(0)
    items = []
    for i in range(48):
        value = None if i in (5, 17) else CHARS[i % 3]
        items.append({"item_id": f"w{i}", "task": "animals" if i < 24 else "english_words", "property": "second_character",
                      "value": value, "identity": IDENTITIES[0 if i < 24 else 1 if i < 36 else 2 if i < 44 else 3],
                      "m2": CHARS[(i // 3) % 3], "hyp": rng.choice(CHARS)})
    for i in range(20):
        items.append({"item_id": f"e{i}", "task": "myopic_reward", "property": "ethical_stance", "value": STANCES[i % 2],
                      "identity": "A", "m2": STANCES[(i // 2) % 2], "hyp": rng.choice(STANCES)})
    return items


def _directions() -> dict[str, np.ndarray]:
    names = [f"u:{v}" for v in CHARS + STANCES] + [f"w:{v}" for v in CHARS + STANCES] + [f"z:{t}" for t in (*IDENTITIES, "A")] + [f"q:{v}" for v in CHARS + STANCES]
    basis = np.linalg.qr(np.random.default_rng(1).normal(size=(D, D)))[0].T
    vectors = np.concatenate([basis, -basis])  # 32 orthogonal-or-opposite unit vectors for 20 names
    return {n: vectors[i] for i, n in enumerate(names)}


def write_store(folder: Path, identity: dict[str, str] | None = None, strength: float = STRENGTH) -> list[dict]:
    """The planted store (signals at `strength`; 0: noise only); `identity`: the study state it claims to be captured from (as a capture records it)."""
    items, u = _items(), _directions()
    rng = np.random.default_rng(2)
    places = [Place(PlaceKind.RESID_POST, layer) for layer in range(LAYERS)]
    info = {"places": [str(p) for p in places], "positions": ["p_last", "final", "answer_first"], "dtype": "float32",
            "n_layers": LAYERS, "d_model": D, "n_records": 2 * len(items), **({"identity": identity} if identity else {})}
    writer = StoreWriter(folder, info, shard_records=50)

    def add(record: dict, planted: dict[tuple[int, str], np.ndarray]) -> None:
        vectors = {}
        for place in places:
            for position in info["positions"]:
                x = rng.normal(size=D) + strength * planted.get((place.layer, position), 0)
                vectors[tensor_key(place, position)] = torch.tensor(x, dtype=torch.float32)[None]
        writer.add({"record": writer.done + len(writer._records), **record}, vectors)

    for it in items:
        v, word = it["value"], it["identity"]
        named = f"tok_{v}"
        p = ["P:", "w", named] if it["property"] == "second_character" else ["P:", "w", "w"]
        tokens = ["<s>", *p, "?", named if it["property"] == "ethical_stance" else "x", ">"]
        plant = {} if v is None else {(layer, "p_last"): u[f"u:{v}"] for layer in (1, 2, 3)}
        add({"item_id": it["item_id"], "kind": "object", "task": it["task"], "property": None, "object_answer": f"{word} more",
             "values": {it["property"]: v}, "tokens": tokens, "p_tokens": [1, 2, 3], "answer_token": word, "answer_token_id": 7,
             "positions": {"p_last": [3], "final": [6], "answer_first": [7]}}, plant)
    for it in items:
        v = it["value"]
        plant = {(1, "final"): u[f"z:{it['identity']}"] + u[f"q:{it['m2']}"]}
        if v is not None:
            plant.update({(2, "final"): u[f"u:{v}"], (3, "final"): u[f"w:{v}"]})
        add({"item_id": it["item_id"], "kind": "hypothetical", "task": it["task"], "property": it["property"],
             "object_answer": f"{it['identity']} more", "object_value": v, "hypothetical_value": it["hyp"], "correct": False,
             "tokens": ["<s>", "P:", "w", "x", "?", ">"], "p_tokens": [1, 2, 3], "answer_token": "q", "answer_token_id": 8,
             "positions": {"p_last": [3], "final": [5], "answer_first": [6]}}, plant)
    writer.flush()
    return items


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, list[dict], list[dict]]:
    folder = tmp_path_factory.mktemp("cap") / "untrained" / "store"
    items = write_store(folder)
    stores = {"untrained": ActivationStore.open(folder)}
    m2_values = {it["item_id"]: {it["property"]: it["m2"]} for it in items}
    skipped: list[dict] = []
    labels = subject_labels(stores, CONFIG, skipped)["untrained"]
    cells = [c for prop in ("second_character", "ethical_stance") for c in Planner(labels, prop, CONFIG, skipped).cells(m2_values)]
    table, curves, _ = run_cells(cells, stores, {"untrained": layers_of(LAYERS, 1)}, CONFIG, progress=False)
    return table, items, skipped, curves


def _acc(table: pd.DataFrame, **where) -> pd.Series:
    rows = table
    for column, value in where.items():
        rows = rows[rows[column] == value]
    return rows.set_index("layer")["acc"]


def test_a_reads_the_object_runs_own_answer_values(results) -> None:
    table, _, _, _ = results
    a = _acc(table, experiment="A", property="second_character", split="items")
    assert a[0] < 0.6 and min(a[1], a[2], a[3]) > 0.9
    row = table[(table["experiment"] == "A") & (table["property"] == "second_character") & (table["split"] == "items")].iloc[0]
    assert (row["n_test"], row["n_classes"], row["train_run"]) == (46, 3, "object@p_last")  # the two None values dropped


def test_b_reads_object_value_not_the_hypothetical_answer(results) -> None:
    table, _, _, _ = results
    b = _acc(table, experiment="B", property="second_character", split="items", test_run="hypothetical@final", target="property")
    assert b[0] < 0.6 and b[1] < 0.6 and b[2] > 0.9 and b[3] > 0.9
    assert _acc(table, experiment="B", property="second_character", split="items", test_run="hypothetical@p_last", target="property").max() < 0.6
    # the model's own self-prediction (random in this store, planted nowhere) is B's second target: no layer decodes it
    assert _acc(table, experiment="B", property="second_character", split="items", test_run="hypothetical@final", target="prediction").max() < 0.6


def test_b_is_also_scored_on_the_items_whose_self_prediction_was_wrong(results) -> None:
    """Every hypothetical record of the planted store has correct = False, so the wrong-items score is the curve's
    own (an identity); the self-prediction target is exploratory and has no wrong-items score."""
    _, _, _, curves = results
    b = curves[(curves["experiment"] == "B") & (curves["split"] == "items") & (curves["property"] == "second_character")].set_index(["test_run", "target"])
    final = b.loc[("hypothetical@final", "property")]
    assert final["wrong_n"] == final["n_test"] and final["wrong_acc"] == pytest.approx(final["nested_acc"]) and final["wrong_p"] < 0.05
    assert final["family"] == "confirmatory"
    prediction = b.loc[("hypothetical@final", "prediction")]
    assert prediction["family"] == "exploratory" and pd.isna(prediction["wrong_n"])


def test_c_applies_a_probe_to_b_vectors(results) -> None:
    table, _, _, _ = results
    c = _acc(table, experiment="C", property="second_character", test_run="hypothetical@final")
    assert c[2] > 0.9  # the shared direction transfers
    assert c[3] < 0.6  # B reads layer 3 (above), but with another direction: A's probe does not
    row = table[table["experiment"] == "C"].iloc[0]
    assert row["train_run"] == "object@p_last" and set(table.loc[table["experiment"] == "C", "split"]) == {"items"}


def test_d_decodes_the_top_k_first_answer_tokens(results) -> None:
    table, _, skipped, _ = results
    d = table[(table["experiment"] == "D") & (table["property"] == "second_character")]
    assert set(d["n_classes"]) == {2} and set(d["n_test"]) == {34}  # lion (24 items) and cat (12) minus 2 without a value
    assert d.set_index("layer")["acc"][1] > 0.9 and d.set_index("layer")["acc"][2] < 0.8
    assert {"experiment": "D", "subject": "untrained", "property": "ethical_stance",
            "reason": "fewer than two label values on ≥3 items each (20 items kept)"} in skipped  # one answer token, "A"


def test_e_reads_the_bag_of_ps_tokens_only(results) -> None:
    table, _, _, _ = results
    e = table[(table["experiment"] == "E") & (table["split"] == "items")].set_index("property")
    assert e.loc["second_character", "acc"] == 1.0  # P holds the token naming the value
    assert e.loc["ethical_stance", "acc"] < 0.75  # the naming token sits after P
    assert e["layer"].isna().all() and set(e["train_run"]) == {"input"}


def test_by_task_split_only_where_a_property_spans_two_tasks(results) -> None:
    table, _, _, _ = results
    tasks = table[table["split"] == "tasks"]
    assert set(tasks["property"]) == {"second_character"} and set(tasks["experiment"]) == {"A", "B", "E"}
    assert set(tasks["n_test"]) == {46}  # both tasks held out in turn


def test_f_labels_come_from_m2_and_from_the_model_itself(results) -> None:
    table, items, _, _ = results
    f = table[(table["experiment"] == "F") & (table["property"] == "second_character") & (table["test_run"] == "hypothetical@final")]
    m2, own = f[f["target"] == "m2"].set_index("layer")["acc"], f[f["target"] == "own"].set_index("layer")["acc"]
    assert m2[1] > 0.9 and own[1] < 0.6  # layer 1 holds M2's value
    assert own[3] > 0.9 and m2[3] < 0.7  # layer 3 holds the model's own
    kept = [it for it in items if it["property"] == "second_character" and it["value"] is not None]
    agreement = np.mean([it["value"] == it["m2"] for it in kept])
    assert 0.2 < agreement < 0.5 and list(f["agreement"]) == pytest.approx([agreement] * len(f))


def _m1_vs_m2(tmp_path: Path, cross_strength: float) -> pd.DataFrame:
    """B probes on a planted self-trained M1 store and a cross-trained M2 store with signals at `cross_strength`."""
    stores = {}
    for label, strength in (("self", STRENGTH), ("cross", cross_strength)):
        write_store(tmp_path / label / "store", strength=strength)
        stores[label] = ActivationStore.open(tmp_path / label / "store")
    config = dataclasses.replace(CONFIG, subjects=("self", "cross"), experiments=("B",), permutations=0)
    skipped: list[dict] = []
    cells = [c for lab in subject_labels(stores, config, skipped).values() for c in Planner(lab, "second_character", config, skipped).cells(None)]
    return run_cells(cells, stores, {s: layers_of(LAYERS, 1) for s in stores}, config, progress=False).m1_vs_m2.set_index("run")


def test_m1_vs_m2_finds_the_state_only_m1_carries(tmp_path: Path) -> None:
    """M2's store is noise: at the final token (signal planted in M1 only) self beats cross on the same 46 items, Holm p < 0.01;
    at P's last token (nothing planted in either; the same noise in both) nothing is claimed."""
    table = _m1_vs_m2(tmp_path, 0.0)
    final, p_last = table.loc["hypothetical@final"], table.loc["hypothetical@p_last"]
    assert final["n_items"] == 46 and final["self_acc"] > 0.9 and final["cross_acc"] < 0.6
    assert final["diff_lo"] > 0.3 and final["p_holm"] < 0.01 and final["family"] == "confirmatory"
    assert p_last["p_holm"] > 0.05 and abs(p_last["diff"]) < 0.1


def test_m1_vs_m2_of_a_store_with_itself_is_zero(tmp_path: Path) -> None:
    """Identity: the same store as both subjects gives the same hits, difference 0 and p = 1 at every position."""
    table = _m1_vs_m2(tmp_path, STRENGTH)
    assert (table["diff"] == 0).all() and (table["only_self"] == 0).all() and (table["p_value"] == 1).all()


def test_forked_workers_give_the_same_bytes_as_one_process(tmp_path: Path) -> None:
    """The subject × layer groups may run in forked processes: every fit is seeded by its cell, so
    the tables do not depend on how many run at once."""
    folder = tmp_path / "untrained" / "store"
    items = write_store(folder)
    stores = {"untrained": ActivationStore.open(folder)}
    m2_values = {it["item_id"]: {it["property"]: it["m2"]} for it in items}
    labels = subject_labels(stores, CONFIG, [])["untrained"]
    cells = [c for prop in ("second_character", "ethical_stance") for c in Planner(labels, prop, CONFIG, []).cells(m2_values)]
    runs = [run_cells(cells, stores, {"untrained": layers_of(LAYERS, 1)}, dataclasses.replace(CONFIG, workers=w), progress=False)
            for w in (1, 2)]
    for one, forked in zip(*runs):
        pd.testing.assert_frame_equal(one, forked, check_exact=True)
    assert len(runs[0].table) > 20 and runs[0].table["layer"].nunique() > 1


def test_a_user_error_in_a_worker_reaches_the_caller_as_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A damaged store found by a forked worker is the same one-line error as in one process; any other
    error comes back with the worker's traceback, never a pool that waits forever."""
    from experiments import probing_fit
    from introspect_mi.errors import UserError

    folder = tmp_path / "untrained" / "store"
    items = write_store(folder)
    stores = {"untrained": ActivationStore.open(folder)}
    labels = subject_labels(stores, CONFIG, [])["untrained"]
    cells = Planner(labels, "second_character", CONFIG, []).cells({it["item_id"]: {it["property"]: it["m2"]} for it in items})

    def damaged(*_args: object) -> None:
        raise UserError("the store is damaged", "capture again")

    monkeypatch.setattr(probing_fit, "load_vectors", damaged)
    with pytest.raises(UserError, match="the store is damaged — capture again"):
        run_cells(cells, stores, {"untrained": layers_of(LAYERS, 1)}, dataclasses.replace(CONFIG, workers=2), progress=False)

    class Unpicklable(Exception):
        def __init__(self, a: str, b: str) -> None:
            super().__init__(f"{a} {b}")

    def broken(*_args: object) -> None:
        raise Unpicklable("not", "picklable")

    monkeypatch.setattr(probing_fit, "load_vectors", broken)  # would leave the pool waiting forever if sent as is
    with pytest.raises(RuntimeError, match="Unpicklable: not picklable"):
        run_cells(cells, stores, {"untrained": layers_of(LAYERS, 1)}, dataclasses.replace(CONFIG, workers=2), progress=False)


def test_every_cell_skipped_still_writes_metrics_report_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Too few items for any cell (here: each label value needs 100 items): the run still finishes, and its metrics,
    report and printout say no probe was fitted and list the skipped cells (it raised KeyError: 'subject')."""
    from experiments.probing_report import NO_FITS, print_summary, summary_metrics, write_probing_report
    from introspect_mi.store import RunDir

    folder = tmp_path / "untrained" / "store"
    write_store(folder)
    stores = {"untrained": ActivationStore.open(folder)}
    config = dataclasses.replace(CONFIG, min_class_items=100, identity_min_items=100, experiments=("A", "B", "C", "D", "E"))
    skipped: list[dict] = []
    labels = subject_labels(stores, config, skipped)["untrained"]
    cells = [c for prop in ("second_character", "ethical_stance") for c in Planner(labels, prop, config, skipped).cells(None)]
    assert cells == [] and skipped
    run = RunDir.create(tmp_path, "probing", {"probing": "all skipped"}, seed=0)
    table, curves, _ = run_cells(cells, stores, {"untrained": layers_of(LAYERS, 1)}, config, progress=False)
    run.write_table("results", table)
    run.write_table("curves", curves)
    timing = {"wall_s": 0.1, "cpu_s": 0.1, "load_average_1min_at_end": 0.0, "cpu_count": 1}
    metrics = summary_metrics(run.read_table("results"), run.read_table("curves"), skipped, {}, {"untrained": layers_of(LAYERS, 1)}, timing)
    assert metrics["n_fits"] == 0 and metrics["best"] == [] and metrics["onsets"] == [] and metrics["no_fits"] == NO_FITS
    assert metrics["skipped"] == skipped
    write_probing_report(run, json.loads(json.dumps(metrics)))
    print_summary(run, metrics)
    report = run.path("report.html").read_text()
    assert "no probe was fitted" in report and "Cells without enough data" in report
    assert "no probe was fitted" in capsys.readouterr().out


def _tiny_study(tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A finished tiny study `study-x` whose capture `cap` is the planted store of its untrained subject; the environment that finds them."""
    from experiments.behavioral_config import StudyConfig
    from experiments.mech import StudyView, capture_identity
    from introspect_mi import evaluation as ev
    from introspect_mi.store import RunDir

    env = {**os.environ, "INTROSPECT_MI_RUNS": str(tmp_path), "INTROSPECT_MI_CHECKPOINTS": str(tmp_path / "checkpoints"), "HF_HUB_OFFLINE": "1"}
    for key in ("INTROSPECT_MI_RUNS", "INTROSPECT_MI_CHECKPOINTS"):
        monkeypatch.setenv(key, env[key])
    study = StudyConfig(m1=str(tiny_llama_dir), held_out_tasks=("animals",), properties=("first_character",), eval_items=2)
    run = RunDir.create(tmp_path, "study-x", cfg.to_dict(study), seed=0)
    pairs = ev.make_pairs(ev.load_task_items(study.held_out_tasks, "val", study.eval_items, study.seed), study.properties)
    run.write_table("rows_0", ev.score_rows(pairs, {p.item.item_id: ["cat"] for p in pairs}, [["c"]] * len(pairs)))
    run.write_json("metrics.json", {})
    RunDir.create(tmp_path, "cap", {"capture": "planted"}, seed=0)
    view = StudyView("study-x")
    write_store(tmp_path / "cap" / "untrained" / "store", capture_identity(view, view.subject("untrained")))
    return env


def test_cli_writes_the_run_and_names_missing_subjects(tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end through the CLI on a finished tiny study whose capture is the planted store (no model runs: F is left out)."""
    env = _tiny_study(tiny_llama_dir, tmp_path, monkeypatch)
    args = ["--study", "study-x", "--capture", "cap", "--subjects", "untrained", "self", "--experiments", "A", "B", "C", "D", "E",
            "--properties", "second_character", "ethical_stance", "--c-grid", "0.1", "--n-boot", "50", "--layer-stride", "2", "--min-class-items", "3", "--item-folds", "3"]
    done = subprocess.run([sys.executable, "-m", "experiments.probing", *args], check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "missing subject self" in done.stdout and "python -m experiments.capture --preset quick" in done.stdout
    out = tmp_path / "cap" / "probing"
    table = pd.read_json(out / "results.jsonl", lines=True)
    assert set(table["layer"].dropna()) == {0, 2, 3} and set(table["experiment"]) == {"A", "B", "C", "D", "E"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["subjects"] == ["untrained"] and "self" in metrics["missing_subjects"]
    assert json.loads((out / "config.json").read_text())["layer_stride"] == 2
    report = (out / "report.html").read_text()
    assert report.count('<div id="fig-') == 5 and "the layer chosen in inner folds" in report


def test_benchmark_fits_the_same_tables_in_one_process_and_in_workers(tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m experiments.benchmark probing` on the tiny study: both runs, their ratio, tables equal, the result file."""
    import argparse

    from experiments import bench_probing

    _tiny_study(tiny_llama_dir, tmp_path, monkeypatch)
    preset = tmp_path / "bench.toml"
    preset.write_text('[probing]\nstudy = "study-x"\ncapture = "cap"\nsubjects = ["untrained"]\nexperiments = ["A", "B", "C", "D", "E"]\n'
                      'properties = ["second_character", "ethical_stance"]\nc_grid = [0.1]\nn_boot = 50\nmin_class_items = 3\nitem_folds = 3\n')
    got = bench_probing.run(argparse.Namespace(preset=str(preset), workers=2))
    assert got.tables_equal and got.workers == 2 and got.probes > 20
    assert got.seconds_one_process > 0 and got.seconds_workers > 0  # times rounded to 0.1 s, the ratio from the unrounded ones
    assert got.speedup == pytest.approx(got.seconds_one_process / got.seconds_workers, rel=0.05)
    assert json.loads((tmp_path / "benchmarks" / "probing.json").read_text())["tables_equal"] is True


def test_quick_and_paper_presets_build() -> None:
    from experiments.common import preset_path
    for preset in ("quick", "paper"):
        config = cfg.build(ProbingConfig, cfg.load_preset(preset_path(preset), "probing"))
        assert set(config.experiments) == {"A", "B", "C", "D", "E", "F"}
    assert layers_of(30, 4) == [0, 4, 8, 12, 16, 20, 24, 28, 29]


def test_curves_choose_the_layer_in_inner_folds_and_mark_families(results) -> None:
    table, _, _, curves = results
    b = curves[(curves["experiment"] == "B") & (curves["property"] == "second_character") & (curves["split"] == "items")
               & (curves["test_run"] == "hypothetical@final")].iloc[0]
    assert set(b["layers_chosen"]) <= {2, 3} and b["nested_acc"] > 0.9 and b["family"] == "confirmatory"
    assert b["p_value"] < 0.01 and b["p_holm"] >= b["p_value"]
    p_last = curves[(curves["experiment"] == "B") & (curves["test_run"] == "hypothetical@p_last") & (curves["property"] == "second_character")]
    assert (p_last["nested_acc"] < 0.7).all()  # nothing planted there: no layer choice lifts it
    assert set(curves.loc[curves["experiment"].isin(["C", "D", "F"]), "family"]) == {"exploratory"}
    assert set(curves.loc[curves["split"] == "tasks", "family"]) == {"exploratory"}
    e = table[table["experiment"] == "E"]
    assert set(e["C"]) <= set(CONFIG.input_c_grid) and e["layer"].isna().all()  # C chosen in inner folds, not --c-grid
    assert b["max_layer"] in (2, 3) and b["max_acc"] >= b["nested_acc"] and b["p_max"] == pytest.approx(1 / (1 + CONFIG.permutations))
    assert b["p_max_holm"] >= b["p_max"]
    transfer = curves[curves["experiment"] == "C"]
    assert transfer["p_max"].isna().all() and transfer["p_value"].notna().all()  # no permutation null for a transfer


def test_pooled_tasks_carry_the_per_task_majority_and_within_task_accuracy(results) -> None:
    table, _, _, _ = results
    a = table[(table["experiment"] == "A") & (table["property"] == "second_character") & (table["split"] == "items")]
    assert a["within_task"].map(lambda w: set(w) == {"animals", "english_words"}).all()
    assert (a["task_majority"] >= 0).all() and a["task_majority"].notna().all()
    one_task = table[(table["experiment"] == "A") & (table["property"] == "ethical_stance")]
    assert one_task["within_task"].isna().all()


def test_control_keys_are_ps_last_word_not_the_answer(tmp_path: Path) -> None:
    """The control task's key is read from P's tokens only: rewriting every object answer leaves the keys unchanged."""
    from types import SimpleNamespace

    from experiments.probing_plan import Labels
    from probes.controls import p_last_word

    folder = tmp_path / "untrained" / "store"
    write_store(folder)
    records = ActivationStore.open(folder).records
    keys = Labels.build("untrained", SimpleNamespace(records=records), {}, 4, 0).records["key"]
    assert list(keys) == [p_last_word(t, p) for t, p in zip(records["tokens"], records["p_tokens"])]
    changed = records.assign(object_answer=[f"other{i} answer" for i in range(len(records))])
    assert list(Labels.build("untrained", SimpleNamespace(records=changed), {}, 4, 0).records["key"]) == list(keys)


def test_d_onsets_sit_beside_nested_accuracies_not_maxima(results) -> None:
    from experiments.probing_report import onset_summary

    table, _, _, curves = results
    onset = onset_summary(table, curves).set_index("property").loc["second_character"]
    d = curves[curves["experiment"] == "D"].set_index("property").loc["second_character"]
    assert (onset["identity_onset"], onset["property_onset"]) == (1, 2)
    assert onset["identity_nested_acc"] == d["nested_acc"] and "identity_best_acc" not in onset
