"""The activation store: shards round-trip, one loader for fixed and ragged positions, resume."""

from __future__ import annotations

import fcntl
import locale
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from introspect_mi.actstore import ActivationStore, StoreWriter, tensor_key
from introspect_mi.errors import UserError
from introspect_mi.places import resid_post

PLACES = [resid_post(0), resid_post(1)]
D = 4


def info(dtype: str = "float32") -> dict:
    return {"places": [str(p) for p in PLACES], "positions": ["final", "p_tokens"], "dtype": dtype, "d_model": D, "n_layers": 2}


def vectors(record: int, n_p: int) -> dict[str, torch.Tensor]:
    """Deterministic vectors that encode (record, place, position, token) in their values."""
    out = {}
    for li, place in enumerate(PLACES):
        out[tensor_key(place, "final")] = torch.full((1, D), record * 100.0 + li * 10 + 9)
        out[tensor_key(place, "p_tokens")] = torch.stack([torch.full((D,), record * 100.0 + li * 10 + t) for t in range(n_p)])
    return out


def record(i: int) -> dict:
    n_p = 1 + i % 3
    return {"record": i, "item_id": f"it-{i // 2}", "kind": "object" if i % 2 == 0 else "hypothetical", "task": "animals",
            "positions": {"final": [20 + i], "p_tokens": list(range(n_p))}}


def write(folder: Path, n: int, shard: int = 3, stop_after: int | None = None, dtype: str = "float32", extra: dict | None = None) -> None:
    w = StoreWriter(folder, info(dtype), shard_records=shard)
    for i in range(w.done, n):
        if stop_after is not None and i == stop_after:
            return  # "killed": the pending partial shard is never written
        rec = {**record(i), **(extra or {})}
        w.add(rec, vectors(i, len(rec["positions"]["p_tokens"])))
    w.flush()


def test_fixed_position_round_trip_with_filter(tmp_path: Path) -> None:
    write(tmp_path, 7)
    store = ActivationStore.open(tmp_path)
    x, meta = store.load("resid_post", 1, "final")
    assert x.shape == (7, D) and x.dtype == np.float32
    np.testing.assert_array_equal(x[:, 0], [r * 100 + 19 for r in range(7)])
    assert meta["token_index"].tolist() == [20 + r for r in range(7)]
    x, meta = store.load(resid_post(0), position="final", filter={"kind": "hypothetical"})
    assert meta["record"].tolist() == [1, 3, 5]
    np.testing.assert_array_equal(x[:, 0], [109, 309, 509])


def test_ragged_position_one_row_per_token(tmp_path: Path) -> None:
    write(tmp_path, 7)
    x, meta = ActivationStore.open(tmp_path).load("resid_post[0]", position="p_tokens", filter=lambda r: r["record"] >= 4)
    expected = [r * 100 + t for r in range(4, 7) for t in range(1 + r % 3)]
    np.testing.assert_array_equal(x[:, 0], expected)
    assert meta["token_index"].tolist() == [t for r in range(4, 7) for t in range(1 + r % 3)]


def test_killed_capture_resumes_to_the_same_shards(tmp_path: Path) -> None:
    write(tmp_path / "whole", 8)
    write(tmp_path / "killed", 8, stop_after=5)  # shard 0 (records 0-2) complete, 3-4 lost
    assert StoreWriter(tmp_path / "killed", info(), shard_records=3).done == 3
    write(tmp_path / "killed", 8)
    for name in ("00000", "00001", "00002"):
        for suffix in (".safetensors", ".jsonl"):
            assert (tmp_path / "whole/shards" / (name + suffix)).read_bytes() == (tmp_path / "killed/shards" / (name + suffix)).read_bytes()


@pytest.fixture
def ascii_locale() -> Iterator[None]:
    """The process locale's encoding is ASCII (LC_CTYPE=C), as on a machine without a UTF-8 locale."""
    old = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        yield
    finally:
        locale.setlocale(locale.LC_CTYPE, old)


