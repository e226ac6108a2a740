"""Training examples → token sequences → batches → the loss: the loss mask covers exactly the answer
and its end token, the logits-only-where-the-loss-is loss equals HF's full forward, and the
train/validation split is deterministic."""

from __future__ import annotations

import pytest
import torch

from introspect_mi.finetune_batches import Example, answer_loss, collate, encode_example, end_of_answer_ids, split_examples
from introspect_mi.models import ModelHandle
from introspect_mi.prompt_format import Message
from tests.test_finetune import examples, gemma, llama, one_thread  # noqa: F401  (fixtures: the tiny models, one thread)


@pytest.mark.parametrize(("which", "expected"), [("llama", "Paris<|im_end|>"), ("gemma", " Paris\n")])
def test_loss_mask_covers_exactly_the_answer_and_the_end_token(which: str, expected: str, request: pytest.FixtureRequest) -> None:
    handle = request.getfixturevalue(which)
    fmt, tok = handle.prompt_format, handle.tokenizer
    end = end_of_answer_ids(fmt, tok)
    long = Example(fmt.render([Message("user", "The capital of France is? Respond only with that word.")]), "Paris")
    short = Example(fmt.render([Message("user", "hello")]), "Paris")
    enc = [encode_example(fmt, end, e) for e in (long, short)]
    batch = collate(enc, handle.pad_token_id)
    labels = batch.hf_labels()
    for row, e in enumerate(enc):
        selected = batch.targets[batch.rows == row].tolist()
        assert tok.decode(selected) == expected
        # the hidden states used are one column left of the tokens they predict
        cols = batch.cols[batch.rows == row]
        assert batch.input_ids[row, cols + 1].tolist() == selected
        assert tok.decode(labels[row][labels[row] != -100].tolist()) == expected
        # everything before the answer is the prompt, exactly as the format encodes it
        real = batch.input_ids[row][batch.attention_mask[row].bool()].tolist()
        assert real[: e.n_prompt] == fmt.encode((long, short)[row].prompt)
    # left padding: the mask comes from lengths (SmolLM2-like pad == EOS is real content here)
    assert batch.attention_mask[1].sum() == len(enc[1].ids) and batch.attention_mask[1, 0] == 0


def test_a_prompt_whose_tokens_merge_with_the_answer_is_refused(llama: ModelHandle) -> None:
    fmt = llama.prompt_format
    end = end_of_answer_ids(fmt, llama.tokenizer)
    bad = Example(fmt.render([Message("user", "next animal?")]) + "ca", "t")  # "ca" + "t" tokenizes as "cat"
    assert fmt.encode(bad.prompt + bad.answer)[-1] == fmt.encode("cat")[-1]
    with pytest.raises(ValueError, match="example 3.*not a prefix"):
        encode_example(fmt, end, bad, 3)
    with pytest.raises(ValueError, match="empty answer"):
        encode_example(fmt, end, Example(bad.prompt, ""), 0)


@pytest.mark.parametrize(("which", "softcap"), [("llama", None), ("gemma", None), ("gemma", 2.0)])
def test_answer_only_loss_equals_hf_full_forward_loss(which: str, softcap: float | None, request: pytest.FixtureRequest) -> None:
    handle = request.getfixturevalue(which)
    if softcap is not None:
        handle.model.config.final_logit_softcapping = softcap  # a cap small enough to matter
    fmt = handle.prompt_format
    end = end_of_answer_ids(fmt, handle.tokenizer)
    exs = examples(handle, 3) + [Example(examples(handle, 1)[0].prompt, "cat dog fox")]
    enc = [encode_example(fmt, end, e) for e in exs]
    batch = collate(enc, handle.pad_token_id)
    # independent oracle: HF's own forward and loss, labels -100 outside each row's last n_target tokens
    labels = torch.full_like(batch.input_ids, -100)
    for row, e in enumerate(enc):
        labels[row, -e.n_target :] = torch.tensor(e.ids[e.n_prompt :])
    with torch.no_grad():
        ref = handle.model(**batch.model_inputs(), labels=labels).loss
        total, n = answer_loss(handle.model, batch)
    assert n == sum(e.n_target for e in enc)
    assert torch.allclose(total / n, ref, atol=1e-5, rtol=0), (float(total / n), float(ref))


def test_split_is_deterministic_disjoint_and_ordered() -> None:
    exs = [Example(f"p{i}", f"a{i}") for i in range(20)]
    train_a, val_a = split_examples(exs, 0.2, seed=1)
    assert (train_a, val_a) == split_examples(exs, 0.2, seed=1)
    assert len(val_a) == 4 and sorted(train_a + val_a, key=exs.index) == exs
    assert train_a == [e for e in exs if e in train_a]  # input order kept
    assert split_examples(exs, 0.2, seed=2)[1] != val_a
    assert split_examples(exs, 0.0, seed=1) == (exs, [])
