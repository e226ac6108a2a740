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

ROOT = Path(__file__).resolve().parents[2]
TOY = ["--train-tasks", "countries", "mcq_arithmetic", "--held-out-tasks", "animals", "mcq_general",
       "--properties", "first_character", "among_a_or_c", "--train-items", "6", "--per-cell", "6", "--eval-items", "4",
       "--epochs", "1", "--calibration-items", "2", "--calibration-samples", "2", "--behaviour-change-items", "8",
       "--n-boot", "100", "--name", "toy"]


def study(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INTROSPECT_MI_RUNS": str(tmp_path / "runs"), "INTROSPECT_MI_CHECKPOINTS": str(tmp_path / "checkpoints"),
           "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "experiments.behavioral", "--preset", "quick", *TOY], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


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
    assert set(metrics["training_tasks"]) == {metrics["comparison"]["first"], next(iter(metrics["predictors"]))}
    assert metrics["training_tasks_comparison"]["first"] == metrics["comparison"]["first"]  # self-trained vs untrained
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
