"""`python -m experiments.behavioral seeds | scaling` end to end on the tiny random models.

Tiny random models never answer object-level prompts in format, so their object-level answers
are replaced by a stand-in (`fake_object_answers`): untrained models copy the sequence's last
word, models with an adapter its first word (so the self finetune "changes behaviour" and round
1's labels go stale). Everything else is real: finetunes, hypothetical answers, scoring, files."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest

from experiments import behavioral
from introspect_mi import evaluation as ev
from introspect_mi.tasks.base import TaskKind

TOY = ["--train-tasks", "countries", "mcq_arithmetic", "--held-out-tasks", "animals", "mcq_general",
       "--properties", "first_character", "among_a_or_c", "--train-items", "5", "--per-cell", "5", "--eval-items", "4",
       "--calibration-items", "0", "--n-boot", "50", "--batch-size", "8", "--epochs", "1"]


def fake_object_answers(engine, items, config, root, counter=None, decoding=None) -> dict[str, list[str]]:
    adapted = engine.handle.adapter is not None
    out = {}
    for item, spec in items:
        words = item.text.split()
        if spec.kind == TaskKind.SEQUENCE:
            answer = words[-5] if adapted else words[-1]
        else:
            answer = "ABCD"[(zlib.crc32(item.item_id.encode()) + adapted) % 4]
        out[item.item_id] = [answer] * (decoding.n if decoding else 1)
    return out


@pytest.fixture()
def toy_env(tiny_llama_dir: Path, tiny_gemma_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("INTROSPECT_MI_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("INTROSPECT_MI_CHECKPOINTS", str(tmp_path / "checkpoints"))
    monkeypatch.setattr(ev, "object_answers", fake_object_answers)
    return ["--preset", "quick", "--m1", str(tiny_llama_dir), "--m2", str(tiny_gemma_dir), "--name", "toy", *TOY]


def test_seeds_with_two_rounds_then_scaling_reuse_each_others_adapters(toy_env: list[str], tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert behavioral.main(["seeds", *toy_env, "--seeds", "2", "--self-rounds", "2"]) == 0
    metrics = json.loads((tmp_path / "runs" / "toy-seeds2-rounds2" / "metrics.json").read_text())
    reps = metrics["replicates"]
    assert [(r["seed"], r["round"]) for r in reps] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    adapters = tmp_path / "checkpoints" / "adapters" / "toy"  # the study's folder: seed 0, round 1 is `self` / `cross`
    names = {"self", "cross", "self_round2", "cross_round2", "self_seed1", "cross_seed1", "self_seed1_round2", "cross_seed1_round2"}
    assert {p.name for p in adapters.iterdir() if not p.name.startswith(".")} == names
    m1 = toy_env[toy_env.index("--m1") + 1]
    for r in reps:  # round 1 learns untrained behaviour (last word), then behaves otherwise; round 2 learns round 1's
        assert r["stale_label_share"] > 0.5 if r["round"] == 1 else r["stale_label_share"] == 0.0
        assert r["endpoint"]["n_pairs"] > 0 and -1 <= r["endpoint"]["diff"] <= 1
        assert set(r["input_only"]) == {f"input-only → self-trained {m1} ({r['self_adapter']})",
                                        f"input-only, in distribution (item-grouped CV) → self-trained {m1} ({r['self_adapter']})"}
    spread = {row["round"]: row for row in metrics["spread"]}
    assert set(spread) == {1, 2} and all(row["n_seeds"] == 2 for row in spread.values())
    diffs = [r["endpoint"]["diff"] for r in reps if r["round"] == 1]
    assert spread[1]["diff_mean"] == pytest.approx(sum(diffs) / 2) and spread[1]["diff_sd"] == pytest.approx(abs(diffs[0] - diffs[1]) / 2**0.5)
    assert "round 2: self − cross over 2 seeds" in capsys.readouterr().out

    assert behavioral.main(["scaling", *toy_env, "--fractions", "0.5", "1"]) == 0
    run = tmp_path / "runs" / "toy-scaling"
    scaled = json.loads((run / "metrics.json").read_text())
    assert [r["fraction"] for r in scaled["replicates"]] == [0.5, 1.0]
    n = [r["n_self_questions"] for r in scaled["replicates"]]
    assert n[1] == reps[0]["n_self_questions"] and n[0] == pytest.approx(n[1] / 2, abs=2)  # half of each of the 2 cells
    ft = scaled["finetunes"]
    assert not ft["self"]["trained_now"] and not ft["cross"]["trained_now"]  # the seeds run's seed-0 adapters
    assert ft["self_frac50"]["trained_now"] and ft["cross_frac50"]["trained_now"]
    assert (run / "replicates.csv").is_file() and (run / "scaling.html").read_text().count("n_self_questions") == 0
    assert "Accuracy vs training questions" in (run / "scaling.html").read_text()


def test_seeds_refuses_zero_seeds(toy_env: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert behavioral.main(["seeds", *toy_env, "--seeds", "0"]) == 2
    assert "error: --seeds 0 trains nothing" in capsys.readouterr().err
