"""The shipped presets build valid configs whose names all resolve (no model needed)."""

from __future__ import annotations

import pytest

from experiments.behavioral_config import EvalConfig, StudyConfig
from experiments.common import preset_path
from introspect_mi import config as cfg
from introspect_mi.finetune_config import PRESETS
from introspect_mi.properties import get_property
from introspect_mi.tasks import get_task


@pytest.mark.parametrize("preset", ["quick", "paper"])
def test_presets_build_configs_with_known_names(preset: str) -> None:
    path = preset_path(preset)
    evaluate = cfg.build(EvalConfig, cfg.load_preset(path, "evaluate"))
    study = cfg.build(StudyConfig, cfg.load_preset(path, "study"))
    for name in (*evaluate.tasks, *study.train_tasks, *study.held_out_tasks, evaluate.calibration_task):
        get_task(name)
    for name in (*evaluate.properties, *study.properties, study.calibration_property):
        get_property(name)
    assert study.finetune in PRESETS
    assert not set(study.train_tasks) & set(study.held_out_tasks)


def test_paper_preset_is_the_papers_protocol() -> None:
    study = cfg.build(StudyConfig, cfg.load_preset(preset_path("paper"), "study"))
    assert (study.object_shots, study.untrained_shots, study.trained_shots) == (0, 0, 0)
    assert study.per_cell == 1000 and study.calibration_samples == 20
    paper = PRESETS[study.finetune]
    assert (paper.rank, paper.lr, paper.epochs, paper.effective_batch_size) == (32, 2e-5, 1, 16)
