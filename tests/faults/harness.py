"""Fault injection: victim processes forked from a preloaded fork server, killed at seeded calls.

A victim runs one stage's work (tests/faults/stages.py) in a fresh folder or one left by an
earlier victim. Before it starts, every trap of the stage wraps a function (`module:attr`): each
call is logged to the victim's ledger, and the k-th trapped call (`kill_at`) sends the victim
SIGKILL or SIGTERM from inside that call. Modes: `enter` dies on entry; `half` first tears the
write in flight (`os.write` writes half its bytes; `os.replace` truncates its source, the staged
file, to half) and then dies. Work traps also log how many units of work (prompts, optimizer
steps, records, SAEs, subjects) the call computes, so the parent can count what a rerun redoes.

The same code and folder state give the same sequence of trapped calls, so the k-th call of an
uninterrupted run is the k-th call of a victim: points are drawn from that run's ledger with a
seeded RNG, and each victim's ledger is checked against it up to the kill.

Why a fork server: a fresh interpreter spends ~4 s importing torch, transformers, peft and
sae-lens; forking from a server that imported them once costs milliseconds. The server is
started before any torch thread exists in it and each victim runs torch single-threaded.
"""

from __future__ import annotations

import faulthandler
import importlib
import multiprocessing
import os
import signal
import stat
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRELOAD = [
    "torch", "transformers", "transformers.models.llama.modeling_llama", "transformers.models.gemma3.modeling_gemma3",
    "peft", "peft.tuners.lora", "safetensors.torch", "sae_lens", "sae_lens.training.sae_trainer", "sae_lens.saes.topk_sae",
    "introspect_mi.evaluation", "introspect_mi.finetune", "introspect_mi.capture", "introspect_mi.saes.train",
    "experiments.patching", "experiments.capture",
    "tests.test_finetune", "tests.test_capture", "tests.saes.test_train", "tests.faults.stages", "tests.faults.warm",
]
WRITE_TRAPS = ("os:write", "os:fsync", "os:replace", "os:rename")
TIMEOUT_S = 300

_raw_write = os.write
_context: Any = None


@dataclass(frozen=True)
class Trap:
    """A function to wrap: `where` is `module:attr` or `module:Class.attr`, as its callers look it up."""

    where: str
    mode: str = "enter"  # "enter" or "half" (tear the write in flight, then die)
    units: Callable[..., int] | None = None  # work units computed by a call (None: not a work trap)


COMMON_TRAPS = (Trap("os:write", "half"), Trap("os:fsync"), Trap("os:replace", "half"), Trap("os:rename"))


@dataclass
class Outcome:
    """What one victim did: its exit code (−signal when killed), trapped calls, work units, log."""

    exitcode: int | None
    traps: list[str]
    work: list[int]
    done: bool
    refused: str | None
    log: str = field(repr=False, default="")

    @property
    def units(self) -> int:
        return sum(self.work)


def server() -> Any:
    """The fork-server context, its preload set on first use (the server starts with the first victim)."""
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def stop_server() -> None:
    """Stop the fork server and reap it, so that its victims' CPU time is counted as this process's
    children's (`/usr/bin/time`, `getrusage`): an unreaped server takes their time with it."""
    from multiprocessing import forkserver

    if _context is not None:
        forkserver._forkserver._stop()


def run_victims(jobs: Sequence[tuple[str, Path, dict, int, int]], scratch: Path) -> list[Outcome]:
    """Start every (stage, folder, ctx, kill_at, signal) at once, wait for all, read their ledgers."""
    procs = []
    for i, (stage, folder, ctx, kill_at, sig) in enumerate(jobs):
        ledger = scratch / f"victim-{time.monotonic_ns()}-{i}"
        p = server().Process(target=victim, args=(stage, str(folder), ctx, kill_at, sig, str(ledger)), daemon=True)
        p.start()
        procs.append((p, ledger))
    deadline = time.monotonic() + TIMEOUT_S
    out = []
    for p, ledger in procs:
        p.join(max(1.0, deadline - time.monotonic()))
        if p.exitcode is None:
            p.kill()
            p.join()
            raise AssertionError(f"a victim ran past {TIMEOUT_S} s: {_read(ledger.with_suffix('.log'))[-2000:]}")
        out.append(_outcome(p.exitcode, ledger))
    return out


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _outcome(exitcode: int | None, ledger: Path) -> Outcome:
    traps, work, done, refused = [], [], False, None
    for line in _read(ledger).splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "trap":
            traps.append(rest)
        elif kind == "work":
            work.append(int(rest))
        elif kind == "done":
            done = True
        elif kind == "refused":
            refused = rest
    return Outcome(exitcode, traps, work, done, refused, _read(ledger.with_suffix(".log")))


