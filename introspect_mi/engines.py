"""Read the same places through each hook engine: raw HF hooks, TransformerBridge, nnsight.

Raw hooks are the reference; the bridge is the default analysis engine (sae-lens speaks its
names); nnsight is the road to models no single machine holds. Tests hold all three equal.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from introspect_mi.hooks import recording
from introspect_mi.models import ModelHandle
from introspect_mi.places import Place, bridge_name, execution_order, nnsight_value


@torch.no_grad()
def run_hf(handle: ModelHandle, input_ids: torch.Tensor, places: Sequence[Place], **inputs: torch.Tensor) -> dict[Place, torch.Tensor]:
    with recording(handle.model, places) as acts:
        handle.model(input_ids=input_ids, **inputs)
    return dict(acts)


@torch.no_grad()
def run_bridge(handle: ModelHandle, input_ids: torch.Tensor, places: Sequence[Place]) -> dict[Place, torch.Tensor]:
    names = {bridge_name(p): p for p in places}
    _, cache = handle.bridge().run_with_cache(input_ids, names_filter=lambda n: n in names)
    return {p: cache[n] for n, p in names.items()}


@torch.no_grad()
def run_nnsight(handle: ModelHandle, input_ids: torch.Tensor, places: Sequence[Place]) -> dict[Place, torch.Tensor]:
    import nnsight

    lm = handle.nnsight()
    model_type = handle.config.model_type
    with lm.trace(input_ids):
        saved = nnsight.save([])  # values bound inside a trace come back only if saved
        for place in sorted(places, key=execution_order):  # nnsight reads in forward order
            saved.append(nnsight_value(lm, place, model_type))
    return dict(zip(sorted(places, key=execution_order), saved))
