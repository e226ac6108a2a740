"""`python -m experiments.behavioral` (the whole study) end to end on the embedded models at toy
sizes: every stage runs, the metrics hold what the README reads, the report opens in headless
Chromium, and a rerun reuses everything.
(Tiny random models cannot stand in: their object-level answers are never compliant, so there
is no self data to train on.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.behavioral_endpoint import KEY, PRIMARY_ENDPOINT
from introspect_mi.timing import TIMINGS_FILE, read_invocations
from tests.prepared import link_prepared_models

ROOT = Path(__file__).resolve().parents[2]
TOY = ["--train-tasks", "countries", "mcq_arithmetic", "--held-out-tasks", "animals", "mcq_general",
       "--properties", "first_character", "among_a_or_c", "--train-items", "6", "--per-cell", "6", "--eval-items", "4",
       "--epochs", "1", "--calibration-items", "2", "--calibration-samples", "2", "--behaviour-change-items", "8",
       "--n-boot", "100", "--name", "toy"]


def study(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    link_prepared_models(tmp_path / "checkpoints")  # not converted again (tests/prepared.py)
    env = {**os.environ, "INTROSPECT_MI_RUNS": str(tmp_path / "runs"), "INTROSPECT_MI_CHECKPOINTS": str(tmp_path / "checkpoints"),
           "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "experiments.behavioral", "--preset", "quick", *TOY], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def assert_primary_endpoint(e: dict, metrics: dict, stdout: str, run: Path) -> None:
    """The declared endpoint is stored, printed first, split as planned, and in the report (behavioral_endpoint.py)."""
    assert e["definition"] == PRIMARY_ENDPOINT and e["second"] in metrics["predictors"] and e["first"] in metrics["predictors"]
    n_excluded = sum(c["n_pairs"] for c in e["excluded_cells"])
    assert e["primary"]["n_pairs"] + n_excluded == e["all_cells"]["n_pairs"] > 0  # the rule only removes whole cells
    assert all(c["mode_baseline"] > 0.7 and c["reason"] for c in e["excluded_cells"])
    for name, parts in (("self_finetune", ("changed", "unchanged")), ("m2_behaviour", ("agrees", "differs"))):
        assert sum(e["splits"][name][part]["n_pairs"] for part in parts) == e["primary"]["n_pairs"]
    assert set(e["others"]) == set(metrics["predictors"]) - set(list(metrics["predictors"])[:3])  # the input-only predictors
    if e["primary"]["n_pairs"]:
        assert {"diff", "diff_ci_low", "diff_ci_high", "p_value", "mdd", "macro_diff"} <= set(e["primary"])
    assert all({"noise_floor", "mad_sampled_ci_low", "mad_exact_ci_high"} <= set(cal) for cal in metrics["calibration"].values())
    assert stdout.index("PRIMARY ENDPOINT") < stdout.index("PROMPT REGIME") < stdout.index("predictor → target")
    regime = metrics["prompt_regime"]  # issue 14 point 3: 0-shot vs k-shot behaviour of all four models
    assert len(regime["agreement"]) == 4 and {a["n_pairs"] for a in regime["agreement"].values()} == {8}  # 4 items × 2 tasks
    assert regime["zero_shot_truth"]["first"] == e["first"] and "n_pairs" in regime["untrained_prompt_effect"]
    report = (run / "report.html").read_text()
    assert report.index("Primary endpoint") < report.index("Exploratory: Accuracy vs mode baseline")
    assert "Exploratory: Prompt regime" in report and "PRIMARY: self − cross, excluded cells left out" in report and "Per task × property" in report and "noise_floor" in report


def without_finetune_state(metrics: dict) -> dict:
    """The metrics minus what says whether a finetune ran now or was reused."""
    return {**metrics, "finetunes": {k: {f: v for f, v in ft.items() if f != "trained_now"} for k, ft in metrics["finetunes"].items()}}


@pytest.mark.slow
def test_the_toy_study_runs_every_stage_and_a_rerun_reuses_them(tmp_path: Path, browser) -> None:
    first = study(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "runs" / "toy"
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["predictors"]) == 5 and len(metrics["calibration"]) == 3  # + the two input-only predictors (no calibration)
    endpoint = metrics[KEY]
    assert set(metrics["training_tasks"]) == {endpoint["first"], next(iter(metrics["predictors"]))}
    assert metrics["training_tasks_comparison"]["first"] == endpoint["first"]  # self-trained vs untrained, paired
    assert metrics["training_tasks_comparison"]["n_pairs"] > 0 and "p_value" in metrics["training_tasks_comparison"]
    assert_primary_endpoint(endpoint, metrics, first.stdout, run)
    for predictors in (metrics["predictors"], metrics["training_tasks"]):
        assert all(p["overall"]["n_items"] > 0 for p in predictors.values())
    assert {ft for ft in metrics["finetunes"]} == {"self", "cross", "behaviour_change"}
    assert all(ft["trained_now"] for ft in metrics["finetunes"].values())
    assert [row["n_items"] for row in metrics["changed"]] == [8, 8, 8]  # held-out items ×2, training tasks' val items
    assert "on the training tasks' val items" in first.stdout and (run / "report.html").stat().st_size > 10_000
    for name in ("self", "cross", "behaviour_change"):
        assert (tmp_path / "checkpoints" / "adapters" / "toy" / name / "adapter_model.safetensors").exists()

    page = browser.new_page()  # the report opens in a browser and Plotly draws every figure
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((run / "report.html").as_uri())
    figures = page.locator("div[id^='fig-']").count()
    page.wait_for_function(f"() => document.querySelectorAll('.main-svg').length >= {figures}", timeout=15_000)
    assert figures >= 6 and errors == []
    page.close()

    second = study(tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "zero model calls" in second.stdout and "reused the finished adapter" in second.stdout
    again = json.loads((run / "metrics.json").read_text())
    assert not any(ft["trained_now"] for ft in again["finetunes"].values())
    assert without_finetune_state(again) == without_finetune_state(metrics)
    runs = read_invocations(run / TIMINGS_FILE)  # each invocation's stage times (issue 18), the first one's finetunes dominant
    assert len(runs) == 2 and [s["stage"] for s in runs[0]["stages"]] == [s["stage"] for s in runs[1]["stages"]]
    first_times = {s["stage"]: s["seconds"] for s in runs[0]["stages"]}
    assert len(first_times) == 11 and all(s["rss_peak_mb"] > 0 for s in runs[0]["stages"])
    assert first_times["self finetune (every round)"] > 5 * {s["stage"]: s["seconds"] for s in runs[1]["stages"]}["self finetune (every round)"]
