"""The long stages under fault injection, each on tiny random models and tiny data.

A stage is the work a victim runs (`run(folder, ctx)`: the same call resumes what a killed one
left), the traps that count its work, how much work a kill may cost (`allowance`: the batch in
flight, in the stage's units) and `snapshot(folder)`: its results, with the fields that record
wall-clock time or the run's history (seconds, dates, `resumed_from`) left out, compared as
bytes or as exact JSON values.

| stage | work unit | allowance (the batch in flight) |
|---|---|---|
| object / hypothetical answers | a prompt sent to the model | one cache chunk (4 prompts) |
| finetune | an optimizer step | one checkpoint interval (`save_every` = 2 steps) |
| capture | a record captured | one shard (2 records) |
| SAE training | an SAE trained (3 in a row) | the SAE in training |
| patching | a subject patched (2 in a row) | the subject in flight |
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from tests.faults.harness import Trap, leftovers_of


@dataclass(frozen=True)
class Stage:
    run: Callable[[Path, dict], None]
    snapshot: Callable[[Path], dict[str, Any]]
    traps: tuple[Trap, ...]
    allowance: int
    prepare: Callable[[Path, dict], None] | None = None  # runs in the test process before a fresh folder's first victim


def _files(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """relative path → bytes of every result file (locks, leftovers and skipped names left out)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock") and p.name not in skip and not leftovers_of(p)}


def _json_without(path: Path, *keys: str) -> Any:
    obj = json.loads(path.read_text())
    for key in keys:
        *parents, last = key.split(".")
        node = obj
        for name in parents:
            node = node.get(name, {})
        node.pop(last, None)
    return obj


# --- object-level and hypothetical answers (introspect_mi.answers through evaluation) --------------


def _engine(model_dir: str):
    from introspect_mi.inference import Engine
    from introspect_mi.models import load

    return Engine(load(model_dir), batch_size=1, progress=False)  # cache chunks of 4 prompts


def _answers_result(folder: Path, got: Any) -> None:
    """The answers into a run folder, as the study writes its results."""
    from introspect_mi.store import RunDir

    RunDir.create(folder, "run", {"stage": "answers"}, seed=0).write_json("answers.json", got)


def run_object(folder: Path, ctx: dict) -> None:
    from introspect_mi import evaluation as ev
    from introspect_mi.inference import Decoding
    from introspect_mi.prompts import PromptConfig

    items = ev.load_task_items(["animals"], "val", 12, 0)
    got = ev.object_answers(_engine(ctx["llama"]), items, PromptConfig(), folder / "cache", decoding=Decoding(2))
    _answers_result(folder, got)


def run_hypothetical(folder: Path, ctx: dict) -> None:
    from introspect_mi import evaluation as ev
    from introspect_mi.inference import Decoding
    from introspect_mi.prompts import PromptConfig

    pairs = ev.make_pairs(ev.load_task_items(["animals"], "val", 6, 0), ["first_character", "second_character"])
    got = ev.hypothetical_answers(_engine(ctx["gemma"]), pairs, PromptConfig(), folder / "cache", decoding=Decoding(2))
    _answers_result(folder, got)


def answers_snapshot(folder: Path) -> dict[str, Any]:
    """The answers the run returned (the cache's file format is the store's business)."""
    return {"answers.json": (folder / "run" / "answers.json").read_bytes()}


GENERATE = Trap("introspect_mi.inference:Engine.generate", units=lambda engine, prompts, *a, **k: len(prompts))


# --- finetune (introspect_mi.finetune: checkpoints every save_every steps, resume) -------------------


FINETUNE = dict(rank=4, alpha=8.0, lr=1e-2, epochs=2, batch_size=2, grad_accum=1, save_every=2, warmup_ratio=0.25, dropout=0.1)


def run_finetune(folder: Path, ctx: dict) -> None:
    from introspect_mi.finetune import train
    from introspect_mi.finetune_config import FinetuneConfig
    from introspect_mi.models import load
    from tests.test_finetune import examples

    handle = load(ctx["llama"])
    train(handle, examples(handle, 5), examples(handle, 1, offset=5), FinetuneConfig(**FINETUNE), folder / "adapter", progress=False)


def finetune_snapshot(folder: Path) -> dict[str, Any]:
    from introspect_mi.models import ADAPTER_SIDECAR

    files = _files(folder / "adapter", skip=(ADAPTER_SIDECAR,))
    return {**files, ADAPTER_SIDECAR: _json_without(folder / "adapter" / ADAPTER_SIDECAR, "wall_s", "resumed_from")}


# --- capture (introspect_mi.capture into actstore shards, resume after the last complete shard) -----


def run_capture(folder: Path, ctx: dict) -> None:
    from introspect_mi.capture import capture
    from introspect_mi.models import load
    from tests.test_capture import prompts, spec

    handle = load(ctx["llama"])
    capture(handle, prompts(handle), spec(handle, batch_size=1, shard=2), folder / "store", progress=False)


