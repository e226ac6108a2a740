"""The behavioural study on local weights.

    python -m experiments.behavioral evaluate --preset quick [--predictor M ...] [--target T]
        [--tasks ...] [--properties ...] [--limit N] [--name RUN]

`evaluate` asks each predictor about the target's object-level behaviour on the chosen tasks ×
properties and writes runs/<name>/: config.json, provenance.json, rows_*.jsonl (one row per
item × property), table_*.jsonl (per task × property + micro-average), metrics.json and
report.html. Every model call is cached: a rerun makes zero model calls.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from experiments.common import add_common_arguments, preset_path, run_main
from introspect_mi import config as cfg
from introspect_mi.errors import UserError


@dataclass(frozen=True)
class EvalConfig:
    predictor: tuple[str, ...] = ("smollm2-135m-instruct",)
    """Predictor models (embedded name, HF folder or .gguf); each answers the hypothetical questions."""
    predictor_adapter: tuple[str, ...] = ()
    """LoRA adapters for the predictors, in the same order ('-' for none)."""
    target: str = "smollm2-135m-instruct"
    """The model whose object-level behaviour is predicted (ground truth: its T=0 answers)."""
    target_adapter: str = ""
    """LoRA adapter for the target (empty: none)."""
    tasks: tuple[str, ...] = ("animals", "english_words", "myopic_reward", "survival_instinct", "mcq_general")
    """Object-level tasks to evaluate on (held-out tasks of the paper split by default)."""
    properties: tuple[str, ...] = ()
    """Response properties to ask about (empty: every property that applies to each task)."""
    split: str = "val"
    """Task split the items come from."""
    limit: int = 100
    """Items per task."""
    seed: int = 0
    """Seed for task generation, bootstrap and sampling."""
    shots: int = 2
    """Format demonstrations in each prompt (0 = the paper's zero-shot prompts)."""
    batch_size: int = 32
    """Prompts per forward pass (fixed per run: batch composition can shift results slightly)."""
    calibration_task: str = "animals"
    """Task for the calibration measurement (PROTOCOL.md: animals)."""
    calibration_property: str = "second_character"
    """Property for the calibration measurement (PROTOCOL.md: second character)."""
    calibration_items: int = 50
    """Prompts for calibration (0 skips it)."""
    calibration_samples: int = 20
    """T=1 samples per prompt, object-level and hypothetical alike."""
    n_boot: int = 1000
    """Bootstrap resamples for confidence intervals."""
    device: str = ""
    """cpu, cuda, … (empty: cuda if available, else cpu)."""
    name: str = ""
    """Run folder name under runs/ (empty: derived from the target)."""


def _label(predictor: str, target: str) -> str:
    return f"{predictor} → {target}"


def evaluate(config: EvalConfig) -> dict:
    """Run the evaluation described by `config`; returns the metrics written to metrics.json."""
    from introspect_mi import evaluation as ev
    from introspect_mi.answers import CallCounter
    from introspect_mi.inference import Engine
    from introspect_mi.metrics import evaluate_table, two_proportion_ztest
    from introspect_mi.models import load
    from introspect_mi.paths import runs_dir
    from introspect_mi.prompts import PromptConfig
    from introspect_mi.store import RunDir

    adapters = list(config.predictor_adapter) or ["-"] * len(config.predictor)
    if len(adapters) != len(config.predictor):
        raise UserError(f"{len(config.predictor)} predictors but {len(adapters)} predictor adapters", "give one adapter per predictor ('-' for none)")
    name = config.name or f"evaluate-{config.target.rstrip('/').split('/')[-1]}"
    run = RunDir.create(runs_dir(), name, cfg.to_dict(config), seed=config.seed)
    cache_root = runs_dir() / "cache"
    prompts = PromptConfig(shots=config.shots)
    counter = CallCounter()
    device = config.device or None

    target = Engine(load(config.target, adapter=config.target_adapter or None, device=device), config.batch_size)
    items = ev.load_task_items(config.tasks, config.split, config.limit, config.seed)
    pairs = ev.make_pairs(items, config.properties or None)
    if not pairs:
        raise UserError("no (task, property) pair applies", "check --tasks and --properties (e.g. ethical_stance applies to A/B tasks only)")
    objects = ev.object_answers(target, items, prompts, cache_root, counter)
    cal_pairs = []
    if config.calibration_items:
        cal_items = ev.load_task_items([config.calibration_task], config.split, config.calibration_items, config.seed)
        cal_pairs = ev.make_pairs(cal_items, [config.calibration_property])

    metrics: dict = {"run": name, "target": config.target, "predictors": {}, "calibration": {}}
    tables = {}
    for predictor, adapter in zip(config.predictor, adapters):
        label = _label(predictor, config.target)
        same = predictor == config.target and adapter in ("-", config.target_adapter or "-")
        engine = target if same else Engine(load(predictor, adapter=None if adapter == "-" else adapter, device=device), config.batch_size)
        rows = ev.score_rows(pairs, objects, ev.hypothetical_answers(engine, pairs, prompts, cache_root, counter))
        table = evaluate_table(rows[["task", "property", "object_value", "hypothetical_value"]], n_boot=config.n_boot, seed=config.seed)
        slug = f"{len(tables)}"
        run.write_table(f"rows_{slug}", rows)
        run.write_table(f"table_{slug}", table, csv=True)
        tables[label] = table
        overall = table.iloc[-1]
        metrics["predictors"][label] = {"slug": slug, "adapter": adapter, "overall": _jsonable(overall.to_dict())}
        if cal_pairs:
            cal = ev.calibration(engine, target, cal_pairs, prompts, cache_root, config.calibration_samples, config.seed, counter)
            run.write_table(f"calibration_{slug}_sampled", cal.curve_sampled)
            run.write_table(f"calibration_{slug}_exact", cal.curve_exact)
            metrics["calibration"][label] = {"mad_sampled": cal.mad_sampled, "mad_exact": cal.mad_exact, "n_prompts": cal.n_prompts,
                                             "task": config.calibration_task, "property": config.calibration_property}
    labels = list(tables)
    if len(labels) >= 2:
        a, b = (tables[l].iloc[-1] for l in labels[:2])
        z = two_proportion_ztest(int(a["n_correct"]), int(a["n_items"]), int(b["n_correct"]), int(b["n_items"]))
        metrics["comparison"] = {"first": labels[0], "second": labels[1], **z.to_dict()}
    run.write_json("metrics.json", metrics)
    from experiments.behavioral_report import write_evaluate_report

    write_evaluate_report(run)
    print(summary(metrics, tables))
    verdict = "zero model calls: every answer came from the cache" if counter.model_calls == 0 else f"{counter.model_calls} new model calls, {counter.cached} answers from the cache"
    print(f"\n{verdict}\nreport: {run.path('report.html')}")
    return metrics


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=lambda v: None if v != v else str(v)))


