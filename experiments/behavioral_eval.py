"""Scoring predictors against targets, shared by `evaluate` and the study."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.behavioral_config import EvalConfig, check_names
from experiments.behavioral_endpoint import align, comparison_line, paired_stats
from introspect_mi import config as cfg
from introspect_mi import evaluation as ev
from introspect_mi.answers import CallCounter
from introspect_mi.errors import UserError
from introspect_mi.inference import Engine
from introspect_mi.metrics import evaluate_table
from introspect_mi.prompts import PromptConfig
from introspect_mi.store import RunDir


@dataclass
class Predictor:
    """Who predicts whom: a predictor model, its hypothetical prompts, and the target's behaviour."""

    label: str
    engine: Engine
    prompts: PromptConfig
    target: Engine
    target_objects: dict[str, list[str]]


@dataclass(frozen=True)
class Scoring:
    """Shared settings of one scoring pass."""

    pairs: list[ev.Pair]
    calibration_pairs: list[ev.Pair]
    object_prompts: PromptConfig
    cache_root: Path
    counter: CallCounter
    calibration_samples: int
    n_boot: int
    seed: int


def score(run: RunDir, predictors: list[Predictor], s: Scoring, prefix: str = "") -> dict[str, Any]:
    """Rows, tables and calibration of each predictor, written to `run` (file names start with
    `prefix`); returns their metrics."""
    out: dict[str, Any] = {"predictors": {}, "calibration": {}}
    for i, p in enumerate(predictors):
        rows = ev.score_rows(s.pairs, p.target_objects, ev.hypothetical_answers(p.engine, s.pairs, p.prompts, s.cache_root, s.counter))
        slug = f"{prefix}{i}"
        out["predictors"][p.label] = {"slug": slug, "overall": write_scored(run, slug, rows, s.n_boot, s.seed)}
        if s.calibration_pairs:
            cal = ev.calibration(p.engine, p.target, s.calibration_pairs, s.object_prompts, p.prompts, s.cache_root,
                                 s.calibration_samples, s.seed, s.counter, n_boot=s.n_boot)
            if isinstance(cal, ev.CalibrationSkipped):
                out["calibration"][p.label] = {"skipped": cal.reason, "n_prompts": cal.n_prompts}
                continue
            run.write_table(f"calibration_{slug}_sampled", cal.curve_sampled)
            run.write_table(f"calibration_{slug}_exact", cal.curve_exact)
            out["calibration"][p.label] = {
                "mad_sampled": cal.mad_sampled, "mad_sampled_ci_low": cal.mad_sampled_ci[0], "mad_sampled_ci_high": cal.mad_sampled_ci[1],
                "mad_exact": cal.mad_exact, "mad_exact_ci_low": cal.mad_exact_ci[0], "mad_exact_ci_high": cal.mad_exact_ci[1],
                "noise_floor": cal.noise_floor, "noise_floor_ci_low": cal.noise_floor_ci[0], "noise_floor_ci_high": cal.noise_floor_ci[1],
                "n_prompts": cal.n_prompts}
    return out


def calibration_text(cal: dict[str, Any]) -> str:
    """One predictor's calibration MADs with their CIs over prompts and the sampling noise floor, or why it was skipped."""
    if "skipped" in cal:
        return f"skipped: {cal['skipped']}"
    return (f"sampled {cal['mad_sampled']:.1f} [{cal['mad_sampled_ci_low']:.1f}–{cal['mad_sampled_ci_high']:.1f}] "
            f"(noise floor {cal['noise_floor']:.1f} [{cal['noise_floor_ci_low']:.1f}–{cal['noise_floor_ci_high']:.1f}]), "
            f"exact {cal['mad_exact']:.1f} [{cal['mad_exact_ci_low']:.1f}–{cal['mad_exact_ci_high']:.1f}]")


def write_scored(run: RunDir, slug: str, rows: pd.DataFrame, n_boot: int, seed: int) -> dict[str, Any]:
    """Write a predictor's rows (`evaluation.score_rows`' shape) and its evaluation table as
    rows_<slug> / table_<slug>; returns the table's overall (micro-averaged) row."""
    table = evaluate_table(rows[["task", "property", "object_value", "hypothetical_value"]], n_boot=n_boot, seed=seed)
    run.write_table(f"rows_{slug}", rows)
    run.write_table(f"table_{slug}", table, csv=True)
    return _jsonable(table.iloc[-1].to_dict())


def compare(run: RunDir, metrics: dict[str, Any], first: str, second: str, n_boot: int, seed: int) -> dict[str, Any]:
    """Two different predictors scored on the same pairs (rows in `run`): the paired, item-clustered
    comparison on the pairs where both targets' answers comply (behavioral_endpoint.paired_stats)."""
    if first == second:
        raise ValueError(f"compare needs two different predictors, got {first!r} twice")
    a, b = (run.read_table(f"rows_{metrics['predictors'][label]['slug']}") for label in (first, second))
    return {"first": first, "second": second, **paired_stats(align(a, b), n_boot, seed)}


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=lambda v: None if v != v else str(v)))


