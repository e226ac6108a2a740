"""The input-only control in a behavioural run: probes.input_only scored like a model predictor.

Two entries beside self and cross (same held-out pairs, same target behaviour):
- `input-only → <target>`: trained on the cross model's training rows (same training tasks,
  questions and labels), so it answers "how much of what cross learnt is in P's text alone";
- `input-only, in distribution (item-grouped CV) → <target>`: cross-validated over items *within*
  the held-out pairs, the upper bound of what the input alone can give on these tasks.
Each writes rows_<slug> and table_<slug> with `behavioral_eval.write_scored`, so reports and paired
statistics read them as they read a model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from experiments.behavioral_eval import write_scored
from introspect_mi import evaluation as ev
from introspect_mi.finetune_data import Labelled
from introspect_mi.store import RunDir
from probes import input_only


def labels(target: str) -> tuple[str, str]:
    """(held-out label, in-distribution label) of the input-only predictors of `target`."""
    return f"input-only → {target}", f"input-only, in distribution (item-grouped CV) → {target}"


def input_only_predictors(run: RunDir, train_rows: Sequence[Labelled], pairs: Sequence[ev.Pair], target_objects: dict[str, list[str]],
                          target: str, n_boot: int, seed: int, prefix: str = "") -> dict[str, dict[str, Any]]:
    """Fit, predict, score and write both input-only predictors; returns their `metrics["predictors"]` entries."""
    config = input_only.InputOnlyConfig(seed=seed)
    held_out = input_only.held_out_rows([r.pair for r in train_rows], [r.label for r in train_rows], pairs, target_objects, config)
    in_distribution = input_only.in_distribution_rows(pairs, target_objects, config)
    out = {}
    for label, slug, rows in zip(labels(target), ("input_only", "input_only_cv"), (held_out, in_distribution)):
        out[label] = {"slug": f"{prefix}{slug}", "overall": write_scored(run, f"{prefix}{slug}", rows, n_boot, seed)}
    return out