def summary(metrics: dict, tables: dict) -> str:
    """Plain-text table of the micro-averaged results."""
    lines = [f"{'predictor → target':<52} {'acc':>6} {'95% CI':>15} {'mode':>6} {'n':>5}"]
    for label, table in tables.items():
        o = table.iloc[-1]
        lines.append(f"{label:<52} {o['accuracy']:>6.1%} {o['accuracy_ci_low']:>7.1%}–{o['accuracy_ci_high']:<7.1%} {o['mode_baseline']:>6.1%} {int(o['n_items']):>5}")
    if "comparison" in metrics:
        c = metrics["comparison"]
        lines.append(f"first − second: {c['diff']:+.1%} (z = {c['z']:.2f}, p = {c['p_value']:.3g})")
    for label, cal in metrics["calibration"].items():
        lines.append(f"calibration MAD {label}: sampled {cal['mad_sampled']:.1f}, exact {cal['mad_exact']:.1f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.behavioral", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ev = sub.add_parser("evaluate", help="predictors' hypothetical answers vs the target's behaviour")
    add_common_arguments(ev)
    cfg.add_arguments(ev, EvalConfig)
    ev.set_defaults(func=lambda a: evaluate(cfg.build(EvalConfig, cfg.load_preset(preset_path(a.preset), "evaluate"), a)))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
