"""A finished behavioural study made by hand on the tiny random models, for the mechanistic
experiments' end-to-end tests (they read a study's saved results, never rerun it)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from experiments.behavioral_config import StudyConfig
from introspect_mi import config as cfg
from introspect_mi import evaluation as ev
from introspect_mi.store import RunDir
from tests.test_models import make_adapter

ROOT = Path(__file__).resolve().parents[2]
ANSWERS = ["cat dog fox owl bee", "dolphin", "A", "B", "owl bee cat"]


@dataclass(frozen=True)
class TinyStudy:
    name: str
    runs: Path
    checkpoints: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, "INTROSPECT_MI_RUNS": str(self.runs), "INTROSPECT_MI_CHECKPOINTS": str(self.checkpoints),
                "HF_HUB_OFFLINE": "1"}

    def run(self, module: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
        """`python -m experiments.<module> --study <this study> args...`."""
        return subprocess.run([sys.executable, "-m", f"experiments.{module}", "--study", self.name, *args], cwd=ROOT,
                              env=self.env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_study(tiny_llama_dir: Path, tiny_gemma_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TinyStudy:
    """Study `tiny` (M1 tiny Llama, M2 tiny Gemma, two held-out tasks, 6 items each) with its
    rows and its self/cross adapters, as `python -m experiments.behavioral` would leave them."""
    root = tmp_path_factory.mktemp("tiny_study")
    study = TinyStudy("tiny", root / "runs", root / "checkpoints")
    config = StudyConfig(m1=str(tiny_llama_dir), m2=str(tiny_gemma_dir), held_out_tasks=("animals", "myopic_reward"),
                         properties=("first_character", "second_character", "ethical_stance"), eval_items=6, name="tiny")
    run = RunDir.create(study.runs, "tiny", cfg.to_dict(config), seed=0)
    pairs = ev.make_pairs(ev.load_task_items(config.held_out_tasks, "val", config.eval_items, config.seed), config.properties)
    for slug in range(3):
        objects = {p.item.item_id: [ANSWERS[(i + slug) % len(ANSWERS)]] for i, p in enumerate(pairs)}
        hyps = [[ANSWERS[i % len(ANSWERS)][0]] for i in range(len(pairs))]
        run.write_table(f"rows_{slug}", ev.score_rows(pairs, objects, hyps))
    run.write_json("metrics.json", {"run": "tiny"})
    adapters = study.checkpoints / "adapters" / "tiny"
    make_adapter(tiny_llama_dir, adapters / "self", seed=1)
    make_adapter(tiny_gemma_dir, adapters / "cross", seed=2)
    return study
