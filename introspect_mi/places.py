"""One vocabulary for places in a model, resolved to each engine's names in one table.

A `Place` is e.g. `resid_post[3]`. `LAYOUTS` holds each architecture family's HF module layout
as data (keyed by `config.model_type`), and `resolve_*` turn a place into the HF module path
(with the peft prefix when wrapped), the TransformerBridge hook name, or the nnsight envoy.
Everything that hooks a model goes through here (PITFALLS.md: "One vocabulary").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch


class PlaceKind(StrEnum):
    RESID_PRE = "resid_pre"  # input of block l
    RESID_POST = "resid_post"  # output of block l
    ATTN_OUT = "attn_out"  # output of block l's attention module
    MLP_OUT = "mlp_out"  # output of block l's MLP
    FINAL_NORM = "final_norm"  # output of the final norm (input of the unembedding)


@dataclass(frozen=True)
class Place:
    kind: PlaceKind
    layer: int | None = None

    def __str__(self) -> str:
        return self.kind.value if self.layer is None else f"{self.kind.value}[{self.layer}]"

    @classmethod
    def parse(cls, text: str) -> Place:
        """Parse `resid_post[3]`, `resid_post.3` or `final_norm`."""
        m = re.fullmatch(r"\s*([a-z_]+)\s*(?:\[(\d+)\]|\.(\d+))?\s*", text)
        kinds = ", ".join(k.value for k in PlaceKind)
        if not m or m.group(1) not in PlaceKind._value2member_map_:
            raise ValueError(f"unknown place {text!r}: use one of {kinds}, e.g. resid_post[3]")
        kind = PlaceKind(m.group(1))
        layer_text = m.group(2) or m.group(3)
        layer = int(layer_text) if layer_text is not None else None
        if (kind is PlaceKind.FINAL_NORM) != (layer is None):
            raise ValueError(f"place {text!r}: final_norm takes no layer, every other place needs one")
        return cls(kind, layer)


_ORDER_IN_BLOCK = {PlaceKind.RESID_PRE: 0, PlaceKind.ATTN_OUT: 1, PlaceKind.MLP_OUT: 2, PlaceKind.RESID_POST: 3}


def execution_order(place: Place) -> tuple[int, int]:
    """Sort key: the order the forward pass computes places (nnsight requires it)."""
    if place.kind is PlaceKind.FINAL_NORM:
        return (1 << 30, 0)
    return (place.layer or 0, _ORDER_IN_BLOCK[place.kind])


def resid_post(layer: int) -> Place:
    return Place(PlaceKind.RESID_POST, layer)


@dataclass(frozen=True)
class ModuleSite:
    """Where a place lives in an HF model: a module path and which side of it to read."""

    path: str
    side: str  # "input" (first positional arg / hidden_states) or "output"
    tuple_index: int | None = None  # the output is a tuple (HF attention): take this element


@dataclass(frozen=True)
class ModelLayout:
    """An architecture family's HF module layout, relative to the `*ForCausalLM` object."""

    layers: str
    attn: str
    mlp: str
    final_norm: str
    unembed: str = "lm_head"


_DECODER = ModelLayout(layers="model.layers", attn="self_attn", mlp="mlp", final_norm="model.norm")

LAYOUTS: dict[str, ModelLayout] = {
    "llama": _DECODER,
    "mistral": _DECODER,
    "qwen2": _DECODER,
    "qwen3": _DECODER,
    "gemma2": _DECODER,
    "gemma3_text": _DECODER,
}
"""HF `config.model_type` → layout. Gemma-3's attn_out/mlp_out are the raw module outputs,
before its post-attention / post-feedforward norms (as TransformerBridge names them)."""

BRIDGE_NAMES: dict[PlaceKind, str] = {
    PlaceKind.RESID_PRE: "blocks.{l}.hook_in",
    PlaceKind.RESID_POST: "blocks.{l}.hook_out",
    PlaceKind.ATTN_OUT: "blocks.{l}.attn.hook_out",
    PlaceKind.MLP_OUT: "blocks.{l}.mlp.hook_out",
    PlaceKind.FINAL_NORM: "ln_final.hook_out",
}


def layout_for(model_type: str) -> ModelLayout:
    if model_type not in LAYOUTS:
        known = ", ".join(sorted(LAYOUTS))
        raise ValueError(
            f"no layout for model_type {model_type!r} (known: {known}); add one to "
            "introspect_mi.places.LAYOUTS"
        )
    return LAYOUTS[model_type]


def hf_prefix(model: torch.nn.Module) -> str:
    """Path prefix from `model` to its `*ForCausalLM`: peft wraps it in `base_model.model`."""
    from peft import PeftModel

    return "base_model.model." if isinstance(model, PeftModel) else ""


def hf_site(place: Place, model_type: str, prefix: str = "") -> ModuleSite:
    """The HF module (full dotted path) and side that hold `place`."""
    lay = layout_for(model_type)
    block = f"{prefix}{lay.layers}.{place.layer}"
    sites = {
        PlaceKind.RESID_PRE: ModuleSite(block, "input"),
        PlaceKind.RESID_POST: ModuleSite(block, "output"),
        PlaceKind.ATTN_OUT: ModuleSite(f"{block}.{lay.attn}", "output", tuple_index=0),
        PlaceKind.MLP_OUT: ModuleSite(f"{block}.{lay.mlp}", "output"),
        PlaceKind.FINAL_NORM: ModuleSite(f"{prefix}{lay.final_norm}", "output"),
    }
    return sites[place.kind]


def bridge_name(place: Place) -> str:
    """TransformerBridge hook name of `place` (raw-HF numerics, no weight processing)."""
    return BRIDGE_NAMES[place.kind].format(l=place.layer)


def nnsight_value(lm: Any, place: Place, model_type: str) -> Any:
    """Inside an nnsight trace: the proxy for `place`'s activation on `lm` (a LanguageModel)."""
    site = hf_site(place, model_type)
    envoy = lm
    for part in site.path.split("."):
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    value = envoy.input if site.side == "input" else envoy.output
    return value if site.tuple_index is None else value[site.tuple_index]