def test_resume_counts_records_holding_unicode_line_breaks(tmp_path: Path, ascii_locale: None) -> None:
    """U+2028, U+2029 and U+0085 stay raw in the records' JSON (str.splitlines breaks lines at them);
    the records are UTF-8 whatever the locale."""
    text = {"answer": "one\u2028two\u2029three\x85four é"}
    write(tmp_path / "whole", 8, extra=text)
    write(tmp_path / "killed", 8, stop_after=5, extra=text)
    assert "\u2028".encode() in (tmp_path / "killed/shards/00000.jsonl").read_bytes()
    assert StoreWriter(tmp_path / "killed", info(), shard_records=3).done == 3
    write(tmp_path / "killed", 8, extra=text)
    for name in ("00000.jsonl", "00001.jsonl", "00002.jsonl", "00002.safetensors"):
        assert (tmp_path / "whole/shards" / name).read_bytes() == (tmp_path / "killed/shards" / name).read_bytes()
    store = ActivationStore.open(tmp_path / "killed")
    assert store.records["record"].tolist() == list(range(8)) and set(store.records["answer"]) == {text["answer"]}


def test_iter_vectors_streams_every_vector_once(tmp_path: Path) -> None:
    write(tmp_path, 7)
    store = ActivationStore.open(tmp_path)
    streamed = torch.cat(list(store.iter_vectors("resid_post", 0, "p_tokens", batch_size=2)))
    loaded, _ = store.load("resid_post", 0, "p_tokens", as_="torch")
    assert torch.equal(streamed, loaded)
    some = torch.cat(list(store.iter_vectors("resid_post", 0, "final", filter={"kind": "object"})))
    assert some[:, 0].tolist() == [0.0 * 100 + 9, 209, 409, 609]


def test_storage_dtype_is_applied(tmp_path: Path) -> None:
    write(tmp_path, 2, dtype="bfloat16")
    x, _ = ActivationStore.open(tmp_path).load("resid_post", 0, "final", as_="torch")
    assert x.dtype == torch.float32  # loaded as float32 whatever the storage
    assert x[1, 0].item() == torch.tensor(109.0).to(torch.bfloat16).item()


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not an activation store"):
        ActivationStore.open(tmp_path / "nothing")
    write(tmp_path / "s", 2)
    store = ActivationStore.open(tmp_path / "s")
    with pytest.raises(UserError, match="resid_post\\[5\\] was not captured"):
        store.load("resid_post", 5, "final")
    with pytest.raises(UserError, match="position kind 'all' was not captured"):
        store.load("resid_post", 0, "all")
    with pytest.raises(UserError, match="other settings"):
        StoreWriter(tmp_path / "s", {**info(), "dtype": "float16"}, shard_records=3)
    with pytest.raises(UserError, match="unknown position kind"):
        StoreWriter(tmp_path / "t", {**info(), "positions": ["last"]})


def test_writer_holds_at_most_one_shard(tmp_path: Path) -> None:
    w = StoreWriter(tmp_path, info(), shard_records=3)
    for i in range(7):
        rec = record(i)
        w.add(rec, vectors(i, len(rec["positions"]["p_tokens"])))
        assert len(w._records) < 3 and all(len(v) < 3 for v in w._tensors.values())
    assert w.done == 6 and len(list((tmp_path / "shards").glob("*.safetensors"))) == 2


def test_null_labels_read_back_as_none(tmp_path: Path) -> None:
    w = StoreWriter(tmp_path, info(), shard_records=3)
    for i, value in enumerate(["a", None, "b"]):
        rec = {**record(i), "object_value": value}
        w.add(rec, vectors(i, len(rec["positions"]["p_tokens"])))
    w.flush()
    assert ActivationStore.open(tmp_path).records["object_value"].tolist() == ["a", None, "b"]


def test_reopening_removes_a_killed_writers_temp_files_but_not_a_live_ones(tmp_path: Path) -> None:
    write(tmp_path, 8, stop_after=5)
    shards = tmp_path / "shards"
    stale = [shards / ".00001.jsonl.k1ll3d.tmp", shards / ".00001.safetensors.k1ll3d.tmp", tmp_path / ".store.json.k1ll3d.tmp"]
    for path in stale:
        path.write_bytes(b"torn")  # unlocked: its writer died
    live = shards / ".00001.safetensors.l1v3.tmp"
    live.write_bytes(b"in progress")
    with open(live, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as atomic_file holds it while writing
        assert StoreWriter(tmp_path, info(), shard_records=3).done == 3
        assert [p for p in stale if p.exists()] == [] and live.read_bytes() == b"in progress"
