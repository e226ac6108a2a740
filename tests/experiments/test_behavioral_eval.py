"""`evaluate`'s predictors: which weights each one runs, and labels that keep them apart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import introspect_mi.models as models
from experiments.behavioral_config import EvalConfig
from experiments.behavioral_eval import compare, evaluate
from introspect_mi.errors import UserError
from introspect_mi.store import RunDir
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
        compare(None, metrics, "a", "a", n_boot=10, seed=0)  # type: ignore[arg-type]  # refused before any rows are read


def test_compare_is_paired_and_resamples_items(tmp_path: Path) -> None:
    # 10 items × 4 properties, both predictors of one target. a alone is right on all of items 0–1 (8 pairs);
    # both are right on items 2–6 and on two pairs of item 7 (22); neither elsewhere: a 30/40, b 22/40.
    # Independent samples would say z = 1.88, p = 0.061; pairs-as-units sign-flip p = 2/2^8 = 0.0078; but the 8
    # discordant pairs are two items, so swapping labels per item gives T = ±4 ± 4: p = P(|T| ≥ 8) = 2/4.
    run = RunDir.create(tmp_path, "r", {"x": 1}, seed=0)
    keys = [(f"i{i}", f"p{k}") for i in range(10) for k in range(4)]
    a = [i in ("i0", "i1") or i in {f"i{j}" for j in range(2, 7)} or (i == "i7" and k in ("p0", "p1")) for i, k in keys]
    b = [ok and i not in ("i0", "i1") for ok, (i, k) in zip(a, keys)]
    for slug, hits in (("0", a), ("1", b)):
        run.write_table(f"rows_{slug}", pd.DataFrame([{"item_id": i, "task": "t", "property": k, "object_value": "v", "correct": c}
                                                      for (i, k), c in zip(keys, hits)]))
    metrics = {"predictors": {"a": {"slug": "0"}, "b": {"slug": "1"}}}
    c = compare(run, metrics, "a", "b", n_boot=200, seed=0)
    assert (c["first"], c["second"], c["n_pairs"], c["n_items"]) == ("a", "b", 40, 10)
    assert (c["first_accuracy"], c["second_accuracy"], c["diff"]) == (0.75, 0.55, pytest.approx(0.2))
    assert (c["only_first"], c["only_second"]) == (8, 0)
    assert c["p_value"] == pytest.approx(0.5)
    assert c["diff_ci_low"] <= 0.2 <= c["diff_ci_high"] and "mdd" in c


def test_calibration_without_a_compliant_object_answer_is_skipped_and_said_so(tiny_llama_dir: Path, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch,
                                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A target that answers with one letter has no second character to calibrate on: evaluate finishes, and its
    metrics, printout and report record calibration as skipped with the reason (it raised 'no calibration pairs')."""
    import html
    import json

    from introspect_mi.inference import Engine

    monkeypatch.setenv("INTROSPECT_MI_RUNS", str(tmp_path / "runs"))
    monkeypatch.setattr(Engine, "generate", lambda self, prompts, decoding, desc="": [["c"] * decoding.n for _ in prompts])
    config = EvalConfig(target=str(tiny_llama_dir), predictor=(str(tiny_llama_dir),), tasks=("animals",), properties=("first_character",),
                        limit=3, calibration_items=2, calibration_samples=2, calibration_property="second_character",
                        n_boot=20, batch_size=4, name="t")
    metrics = evaluate(config)
    [(label, cal)] = metrics["calibration"].items()
    assert cal["n_prompts"] == 2 and "complies with second_character" in cal["skipped"] and "mad_sampled" not in cal
    assert json.loads((tmp_path / "runs" / "t" / "metrics.json").read_text())["calibration"][label] == cal
    assert f"calibration MAD, {label}: skipped: {cal['skipped']}" in capsys.readouterr().out
    assert html.escape(cal["skipped"]) in (tmp_path / "runs" / "t" / "report.html").read_text()
