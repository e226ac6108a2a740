"""Choose a finetune preset from measurements: self-finetune M1 under several settings and score
each on the training tasks' held-out items.

    python -m experiments.finetune_sweep --preset quick        # the sweep that chose the quick preset
    python -m experiments.finetune_sweep --preset quick --settings lr=1e-3,epochs=1,replay=0.5 rank=8 --name my-sweep

Each setting overrides fields of the study's finetune preset (`lr=…,epochs=…,rank=…,alpha=…`,
any FinetuneConfig field) and may add `replay=F`: F × (number of self examples) object-level
examples of M1's own answers mixed into the training data. The data is the study's self data
(same tasks, items, properties, seed). For every setting, and for untrained M1, on items of the
training tasks' *val* split (never trained on): self-prediction accuracy against the model's own
new behaviour (the study's measure), against untrained M1's behaviour (the training labels'
source), the fraction of object-level answers the finetune changed, and the paired, item-clustered
difference from untrained M1 on the same pairs (experiments/behavioral_endpoint.paired_stats).
Results: runs/<name>/sweep.csv and metrics.json; adapters under
checkpoints/adapters/<name>/<setting>/ are reused on a rerun.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from experiments.behavioral_config import StudyConfig
from experiments.behavioral_endpoint import align, paired_stats
from experiments.behavioral_study import Study, finetune_config
from experiments.common import config_main
from introspect_mi import evaluation as ev
from introspect_mi.errors import UserError
from introspect_mi.finetune_config import FinetuneConfig
from introspect_mi.metrics import evaluate_table
from introspect_mi.models import ModelHandle


@dataclass(frozen=True)
class SweepConfig(StudyConfig):
    settings: tuple[str, ...] = ("lr=5e-4,epochs=2", "lr=5e-4,epochs=2,replay=0.5", "lr=1e-4,epochs=2", "lr=1e-3,epochs=1",
                                 "lr=1e-3,epochs=1,replay=0.5", "lr=5e-4,epochs=1,replay=0.5")
    """Finetune settings to compare, each `field=value,…` over the preset (plus `replay=F`: object-level replay examples, F × the self examples; the study's object_replay is not used). Default: the sweep that chose the quick preset."""


@dataclass(frozen=True)
class Setting:
    """One parsed `--settings` entry."""

    label: str
    overrides: dict[str, Any]
    replay: float = 0.0

    @classmethod
    def parse(cls, text: str, base: FinetuneConfig) -> Setting:
        overrides: dict[str, Any] = {}
        replay = 0.0
        fields = {f.name for f in dataclasses.fields(base)}
        for part in filter(None, text.split(",")):
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep:
                raise UserError(f"setting {text!r}: {part!r} is not field=value", "write settings like lr=5e-4,epochs=2")
            if key != "replay" and (key not in fields or key == "target_modules"):
                raise UserError(f"setting {text!r}: unknown field {key!r}",
                                f"use replay or one of: {', '.join(n for n in fields if n != 'target_modules')}")
            default = 0.0 if key == "replay" else getattr(base, key)
            kind = int if default is None else type(default)  # max_steps: int | None
            try:
                number = kind(value) if kind in (int, float) else value
            except ValueError:
                raise UserError(f"setting {text!r}: {key} needs a number, not {value!r}", "write settings like lr=5e-4,epochs=2") from None
            if key == "replay":
                replay = number
            else:
                overrides[key] = number
        return cls(text.replace("=", "").replace(",", "_"), overrides, replay)


def _score(rows: pd.DataFrame, n_boot: int, seed: int) -> dict[str, Any]:
    """The overall row of the evaluation table: micro-averaged accuracy (compliant object answers
    only) and the per-cell mode baseline."""
    o = evaluate_table(rows[["task", "property", "object_value", "hypothetical_value"]], n_boot=n_boot, seed=seed).iloc[-1]
    return {"accuracy": o["accuracy"], "ci_low": o["accuracy_ci_low"], "ci_high": o["accuracy_ci_high"],
            "n_correct": int(o["n_correct"]), "n": int(o["n_items"]), "mode_baseline": o["mode_baseline"]}


def sweep(config: SweepConfig) -> pd.DataFrame:
    """Train and score every setting; returns (and writes) the comparison table."""
    base = finetune_config(config)
    settings = [Setting.parse(t, base) for t in config.settings]  # before Study makes the run folder: a typo leaves none
    s = Study(dataclasses.replace(config, name=config.name or "finetune-sweep"))
    m1 = s.load(config.m1)
    m1_engine = s.engine(m1)
    train_objects = s.objects(m1_engine, s.train_items, f"{config.m1} on training tasks")
    self_train, self_val = s.self_data(train_objects, base)

    untrained_objects = s.objects(m1_engine, s.train_val_items, f"{config.m1} on training tasks' val items")
    untrained_hyps = ev.hypothetical_answers(m1_engine, s.train_val_pairs, s.untrained_prompts, s.cache, s.counter)
    untrained_rows = ev.score_rows(s.train_val_pairs, untrained_objects, untrained_hyps)
    untrained = _score(untrained_rows, config.n_boot, config.seed)
    table = [{"setting": "untrained", **untrained, "accuracy_vs_untrained_behaviour": untrained["accuracy"], "changed": 0.0, "train_s": 0.0}]
    for setting in settings:
        ft = dataclasses.replace(base, **setting.overrides)
        train_ex = s.examples(m1, self_train, s.replay_items(train_objects, setting.replay, len(self_train)), train_objects)
        start = time.perf_counter()
        result = s.finetune(setting.label, m1, train_ex, s.examples(m1, self_val), ft)
        trained_s = time.perf_counter() - start if result.trained else float("nan")
        row, rows = _evaluate(s, s.load(config.m1, adapter=result.adapter_dir), untrained_objects)
        vs = paired_stats(align(rows, untrained_rows), config.n_boot, config.seed)
        table.append({"setting": setting.label, **row, **{f"{k}_vs_untrained": vs[k] for k in ("diff", "diff_ci_low", "diff_ci_high", "p_value")},
                      "train_s": trained_s,
                      "final_val_loss": s.finetunes[setting.label]["final_val_loss"]})
        print(pd.DataFrame(table).to_string(index=False, float_format=lambda v: f"{v:.3f}"), flush=True)
    df = pd.DataFrame(table)
    s.run.write_table("sweep", df, csv=True)
    s.run.write_json("metrics.json", {"rows": df.to_dict(orient="records"), "finetunes": s.finetunes, "n_val_pairs": len(s.train_val_pairs)})
    return df


def _evaluate(s: Study, handle: ModelHandle, untrained_objects: dict[str, list[str]]) -> tuple[dict[str, Any], pd.DataFrame]:
    """A finetuned M1 on the training tasks' val items: against its own behaviour and untrained M1's;
    also its rows against its own behaviour."""
    c = s.config
    engine = s.engine(handle)
    objects = s.objects(engine, s.train_val_items, f"{handle.name} (finetuned) on training tasks' val items")
    hyps = ev.hypothetical_answers(engine, s.train_val_pairs, s.trained_prompts, s.cache, s.counter)
    rows = ev.score_rows(s.train_val_pairs, objects, hyps)
    own = _score(rows, c.n_boot, c.seed)
    old = _score(ev.score_rows(s.train_val_pairs, untrained_objects, hyps), c.n_boot, c.seed)
    return {**own, "accuracy_vs_untrained_behaviour": old["accuracy"], "changed": ev.changed_fraction(untrained_objects, objects)}, rows


def main(argv: Sequence[str] | None = None) -> int:
    return config_main(argv, prog="python -m experiments.finetune_sweep", doc=__doc__, config=SweepConfig, section="study",
                       run=lambda config, _preset: sweep(config))


if __name__ == "__main__":
    sys.exit(main())