FORWARD = Trap("introspect_mi.capture:forward", units=lambda handle, encoded, *a, **k: len(encoded))


# --- SAE training (introspect_mi.saes.train: staged, renamed when complete, reused) ----------------


def run_saes(folder: Path, ctx: dict) -> None:
    from introspect_mi.saes.train import train_sae
    from tests.saes.test_train import CFG, D, PLACE, chunks, low_rank_vectors

    data = low_rank_vectors(n=1200)
    cfg = replace(CFG, training_samples=2048, eval_samples=128, shuffle_buffer=512)  # 8 steps each
    for seed in range(3):
        train_sae(chunks(data), D, replace(cfg, seed=seed), folder / f"sae-{seed}", PLACE, fingerprint="tiny-fp")


def saes_snapshot(folder: Path) -> dict[str, Any]:
    from introspect_mi.saes.load import SIDECAR_FILE

    out: dict[str, Any] = _files(folder, skip=(SIDECAR_FILE,))
    for sidecar in sorted(folder.glob(f"sae-*/{SIDECAR_FILE}")):
        out[str(sidecar.relative_to(folder))] = _json_without(sidecar, "training.seconds", "created_utc")
    return out


FIT = Trap("introspect_mi.saes.train:_fit", units=lambda *a, **k: 1)


# --- patching (experiments.patching: A–E per subject, a finished subject kept in subjects/<label>/) ---


def prepare_patching(folder: Path, ctx: dict) -> None:
    """A copy of the tiny study and its capture: patching writes into the capture run."""
    import shutil

    shutil.copytree(ctx["patching_runs"], folder / "runs")


def run_patching(folder: Path, ctx: dict) -> None:
    import os

    from experiments.patching import main

    os.environ.update(INTROSPECT_MI_RUNS=str(folder / "runs"), INTROSPECT_MI_CHECKPOINTS=ctx["patching_checkpoints"])
    main(["--debug", "--study", "tiny", "--capture", "mech-patch", "--subjects", "untrained", "self", *PATCHING_ARGS])


# Every experiment A–E runs, on as little as it takes (the tiny study's animals items, c vs d); --min-gap 0:
# random tiny weights give clean gaps far below the preset's 0.5, and patching refuses to run without a pair.
PATCHING_ARGS = (
    "--tasks", "animals", "--properties", "first_character", "--pairs-per-group", "1", "--pair-candidates", "2", "--min-gap", "0",
    "--exact-pairs", "1", "--exact-cells", "2", "--steer-task", "animals", "--steer-property", "first_character",
    "--steer-items", "4", "--steer-scales", "4", "--n-random", "1", "--concepts", "cat", "--baseline-words", "fox",
    "--concept-items", "1", "--concept-scales", "4",
)


PATCHING_TIMES = ("seconds", "load_average_1min_start", "load_average_1min", "torch_threads")


def patching_snapshot(folder: Path) -> dict[str, Any]:
    """Tables as bytes, metrics without timings; run-history files (provenance, stages, report
    with its timings, timings.json) only as present."""
    out_dir = folder / "runs" / "mech-patch" / "patching"
    history = ("provenance.json", "stages.json", "report.html", "metrics.json", "timings.json")
    out: dict[str, Any] = _files(out_dir, skip=history)
    for sub in sorted(out_dir.glob("subjects/*/metrics.json")):
        out[str(sub.relative_to(out_dir))] = _json_without(sub, "seconds")
    metrics = _json_without(out_dir / "metrics.json", *PATCHING_TIMES)
    out["metrics.json"] = {**metrics, "subjects": {k: {**v, "seconds": None} for k, v in metrics["subjects"].items()}}
    out["history"] = sorted(n for n in history if (out_dir / n).is_file())
    out["stages"] = sorted(json.loads((out_dir / "stages.json").read_text()))
    return out


STAGES: dict[str, Stage] = {
    "object answers": Stage(run_object, answers_snapshot, (GENERATE,), allowance=4),
    "hypothetical answers": Stage(run_hypothetical, answers_snapshot, (GENERATE,), allowance=4),
    "finetune": Stage(run_finetune, finetune_snapshot, (
        Trap("torch.optim:AdamW.step", units=lambda *a, **k: 1), Trap("torch:save"), Trap("peft.peft_model:safe_save_file"),
    ), allowance=FINETUNE["save_every"]),
    "capture": Stage(run_capture, lambda folder: _files(folder / "store"), (FORWARD,), allowance=2),
    "SAE training": Stage(run_saes, saes_snapshot, (FIT, Trap("torch.optim:Adam.step"), Trap("sae_lens.saes.sae:save_file")), allowance=1),
    "patching": Stage(run_patching, patching_snapshot, (
        Trap("experiments.patching:run_subject", units=lambda *a, **k: 1), Trap("experiments.patching:run_pairs"),
        Trap("experiments.patching:run_steering"), Trap("experiments.patching:run_concepts"),
    ), allowance=1, prepare=prepare_patching),
}

torch.set_num_threads(1)  # the fork server imports this module: its victims inherit one thread
