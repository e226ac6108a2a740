"""Raw PyTorch hooks on an HF model, addressed through the place vocabulary.

This is the reference engine: TransformerBridge and nnsight views are tested against it.
`recording` reads places; `editing` changes them (patching and steering build on it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from introspect_mi.places import ModuleSite, Place, PlaceKind, hf_prefix, hf_site

Edit = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(activation [batch, seq, d_model], position ids [batch or 1, seq]) -> the activation the
forward pass goes on with. Position ids count each row's real tokens from 0 (left padding and
KV caches shift columns, not positions), so they name tokens the way prompts index them."""


def site_of(model: torch.nn.Module, place: Place) -> ModuleSite:
    """Where `place` lives in this (possibly peft-wrapped) HF model."""
    return hf_site(place, model.config.model_type, hf_prefix(model))


def _pick(site: ModuleSite, args: tuple, kwargs: dict, output: Any) -> torch.Tensor:
    if site.side == "input":
        return args[0] if args else kwargs["hidden_states"]
    return output if site.tuple_index is None else output[site.tuple_index]


def _put(site: ModuleSite, args: tuple, kwargs: dict, output: Any, value: torch.Tensor) -> Any:
    """What a hook returns to make `value` the place's activation."""
    if site.side == "input":
        return ((value, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": value})
    if site.tuple_index is None:
        return value
    return type(output)((*output[: site.tuple_index], value, *output[site.tuple_index + 1 :]))


def block_path(model: torch.nn.Module, place: Place) -> str:
    """The decoder block a place lives in (the last block for final_norm)."""
    layer = int(model.config.num_hidden_layers) - 1 if place.kind is PlaceKind.FINAL_NORM else place.layer
    return site_of(model, Place(PlaceKind.RESID_PRE, layer)).path


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


@contextmanager
def editing(model: torch.nn.Module, edits: Sequence[tuple[Place, Edit]]) -> Iterator[None]:
    """Replace each place's activation by `edit(activation, position_ids)` during the forward
    passes inside the block (every pass: prefill and each generation step).

    Edits at one place apply in the order given. A `recording` entered inside this block sees
    the edited activations (hooks run in registration order). Position ids are read from the
    place's decoder block, which HF decoders always hand them (computed when not passed).
    """
    positions: dict[str, torch.Tensor] = {}
    handles = []

    def remember(path: str) -> Callable[..., None]:
        def hook(mod: Any, args: tuple, kwargs: dict) -> None:
            pos = kwargs.get("position_ids")
            if pos is None:  # not an HF decoder layer call: count the columns
                x = args[0] if args else kwargs["hidden_states"]
                pos = torch.arange(x.shape[1], device=x.device)[None]
            positions[path] = pos
        return hook

    try:
        for path in dict.fromkeys(block_path(model, place) for place, _ in edits):
            handles.append(model.get_submodule(path).register_forward_pre_hook(remember(path), with_kwargs=True))
        for place, edit in edits:
            site, path = site_of(model, place), block_path(model, place)
            module = model.get_submodule(site.path)

            def hook(mod: Any, args: tuple, kwargs: dict, output: Any = None, *, _s=site, _e=edit, _p=path) -> Any:
                return _put(_s, args, kwargs, output, _e(_pick(_s, args, kwargs, output), positions[_p]))

            if site.side == "input":
                handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(hook, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()
