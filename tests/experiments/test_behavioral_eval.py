"""`evaluate`'s predictors: which weights each one runs, and labels that keep them apart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import introspect_mi.models as models
from experiments.behavioral_config import EvalConfig
from experiments.behavioral_eval import compare, evaluate
from introspect_mi.errors import UserError
from tests.test_models import make_adapter


def small_eval(target: Path, **kwargs: Any) -> EvalConfig:
    return EvalConfig(target=str(target), tasks=("animals",), properties=("first_character",), limit=3,
                      calibration_items=0, n_boot=20, batch_size=4, name="t", **kwargs)


def test_adapterless_predictor_of_an_adapted_target_runs_the_base_weights(tiny_llama_dir: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTROSPECT_MI_RUNS", str(tmp_path / "runs"))
    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter")
    loaded: list[tuple[str, Any]] = []
    real_load = models.load

    def load(spec: Any, adapter: Any = None, **kwargs: Any) -> models.ModelHandle:
        loaded.append((str(spec), adapter))
        return real_load(spec, adapter=adapter, **kwargs)

    monkeypatch.setattr(models, "load", load)
    config = small_eval(tiny_llama_dir, target_adapter=str(adapter), predictor=(str(tiny_llama_dir), str(tiny_llama_dir)),
                        predictor_adapter=("-", str(adapter)))
    metrics = evaluate(config)
    # the target (with its adapter) once, the adapter-less predictor once; the adapted predictor reuses the target
    assert loaded == [(str(tiny_llama_dir), str(adapter)), (str(tiny_llama_dir), None)]
    labels = list(metrics["predictors"])
    assert len(labels) == 2 and labels[0] != labels[1]
    assert labels[0] == f"{tiny_llama_dir} → {tiny_llama_dir} + {adapter}"
    assert labels[1] == f"{tiny_llama_dir} + {adapter} → {tiny_llama_dir} + {adapter}"
    assert (metrics["comparison"]["first"], metrics["comparison"]["second"]) == (labels[0], labels[1])


def test_a_predictor_listed_twice_is_refused_before_any_work(tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTROSPECT_MI_RUNS", str(tmp_path / "runs"))
    with pytest.raises(UserError, match="listed twice"):
        evaluate(small_eval(tiny_llama_dir, predictor=(str(tiny_llama_dir), str(tiny_llama_dir))))
    assert not (tmp_path / "runs").exists()


def test_compare_never_tests_an_entry_against_itself() -> None:
    metrics = {"predictors": {"a": {"overall": {"n_correct": 3, "n_items": 10}}}}
    with pytest.raises(ValueError, match="two different predictors"):
        compare(metrics, "a", "a")