# --- in the victim -----------------------------------------------------------------------------


def victim(stage: str, folder: str, ctx: dict, kill_at: int, sig: int, ledger: str) -> None:
    """The forked process: traps installed, the stage's work run, the outcome logged."""
    log_fd = os.open(ledger + ".log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    faulthandler.dump_traceback_later(TIMEOUT_S - 5, exit=True)  # a hung victim says where
    import torch

    from introspect_mi.errors import UserError
    from tests.faults.stages import STAGES

    torch.set_num_threads(1)
    os.environ.update(ctx.get("env", {}))
    fd = os.open(ledger, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    note = lambda text: _raw_write(fd, (text + "\n").encode())  # noqa: E731
    st = STAGES[stage]
    _install([*COMMON_TRAPS, *st.traps], kill_at, sig, note, os.path.abspath(folder))
    try:
        st.run(Path(folder), ctx)
    except UserError as exc:
        text = str(exc)
        note("refused " + text.replace("\n", " "))
        os._exit(2 if "\n" not in text else 3)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    note("done")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown: nothing of the fork server's state to clean up


def _install(traps: Sequence[Trap], kill_at: int, sig: int, note: Callable[[str], Any], folder: str) -> None:
    count = [0]

    def die() -> None:
        os.kill(os.getpid(), sig)
        time.sleep(30)
        os._exit(97)  # the signal was handled and ignored: a victim that cannot be killed

    for trap in traps:
        module, _, path = trap.where.partition(":")
        owner: Any = importlib.import_module(module)
        *parents, attr = path.split(".")
        for name in parents:
            owner = getattr(owner, name)
        setattr(owner, attr, _wrapped(trap, getattr(owner, attr), count, kill_at, note, die, folder))


def _in_folder(where: str, args: tuple, folder: str) -> bool:
    """Whether an os-level write, fsync, replace or rename touches a file in the victim's folder."""
    if where in ("os:write", "os:fsync"):
        try:
            path = os.readlink(f"/proc/self/fd/{args[0]}")
        except OSError:
            return False
        if where == "os:write" and not stat.S_ISREG(os.fstat(args[0]).st_mode):
            return False
    else:
        path = os.fspath(args[0])
    return os.path.abspath(path).startswith(folder + os.sep)


def _wrapped(trap: Trap, real: Callable[..., Any], count: list[int], kill_at: int, note: Callable[[str], Any],
             die: Callable[[], None], folder: str) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if trap.where.startswith("os:") and not _in_folder(trap.where, args, folder):
            return real(*args, **kwargs)  # pipes, terminals, caches outside the run: not this stage's results
        count[0] += 1
        note(f"trap {trap.where}")
        if trap.units is not None:
            note(f"work {trap.units(*args, **kwargs)}")
        if count[0] == kill_at:
            if trap.mode == "half" and trap.where == "os:write":
                data = bytes(args[1])
                _raw_write(args[0], data[: len(data) // 2])
            elif trap.mode == "half" and trap.where == "os:replace":
                os.truncate(args[0], os.path.getsize(args[0]) // 2)
            die()
        return real(*args, **kwargs)

    return wrapper


# --- choosing the points -----------------------------------------------------------------------


def kill_points(clean: Outcome, seed: int, n: int = 5, in_writes: int = 2) -> list[int]:
    """`n` seeded trapped-call numbers (1-based) of an uninterrupted run, `in_writes` of them inside writes."""
    import random

    rng = random.Random(seed)
    calls = list(range(1, len(clean.traps) + 1))
    writes = [k for k in calls if clean.traps[k - 1] in WRITE_TRAPS]
    chosen = set(rng.sample(writes, min(in_writes, len(writes))))
    rest = [k for k in calls if k not in chosen]
    chosen |= set(rng.sample(rest, min(n - len(chosen), len(rest))))
    return sorted(chosen)


def leftovers(folder: Path) -> list[str]:
    """Temp files, staging folders and resume checkpoints still there after a finished run."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if leftovers_of(p))


def leftovers_of(path: Path) -> bool:
    return path.name.endswith(".tmp") or ".partial" in path.name or path.name.endswith(".resume")


def signal_name(sig: int) -> str:
    return signal.Signals(sig).name
