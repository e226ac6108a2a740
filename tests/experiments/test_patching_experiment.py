"""`python -m experiments.patching`: the preset, its errors, and (slow) a run end to end on the
hand-made tiny study after its capture."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from experiments.common import preset_path
from experiments.patching import PatchingConfig, build_parser, patching_layers
from introspect_mi import config as cfg
from introspect_mi.errors import UserError
from introspect_mi.properties import get_property
from introspect_mi.store import RunDir
from introspect_mi.tasks import get_task
from tests.experiments.conftest import ROOT, TinyStudy

TINY_ARGS = ("--tasks", "animals", "myopic_reward", "--properties", "first_character", "ethical_stance", "--pair-candidates", "4",
             "--min-gap", "0", "--group-layer-stride", "2", "--exact-cells", "4", "--steer-task", "animals", "--steer-property", "first_character", "--steer-items", "4",
             "--steer-scales", "1", "4", "--n-random", "1", "--concepts", "cat", "dog", "--baseline-words", "fox", "owl",
             "--concept-items", "2")

BENCH_PRESET = """[patching]
study = "tiny"
capture = "mech-patch"
tasks = ["animals", "myopic_reward"]
properties = ["first_character", "ethical_stance"]
steer_task = "animals"
steer_property = "first_character"
steer_items = 4
steer_scales = [1.0, 4.0]
n_random = 1
concepts = ["cat", "dog"]
baseline_words = ["fox", "owl"]
concept_items = 2
"""
"""TINY_ARGS' steering and concept settings as a preset for the steering benchmark."""


def test_quick_preset_names_resolve() -> None:
    c = cfg.build(PatchingConfig, cfg.load_preset(preset_path("quick"), "patching"))
    for task in c.tasks:
        get_task(task)
    for prop in c.properties:
        get_property(prop)
    assert get_property(c.steer_property).applies_to(get_task(c.steer_task).spec)
    concept = get_property(c.concept_property)
    assert concept.applies_to(get_task(c.concept_task).spec)
    assert all(concept.extract(w) for w in c.concepts)
    assert c.steer_position in ("p_last", "final") and 0 <= c.steer_depth <= 1 and 0 <= c.concept_depth <= 1


def test_help_comes_from_the_field_docstrings() -> None:
    text = build_parser().format_help()
    assert "--layer-stride" in text and "Patch every k-th layer" in text and "--n-random" in text


def test_patching_layers_keep_the_last() -> None:
    assert patching_layers(7, 3) == [0, 3, 6] and patching_layers(8, 3) == [0, 3, 6, 7] and patching_layers(3, 1) == [0, 1, 2]
    with pytest.raises(UserError, match="layer_stride"):
        patching_layers(8, 0)


def test_a_missing_capture_names_the_capture_command(tiny_study) -> None:
    out = tiny_study.run("patching", "--capture", "no-such-capture")
    assert out.returncode == 2 and "error: no capture run 'no-such-capture'" in out.stderr
    assert "python -m experiments.capture --preset quick" in out.stderr and "Traceback" not in out.stderr


@pytest.fixture(scope="module")
def two_value_study(tiny_study: TinyStudy, tmp_path_factory: pytest.TempPathFactory) -> TinyStudy:
    """The tiny study with its animals answers alternating "cat …" / "dog …" (first characters c and
    d, three items each): steering needs two values with two items or more."""
    root = tmp_path_factory.mktemp("two_value_study")
    study = TinyStudy(tiny_study.name, root / "runs", root / "checkpoints")
    shutil.copytree(tiny_study.runs / tiny_study.name, study.runs / tiny_study.name)
    shutil.copytree(tiny_study.checkpoints, study.checkpoints)
    run = RunDir(study.runs / study.name)
    for k in range(3):
        rows = run.read_table(f"rows_{k}")
        animal = rows["task"] == "animals"
        ids = sorted(rows.loc[animal, "item_id"].unique())
        answer = rows["item_id"].map({i: ("cat dog fox" if n % 2 else "dog cat fox") for n, i in enumerate(ids)})
        rows.loc[animal, "object_answer"] = answer[animal]
        first = animal & (rows["property"] == "first_character")
        rows.loc[first, "object_value"] = answer[first].str[0]
        run.write_table(f"rows_{k}", rows)
    return study


