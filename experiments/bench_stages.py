"""The per-stage timing table of a finished `make study`, read from its run folders.

`python -m experiments.benchmark stages [--study NAME]`. Every experiment records each stage's
wall time, CPU time and peak resident memory in its run folder (`introspect_mi.timing`,
`timings.json`): the behavioural study in `runs/<study>/`, capture in `runs/mech-<study>/`,
probing, patching and the SAE features in their subfolders. This reads the latest invocation of
each, in pipeline order, and writes the table to runs/benchmarks/stages.json (and prints it as
Markdown). Time outside the clocks (interpreter start, imports, reading the study) is each
experiment's row "outside stages" only where the invocation measured it; a fresh clone's set-up
(venv, install, model conversion) is not in any run folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from introspect_mi.errors import UserError
from introspect_mi.paths import runs_dir
from introspect_mi.durable import atomic_write_text
from introspect_mi.timing import TIMINGS_FILE, read_invocations

DEFAULT_STUDY = "study-smollm2-135m-instruct-gemma3-270m"
EXPERIMENTS = (  # (experiment, its folder relative to runs/, given the study name)
    ("behavioral", "{study}"),
    ("capture", "mech-{study}"),
    ("probing", "mech-{study}/probing"),
    ("patching", "mech-{study}/patching"),
    ("sae_features", "mech-{study}/sae"),
)


def stage_rows(root: Path, study: str) -> list[dict[str, Any]]:
    """One row per recorded stage of the latest invocation of each experiment, in pipeline order."""
    rows: list[dict[str, Any]] = []
    for experiment, pattern in EXPERIMENTS:
        runs = read_invocations(root / pattern.format(study=study) / TIMINGS_FILE)
        if not runs:
            continue
        last = runs[-1]
        for st in last["stages"]:
            rows.append({"experiment": experiment, "started_utc": last["started_utc"], **st})
        outside = last["seconds"] - sum(st["seconds"] for st in last["stages"])
        rows.append({"experiment": experiment, "stage": "outside stages (in the clock's lifetime)", "seconds": round(outside, 2)})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table as Markdown: minutes, CPU minutes, peak resident GB, with per-experiment totals."""
    lines = ["| experiment | stage | wall min | CPU min | peak RSS GB |", "|---|---|---:|---:|---:|"]
    totals: dict[str, float] = {}
    for r in rows:
        totals[r["experiment"]] = totals.get(r["experiment"], 0.0) + r["seconds"]
        cpu = f"{r['cpu_seconds'] / 60:.1f}" if "cpu_seconds" in r else ""
        rss = f"{r['rss_peak_mb'] / 1024:.2f}" if "rss_peak_mb" in r else ""
        lines.append(f"| {r['experiment']} | {r['stage']} | {r['seconds'] / 60:.1f} | {cpu} | {rss} |")
    for experiment, seconds in totals.items():
        lines.append(f"| **{experiment}** | total | **{seconds / 60:.1f}** | | |")
    lines.append(f"| **all** | | **{sum(totals.values()) / 60:.1f}** | | |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    root = runs_dir()
    rows = stage_rows(root, args.study)
    if not rows:
        raise UserError(f"no {TIMINGS_FILE} under {root} for the study {args.study!r}",
                        "run `make study` (or python -m experiments.behavioral --preset quick) first, or name the study with --study")
    out = root / "benchmarks" / "stages.json"
    atomic_write_text(out, json.dumps({"benchmark": "stages", "study": args.study, "rows": rows}, indent=1) + "\n")
    print(markdown(rows))
    print(f"wrote {out}")
    return 0


def add_parser(sub: Any) -> None:
    """Register the `stages` subcommand."""
    p = sub.add_parser("stages", help="per-stage wall time, CPU time and peak memory of a finished make study (read from its run folders)")
    p.add_argument("--study", default=DEFAULT_STUDY, help="the behavioural study's run name (runs/<study>/; mech runs are runs/mech-<study>/)")
    p.set_defaults(run=run)
