"""Steering (D) and concept injection (E) with rows entering the decoder at the steered layer vs
the plain path (every batch from the embeddings, steered by a hook), on the quick study.

`python -m experiments.benchmark steering [--preset quick] [--subject untrained]`. Runs the
patching experiment's D and E stages (`experiments.patching.steer_stage`, `concept_stage`, the
preset's `[patching]` settings) on one subject twice, `Steerer(join=False)` then the default
`Steerer()`, each with a fresh Steerer, and compares what they report: the share of D's answers
(sweep and position sets) that are equal, D's chosen scale, the largest difference of E's
log P(value | valid values) and the share of E's reports that are equal. Needs the study and its
capture (`make study`, or `python -m experiments.capture --preset quick`). Result:
runs/benchmarks/steering.json.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd

from experiments.bench_common import save_result
from experiments.common import load_preset
from introspect_mi import config as cfg


@dataclass
class SteeringBench:
    subject: str
    model: str
    steered_layer: int
    seconds_plain: dict[str, float]
    seconds_joined: dict[str, float]
    speedup: float
    answers_equal: float
    answers_compared: int
    same_scale: bool
    concept_logprob_max_abs_diff: float
    concept_reports_equal: float
    torch_threads: int
    load_average: float


def _answers(tables: dict[str, pd.DataFrame]) -> pd.Series:
    """D's answers after steering: the sweep's, then the position sets' (object, self-prediction)."""
    rows = tables["steering"][["object_after", "hyp_after"]].to_numpy().ravel()
    return pd.concat([tables["steering_sweep_items"]["after"], pd.Series(rows)], ignore_index=True)


def _same(a: pd.Series, b: pd.Series) -> float:
    """Share of equal entries; two missing answers (unreadable) are the same answer."""
    return float(((a.to_numpy() == b.to_numpy()) | (a.isna().to_numpy() & b.isna().to_numpy())).mean())


def run(args: argparse.Namespace) -> SteeringBench:
    import torch

    from experiments.mech import capture_stores, open_capture, open_study
    from experiments.mech_engine import subject_handle
    from experiments.patching import PatchingConfig, concept_stage, item_prompts, steer_stage
    from introspect_mi.errors import UserError
    from introspect_mi.steering import Steerer
    from introspect_mi.steering_experiments import layer_at

    c = cfg.build(PatchingConfig, load_preset(args.preset, "patching"), argparse.Namespace())
    view = open_study(args.preset, c)
    stores, missing = capture_stores(open_capture(c.capture or f"mech-{view.name}", args.preset), view, [args.subject])
    if missing:
        raise UserError(missing[args.subject], f"capture it: python -m experiments.capture --preset {args.preset} --subjects {args.subject}")
    subject = view.subject(args.subject)
    handle = subject_handle(view, subject, "")
    items = item_prompts(view, subject, handle, {(c.steer_task, c.steer_property), (c.concept_task, c.concept_property)})
    got: dict[bool, tuple[dict[str, pd.DataFrame], dict, dict[str, float]]] = {}
    for join in (False, True):
        steerer, seconds, tables, metrics = Steerer(handle.model, handle.pad_token_id, c.batch_size, join=join), {}, {}, {}
        for name, stage in (("steering", lambda: steer_stage(handle, steerer, items, stores[args.subject], c)),
                            ("concepts", lambda: concept_stage(handle, steerer, items, c))):
            print(f"{name} ({'joined at the layer' if join else 'plain'})…", flush=True)
            start = time.perf_counter()
            t, m = stage()
            seconds[name] = round(time.perf_counter() - start, 1)
            tables |= t
            metrics[name] = m
        got[join] = (tables, metrics, seconds)
    (plain, m_plain, s_plain), (joined, m_joined, s_joined) = got[False], got[True]
    a, b = _answers(plain), _answers(joined)
    diff = (plain["concepts"]["logprob"] - joined["concepts"]["logprob"]).abs()
    result = SteeringBench(
        subject=args.subject, model=handle.name, steered_layer=layer_at(c.steer_depth, handle.n_layers),
        seconds_plain=s_plain, seconds_joined=s_joined, speedup=round(sum(s_plain.values()) / sum(s_joined.values()), 2),
        answers_equal=_same(a, b) if len(a) == len(b) else float("nan"), answers_compared=min(len(a), len(b)),
        same_scale=m_plain["steering"].get("scale") == m_joined["steering"].get("scale"),
        concept_logprob_max_abs_diff=float(diff.max()),
        concept_reports_equal=_same(plain["concepts"]["report"], joined["concepts"]["report"]),
        torch_threads=torch.get_num_threads(), load_average=os.getloadavg()[0])
    print(f"{args.subject}: plain {s_plain}, joined {s_joined} = {result.speedup:.2f}×; answers equal {result.answers_equal:.4f} "
          f"of {result.answers_compared}; same scale {result.same_scale}; E: log P(value | valid) differs by ≤ "
          f"{result.concept_logprob_max_abs_diff:.2e}, reports equal {result.concept_reports_equal:.4f}")
    save_result("steering", result)
    return result


def add_parser(sub: Any) -> None:
    """Register the `steering` subcommand."""
    p = sub.add_parser("steering", help="steering and concept injection entering at the steered layer vs the plain path (same answers, the ratio)")
    p.add_argument("--preset", default="quick", help="quick | paper | path/to/preset.toml (its [patching] section)")
    p.add_argument("--subject", default="untrained", choices=("untrained", "self", "cross"), help="the captured subject to steer")
    p.set_defaults(run=run)
