"""Which engine a mechanistic experiment reads the model through: raw hooks (the default, the
fastest), nnsight traces (the same numbers), or nnsight traces run on NDIF (`--remote HUB_ID`: the
study's M1 as NDIF hosts it, named by its hub id; no weights here). The study itself (answers,
labels) was made with a local copy of that checkpoint; NDIF serves base weights, so only the
untrained subject runs remotely.

    python -m experiments.capture --preset quick --engine nnsight
    HF_HUB_OFFLINE=0 TRANSFORMERS_OFFLINE=0 NDIF_API_KEY=... python -m experiments.capture --preset paper \
        --engine nnsight --subjects untrained --remote meta-llama/Llama-3.1-70B-Instruct
"""

from __future__ import annotations

from collections.abc import Sequence

from experiments.mech import StudyView, Subject
from introspect_mi.errors import UserError
from introspect_mi.models import ModelHandle
from introspect_mi.ndif import check_api_key, check_remote, remote_handle
from introspect_mi.nnsight_engine import NnsightEngine

ENGINES = ("hooks", "nnsight")


def check_engine(engine: str, remote: str, subjects: Sequence[str]) -> None:
    """Refuse an unknown engine, --remote without nnsight or with a finetuned subject (NDIF serves
    base weights), and --remote without an API key: before the study is read or anything loads."""
    if engine not in ENGINES:
        raise UserError(f"unknown engine {engine!r}", f"use one of: {', '.join(ENGINES)}")
    if remote and engine != "nnsight":
        raise UserError("--remote runs nnsight traces on NDIF", "add --engine nnsight")
    if remote and set(subjects) - {"untrained"}:
        raise UserError(f"--remote cannot run the subject(s) {', '.join(sorted(set(subjects) - {'untrained'}))}: NDIF serves base weights, not this study's adapters",
                        "pass --subjects untrained with --remote")
    if remote:
        check_api_key()


def subject_handle(view: StudyView, subject: Subject, remote: str) -> ModelHandle:
    """The subject's model: loaded here, or (`remote`: a hub id) its config and tokenizer from the
    hub after the remote checks (hub id, hub allowed, NDIF reachable)."""
    if not remote:
        return view.load(subject)
    check_remote(remote)
    return remote_handle(remote)


def engine_of(handle: ModelHandle, engine: str, remote: str) -> NnsightEngine | None:
    """The nnsight engine to pass to capture / run_pairs (None: raw hooks)."""
    return NnsightEngine.of(handle, remote=bool(remote)) if engine == "nnsight" else None
