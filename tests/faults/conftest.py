"""Shared set-up of the fault suite, and its figures printed at the end of the pytest run."""

from __future__ import annotations

import resource
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.experiments.conftest import TinyStudy, tiny_study  # noqa: F401  (fixtures for the patching stage)
from tests.experiments.test_patching_experiment import two_value_study  # noqa: F401
from tests.faults.harness import stop_server

TALLY: Counter[str] = Counter()
"""faults injected / survived (the rerun completed with no recomputation beyond the batch in
flight) / equal (its results equal an uninterrupted run's); concurrent pairs tried / consistent."""


@pytest.fixture(scope="session", autouse=True)
def fork_server() -> Iterator[None]:
    """One fork server for the session (started by the first victim), stopped and reaped at its end."""
    yield
    stop_server()


@pytest.fixture(scope="session")
def fault_ctx(tiny_llama_dir: Path, tiny_gemma_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What every victim needs: the tiny models and a checkpoints folder of its own."""
    checkpoints = tmp_path_factory.mktemp("fault_checkpoints")
    return {"llama": str(tiny_llama_dir), "gemma": str(tiny_gemma_dir), "env": {"INTROSPECT_MI_CHECKPOINTS": str(checkpoints)}}


@pytest.fixture(scope="module")
def patching_ctx(two_value_study: TinyStudy, monkeypatch_module: pytest.MonkeyPatch) -> dict:
    """The tiny study with two values to steer, and its capture (untrained and self), for patching victims."""
    from experiments.capture import main

    monkeypatch_module.setenv("INTROSPECT_MI_RUNS", str(two_value_study.runs))
    monkeypatch_module.setenv("INTROSPECT_MI_CHECKPOINTS", str(two_value_study.checkpoints))
    assert main(["--study", "tiny", "--subjects", "untrained", "self", "--name", "mech-patch", "--explorer-items", "2"]) == 0
    return {"patching_runs": str(two_value_study.runs), "patching_checkpoints": str(two_value_study.checkpoints)}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def pytest_terminal_summary(terminalreporter) -> None:
    if TALLY:
        t = TALLY
        terminalreporter.write_line(
            f"fault injection: {t['injected']} faults injected (SIGKILL/SIGTERM), {t['survived']} survived "
            f"(rerun completed, nothing recomputed beyond the batch in flight), {t['equal']} with results equal "
            f"to an uninterrupted run's; {t['concurrent']} concurrent pairs, {t['consistent']} consistent"
        )
        me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        # Whole-session figures: they are the fault suite's own only when it runs alone (pytest tests/faults).
        terminalreporter.write_line(f"CPU time of this pytest session (user+sys): pytest {me.ru_utime + me.ru_stime:.0f} s, "
                                    f"its child processes (fault victims and any other test's) {children.ru_utime + children.ru_stime:.0f} s")
