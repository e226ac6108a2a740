"""`python -m experiments.behavioral evaluate` end to end on tiny random models (fast),
including the run-store guarantees: zero model calls on rerun, identical metrics, kill -9 resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def evaluate_args(target: Path, predictor: Path, limit: int = 6) -> list[str]:
    return ["evaluate", "--target", str(target), "--predictor", str(target), str(predictor),
            "--tasks", "animals", "myopic_reward", "--properties", "second_character", "ethical_stance",
            "--limit", str(limit), "--calibration-items", "4", "--calibration-samples", "3", "--n-boot", "200",
            "--batch-size", "8", "--name", "t"]


def run(args: list[str], runs: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INTROSPECT_MI_RUNS": str(runs), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "experiments.behavioral", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_rerun_makes_zero_model_calls_and_identical_metrics(tiny_llama_dir: Path, tiny_gemma_dir: Path, tmp_path: Path) -> None:
    first = run(evaluate_args(tiny_llama_dir, tiny_gemma_dir), tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    metrics = (tmp_path / "t" / "metrics.json").read_bytes()
    assert "new model calls" in first.stdout
    second = run(evaluate_args(tiny_llama_dir, tiny_gemma_dir), tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "zero model calls" in second.stdout
    assert (tmp_path / "t" / "metrics.json").read_bytes() == metrics
    report = (tmp_path / "t" / "report.html").read_text()
    assert report.count("<div id=\"fig-") >= 3 and "Calibration" in report


def wait_for_cached_answers(cache: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cache.exists() and any(f.stat().st_size > 0 for f in cache.rglob("*.jsonl")):
            return
        time.sleep(0.05)
    raise AssertionError("the run saved no answers in time")


def test_killed_run_resumes_to_the_same_metrics(tiny_llama_dir: Path, tiny_gemma_dir: Path, tmp_path: Path) -> None:
    args = evaluate_args(tiny_llama_dir, tiny_gemma_dir, limit=40)
    clean = run(args, tmp_path / "clean")
    assert clean.returncode == 0, clean.stderr[-2000:]

    killed_root = tmp_path / "killed"
    env = {**os.environ, "INTROSPECT_MI_RUNS": str(killed_root), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "experiments.behavioral", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_cached_answers(killed_root / "cache", timeout=120)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed_root / "t" / "metrics.json").exists(), "the run finished before it could be killed"

    resumed = run(args, killed_root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "answers from the cache" in resumed.stdout  # it picked up what the killed run saved
    assert (killed_root / "t" / "metrics.json").read_text() == (tmp_path / "clean" / "t" / "metrics.json").read_text()


@pytest.mark.parametrize("args,message", [
    (["evaluate", "--target", "/nonexistent/model"], "does not exist"),
    (["evaluate", "--tasks", "unicorns"], "unknown task"),
    (["evaluate", "--preset", "/nonexistent.toml"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    result = run(args, tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
