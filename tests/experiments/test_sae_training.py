"""Which prompts the experiment's SAEs train on."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from experiments import sae_features as sf
from experiments import sae_training as st
from experiments.behavioral_config import StudyConfig
from introspect_mi import evaluation as ev
from introspect_mi.models import load


def test_training_sequences_use_only_the_training_tasks_train_split(tiny_llama_dir) -> None:
    handle = load(tiny_llama_dir)
    study = StudyConfig(train_tasks=("colours", "countries"), held_out_tasks=("animals",), properties=("first_character", "first_word"))
    config = sf.SAEFeaturesConfig(train_items=3, hypotheticals_per_item=2)
    seqs = st.training_sequences(handle, SimpleNamespace(config=study), config)
    texts = [handle.tokenizer.decode(s) for s in seqs]
    assert len(seqs) == 2 * 3 * (1 + 2)
    assert "colors" in texts[0] and "countries" in texts[3]  # tasks alternate: colours item, its 2 hypotheticals, countries item
    assert sum("Previously, you were asked" in t for t in texts) == 12
    train = {i.text for i, _ in ev.load_task_items(study.train_tasks, "train", 3, study.seed)}
    val = {i.text for i, _ in ev.load_task_items(study.train_tasks, "val", 3, study.seed)}
    assert all(any(t in text for t in train) for text in texts) and not any(t in text for t in val for text in texts)
    with pytest.raises(Exception, match="overlap"):
        st.training_sequences(handle, SimpleNamespace(config=StudyConfig(train_tasks=("animals",), held_out_tasks=("animals",))), config)
