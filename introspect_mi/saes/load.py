"""Load an SAE in sae-lens format from a local folder and place it in our hook vocabulary.

A folder in sae-lens format holds `cfg.json` and `sae_weights.safetensors` (what
`SAE.save_model` / `TrainingSAE.save_inference_model` write). The config's hook name
(`metadata.hook_name`, or top-level `hook_name`/`hook_point` in pre-6.0 configs) is mapped onto a
`Place` through `place_of_hook`; an SAE we trained also carries `introspect_mi_sae.json` (see
`train.py`). Nothing is fetched from a hub: every check runs on the files, and problems are
`UserError`s naming the file and the fix.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from introspect_mi.errors import UserError
from introspect_mi.places import BRIDGE_NAMES, Place, PlaceKind

if TYPE_CHECKING:
    from sae_lens import SAE

    from introspect_mi.models import ModelHandle

CFG_FILE = "cfg.json"  # sae_lens.constants.SAE_CFG_FILENAME
WEIGHTS_FILE = "sae_weights.safetensors"  # sae_lens.constants.SAE_WEIGHTS_FILENAME
SIDECAR_FILE = "introspect_mi_sae.json"

TRANSFORMER_LENS_NAMES: dict[str, PlaceKind] = {
    "hook_resid_pre": PlaceKind.RESID_PRE,
    "hook_resid_post": PlaceKind.RESID_POST,
    "hook_attn_out": PlaceKind.ATTN_OUT,
    "hook_mlp_out": PlaceKind.MLP_OUT,
}
"""TransformerLens block hook `blocks.{l}.<name>` → place kind (Llama Scope, most sae-lens releases)."""

POST_NORM_MODEL_TYPES = frozenset({"gemma2", "gemma3_text"})
"""Models whose TransformerLens `hook_attn_out`/`hook_mlp_out` sit after the block's post-norms,
while our attn_out/mlp_out sit before them: such SAEs do not fit those places."""

_FIX_FORMAT = (
    "point at a folder in sae-lens format (cfg.json + sae_weights.safetensors, as SAE.save_model writes); "
    "see the introspect_mi.saes docs for converting a downloaded release such as Llama Scope"
)


@dataclass(frozen=True)
class LoadedSAE:
    """An SAE, the place it reads and writes, and where it came from."""

    sae: SAE
    place: Place
    folder: Path
    hook_name: str | None  # as written in cfg.json (None when absent)
    meta: dict[str, Any] = field(default_factory=dict)  # our sidecar (empty for a folder we did not train)

    @property
    def d_in(self) -> int:
        return int(self.sae.cfg.d_in)

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)


def _bridge_patterns() -> dict[str, PlaceKind]:
    """Regexes for our TransformerBridge names (`places.BRIDGE_NAMES`), e.g. `blocks.(\\d+).hook_out`."""
    return {re.escape(template).replace(re.escape("{l}"), r"(\d+)"): kind for kind, template in BRIDGE_NAMES.items()}


def place_of_hook(hook_name: str) -> Place | None:
    """The place a TransformerLens or TransformerBridge hook name denotes, or None if it has none.

    `blocks.9.hook_resid_post` and `blocks.9.hook_out` → resid_post[9]; `blocks.9.hook_resid_pre`
    and `blocks.9.hook_in` → resid_pre[9]; `blocks.9.hook_attn_out` / `blocks.9.attn.hook_out` →
    attn_out[9]; `blocks.9.hook_mlp_out` / `blocks.9.mlp.hook_out` → mlp_out[9];
    `ln_final.hook_out` → final_norm.
    """
    m = re.fullmatch(r"blocks\.(\d+)\.(hook_\w+)", hook_name)
    if m and m.group(2) in TRANSFORMER_LENS_NAMES:
        return Place(TRANSFORMER_LENS_NAMES[m.group(2)], int(m.group(1)))
    for pattern, kind in _bridge_patterns().items():
        m = re.fullmatch(pattern, hook_name)
        if m:
            return Place(kind, int(m.group(1)) if m.groups() else None)
    return None


def as_place(place: Place | str) -> Place:
    """A Place from itself or its text (`resid_post[9]`); UserError for text that is not one."""
    if isinstance(place, Place):
        return place
    try:
        return Place.parse(place)
    except ValueError as exc:
        raise UserError(str(exc), "pass a place such as resid_post[9]") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is unreadable ({exc})", "restore the file, or re-save the SAE with sae-lens") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} holds {type(data).__name__}, not a JSON object", _FIX_FORMAT)
    return data


def _hook_name(cfg: dict[str, Any]) -> str | None:
    meta = cfg.get("metadata") or {}
    return meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")


def _check_weights(folder: Path, cfg: dict[str, Any]) -> None:
    """The weight file exists and its W_enc / W_dec / b_dec shapes match cfg.json's d_in and d_sae."""
    from safetensors import safe_open

    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise UserError(f"{weights} is missing (cfg.json is there)", "copy the weights next to cfg.json; sae-lens saves both with SAE.save_model")
    for key in ("d_in", "d_sae"):
        if not isinstance(cfg.get(key), int):
            raise UserError(f"{folder / CFG_FILE} has no integer {key!r}", _FIX_FORMAT)
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    try:
        with safe_open(str(weights), framework="pt") as f:
            shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise UserError(f"{weights} is not a readable safetensors file ({exc})", "re-download or re-save the SAE") from None
    expected = {"W_enc": [d_in, d_sae], "W_dec": [d_sae, d_in], "b_dec": [d_in]}
    for key, shape in expected.items():
        if key not in shapes:
            raise UserError(f"{weights} has no tensor {key!r} (it has {', '.join(sorted(shapes)) or 'none'})", _FIX_FORMAT)
        if shapes[key] != shape:
            raise UserError(
                f"{weights}: {key} has shape {shapes[key]} but cfg.json says d_in={d_in}, d_sae={d_sae} (expected {shape})",
                "the weights and cfg.json come from different SAEs; put the matching pair in the folder",
            )


