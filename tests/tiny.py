"""Tiny random-weight models and a tokenizer built in the test process (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch

CORPUS = [
    "What is the next 5 animals in the following text? cat dog fox owl bee",
    "Previously, you were asked the following question: what is the second character?",
    "The capital of France is Paris. Respond only with that word. true false even odd A B C D",
    "system user assistant Q: A: hello world 0 1 2 3 4 5 6 7 8 9",
]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer(chat: bool = True):
    """Byte-level BPE over a small corpus; chat=True mimics SmolLM2 (EOS doubles as pad)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<bos>", "<pad>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    if chat:
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
            unk_token="<|endoftext|>", chat_template=CHAT_TEMPLATE,
        )
    from tokenizers import processors

    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<|endoftext|>", pad_token="<pad>")


def make_llama(vocab_size: int, hidden: int = 64, layers: int = 3, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).eval()


def make_gemma3(vocab_size: int, hidden: int = 64, layers: int = 2, seed: int = 0, sliding_window: int = 16):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
        sliding_window=sliding_window, layer_types=["sliding_attention", "full_attention"][:layers],
    )
    return Gemma3ForCausalLM(cfg).eval()


def save_checkpoint(folder: Path, model, tokenizer) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