def summary(metrics: dict[str, Any]) -> str:
    """Plain-text table of the micro-averaged results."""
    lines = [f"{'predictor → target':<64} {'accuracy':>8} {'95% CI':>15} {'mode':>6} {'n':>5}"]
    for label, p in metrics["predictors"].items():
        o = p["overall"]
        lines.append(f"{label:<64} {o['accuracy']:>8.1%} {o['accuracy_ci_low']:>7.1%}–{o['accuracy_ci_high']:<7.1%} {o['mode_baseline']:>6.1%} {int(o['n_items']):>5}")
    if "comparison" in metrics:
        c = metrics["comparison"]
        lines.append(f"{c['first']} minus {c['second']} (paired): {comparison_line(c)}")
    for label, cal in metrics.get("calibration", {}).items():
        lines.append(f"calibration MAD, {label}: {calibration_text(cal)}")
    return "\n".join(lines)


def weights_label(model: str, adapter: str) -> str:
    """A model as the summary names it: `model`, or `model + adapter` (adapter '-' or '': none), so
    two predictors of one model with different adapters get different labels."""
    return model if adapter in ("-", "") else f"{model} + {adapter}"


def calls_line(counter: CallCounter) -> str:
    if counter.model_calls == 0:
        return "zero model calls: every answer came from the cache"
    return f"{counter.model_calls} new model calls, {counter.cached} answers from the cache"


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """`python -m experiments.behavioral evaluate`: writes runs/<name>/ and prints a summary."""
    from experiments.behavioral_report import write_report_for
    from introspect_mi.models import check_adapter, load
    from introspect_mi.paths import runs_dir

    adapters = list(config.predictor_adapter) or ["-"] * len(config.predictor)
    if len(adapters) != len(config.predictor):
        raise UserError(f"{len(config.predictor)} predictors but {len(adapters)} predictor adapters", "give one adapter per predictor ('-' for none)")
    adapters = ["-" if a in ("-", "") else a for a in adapters]
    listed = list(zip(config.predictor, adapters))
    twice = sorted({weights_label(*p) for p in listed if listed.count(p) > 1})
    if twice:
        raise UserError(f"predictor {', '.join(twice)} is listed twice", "list each predictor (model and adapter) once")
    name = config.name or f"evaluate-{config.target.rstrip('/').split('/')[-1]}"
    check_names([config.target, *config.predictor], [*config.tasks, config.calibration_task], [*config.properties, config.calibration_property])
    for adapter in {a for a in (*adapters, config.target_adapter) if a not in ("-", "")}:
        check_adapter(Path(adapter))  # before the run folder: a wrong path must not leave one that refuses the fix
    run = RunDir.create(runs_dir(), name, cfg.to_dict(config), seed=config.seed)
    prompts = PromptConfig(shots=config.shots)
    device = config.device or None
    target = Engine(load(config.target, adapter=config.target_adapter or None, device=device), config.batch_size)
    items = ev.load_task_items(config.tasks, config.split, config.limit, config.seed)
    pairs = ev.make_pairs(items, config.properties or None)
    if not pairs:
        raise UserError("no (task, property) pair applies", "check --tasks and --properties (e.g. ethical_stance applies to A/B tasks only)")
    cal_pairs: list[ev.Pair] = []
    if config.calibration_items:
        cal_items = ev.load_task_items([config.calibration_task], config.split, config.calibration_items, config.seed)
        cal_pairs = ev.make_pairs(cal_items, [config.calibration_property])
    counter = CallCounter()
    scoring = Scoring(pairs, cal_pairs, prompts, runs_dir() / "cache", counter, config.calibration_samples, config.n_boot, config.seed)
    objects = ev.object_answers(target, items, prompts, scoring.cache_root, counter)

    predictors = []
    target_weights = (config.target, config.target_adapter or "-")
    for model, adapter in listed:
        same = (model, adapter) == target_weights  # the very same weights: reuse the target's engine
        engine = target if same else Engine(load(model, adapter=None if adapter == "-" else adapter, device=device), config.batch_size)
        predictors.append(Predictor(f"{weights_label(model, adapter)} → {weights_label(*target_weights)}", engine, prompts, target, objects))
    metrics: dict[str, Any] = {"run": name, "target": config.target, **score(run, predictors, scoring)}
    if len(predictors) >= 2:
        metrics["comparison"] = compare(run, metrics, predictors[0].label, predictors[1].label, config.n_boot, config.seed)
    run.write_json("metrics.json", metrics)
    write_report_for(run)
    print(summary(metrics))
    print(f"\n{calls_line(counter)}\nreport: {run.path('report.html')}")
    return metrics
