"""Explorer token views equal a hand computation from single-prompt reference activations."""

from __future__ import annotations

from pathlib import Path

import torch

from introspect_mi.alignment import align
from introspect_mi.capture import CapturePrompt
from introspect_mi.engines import run_hf
from introspect_mi.models import load
from introspect_mi.places import resid_post
from introspect_mi.prompt_format import Message
from introspect_mi.token_views import token_views


def pair(handle, p: str) -> tuple[CapturePrompt, CapturePrompt, object]:
    fmt = handle.prompt_format
    prompts = []
    for text in (fmt.render([Message("user", p)]), fmt.render([Message("user", f'Previously, you were asked: "{p}" What is the first character?')])):
        start = text.rfind(p)
        prompts.append(CapturePrompt(text, (start, start + len(p))))
    (o_ids, o_off), (h_ids, h_off) = (fmt.encode_with_offsets(c.text) for c in prompts)
    return prompts[0], prompts[1], align(o_off, prompts[0].p_span, h_off, prompts[1].p_span, o_ids, h_ids)


def test_views_equal_single_prompt_reference(tiny_llama_dir: Path) -> None:
    handle = load(tiny_llama_dir)
    items = [pair(handle, "cat dog fox owl bee"), pair(handle, "hello world 0 1 2 3 4 5")]
    views = token_views(handle, items)
    places = [resid_post(layer) for layer in range(handle.n_layers)]
    for (obj, hyp, alignment), view in zip(items, views):
        refs = [run_hf(handle, torch.tensor([handle.prompt_format.encode(c.text)]), places) for c in (obj, hyp)]
        assert alignment.pairs
        for layer, place in enumerate(places):
            o, h = refs[0][place][0], refs[1][place][0]
            torch.testing.assert_close(torch.tensor(view.norms_object[layer]), o.norm(dim=-1), atol=1e-3, rtol=1e-4)
            torch.testing.assert_close(torch.tensor(view.norms_hypothetical[layer]), h.norm(dim=-1), atol=1e-3, rtol=1e-4)
            expected = [torch.nn.functional.cosine_similarity(o[a], h[b], dim=0).item() for a, b in alignment.pairs]
            torch.testing.assert_close(torch.tensor(view.cosine[layer]), torch.tensor(expected), atol=1e-3, rtol=0)