def _check_fits(loaded: LoadedSAE, handle: ModelHandle) -> None:
    """The SAE reads vectors of this model's width at a place the model has."""
    if loaded.d_in != handle.d_model:
        raise UserError(
            f"SAE {loaded.folder} reads {loaded.d_in}-dim vectors but {handle.name} has d_model={handle.d_model}",
            "use an SAE trained on this model (or on its base model)",
        )
    layer = loaded.place.layer
    if layer is not None and not 0 <= layer < handle.n_layers:
        raise UserError(f"SAE {loaded.folder} sits at {loaded.place} but {handle.name} has {handle.n_layers} layers", "use an SAE trained on this model")
    tl_name = loaded.hook_name and re.fullmatch(r"blocks\.\d+\.hook_(attn|mlp)_out", loaded.hook_name)
    if tl_name and handle.config.model_type in POST_NORM_MODEL_TYPES:
        raise UserError(
            f"SAE {loaded.folder} reads TransformerLens {loaded.hook_name}, which on {handle.config.model_type} is after the post-norm, "
            f"while {loaded.place} is before it",
            "use an SAE trained at our place (its bridge name is blocks.{l}.attn.hook_out / mlp.hook_out)",
        )


def load_sae(
    folder: str | Path,
    place: Place | str | None = None,
    *,
    handle: ModelHandle | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> LoadedSAE:
    """Load the SAE in `folder` (sae-lens format, local disk only).

    `place` overrides the place read from the config's hook name (needed when that name is not in
    our vocabulary). With `handle`, the SAE is checked against the model (width, layer count) and
    put on its device; otherwise on `device` (default cpu). `dtype` (e.g. "float32") overrides the
    stored one.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"SAE folder {folder} does not exist", _FIX_FORMAT)
    cfg_path = folder / CFG_FILE
    if not cfg_path.is_file():
        raise UserError(f"{folder} has no {CFG_FILE}, so it is not an SAE in sae-lens format", _FIX_FORMAT)
    cfg = _read_json(cfg_path)
    _check_weights(folder, cfg)
    if cfg.get("reshape_activations") == "hook_z" or "hook_z" in str(_hook_name(cfg)):
        raise UserError(f"{cfg_path}: SAEs on attention heads' hook_z are not supported", "use an SAE on the residual stream, attn_out or mlp_out")
    if (cfg.get("metadata") or {}).get("hook_name_out"):
        raise UserError(f"{cfg_path} describes a transcoder (it writes to another hook)", "use an SAE that reconstructs its own input")

    hook_name = _hook_name(cfg)
    if place is not None:
        place = as_place(place)
    else:
        place = place_of_hook(hook_name) if hook_name else None
        if place is None:
            raise UserError(
                f"{cfg_path}: hook name {hook_name!r} is not one of our places",
                "pass the place explicitly, e.g. load_sae(folder, place='resid_post[9]')",
            )

    from sae_lens import SAE
    from sae_lens.registry import SAE_CLASS_REGISTRY

    architecture = cfg.get("architecture")
    if architecture is not None and architecture not in SAE_CLASS_REGISTRY:
        raise UserError(f"{cfg_path}: unknown SAE architecture {architecture!r}", f"sae-lens knows: {', '.join(sorted(SAE_CLASS_REGISTRY))}")
    target = str(handle.device) if handle is not None else (device or "cpu")
    try:
        sae = SAE.load_from_disk(folder, device=target, dtype=dtype)
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise UserError(f"sae-lens cannot load {folder} ({type(exc).__name__}: {exc})", _FIX_FORMAT) from None
    sae.eval()
    sidecar = folder / SIDECAR_FILE
    loaded = LoadedSAE(sae, place, folder, hook_name, _read_json(sidecar) if sidecar.is_file() else {})
    if handle is not None:
        _check_fits(loaded, handle)
    return loaded
