"""Kill each long stage at seeded points, rerun it, and hold the result to an uninterrupted run's.

For each stage (tests/faults/stages.py) and each of SIGKILL and SIGTERM, five victims die at
seeded trapped calls of an uninterrupted run (two of them inside a write: a torn `os.write`, a
staged file torn before its rename, or right before an fsync or a rename), each in a fresh
folder; then the same work runs again in that folder. It must finish, the work of the killed
run plus the rerun must not exceed an uninterrupted run's by more than the batch in flight, its
results must equal the uninterrupted run's (bytes; JSON values where a file records time), and
no temp file, staging folder or resume checkpoint may be left. Two identical runs started
together on one folder must both finish, or one refuse with a one-line error, with the same
result. The figures (faults injected, survived, equal) are printed at the end of the run.
"""

from __future__ import annotations

import signal
import zlib
from pathlib import Path

import pytest

from tests.faults.conftest import TALLY
from tests.faults.harness import Outcome, kill_points, leftovers, run_victims, signal_name
from tests.faults.stages import STAGES

SIGNALS = [signal.SIGKILL, signal.SIGTERM]
FAST = [s for s in STAGES if s != "patching"]
ALL = [*FAST, *(pytest.param(s, marks=pytest.mark.slow) for s in STAGES if s == "patching")]
_clean: dict[str, tuple[Outcome, dict]] = {}


@pytest.fixture()
def ctx(stage: str, fault_ctx: dict, request: pytest.FixtureRequest) -> dict:
    return {**fault_ctx, **request.getfixturevalue("patching_ctx")} if stage == "patching" else fault_ctx


def fresh(stage: str, folder: Path, ctx: dict) -> Path:
    """A new folder for a victim, prepared as the stage needs."""
    folder.mkdir(parents=True)
    if STAGES[stage].prepare is not None:
        STAGES[stage].prepare(folder, ctx)
    return folder


def clean_run(stage: str, ctx: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[Outcome, dict]:
    """An uninterrupted run of the stage (once per session): its trapped calls, work and results."""
    if stage not in _clean:
        scratch = tmp_path_factory.mktemp("clean")
        fresh(stage, scratch / "work", ctx)
        (out,) = run_victims([(stage, scratch / "work", ctx, 0, 0)], scratch)
        assert out.exitcode == 0 and out.done, out.log[-3000:]
        assert out.traps, "no trapped call: nothing to kill"
        _clean[stage] = out, STAGES[stage].snapshot(scratch / "work")
    return _clean[stage]


@pytest.mark.parametrize("sig", SIGNALS, ids=signal_name)
@pytest.mark.parametrize("stage", ALL)
def test_killed_stage_reruns_to_the_uninterrupted_result(stage: str, sig: int, ctx: dict, tmp_path: Path,
                                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    clean, want = clean_run(stage, ctx, tmp_path_factory)
    points = kill_points(clean, seed=zlib.crc32(f"{stage}/{signal_name(sig)}".encode()))
    assert len(points) == 5
    folders = [fresh(stage, tmp_path / f"k{k}", ctx) for k in points]
    killed = run_victims([(stage, f, ctx, k, sig) for f, k in zip(folders, points)], tmp_path)
    reruns = run_victims([(stage, f, ctx, 0, 0) for f in folders], tmp_path)
    problems = []
    for k, folder, victim, rerun in zip(points, folders, killed, reruns):
        where = f"killed by {signal_name(sig)} at call {k} ({clean.traps[k - 1]})"
        print(where)
        TALLY["injected"] += 1
        assert victim.exitcode == -sig and victim.traps == clean.traps[:k], f"{where}: the fault was not injected as planned"
        if not (rerun.exitcode == 0 and rerun.done):
            problems.append(f"{where}: the rerun failed (exit {rerun.exitcode}): {rerun.log[-1500:]}")
            continue
        extra = victim.units + rerun.units - clean.units
        if extra > STAGES[stage].allowance:
            problems.append(f"{where}: {extra} units of work were done again, more than the batch in flight ({STAGES[stage].allowance})")
            continue
        if rerun.work != clean.work[len(clean.work) - len(rerun.work):]:
            problems.append(f"{where}: the rerun did not resume at a batch boundary (its batches {rerun.work}, "
                            f"an uninterrupted run's {clean.work}): part of a batch survived the kill")
            continue
        TALLY["survived"] += 1
        got = STAGES[stage].snapshot(folder)
        if got != want:
            differ = sorted(n for n in set(got) | set(want) if got.get(n) != want.get(n))
            problems.append(f"{where}: results differ from an uninterrupted run's in {differ}")
            continue
        TALLY["equal"] += 1
        if left := leftovers(folder):
            problems.append(f"{where}: left behind {left}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("stage", ALL)
def test_two_identical_runs_started_together_agree(stage: str, ctx: dict, tmp_path: Path,
                                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    _, want = clean_run(stage, ctx, tmp_path_factory)
    folder = fresh(stage, tmp_path / "shared", ctx)
    both = run_victims([(stage, folder, ctx, 0, 0)] * 2, tmp_path)
    TALLY["concurrent"] += 1
    for out in both:
        assert (out.exitcode == 0 and out.done) or (out.exitcode == 2 and out.refused), f"exit {out.exitcode}: {out.log[-2000:]}"
    assert any(out.exitcode == 0 for out in both), [out.refused for out in both]
    assert STAGES[stage].snapshot(folder) == want
    TALLY["consistent"] += 1
