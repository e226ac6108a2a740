"""Raw PyTorch hooks on an HF model, addressed through the place vocabulary.

This is the reference engine: TransformerBridge and nnsight views are tested against it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from introspect_mi.places import ModuleSite, Place, hf_prefix, hf_site

def site_of(model: torch.nn.Module, place: Place) -> ModuleSite:
    """Where `place` lives in this (possibly peft-wrapped) HF model."""
    return hf_site(place, model.config.model_type, hf_prefix(model))


def _pick(site: ModuleSite, args: tuple, kwargs: dict, output: Any) -> torch.Tensor:
    if site.side == "input":
        return args[0] if args else kwargs["hidden_states"]
    return output if site.tuple_index is None else output[site.tuple_index]


@contextmanager
def recording(model: torch.nn.Module, places: Sequence[Place]) -> Iterator[dict[Place, torch.Tensor]]:
    """Record each place's activation (detached) during the forward passes inside the block.

    A place seen again in a later forward pass (generation) is overwritten: read it after a
    single forward.
    """
    store: dict[Place, torch.Tensor] = {}
    handles = []
    for place in places:
        site = site_of(model, place)
        module = model.get_submodule(site.path)

        def hook(mod: Any, args: tuple, kwargs: dict, output: Any = None, *, _p=place, _s=site) -> None:
            store[_p] = _pick(_s, args, kwargs, output).detach()

        if site.side == "input":
            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        else:
            handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()
