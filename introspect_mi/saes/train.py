"""Train a TopK SAE with sae-lens's `SAETrainer` on any stream of activation vectors.

The stream is an iterable of float tensors [n, d_in] (e.g. the activation store's
`iter_vectors`); it is re-batched to a fixed size, shuffled within a buffer, and cycled pass after
pass when training wants more vectors than one pass holds (so a re-iterable must give the same
vectors in the same order each pass). The first `eval_samples` vectors are held out of training
and the saved metrics are measured on them.

The result is a folder in sae-lens's own format (`cfg.json`, `sae_weights.safetensors`, from
`save_inference_model`) plus `introspect_mi_sae.json`: place, model fingerprint, training config,
data description, metrics, library versions. The folder appears complete or not at all (staged
in a hidden sibling, then renamed), and training again with the same config, data description,
place and model fingerprint reuses it. The check, the training and the staging hold a lock
(`.<name>.lock` beside the folder): a second process training the same SAE waits, then reuses
it, and never removes the first's staging folder as stale.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from itertools import chain
from pathlib import Path
from typing import Any

import torch

from introspect_mi.durable import file_lock
from introspect_mi.errors import UserError
from introspect_mi.paths import checkpoints_dir
from introspect_mi.places import Place, bridge_name
from introspect_mi.provenance import library_versions
from introspect_mi.saes.load import CFG_FILE, SIDECAR_FILE, WEIGHTS_FILE, LoadedSAE, as_place, load_sae
from introspect_mi.saes.metrics import reconstruction_metrics
from introspect_mi.store import safe_name

SIDECAR_FORMAT = 1
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SAETrainConfig:
    """How to train one TopK SAE (sae-lens `TopKTrainingSAE` + `SAETrainer`)."""

    d_sae: int | None = None
    """Number of latents; None means `expansion × d_in`."""
    expansion: int = 8
    """Latents per input dimension, used when `d_sae` is None."""
    k: int = 32
    """Active latents per vector (the TopK)."""
    lr: float = 3e-4
    """Adam learning rate (constant, then a linear decay to 0 over the last `lr_decay_fraction`)."""
    lr_decay_fraction: float = 0.2
    """Fraction of the steps, at the end, over which the learning rate decays linearly to 0."""
    training_samples: int = 200_000
    """Vectors to train on (steps = training_samples // batch_size); passes repeat as needed."""
    batch_size: int = 4096
    """Vectors per optimizer step."""
    eval_samples: int = 8192
    """Vectors held out from the start of the stream to measure the saved metrics on."""
    shuffle_buffer: int = 65_536
    """Vectors buffered and shuffled together before batching (the store yields them in order)."""
    normalize: bool = True
    """Scale inputs to mean norm √d_in while training (sae-lens "expected_average_only_in");
    the factor is folded into the saved weights, which take raw activations."""
    norm_estimate_batches: int = 8
    """Batches read to estimate that scale."""
    dead_feature_window: int = 50
    """Steps without firing after which a latent counts as dead (feeds the TopK auxiliary loss)."""
    seed: int = 0
    """Seeds the weight initialisation and the shuffling."""
    device: str | None = None
    """Training device; None: cuda when available, else cpu. Not part of the reuse key."""

    def latents(self, d_in: int) -> int:
        return self.d_sae if self.d_sae is not None else self.expansion * d_in

    def steps(self) -> int:
        return self.training_samples // self.batch_size

    def identity(self) -> dict[str, Any]:
        """What makes two trainings the same (everything but the device)."""
        return {k: v for k, v in asdict(self).items() if k != "device"}

    def check(self, d_in: int) -> None:
        """UserError for settings that cannot train."""
        problems = []
        if self.latents(d_in) < 1:
            problems.append(f"d_sae/expansion give {self.latents(d_in)} latents")
        if not 1 <= self.k <= self.latents(d_in):
            problems.append(f"k={self.k} must be between 1 and the number of latents ({self.latents(d_in)})")
        if self.batch_size < 1 or self.steps() < 1:
            problems.append(f"training_samples={self.training_samples} must hold at least one batch of {self.batch_size}")
        if self.shuffle_buffer < self.batch_size:
            problems.append(f"shuffle_buffer={self.shuffle_buffer} must be ≥ batch_size={self.batch_size}")
        if self.eval_samples < 1:
            problems.append("eval_samples must be ≥ 1")
        if not 0 <= self.lr_decay_fraction < 1:
            problems.append("lr_decay_fraction must be in [0, 1)")
        if problems:
            raise UserError("SAE training config: " + "; ".join(problems), "fix those fields of the SAE config")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def sae_dir(fingerprint: str, place: Place, cfg: SAETrainConfig) -> Path:
    """`checkpoints/saes/<model fingerprint>/<kind>.<layer>-<config hash>`: one folder per trained SAE."""
    name = place.kind.value if place.layer is None else f"{place.kind.value}.{place.layer}"
    return checkpoints_dir() / "saes" / safe_name(fingerprint) / f"{name}-{_digest(cfg.identity())[:10]}"


# --- the vector stream ------------------------------------------------------------------------


def _checked(chunks: Iterable[torch.Tensor], d_in: int) -> Iterator[torch.Tensor]:
    for chunk in chunks:
        if chunk.ndim != 2 or chunk.shape[1] != d_in:
            raise ValueError(f"activation batches must be [n, {d_in}] tensors, got shape {tuple(chunk.shape)}")
        yield chunk.detach().float()


def _skip(chunks: Iterator[torch.Tensor], n: int) -> Iterator[torch.Tensor]:
    """The vectors after the first `n`."""
    for chunk in chunks:
        if n >= len(chunk):
            n -= len(chunk)
            continue
        yield chunk[n:]
        n = 0


def _held_out(chunks: Iterator[torch.Tensor], n: int) -> tuple[torch.Tensor, Iterator[torch.Tensor]]:
    """The first `n` vectors, and an iterator over the rest of the pass."""
    taken: list[torch.Tensor] = []
    count = 0
    for chunk in chunks:
        part = chunk[: n - count]
        taken.append(part)
        count += len(part)
        if count == n:
            return torch.cat(taken), chain([chunk[len(part):]], chunks)
    raise UserError(f"the activation stream has only {count} vectors, all needed for eval_samples={n}", "lower eval_samples or feed more vectors")


def _training_batches(rest: Iterator[torch.Tensor], batches: Iterable[torch.Tensor], d_in: int, cfg: SAETrainConfig) -> Iterator[torch.Tensor]:
    """Fixed-size shuffled batches forever: the rest of the first pass, then new passes (minus the held-out head)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    buffer: list[torch.Tensor] = []
    size = 0
    source, first = rest, True
    while True:
        got = 0
        for chunk in source:
            buffer.append(chunk)
            size += len(chunk)
            got += len(chunk)
            if size >= cfg.shuffle_buffer:
                pool = torch.cat(buffer)
                pool = pool[torch.randperm(len(pool), generator=gen).to(pool.device)]
                full = len(pool) - len(pool) % cfg.batch_size
                yield from pool[:full].split(cfg.batch_size)
                buffer, size = [pool[full:]], len(pool) - full
        if got == 0:
            what = "no vectors are left after the held-out ones" if first else "a new pass over the batches yielded nothing (a one-shot iterator?)"
            raise UserError(
                f"SAE training ran out of vectors: {what}",
                "pass a re-iterable (a list, or an object whose __iter__ starts a new pass), feed more vectors, or lower training_samples",
            )
        source, first = _skip(_checked(batches, d_in), cfg.eval_samples), False


# --- training --------------------------------------------------------------------------------


def _fit(stream: Iterator[torch.Tensor], d_in: int, cfg: SAETrainConfig, place: Place, device: str) -> Any:
    """sae-lens's trainer on the stream; returns the trained TopKTrainingSAE."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    sae_cfg = TopKTrainingSAEConfig(
        d_in=d_in, d_sae=cfg.latents(d_in), k=cfg.k, device="cpu",
        normalize_activations="expected_average_only_in" if cfg.normalize else "none",
        metadata=SAEMetadata(hook_name=bridge_name(place)),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        sae = TopKTrainingSAE(sae_cfg)
    steps = cfg.steps()
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * cfg.batch_size, train_batch_size_samples=cfg.batch_size,
        lr=cfg.lr, lr_end=cfg.lr, lr_decay_steps=int(steps * cfg.lr_decay_fraction), device=device,
        dead_feature_window=cfg.dead_feature_window, feature_sampling_window=steps + 1,  # one window: no mid-run resets
        n_batches_for_norm_estimate=cfg.norm_estimate_batches, logger=LoggingConfig(log_to_wandb=False),
    )
    return SAETrainer(trainer_cfg, sae, stream).fit()


