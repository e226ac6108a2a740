"""The rules that Llama-3's tokenizer and chat template put at risk, each on the real Llama-3
tokenizer (tests/llama3.py) in its 3.1-style and 3.0-style configs:

- every rendered prompt holds exactly one `<|begin_of_text|>`;
- generation stops at `<|eot_id|>`, also where the tokenizer's EOS is `<|end_of_text|>`;
- the pad token is never a token that ends real text;
- a finetune target ends with the template's own end-of-turn token (read off the template);
- P's character span maps onto exactly the tokens the tokenizer made;
- raw hooks, the bridge and nnsight read the same numbers at every place;
- a merged LoRA adapter computes what the unmerged one does.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

from introspect_mi import evaluation as ev
from introspect_mi.alignment import align, p_token_indices
from introspect_mi.finetune_batches import Example, encode_example, end_of_answer_ids
from introspect_mi.generate import greedy, user_prompt
from introspect_mi.inference import Engine
from introspect_mi.models import ModelHandle, attach_adapter, load
from introspect_mi.places import Place, PlaceKind
from introspect_mi.prompt_format import Message
from introspect_mi.prompts import PromptConfig, RenderedPrompt, hypothetical_prompt, object_prompt
from tests.llama3 import BOS, END_OF_TEXT, EOM, EOT, LETTERS, PAD, VOCAB, Lazy
from tests.test_engines import assert_engines_agree_exactly
from tests.test_models import make_adapter

VARIANTS = ["3.1", "3.0"]
TASKS = ("animals", "numbers", "myopic_reward", "mcq_general")  # one task of each family with a property


@pytest.fixture(scope="module")
def handles(llama3_dirs) -> dict[str, ModelHandle]:
    """Each checkpoint loaded once for this module (tests that change weights work on a copy)."""
    return Lazy(lambda name: load(llama3_dirs[name]))


@pytest.fixture(params=VARIANTS)
def handle(request, handles) -> ModelHandle:
    return handles[request.param]


def rendered_prompts(handle: ModelHandle) -> list[RenderedPrompt]:
    """Object-level and hypothetical prompts of every property of four task families, 0 and 2 shots."""
    pairs = ev.make_pairs(ev.load_task_items(TASKS, "val", 2, 0), None)
    fmt, out = handle.prompt_format, []
    for shots in (0, 2):
        config = PromptConfig(shots=shots)
        out += [object_prompt(fmt, p.item, p.spec, config) for p in pairs]
        out += [hypothetical_prompt(fmt, p.item, p.spec, p.prop, config) for p in pairs]
    return out


def template_end_of_turn(tokenizer) -> int:
    """Oracle: the first token the chat template writes after an assistant answer."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Zebra"}], tokenize=False)
    return tokenizer(text[text.rindex("Zebra") + len("Zebra"):], add_special_tokens=False)["input_ids"][0]


def test_the_checkpoints_have_llama3s_features(handles) -> None:
    for name, tied, eos, pad in (("3.1", False, "<|eot_id|>", "<|finetune_right_pad_id|>"), ("3.0", True, "<|end_of_text|>", None)):
        h = handles[name]
        c = h.config
        assert (c.vocab_size, c.num_attention_heads, c.num_key_value_heads, c.tie_word_embeddings) == (VOCAB, 8, 2, tied)
        assert c.rope_parameters["rope_type"] == "llama3" and c.rope_parameters["factor"] == 8.0  # read from `rope_scaling`
        assert list(h.model.generation_config.eos_token_id) == [END_OF_TEXT, EOM, EOT]
        assert (h.tokenizer.bos_token_id, h.tokenizer.eos_token, h.tokenizer.pad_token) == (BOS, eos, pad)
        assert template_end_of_turn(h.tokenizer) == EOT


def test_every_rendered_prompt_holds_exactly_one_bos(handle: ModelHandle) -> None:
    fmt = handle.prompt_format
    prompts = rendered_prompts(handle)
    assert len(prompts) == 2 * 2 * 22  # shots × (object, hypothetical) × 2 items of 4 tasks × their 7 + 1 + 1 + 2 properties
    for prompt in prompts:
        for ids in (fmt.encode(prompt.text), fmt.encode_with_offsets(prompt.text)[0]):
            assert ids[0] == BOS and ids.count(BOS) == 1, prompt.text[:120]
    encoded = encode_example(fmt, end_of_answer_ids(fmt, handle.tokenizer), Example(prompts[0].text, "A"))
    assert encoded.ids.count(BOS) == 1


@pytest.mark.parametrize("name", ["3.1", "3.0", "3.0-eos-only"])
def test_generation_stops_at_eot(handles, name: str) -> None:
    """The scripted model writes a letter, then <|eot_id|>, then another letter: an answer longer
    than one letter means decoding ran past <|eot_id|> (the 3.0 tokenizer's EOS is <|end_of_text|>;
    "3.0-eos-only" has a generation config without <|eot_id|> too)."""
    h = handles[name]
    assert EOT in h.stop_token_ids
    prompts = [p.text for p in rendered_prompts(h)[::7]]
    letters = {h.tokenizer.decode([t]) for t in LETTERS}
    for answers in (Engine(h, batch_size=4, progress=False).greedy(prompts, 6), greedy(h, prompts, 6)):
        assert set(answers) <= letters, answers


