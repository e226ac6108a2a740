"""Seed replicates and data scaling of the study's self vs cross comparison (issue 14: 7, 9, 4).

    python -m experiments.behavioral seeds --preset quick --seeds 3 [--self-rounds 2]
    python -m experiments.behavioral scaling --preset quick [--fractions 0.25 0.5 1]

Both read the preset's [study] section (same models, tasks, items, self data) and train in the
study's adapter folder, so the study's own finetunes (its seed, all the data, round 1: `self`,
`cross`) are reused and the others get names of their own (experiments/behavioral_training.py:
self_seed1, cross_frac25, self_round2, …). Each replicate: self-train M1 (every round), cross-train
M2 on each round's behaviour, score self, cross and the input-only predictors on the held-out pairs
against that round's self-trained M1, and compute the primary endpoint (self − cross, paired and
item-clustered, degenerate cells excluded: experiments/behavioral_endpoint.py).

- `seeds`: finetune seeds study seed + 0 … N − 1 (the data, items and replay stay fixed: the
  spread is training noise). Prints and writes each seed's endpoint and, per round, the mean,
  SD and range over seeds. A difference smaller than the seed spread is not a difference.
- `scaling`: a seeded share of every task × property of the self data (replay scaled with it;
  the same subset for cross), finetune seed = the study's. Writes accuracy vs number of training
  questions for self, cross and input-only with 95% CIs (items resampled) and a Plotly figure.
Results: runs/<study name>-seeds<N>[-rounds<R>]/ and runs/<study name>-scaling[-rounds<R>]/
(replicates.csv, spread.csv, metrics.json; scaling.html). Neither is part of `make study`: each
finetune costs minutes on a CPU.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pandas as pd

from experiments import behavioral_training as tr
from experiments.behavioral_config import ScalingConfig, SeedsConfig, StudyConfig
from experiments.behavioral_endpoint import align, comparison_line, paired_stats, primary_pairs
from experiments.behavioral_eval import Predictor, Scoring, score
from experiments.behavioral_input_only import input_only_predictors
from experiments.behavioral_study import Study, default_name, finetune_config
from introspect_mi.errors import UserError
from introspect_mi.paths import checkpoints_dir


def _study(config: StudyConfig, kind: str) -> Study:
    """A Study whose run folder is `<study name>-<kind>[-rounds<R>]` and whose adapters are the study's."""
    base = config.name or default_name(config)
    rounds = f"-rounds{config.self_rounds}" if config.self_rounds > 1 else ""
    s = Study(dataclasses.replace(config, name=f"{base}-{kind}{rounds}"))
    s.adapters = checkpoints_dir() / "adapters" / base
    return s


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def endpoint(self_rows: pd.DataFrame, other_rows: pd.DataFrame, n_boot: int, seed: int) -> dict[str, Any]:
    """The primary endpoint of one replicate when `other_rows` are cross's: paired, item-clustered
    self − other on the pairs of the cells the pre-specified rule keeps (target mode baseline ≤ 0.7;
    experiments/behavioral_endpoint.py), with the excluded cells. Both accuracies' CIs resample items."""
    kept, excluded = primary_pairs(align(self_rows, other_rows))
    return {**paired_stats(kept, n_boot, seed), "excluded_cells": [f"{c['task']} × {c['property']}" for c in excluded]}


def run_replicate(s: Study, bases: tr.Bases, rep: tr.Replicate) -> list[dict[str, Any]]:
    """Train every round of `rep` (self and cross) and score it; one result row per round."""
    c = s.config
    ft = finetune_config(c)
    out = []
    for rnd in tr.self_rounds(s, bases, ft, rep):
        cross, cross_train = tr.train_cross(s, bases, ft, rep, rnd)
        target = s.objects(rnd.engine, s.eval_items, f"self-trained {c.m1} ({rnd.name}) on held-out tasks")
        labels = {"self": f"self-trained {c.m1} ({rnd.name}) → itself", "cross": f"cross-trained {c.m2} → self-trained {c.m1} ({rnd.name})"}
        predictors = [Predictor(labels["self"], rnd.engine, s.trained_prompts, rnd.engine, target),
                      Predictor(labels["cross"], s.engine(cross), s.trained_prompts, rnd.engine, target)]
        scoring = Scoring(s.eval_pairs, [], s.object_prompts, s.cache, s.counter, c.calibration_samples, c.n_boot, c.seed)
        prefix = f"{rnd.name}_"
        slugs = [p["slug"] for p in score(s.run, predictors, scoring, prefix=prefix)["predictors"].values()]
        inputs = input_only_predictors(s.run, cross_train, s.eval_pairs, target, f"self-trained {c.m1} ({rnd.name})", c.n_boot, c.seed, prefix)
        slugs.append(next(iter(inputs.values()))["slug"])  # held out (the in-distribution variant is in metrics only)
        self_rows, cross_rows, input_rows = (s.run.read_table(f"rows_{slug}") for slug in slugs)
        out.append({"seed": rep.seed, "fraction": rep.fraction, "round": rnd.round, "self_adapter": rnd.name,
                    "n_self_questions": len(rnd.train_rows), "stale_label_share": rnd.stale["share"],
                    "endpoint": endpoint(self_rows, cross_rows, c.n_boot, c.seed),
                    "self_vs_input_only": endpoint(self_rows, input_rows, c.n_boot, c.seed),
                    "input_only": inputs})
        _log(f"{rnd.name}: {comparison_line(out[-1]['endpoint'], 'self', 'cross')}")
    return out


