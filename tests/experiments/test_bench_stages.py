"""`benchmark stages`: the per-stage table read from the run folders' timings.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.bench_stages import markdown, stage_rows
from experiments.benchmark import main
from introspect_mi.timing import StageClock


def record(folder: Path, *stages: str) -> None:
    clock = StageClock(folder)
    for name in stages:
        clock.lap(name)
    clock.close()


def test_rows_follow_the_pipeline_and_take_each_experiments_latest_run(tmp_path: Path) -> None:
    record(tmp_path / "mech-s" / "patching", "untrained: patching")
    record(tmp_path / "s", "old stage")
    record(tmp_path / "s", "self finetune", "report")  # a rerun: only this one counts
    record(tmp_path / "mech-s", "untrained: load, capture")
    rows = stage_rows(tmp_path, "s")
    named = [(r["experiment"], r["stage"]) for r in rows if not r["stage"].startswith("outside")]
    assert named == [("behavioral", "self finetune"), ("behavioral", "report"), ("capture", "untrained: load, capture"),
                     ("patching", "untrained: patching")]
    assert [r["experiment"] for r in rows if r["stage"].startswith("outside")] == ["behavioral", "capture", "patching"]
    table = markdown(rows)
    assert "| **behavioral** | total |" in table and table.splitlines()[-1].startswith("| **all** |")


def test_the_command_writes_the_table_and_a_missing_study_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("INTROSPECT_MI_RUNS", str(tmp_path))
    assert main(["stages", "--study", "nothing"]) == 2
    assert "no timings.json" in capsys.readouterr().err
    record(tmp_path / "s", "a")
    assert main(["stages", "--study", "s"]) == 0
    doc = json.loads((tmp_path / "benchmarks" / "stages.json").read_text())
    assert doc["study"] == "s" and doc["rows"][0]["stage"] == "a"
