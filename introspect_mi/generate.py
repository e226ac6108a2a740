"""Rendering a single question, and the reference greedy path (HF `generate`).

The fast path is `introspect_mi.inference.Engine`; `greedy` here is its test oracle.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from introspect_mi.batching import left_pad
from introspect_mi.models import ModelHandle
from introspect_mi.prompt_format import Message, cut_at_stop


def user_prompt(handle: ModelHandle, text: str, system: str = "") -> str:
    """Render one user question (empty system message by default, as in the paper)."""
    return handle.prompt_format.render([Message("system", system), Message("user", text)])


@torch.no_grad()
def greedy(handle: ModelHandle, rendered: Sequence[str], max_new_tokens: int = 32) -> list[str]:
    """Greedy (T=0) answers for already-rendered prompts, in one left-padded batch."""
    batch = left_pad([handle.prompt_format.encode(t) for t in rendered], handle.pad_token_id).to(handle.device)
    gen_kwargs = {}
    if handle.prompt_format.stop_strings:
        gen_kwargs = {"stop_strings": list(handle.prompt_format.stop_strings), "tokenizer": handle.tokenizer}
    out = handle.model.generate(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=max_new_tokens,
        do_sample=False, temperature=None, top_p=None, top_k=None,
        eos_token_id=handle.stop_token_ids, pad_token_id=handle.pad_token_id, **gen_kwargs,
    )
    texts = handle.tokenizer.batch_decode(out[:, batch.width:], skip_special_tokens=True)
    return [cut_at_stop(t, handle.prompt_format.stop_strings) for t in texts]