def flat(results: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per replicate × round: self, cross and input-only accuracy with item-resampled 95%
    CIs, all on the endpoint's pairs, and the endpoint (self − cross), for CSV and figures."""
    rows = []
    for r in results:
        e, i = r["endpoint"], r["self_vs_input_only"]
        row = {k: r[k] for k in ("seed", "fraction", "round", "self_adapter", "n_self_questions", "stale_label_share")}
        for who, stats, key in (("self", e, "first"), ("cross", e, "second"), ("input_only", i, "second")):
            row.update({who: stats.get(f"{key}_accuracy", float("nan")), f"{who}_ci_low": stats.get(f"{key}_accuracy_ci_low", float("nan")),
                        f"{who}_ci_high": stats.get(f"{key}_accuracy_ci_high", float("nan"))})
        row.update({"n_pairs": e.get("n_pairs", 0), **{k: e.get(k, float("nan")) for k in ("diff", "diff_ci_low", "diff_ci_high", "p_value")}})
        rows.append(row)
    return pd.DataFrame(rows)


def spread(table: pd.DataFrame) -> pd.DataFrame:
    """Per round: mean, SD (ddof 1), min and max over seeds of self − cross and of each accuracy."""
    cols = ["diff", "self", "cross", "input_only"]
    g = table.groupby("round")[cols]
    out = pd.concat({"mean": g.mean(), "sd": g.std(ddof=1), "min": g.min(), "max": g.max()}, axis=1)
    out.columns = [f"{col}_{stat}" for stat, col in out.columns]
    return out.reset_index().assign(n_seeds=g.size().to_numpy())


def seeds(config: SeedsConfig) -> dict[str, Any]:
    """`python -m experiments.behavioral seeds`: the endpoint per finetune seed and its spread."""
    if config.seeds < 1:
        raise UserError(f"--seeds {config.seeds} trains nothing", "use --seeds 1 or more (3 for a spread)")
    s = _study(config, f"seeds{config.seeds}")
    bases = tr.load_bases(s)
    results = []
    for k in range(config.seeds):
        results += run_replicate(s, bases, tr.Replicate(config.seed + k, rounds=config.self_rounds, default_seed=config.seed))
    table = flat(results)
    summary = spread(table)
    s.run.write_table("replicates", table, csv=True)
    s.run.write_table("spread", summary, csv=True)
    metrics = {"run": s.name, "replicates": results, "spread": summary.to_dict(orient="records"), "finetunes": s.finetunes}
    s.run.write_json("metrics.json", metrics)
    print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for row in metrics["spread"]:
        print(f"round {row['round']}: self − cross over {row['n_seeds']} seeds: mean {row['diff_mean'] * 100:+.1f} pts, "
              f"SD {row['diff_sd'] * 100:.1f}, range {row['diff_min'] * 100:+.1f} to {row['diff_max'] * 100:+.1f}")
    print(f"results: {s.run.path('metrics.json')}")
    return metrics


def scaling(config: ScalingConfig) -> dict[str, Any]:
    """`python -m experiments.behavioral scaling`: accuracy vs training-set size for self and cross."""
    if not config.fractions or any(not 0 < f <= 1 for f in config.fractions):
        raise UserError(f"--fractions {' '.join(map(str, config.fractions))} must lie in (0, 1]", "e.g. --fractions 0.25 0.5 1")
    s = _study(config, "scaling")
    bases = tr.load_bases(s)
    results = []
    for fraction in sorted(set(config.fractions)):
        results += run_replicate(s, bases, tr.Replicate(config.seed, fraction, config.self_rounds, default_seed=config.seed))
    table = flat(results)
    s.run.write_table("replicates", table, csv=True)
    metrics = {"run": s.name, "replicates": results, "finetunes": s.finetunes}
    s.run.write_json("metrics.json", metrics)
    from introspect_mi.viz import Section, scaling_figure, write_report

    write_report(s.run.path("scaling.html"), f"Data scaling · {s.name}", [Section(
        "Accuracy vs training questions", figures=[scaling_figure(table)],
        text="Held-out accuracy against self-trained M1's behaviour, by the number of self-prediction questions trained on "
             "(self and cross see the same questions), on the primary endpoint's pairs (degenerate cells excluded); 95% CIs "
             "resample items. Input-only: the text-only predictor trained on the cross model's labels.")])
    print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"results: {s.run.path('metrics.json')}\nfigure: {s.run.path('scaling.html')}")
    return metrics
