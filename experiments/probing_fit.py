"""Fitting the probing experiment's cells (`experiments.probing`): each cell's probes at every layer
of its subject, the subject × layer groups in forked worker processes (Linux), each fit on one
thread and seeded by its cell, so the rows and fits do not depend on the number of workers."""

from __future__ import annotations

import multiprocessing
import os
import sys
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from experiments.probing_plan import Cell
from introspect_mi.actstore import ActivationStore
from introspect_mi.errors import UserError
from probes.crossfit import CrossFit, cross_predict, score

if TYPE_CHECKING:
    from experiments.probing import ProbingConfig

PLACE = "resid_post"
Fits = dict[tuple[int, str], dict[int, CrossFit]]
"""(cell index, target) → layer → that cell's cross-fitted probe."""


def load_vectors(store: ActivationStore, layer: int, positions: Iterable[str]) -> dict[str, torch.Tensor]:
    """position → [records, d] at `layer`, one vector per record in record order."""
    out = {}
    for position in positions:
        x, meta = store.load(PLACE, layer, position, as_="torch")
        if len(meta) != len(store.records) or not (meta["record"].to_numpy() == store.records["record"].to_numpy()).all():
            raise UserError(f"{store.folder} holds other than one {position} vector per record", "capture again with positions p_last final")
        out[position] = x
    return out


def rows_of(cell: Cell, layer: int | None, result: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    test_run = (cell.test or cell.train).run
    return [{"experiment": cell.experiment, "subject": cell.subject, "property": cell.property, "target": target,
             "split": cell.split, "train_run": cell.train.run, "test_run": test_run, "layer": layer, **metrics, **cell.extra}
            for target, metrics in result.items()]


def fit_cell(cell: Cell, vectors: Mapping[str, torch.Tensor] | None, config: ProbingConfig) -> dict[str, CrossFit]:
    """A layered cell with inner folds (its layer is chosen on them) and, without transfer, the
    within-task permutations of the max-over-layers null; a fixed-feature one (E) with its own C
    grid, chosen in the inner folds of each outer training fold."""
    if not cell.layered:
        return cross_predict(cell.train.pool(None), replace(config, c_grid=config.input_c_grid))
    if cell.test is not None:
        return cross_predict(cell.train.pool(vectors), config, cell.test.pool(vectors), inner=True)
    return cross_predict(cell.train.pool(vectors), config, inner=True, permutations=config.permutations)


def fit_all(cells: Sequence[Cell], stores: Mapping[str, ActivationStore], layers: Mapping[str, Sequence[int]], config: ProbingConfig,
            progress: bool = True) -> tuple[list[dict[str, Any]], Fits]:
    """Every cell's result rows (the fixed-feature cells, then per subject and layer its layered
    cells, in cell order) and the layered cells' fits: one load per subject × layer (`layers`:
    subject → its layers), each fixed-feature cell once.

    Each fit runs on one thread (small matrices: threads cost more than they give, several-fold on a
    shared CPU); with `config.workers` > 1 the subject × layer groups run in that many forked
    processes. Every fit is seeded by its own cell, so the result is the same, byte for byte, with
    any number of workers (a test)."""
    jobs: list[Job] = [(None, None)] + [(subject, layer) for subject in stores for layer in layers[subject]
                                        if any(c.layered and c.subject == subject for c in cells)]
    sizes = [len(_job_cells(cells, job)) for job in jobs]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tqdm(total=sum(sizes), desc="probes", unit="cell", disable=not progress) as bar:
            done = []
            for size, result in zip(sizes, _map_jobs(jobs, cells, stores, config)):
                done.append(result)
                bar.update(size)
    finally:
        torch.set_num_threads(threads)
    fits: Fits = {}
    rows: list[dict[str, Any]] = []
    for job_rows, job_fits in done:
        rows += job_rows
        for (index, target, layer), fit in job_fits:
            fits.setdefault((index, target), {})[layer] = fit
    return rows, fits


Job = tuple[str | None, int | None]
"""(subject, layer) of a group of layered cells; (None, None): the fixed-feature cells."""
JobResult = tuple[list[dict[str, Any]], list[tuple[tuple[int, str, int], CrossFit]]]


def _job_cells(cells: Sequence[Cell], job: Job) -> list[tuple[int, Cell]]:
    subject, _ = job
    if subject is None:
        return [(i, c) for i, c in enumerate(cells) if not c.layered]
    return [(i, c) for i, c in enumerate(cells) if c.layered and c.subject == subject]


def _run_job(cells: Sequence[Cell], stores: Mapping[str, ActivationStore], config: ProbingConfig, job: Job) -> JobResult:
    """The rows and fits of one job's cells, in cell order."""
    subject, layer = job
    mine = _job_cells(cells, job)
    rows: list[dict[str, Any]] = []
    fits: list[tuple[tuple[int, str, int], CrossFit]] = []
    vectors = None
    if subject is not None:
        positions = sorted({s.position for _, c in mine for s in (c.train, c.test) if s is not None and s.position})
        vectors = load_vectors(stores[subject], layer, positions)
    for index, cell in mine:
        result = fit_cell(cell, vectors, config)
        if layer is not None:  # the layered curves' fits (for the nested layer choice); fixed-feature cells keep rows only
            fits += [((index, target, layer), fit) for target, fit in result.items()]
        rows += rows_of(cell, layer, {t: score(fit, config) for t, fit in result.items()})
    return rows, fits


_FORKED: tuple[Sequence[Cell], Mapping[str, ActivationStore], ProbingConfig] | None = None
"""What forked workers read (inherited, not pickled): the cells, stores and config of the running `fit_all`."""


def _forked_job(job: Job) -> JobResult:
    """One job in a worker. An exception that does not unpickle would leave the pool waiting
    forever, so anything but a UserError (which pickles as itself) comes back as a RuntimeError
    carrying the worker's traceback."""
    torch.set_num_threads(1)
    assert _FORKED is not None
    try:
        return _run_job(*_FORKED, job)
    except UserError:
        raise
    except Exception as exc:
        raise RuntimeError(f"probing worker, job {job}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}") from None


def default_workers() -> int:
    """One worker per CPU core this process may use, on Linux; elsewhere 1 (forking a process that
    has loaded torch is not safe on macOS, and there is no fork on Windows)."""
    return len(os.sched_getaffinity(0)) if sys.platform == "linux" else 1


def _map_jobs(jobs: Sequence[Job], cells: Sequence[Cell], stores: Mapping[str, ActivationStore], config: ProbingConfig) -> Iterator[JobResult]:
    """Each job's result, in job order: here, or in `config.workers` forked processes (Linux)."""
    workers = min(config.workers or default_workers(), len(jobs))
    if workers <= 1 or sys.platform != "linux":
        yield from (_run_job(cells, stores, config, job) for job in jobs)
        return
    global _FORKED
    _FORKED = (cells, stores, config)
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            yield from pool.imap(_forked_job, jobs)
    finally:
        _FORKED = None