def _reuse(out_dir: Path, key: str, device: str) -> LoadedSAE:
    """The SAE already in `out_dir` if it was trained with the same key; else a UserError."""
    sidecar = out_dir / SIDECAR_FILE
    meta = json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else {}
    if meta.get("key") == key and (out_dir / CFG_FILE).is_file() and (out_dir / WEIGHTS_FILE).is_file():
        return load_sae(out_dir, meta["place"], device=device)
    what = "an SAE trained with a different config, data, place or model" if meta else "something that is not an SAE we trained"
    raise UserError(f"{out_dir} already holds {what}", "choose another output folder (sae_dir() makes one per config), or delete it")


def train_sae(
    batches: Iterable[torch.Tensor],
    d_in: int,
    cfg: SAETrainConfig,
    out_dir: str | Path,
    place: Place | str,
    *,
    fingerprint: str,
    data: Mapping[str, Any] | None = None,
) -> LoadedSAE:
    """Train a TopK SAE on `batches` ([n, d_in] tensors) and save it to `out_dir`, or reuse it.

    `fingerprint` is the model's (`ModelHandle.fingerprint`); `data` describes the vectors (store
    folder, positions, records...) and is saved with the SAE. Both take part in the reuse key with
    the config (minus device), `d_in` and the place.
    """
    place = as_place(place)
    cfg.check(d_in)
    out_dir = Path(out_dir)
    data = dict(data or {})
    key = _digest({"config": cfg.identity(), "d_in": d_in, "place": str(place), "fingerprint": fingerprint, "data": data})
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out_dir.parent.mkdir(parents=True, exist_ok=True)

    def waiting() -> None:
        log.warning("%s: waiting for another process training this SAE", out_dir)

    with file_lock(out_dir.parent / f".{out_dir.name}.lock", on_wait=waiting):  # check, train, stage: one step
        for stale in out_dir.parent.glob(f".{out_dir.name}.partial-*"):  # left by a killed run (only lock holders make them)
            shutil.rmtree(stale, ignore_errors=True)
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # an empty folder made beforehand holds nothing to keep
        if out_dir.exists():
            return _reuse(out_dir, key, device)

        held_out, rest = _held_out(_checked(batches, d_in), cfg.eval_samples)
        start = time.monotonic()
        trained = _fit(_training_batches(rest, batches, d_in, cfg), d_in, cfg, place, device)
        seconds = time.monotonic() - start

        with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-") as tmp:
            staging = Path(tmp) / "sae"
            trained.save_inference_model(staging)
            saved = load_sae(staging, place, device=device)
            metrics = reconstruction_metrics(saved.sae, held_out.split(cfg.batch_size))
            sidecar = {
                "format": SIDECAR_FORMAT, "key": key, "place": str(place), "hook_name": bridge_name(place),
                "d_in": d_in, "d_sae": saved.d_sae, "model_fingerprint": fingerprint, "config": asdict(cfg), "data": data,
                "metrics": {**asdict(metrics), "measured_on": f"the first {len(held_out)} vectors of the stream, held out of training"},
                "training": {
                    "steps": cfg.steps(), "samples": cfg.steps() * cfg.batch_size, "seconds": round(seconds, 2), "device": device,
                    "final_window_l0": trained.cfg.metadata.l0, "final_window_dead_latents": trained.cfg.metadata.num_dead_features,
                },
                "versions": library_versions(), "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            (staging / SIDECAR_FILE).write_text(json.dumps(sidecar, indent=2, default=str) + "\n", encoding="utf-8")
            staging.rename(out_dir)
        return load_sae(out_dir, place, device=device)
