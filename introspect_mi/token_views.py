"""Per-token views of one item for the explorer: residual norms per layer of both prompts, and
the cosine similarity of P's tokens "as asked" (object-level run) and "as quoted" (hypothetical
run) at each aligned token pair, per layer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from introspect_mi.alignment import Alignment
from introspect_mi.capture import CapturePrompt, encode, forward
from introspect_mi.models import ModelHandle
from introspect_mi.places import resid_post


@dataclass(frozen=True)
class TokenViews:
    norms_object: list[list[float]]  # [layer][object token]
    norms_hypothetical: list[list[float]]  # [layer][hypothetical token]
    cosine: list[list[float]]  # [layer][aligned pair]


def token_views(handle: ModelHandle, items: Sequence[tuple[CapturePrompt, CapturePrompt, Alignment]],
                adapter_enabled: bool = True) -> list[TokenViews]:
    """Views of (object prompt, hypothetical prompt, alignment) triples: one forward for the object
    prompts and one for the hypothetical ones (left-padded, each batch's shared demonstration prefix
    run once, as capture does, so each row computes what it would alone up to float rounding),
    every layer's resid_post recorded."""
    places = [resid_post(layer) for layer in range(handle.n_layers)]
    runs = [forward(handle, [encode(handle, p) for p in prompts], places, answer_step=False, adapter_enabled=adapter_enabled, prefix_reuse=True)
            for prompts in ([obj for obj, _, _ in items], [hyp for _, hyp, _ in items])]
    out = []
    for i, (_, _, alignment) in enumerate(items):
        # [layer, token, d] of each prompt's real tokens
        grids = [torch.stack([fw.gather(p, i, range(len(fw.encoded[i].ids))) for p in places]).float() for fw in runs]
        o_idx = torch.tensor([o for o, _ in alignment.pairs], dtype=torch.long)
        h_idx = torch.tensor([h for _, h in alignment.pairs], dtype=torch.long)
        cosine = torch.nn.functional.cosine_similarity(grids[0][:, o_idx], grids[1][:, h_idx], dim=-1)
        out.append(TokenViews(_rounded(grids[0].norm(dim=-1)), _rounded(grids[1].norm(dim=-1)), _rounded(cosine)))
    return out


def _rounded(x: torch.Tensor, digits: int = 4) -> list[list[float]]:
    return [[round(float(v), digits) for v in row] for row in x]
