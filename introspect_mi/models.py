"""One loader for every model the toolkit studies, and the handle it returns.

`load(spec)` takes an embedded name (`smollm2-135m-instruct`, `gemma3-270m`), a local HF
checkpoint folder (e.g. Meta-Llama-3-8B-Instruct) or a `.gguf` file, plus an optional LoRA
adapter folder in peft format. Device/dtype policy: CPU fp32; CUDA bf16; `device_map="auto"`
when asked or when the weights do not fit one GPU. The attention implementation is explicit
(default eager: TransformerBridge switches a model to eager when it boots, so eager everywhere
keeps raw hooks, the bridge and nnsight numerically identical) and recorded in the handle.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain
from pathlib import Path
from typing import Any

import torch

from introspect_mi import embedded
from introspect_mi.checkfiles import check_adapter_files, check_gguf, check_weight_files
from introspect_mi.errors import UserError
from introspect_mi.fingerprint import cached_digest, folder_digest, model_files
from introspect_mi.paths import checkpoints_dir
from introspect_mi.prompt_format import ChatTemplateFormat, PromptFormat, format_for

ADAPTER_SIDECAR = "introspect_mi_adapter.json"  # written beside our adapters: base fingerprint
PROGRESS_BAR_BYTES = 2 << 30  # show transformers' loading bar above this checkpoint size


@dataclass(frozen=True)
class Placement:
    device: str
    dtype: torch.dtype
    device_map: str | None  # "auto": accelerate spreads layers over the visible GPUs


def plan_placement(
    weight_bytes: int,
    stored_bytes_per_param: float,
    device: str | None,
    dtype: torch.dtype | None,
    device_map: str | None,
    gpu_bytes: list[int],
) -> Placement:
    """The device/dtype policy as a pure function (tested without a GPU).

    `gpu_bytes` lists each visible GPU's memory; empty means CPU only.
    """
    device = device or ("cuda" if gpu_bytes else "cpu")
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if device_map is None and device.startswith("cuda") and gpu_bytes:
        needed = weight_bytes / stored_bytes_per_param * torch.tensor([], dtype=dtype).element_size()
        if needed > 0.9 * gpu_bytes[0]:  # leave room for activations
            device_map = "auto"
    return Placement(device, dtype, device_map)


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise UserError(
            f"{folder} has a config.json but no weights (*.safetensors or pytorch_model*.bin)",
            "copy the weight files into the folder, or point --model at the complete checkpoint",
        )
    return files


ADAPTER_CONFIG = "adapter_config.json"
PLACE_DEPENDENT_KEYS = ("base_model_name_or_path", "revision")
"""adapter_config.json keys that say where the base model was, not what the adapter computes."""


def adapter_hash(folder: Path) -> str:
    """12-hex id of what a peft adapter computes: its weight files and its config, the config
    canonicalised (the base model's path dropped, `target_modules`, a set, sorted) so that the same
    training in another checkout, or another process's set order, gives the same id."""
    h = hashlib.sha256()
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    for key in PLACE_DEPENDENT_KEYS:
        config.pop(key, None)
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    h.update(json.dumps(config, sort_keys=True).encode())
    weights = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin"))
    h.update(folder_digest(folder, weights).encode())
    return h.hexdigest()[:12]


def base_fingerprint(folder: Path, weights: list[Path]) -> str:
    """16-hex id of a checkpoint: every byte of its weights, config, generation config and tokenizer files."""
    return folder_digest(folder, model_files(folder, weights))


def weights_fingerprint(spec: str | Path, adapters: Sequence[str | Path] = ()) -> str:
    """`ModelHandle.fingerprint` of `load(spec, adapter=adapters)`, without loading the weights
    (from the fingerprint cache when the files are unchanged)."""
    _, folder = resolve(spec)
    return "+".join([base_fingerprint(folder, _weight_files(folder)), *(adapter_hash(Path(a)) for a in adapters)])


def resolve(spec: str | Path) -> tuple[str, Path]:
    """(display name, HF checkpoint folder) for a spec; prepares/converts once if needed."""
    text = str(spec)
    if text in embedded.EMBEDDED:
        return text, embedded.prepare(text, log=lambda _msg: None)
    path = Path(text).expanduser()
    if not path.exists():
        if "/" not in text and not text.endswith(".gguf"):
            embedded.get_embedded(text)  # raises: unknown embedded name, lists the known ones
        raise UserError(f"model path {path} does not exist", "check the path, or use an embedded name: " + ", ".join(embedded.EMBEDDED))
    if path.is_file():
        if path.suffix != ".gguf":
            raise UserError(f"{path} is a file but not a .gguf", "give a .gguf file or an HF checkpoint folder (with config.json)")
        return path.stem, _converted_gguf(path)
    if not (path / "config.json").is_file():
        raise UserError(
            f"{path} has no config.json, so it is not an HF model checkpoint",
            "point at the folder that holds config.json and the weights (e.g. a downloaded Meta-Llama-3-8B-Instruct)",
        )
    check_weight_files(_weight_files(path))
    return path.name, path


def _converted_gguf(path: Path) -> Path:
    """A .gguf is dequantized once into checkpoints/base/<stem>-<hash>/ and loaded from there."""
    check_gguf(path)
    out = checkpoints_dir() / "base" / f"{path.stem}-{cached_digest(path)[:10]}"
    if not (out / embedded.MARKER).is_file():
        embedded.convert_once(out, lambda _scratch: path, {"source_path": str(path)})
    return out


@dataclass
class ModelHandle:
    """A loaded model with everything analysis needs to know about it."""

    name: str
    checkpoint: Path
    model: torch.nn.Module
    tokenizer: Any
    prompt_format: PromptFormat
    placement: Placement
    attn_implementation: str
    base_fingerprint: str
    adapters: list[Path] = field(default_factory=list)
    adapter_hashes: list[str] = field(default_factory=list)
    adapter_mode: str | None = None  # "merged" or "peft" (toggle with model.disable_adapter())
    _views: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def fingerprint(self) -> str:
        """Stable id of the weights actually used (base + adapters in order), for caching."""
        return "+".join([self.base_fingerprint, *self.adapter_hashes])

    @property
    def adapter(self) -> Path | None:
        """The last adapter applied (None: base weights)."""
        return self.adapters[-1] if self.adapters else None

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def n_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(self.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @cached_property
    def stop_token_ids(self) -> list[int]:
        """Token ids that end an answer: the tokenizer's and the generation config's EOS, and the
        chat template's end-of-turn token (Llama-3.0: EOS `<|end_of_text|>`, turns end `<|eot_id|>`;
        a generation config may not list it)."""
        ids = {self.tokenizer.eos_token_id}
        extra = getattr(self.model.generation_config, "eos_token_id", None)
        ids.update(extra if isinstance(extra, list) else [extra])
        if isinstance(self.prompt_format, ChatTemplateFormat):
            ids.add(self.prompt_format.end_of_turn_id)
        return sorted(i for i in ids if i is not None)

    @cached_property
    def pad_token_id(self) -> int:
        """Filler for padded positions, never a token that ends real text or begins it (a stop id,
        BOS), so that no mask built from ids could hide a real end token. Masks are always built
        from lengths, never from this id. The tokenizer's pad when it is such a token (Llama-3.1's
        `<|finetune_right_pad_id|>`), else its first other special token within the model's
        vocabulary (Llama-3.0 has no pad; SmolLM2's is its EOS), else the first other id."""
        taken = {*self.stop_token_ids, self.tokenizer.bos_token_id, self.tokenizer.unk_token_id}
        specials = (i for i, t in sorted(self.tokenizer.added_tokens_decoder.items()) if t.special)
        candidates = chain([self.tokenizer.pad_token_id], specials, range(self.config.vocab_size))
        return next(i for i in candidates if i is not None and i not in taken and i < self.config.vocab_size)

    def bridge(self) -> Any:
        """A TransformerBridge view of the same weights (raw HF numerics, no weight processing)."""
        if "bridge" not in self._views:
            if self.attn_implementation != "eager":
                raise UserError(
                    f"the TransformerBridge view needs eager attention, but {self.name} was loaded with {self.attn_implementation!r}",
                    "load it with attn_implementation='eager' (the default) for analysis",
                )
            if self.adapter_mode == "peft":
                raise UserError("the TransformerBridge view reads base weights only", "load the adapter merged (adapter_mode='merged') for bridge analysis")
            from transformer_lens.model_bridge import TransformerBridge

            self._views["bridge"] = TransformerBridge.boot_transformers(
                str(self.checkpoint), hf_model=self.model, tokenizer=self.tokenizer,
                device=None if self.placement.device_map else str(self.device), dtype=self.placement.dtype,
            )
        return self._views["bridge"]

    def nnsight(self) -> Any:
        """An nnsight model wrapping the very same module (no copy of the weights).

        For models no single machine holds, nnsight's remote execution (NDIF) runs the same
        traces against a hosted copy: see README "Scale".
        """
        if "nnsight" not in self._views:
            from nnsight.modeling.transformers import TransformersModel

            self._views["nnsight"] = TransformersModel(self.model, tokenizer=self.tokenizer, task="text-generation")
        return self._views["nnsight"]

    def provenance(self) -> dict[str, Any]:
        """What every artifact made with this model records (PITFALLS.md: dtype and determinism)."""
        import peft
        import transformers

        return {
            "model": self.name, "checkpoint": str(self.checkpoint), "fingerprint": self.fingerprint,
            "model_type": self.config.model_type, "dtype": str(self.placement.dtype).removeprefix("torch."),
            "device": str(self.device), "device_map": self.placement.device_map,
            "attn_implementation": self.attn_implementation, "prompt_format": self.prompt_format.name,
            "adapters": [str(a) for a in self.adapters], "adapter_hashes": self.adapter_hashes,
            "adapter_mode": self.adapter_mode,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        }


def load(
    spec: str | Path,
    adapter: str | Path | Sequence[str | Path] | None = None,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    *,
    attn_implementation: str = "eager",
    device_map: str | None = None,
    adapter_mode: str = "merged",
) -> ModelHandle:
    """Load a model (and optionally LoRA adapters) under the toolkit's device/dtype policy.

    A list of adapters is merged in order: an adapter trained on top of another (the
    behaviour-change finetune of a self-trained model) is loaded as `[parent, child]`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, folder = resolve(spec)
    with embedded.reading(folder):  # a re-conversion of this checkpoint waits until it is read
        weights = _weight_files(folder)
        gpus = [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())]
        stored = _stored_bytes_per_param(folder)
        weight_bytes = sum(f.stat().st_size for f in weights)
        placement = plan_placement(weight_bytes, stored, device, dtype, device_map, gpus)
        with _progress_bars(weight_bytes > PROGRESS_BAR_BYTES):
            model = AutoModelForCausalLM.from_pretrained(
                folder, dtype=placement.dtype, attn_implementation=attn_implementation, trust_remote_code=False,
                device_map=placement.device_map or placement.device,
            )
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        handle = ModelHandle(
            name=name, checkpoint=folder, model=model, tokenizer=tokenizer, prompt_format=format_for(tokenizer),
            placement=placement, attn_implementation=attn_implementation, base_fingerprint=base_fingerprint(folder, weights),
        )
    chain = [] if adapter is None else [adapter] if isinstance(adapter, (str, Path)) else list(adapter)
    if len(chain) > 1 and adapter_mode != "merged":
        raise UserError("a chain of adapters can only be merged", "load it with adapter_mode='merged'")
    for path in chain:
        attach_adapter(handle, Path(path), adapter_mode)
    return handle


@contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """transformers' loading bar: useful for a 16 GB checkpoint, noise for a 0.5 GB one."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


def _stored_bytes_per_param(folder: Path) -> float:
    cfg = json.loads((folder / "config.json").read_text())
    name = str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32")
    return 4.0 if "32" in name else 2.0


def check_adapter(adapter: Path) -> dict[str, Any] | None:
    """A peft adapter folder whose files are whole, checked without loading it (so a command can
    refuse a wrong path before it makes a run folder); returns our sidecar (None: none)."""
    if not (Path(adapter) / ADAPTER_CONFIG).is_file():
        raise UserError(f"{adapter} is not a peft adapter folder (no adapter_config.json)", "give the folder a LoRA finetune saved (checkpoints/adapters/<run>/)")
    return check_adapter_files(Path(adapter), ADAPTER_CONFIG, ADAPTER_SIDECAR)


def attach_adapter(handle: ModelHandle, adapter: Path, mode: str = "merged") -> None:
    """Apply a peft LoRA adapter: merged into the weights, or kept as a toggleable PeftModel."""
    if mode not in ("merged", "peft"):
        raise ValueError(f"adapter_mode must be 'merged' or 'peft', not {mode!r}")
    meta = check_adapter(adapter)
    if meta is not None:
        trained_on = meta.get("base_fingerprint")
        if trained_on and trained_on != handle.base_fingerprint:
            raise UserError(
                f"adapter {adapter} was trained for base weights {trained_on}, not {handle.name} ({handle.base_fingerprint})",
                "load the adapter with the model it was trained on",
            )
        weights = meta.get("weights_fingerprint")
        if weights and weights != handle.fingerprint:
            parent = meta.get("parent_adapter")
            raise UserError(
                f"adapter {adapter} was trained on weights {weights}, not {handle.fingerprint}",
                f"load it after its parent adapter: adapter=[{parent!r}, {str(adapter)!r}]" if parent else "load it on the plain base model, without other adapters",
            )
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(handle.model, adapter)
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise UserError(
            f"adapter {adapter} does not fit {handle.name} ({type(exc).__name__}: {first})",
            "it was probably trained for another base model: load it with that model",
        ) from None
    peft_model.eval()
    handle.model = peft_model.merge_and_unload() if mode == "merged" else peft_model
    handle.adapter_mode = mode
    handle.adapters.append(adapter)
    handle.adapter_hashes.append(adapter_hash(adapter))
