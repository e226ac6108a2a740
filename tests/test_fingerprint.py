"""Fingerprints see every byte of weights, config and tokenizer files, and hash each file version once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from introspect_mi import fingerprint
from introspect_mi.models import adapter_hash, base_fingerprint

MIB = 1 << 20
SIZE = 17 * MIB
GAP = MIB + 30 * 1024
"""A byte between the first two of the 16 evenly spaced 1 MiB chunks a sampled hash of a 17 MiB file
reads ([0, 1 MiB) and [16/15 MiB, 31/15 MiB)): an edit there was invisible to the old fingerprint."""


def write_file(path: Path, data: bytes | str, mtime_ns: int) -> None:
    """Write and stamp an explicit mtime (two writes within one clock tick could share one)."""
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def flip_byte(path: Path, offset: int, mtime_ns: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    write_file(path, bytes(data), mtime_ns)


@pytest.fixture()
def checkpoint(tmp_path: Path, checkpoints: Path) -> Path:
    """A checkpoint-shaped folder: a multi-MiB weight file, config, generation config, tokenizer files."""
    folder = tmp_path / "model"
    folder.mkdir()
    write_file(folder / "model.safetensors", bytes(range(256)) * (SIZE // 256), 1_000)
    write_file(folder / "config.json", json.dumps({"hidden_size": 64, "rope_theta": 10000.0}), 1_000)
    write_file(folder / "generation_config.json", json.dumps({"eos_token_id": 2}), 1_000)
    write_file(folder / "tokenizer.json", json.dumps({"model": {"vocab": {"a": 0, "b": 1}}}), 1_000)
    write_file(folder / "tokenizer_config.json", json.dumps({"eos_token": "</s>"}), 1_000)
    write_file(folder / "chat_template.jinja", "{{ messages }}", 1_000)
    return folder


def fp(folder: Path) -> str:
    return base_fingerprint(folder, [folder / "model.safetensors"])


def test_a_one_byte_edit_in_the_middle_of_a_weight_file_changes_the_fingerprint(checkpoint: Path) -> None:
    before = fp(checkpoint)
    flip_byte(checkpoint / "model.safetensors", GAP, 2_000)
    assert fp(checkpoint) != before


@pytest.mark.parametrize("name, text", [
    ("config.json", json.dumps({"hidden_size": 64, "rope_theta": 500000.0})),
    ("generation_config.json", json.dumps({"eos_token_id": 3})),
    ("tokenizer.json", json.dumps({"model": {"vocab": {"a": 1, "b": 0}}})),
    ("tokenizer_config.json", json.dumps({"eos_token": "<|end|>"})),
    ("chat_template.jinja", "{{ messages | reverse }}"),
])
def test_config_generation_config_tokenizer_and_chat_template_edits_change_the_fingerprint(checkpoint: Path, name: str, text: str) -> None:
    before = fp(checkpoint)
    write_file(checkpoint / name, text, 2_000)
    assert fp(checkpoint) != before


def test_a_one_byte_edit_of_a_large_adapter_weight_file_changes_the_adapter_hash(tmp_path: Path, checkpoints: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    write_file(adapter / "adapter_config.json", json.dumps({"r": 8, "target_modules": ["q_proj", "v_proj"]}), 1_000)
    write_file(adapter / "adapter_model.safetensors", bytes(range(256)) * (SIZE // 256), 1_000)
    before = adapter_hash(adapter)
    flip_byte(adapter / "adapter_model.safetensors", GAP, 2_000)
    assert adapter_hash(adapter) != before


def test_an_unchanged_file_is_read_once_and_a_new_mtime_rehashes_it(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[Path] = []
    real = fingerprint.file_digest

    def counting(path: Path) -> str:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(fingerprint, "file_digest", counting)
    weights = checkpoint / "model.safetensors"
    first = fp(checkpoint)
    assert len(reads) == 6  # weights, config, generation config, two tokenizer files, chat template
    assert fp(checkpoint) == first and len(reads) == 6  # from the on-disk cache: nothing read again
    os.utime(weights, ns=(3_000, 3_000))  # same bytes, new mtime
    assert fp(checkpoint) == first and reads[6:] == [weights.resolve()]
    flip_byte(weights, GAP, 4_000)
    assert fp(checkpoint) != first and reads[7:] == [weights.resolve()]


def test_a_damaged_cache_entry_is_hashed_again(checkpoint: Path) -> None:
    weights = checkpoint / "model.safetensors"
    digest = fingerprint.cached_digest(weights)
    assert digest == fingerprint.file_digest(weights)
    for entry in fingerprint.cache_dir().rglob("*.json"):
        entry.write_text("{not json")
    assert fingerprint.cached_digest(weights) == digest


def test_weights_fingerprint_is_the_loaded_handles_without_loading(tiny_llama_dir: Path, tmp_path: Path, checkpoints: Path) -> None:
    from introspect_mi.models import load, weights_fingerprint
    from tests.test_models import make_adapter

    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter")
    assert weights_fingerprint(tiny_llama_dir) == load(tiny_llama_dir).fingerprint
    assert weights_fingerprint(tiny_llama_dir, [adapter]) == load(tiny_llama_dir, adapter=adapter).fingerprint != weights_fingerprint(tiny_llama_dir)