@pytest.mark.slow
def test_patching_end_to_end_on_the_tiny_study(two_value_study: TinyStudy) -> None:
    tiny_study = two_value_study
    capture = tiny_study.run("capture", "--subjects", "untrained", "self", "--name", "mech-patch", "--explorer-items", "2")
    assert capture.returncode == 0, capture.stderr[-3000:]
    missing = tiny_study.run("patching", "--capture", "mech-patch", "--subjects", "cross", *TINY_ARGS)
    assert missing.returncode == 2 and "no activation store for cross" in missing.stderr and "--subjects cross" in missing.stderr
    out = tiny_study.run("patching", "--capture", "mech-patch", "--subjects", "untrained", "self", *TINY_ARGS)
    assert out.returncode == 0, out.stderr[-3000:]
    folder = tiny_study.runs / "mech-patch" / "patching"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics["subjects"]) == {"untrained", "self"}
    for m in metrics["subjects"].values():
        assert m["patching"]["pairs"] >= 1 and m["steering"]["pattern"] in ("P-state", "question shortcut", "none", "mixed")
        p = m["patching"]
        assert p["contrasts"] and {r["status"] for r in p["contrasts"]} == {"confirmatory", "exploratory"}
        assert all(r["layer"] in p["contrast_layers"] for r in p["contrasts"]) and p["cost"]["pairs"] == p["pairs"]
        assert {r["experiment"] for r in p["layer_summary"]} == {"A", "B", "B-control", "C", "C-control"}
        assert all(len(r["values"]) == p["pairs"] for r in p["layer_summary"]) and len(p["attribution"]["per_pair"]) == p["pairs"]
        s = m["steering"]
        scales = sorted({r["scale"] for r in s["sweep"]})
        assert scales[:2] == [1.0, 4.0] and s["scale"] in scales and len(s["sentences"]) == 3
        last_random = next(r for r in s["sweep"] if r["scale"] == scales[-1] and r["vector"] == "random")
        assert scales[-1] == 64.0 or last_random["object_changed"] >= 0.5  # pushed until a random vector matters
        assert s["residual_norm"] > 0 and s["dose"] == pytest.approx(s["scale"] * np.mean(list(s["vector_norms"].values())) / s["residual_norm"])
    for table in ("pairs", "cells", "grid", "exact", "steering_sweep", "steering", "steering_summary", "concepts", "concept_summary"):
        assert (folder / f"{table}.jsonl").stat().st_size > 0
    report = (folder / "report.html").read_text()
    assert report.count('<div id="fig-') >= 8 and "Pattern:" in report and "median residual norm at the site" in report
    # the explorer of the capture run links the report
    from introspect_mi.explorer.page import report_links

    assert ("patching/report.html" in {href for href, _ in report_links(tiny_study.runs / "mech-patch", "")})
    # a subject whose behaviour gives the steering cell no two values skips D and says why; the rest runs
    skip = tiny_study.run("patching", "--capture", "mech-patch", "--subjects", "self", *TINY_ARGS, "--steer-task", "myopic_reward",
                          "--name", "patching-no-steer")
    assert skip.returncode == 0, skip.stderr[-3000:]
    skipped = tiny_study.runs / "mech-patch" / "patching-no-steer"
    steering = json.loads((skipped / "metrics.json").read_text())["subjects"]["self"]["steering"]
    assert set(steering) == {"skipped"} and "myopic_reward / first_character" in steering["skipped"]
    assert "self: skipped — steering needs two values" in (skipped / "report.html").read_text()
    assert (skipped / "concept_summary.jsonl").stat().st_size > 0 and not (skipped / "steering.jsonl").exists()
    # a stage's bad input names the subject it failed on (several run in one command)
    bad = tiny_study.run("patching", "--capture", "mech-patch", "--subjects", "self", *TINY_ARGS, "--tasks", "animals",
                         "--properties", "ethical_stance", "--name", "patching-bad")
    assert bad.returncode == 2 and "error: self: no token-aligned pair of items" in bad.stderr and "Traceback" not in bad.stderr
    # `python -m experiments.benchmark steering`: D and E entering at the steered layer report what the plain path does
    preset = tiny_study.runs / "bench.toml"
    preset.write_text(BENCH_PRESET)
    bench = subprocess.run([sys.executable, "-m", "experiments.benchmark", "steering", "--preset", str(preset)], cwd=ROOT,
                           env=tiny_study.env(), capture_output=True, text=True, timeout=600)
    assert bench.returncode == 0, bench.stderr[-3000:]
    got = json.loads((tiny_study.runs / "benchmarks" / "steering.json").read_text())
    assert got["answers_compared"] > 20 and got["answers_equal"] == 1.0 and got["same_scale"]
    assert got["concept_logprob_max_abs_diff"] < 1e-4 and got["concept_reports_equal"] == 1.0
    assert got["speedup"] == pytest.approx(sum(got["seconds_plain"].values()) / sum(got["seconds_joined"].values()), rel=0.05)