@pytest.mark.parametrize("name", ["3.1", "3.0", "3.0-eos-only"])
def test_the_pad_token_never_ends_real_text(handles, name: str) -> None:
    h = handles[name]
    ends = {END_OF_TEXT, EOM, EOT, *h.stop_token_ids, template_end_of_turn(h.tokenizer)}
    assert h.pad_token_id not in ends | {BOS} and 0 <= h.pad_token_id < h.config.vocab_size
    if name == "3.1":
        assert h.pad_token_id == PAD  # the tokenizer's own pad, when it is a safe one


def test_a_tokenizer_whose_pad_is_its_eos_pads_with_another_token(tiny_llama_dir: Path) -> None:
    h = load(tiny_llama_dir)  # SmolLM2-like: pad = EOS = <|im_end|>
    assert h.tokenizer.pad_token_id == h.tokenizer.eos_token_id
    assert h.pad_token_id not in {*h.stop_token_ids, h.tokenizer.bos_token_id}


def test_the_finetune_target_ends_with_the_templates_end_of_turn(handle: ModelHandle) -> None:
    """Oracle: the template's own rendering of the conversation with the answer, cut after the
    token that follows the answer (not `tokenizer.eos_token`, `<|end_of_text|>` on 3.0)."""
    fmt, tok = handle.prompt_format, handle.tokenizer
    question = rendered_prompts(handle)[0].p
    prompt = fmt.render([Message("system", ""), Message("user", question)])
    encoded = encode_example(fmt, end_of_answer_ids(fmt, tok), Example(prompt, "B"))
    chat = [{"role": "system", "content": ""}, {"role": "user", "content": question}, {"role": "assistant", "content": "B"}]
    full = tok(tok.apply_chat_template(chat, tokenize=False), add_special_tokens=False)["input_ids"]
    end = template_end_of_turn(tok)
    assert end == EOT and list(encoded.ids) == full[: full.index(end, encoded.n_prompt) + 1]
    assert list(encoded.ids[encoded.n_prompt:]) == [LETTERS[1], EOT]


def test_ps_character_span_maps_onto_the_tokenizers_tokens(handle: ModelHandle) -> None:
    fmt, tok = handle.prompt_format, handle.tokenizer
    prompts = rendered_prompts(handle)
    half = len(prompts) // 4  # object prompts, then hypothetical prompts, at 0 shots
    for obj, hyp in zip(prompts[:half], prompts[half: 2 * half]):
        assert obj.p == hyp.p
        (obj_ids, obj_spans), (hyp_ids, hyp_spans) = fmt.encode_with_offsets(obj.text), fmt.encode_with_offsets(hyp.text)
        for text, ids, spans in ((obj.text, obj_ids, obj_spans), (hyp.text, hyp_ids, hyp_spans)):
            assert ids == fmt.encode(text)
            assert [text[s:e] for s, e in spans] == [tok.decode([i]) for i in ids]  # ASCII prompts: each token, its characters
            assert "".join(text[s:e] for s, e in spans) == text
        a = align(obj_spans, obj.p_span, hyp_spans, hyp.p_span, obj_ids, hyp_ids)
        assert all(obj_ids[o] == hyp_ids[h] for o, h in a.pairs) and len(a.pairs) >= 5
        # only tokens at P's edges may merge with the characters around P
        inner_obj = p_token_indices(obj_spans, obj.p_span)[1:-1]
        assert set(inner_obj) <= {o for o, _ in a.pairs}


def test_raw_hooks_bridge_and_nnsight_agree_exactly_at_every_place(handle: ModelHandle) -> None:
    kinds = [PlaceKind.RESID_PRE, PlaceKind.RESID_POST, PlaceKind.ATTN_OUT, PlaceKind.MLP_OUT]
    assert_engines_agree_exactly(handle, [Place(k, l) for k in kinds for l in range(handle.n_layers)] + [Place(PlaceKind.FINAL_NORM)])


def copy_of(handle: ModelHandle) -> ModelHandle:
    """The handle over its own copy of the weights."""
    return dataclasses.replace(handle, model=copy.deepcopy(handle.model), adapters=[], adapter_hashes=[], _views={})


@pytest.mark.parametrize("name", VARIANTS)
def test_a_merged_lora_adapter_equals_the_unmerged_one(llama3_dirs, tmp_path: Path, name: str) -> None:
    adapter = make_adapter(llama3_dirs[name], tmp_path / "adapter")
    base = load(llama3_dirs[name])  # not a shared handle: booting the bridge wraps its modules
    ids = torch.tensor([base.prompt_format.encode(user_prompt(base, "What is the next 5 animals? cat dog"))])
    merged, unmerged = copy_of(base), copy_of(base)
    attach_adapter(merged, adapter, "merged")  # what load(..., adapter=, adapter_mode=) does
    attach_adapter(unmerged, adapter, "peft")
    with torch.no_grad():
        l_base, l_merged, l_peft = (h.model(ids).logits for h in (base, merged, unmerged))
    scale = float(l_peft.abs().max())
    assert float((l_merged - l_peft).abs().max()) < 1e-5 * scale  # different kernels: fp32 rounding only
    assert float((l_merged - l_base).abs().max()) > 1e-2 * scale  # the adapter does change the logits
