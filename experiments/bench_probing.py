"""Probing in one process vs in forked workers, on the quick study's activation stores.

`python -m experiments.benchmark probing [--preset quick] [--workers N]`. Lays out the cells the
probing experiment fits (`experiments.probing.plan`, the preset's `[probing]` section), fits them
all once with one worker and once with N (default: one per CPU core on Linux, as the experiment does),
and checks that the two runs' tables are equal to the byte. Each fit runs on one thread either
way; the workers split the subject × layer groups. Needs the study and its capture (`make
study`, or `python -m experiments.capture --preset quick`). Result: runs/benchmarks/probing.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any

from experiments.bench_common import save_result
from experiments.common import load_preset
from introspect_mi import config as cfg


@dataclass
class ProbingBench:
    subjects: list[str]
    cells: int
    probes: int
    workers: int
    seconds_one_process: float
    seconds_workers: float
    speedup: float
    tables_equal: bool
    cpu_count: int
    load_average: float


def run(args: argparse.Namespace) -> ProbingBench:
    from experiments.probing import ProbingConfig, plan, run_cells
    from experiments.probing_fit import default_workers

    config = cfg.build(ProbingConfig, load_preset(args.preset, "probing"), argparse.Namespace())
    p = plan(config, args.preset)
    workers = args.workers or default_workers()
    timed: dict[int, tuple[Any, float]] = {}
    for n in (1, workers):
        print(f"fitting {len(p.cells)} cells with {n} worker(s)…", flush=True)
        start = time.perf_counter()
        got = run_cells(p.cells, p.stores, p.layers, dataclasses.replace(config, workers=n))
        timed[n] = (got, time.perf_counter() - start)
    (one, t1), (many, tn) = timed[1], timed[workers]
    equal = all(a.equals(b) for a, b in zip(one, many))
    result = ProbingBench(subjects=list(p.stores), cells=len(p.cells), probes=len(one.table), workers=workers,
                          seconds_one_process=round(t1, 1), seconds_workers=round(tn, 1), speedup=round(t1 / tn, 2),
                          tables_equal=equal, cpu_count=os.cpu_count() or 1, load_average=os.getloadavg()[0])
    print(f"{result.probes} probes: one process {t1:.1f} s, {workers} workers {tn:.1f} s = {t1 / tn:.2f}×; tables equal: {equal}")
    save_result("probing", result)
    return result


def add_parser(sub: Any) -> None:
    """Register the `probing` subcommand."""
    p = sub.add_parser("probing", help="probing in one process vs forked workers on the study's stores (same tables, the ratio)")
    p.add_argument("--preset", default="quick", help="quick | paper | path/to/preset.toml (its [probing] section)")
    p.add_argument("--workers", type=int, default=0, help="workers of the parallel run (0: one per CPU core)")
    p.set_defaults(run=run)

