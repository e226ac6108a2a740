"""The activation store: captured activations as safetensors shards plus a records table.

One store holds one model's activations (base or with adapters) on a list of prompts
("records": object-level or hypothetical). Layout::

    store.json                   what was captured: model provenance, places, position kinds, dtype
    shards/00000.jsonl           records 0..S-1 (one JSON object each: ids, tokens, labels, positions)
    shards/00000.safetensors     one tensor per (place, position kind): [vectors of those records, d_model]

A shard's `.safetensors` is written last and atomically, so it marks the shard complete: a run
killed mid-way resumes after the last complete shard and writes the same shards again. Writing
holds at most one shard in memory; so does `iter_vectors`. `load` is the one loader probes,
patching and SAE training read through.

Position kinds: `p_last` (last token of P), `final` (last prompt token), `answer_first` (the
model's first greedy answer token, appended to the prompt), `p_tokens` (every token of P) and
`all` (every token). A record lists the token indices of each kind it was captured at, so a
position kind can hold one vector per record or several.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save as save_tensors

from introspect_mi.durable import remove_stale_temps
from introspect_mi.errors import UserError
from introspect_mi.places import Place, PlaceKind
from introspect_mi.store import atomic_write_bytes, atomic_write_text

POSITION_KINDS = ("p_last", "final", "answer_first", "p_tokens", "all")
STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
INFO = "store.json"
SHARDS = "shards"

Filter = Callable[[pd.DataFrame], "pd.Series | np.ndarray"] | Mapping[str, Any] | None


def tensor_key(place: Place, position: str) -> str:
    return f"{place}@{position}"


class StoreWriter:
    """Appends records shard by shard; reopening a folder with the same `info` resumes it."""

    def __init__(self, folder: Path, info: Mapping[str, Any], shard_records: int = 128) -> None:
        self.folder = Path(folder)
        self.info = {**info, "shard_records": shard_records}
        self.places = [Place.parse(p) for p in self.info["places"]]
        self.positions = list(self.info["positions"])
        check_positions(self.positions)
        if self.info["dtype"] not in STORAGE_DTYPES:
            raise UserError(f"unknown storage dtype {self.info['dtype']!r}", f"use one of: {', '.join(STORAGE_DTYPES)}")
        self.dtype = STORAGE_DTYPES[self.info["dtype"]]
        self.shard_records = shard_records
        remove_stale_temps(self.folder, recursive=True)  # a killed writer's torn shard or info file
        self._check_or_write_info()
        self.done = self._complete_records()
        self._records: list[dict[str, Any]] = []
        self._tensors: dict[str, list[torch.Tensor]] = {}

    def _check_or_write_info(self) -> None:
        path = self.folder / INFO
        if path.exists():
            old = json.loads(path.read_text(encoding="utf-8"))
            if old != json.loads(json.dumps(self.info)):
                diff = sorted(k for k in set(old) | set(self.info) if old.get(k) != self.info.get(k))
                raise UserError(f"{self.folder} holds a capture with other settings (differs in: {', '.join(diff)})",
                                "use another run name, or delete that folder to capture again")
        else:
            atomic_write_text(path, json.dumps(self.info, indent=2) + "\n")

    def _complete_records(self) -> int:
        shards = sorted((self.folder / SHARDS).glob("*.safetensors"))
        for i, path in enumerate(shards):
            if path.stem != f"{i:05d}":
                raise UserError(f"shard {path.name} is out of sequence in {self.folder}", "delete the store folder and capture again")
        # one record per b"\n"-terminated line: str.splitlines would also break at U+2028, U+2029
        # and U+0085, which json.dumps(ensure_ascii=False) leaves raw inside strings
        return sum(p.with_suffix(".jsonl").read_bytes().count(b"\n") for p in shards)

    def add(self, record: dict[str, Any], vectors: Mapping[str, torch.Tensor]) -> None:
        """One record and its vectors: `tensor_key(place, position)` → [n_positions, d_model]."""
        self._records.append(record)
        for key, value in vectors.items():
            self._tensors.setdefault(key, []).append(value.detach().to("cpu", self.dtype))
        if len(self._records) == self.shard_records:
            self.flush()

    def flush(self) -> None:
        """Write the pending records as the next shard (records file first, tensors last)."""
        if not self._records:
            return
        index = self.done // self.shard_records
        if self.done % self.shard_records:
            raise RuntimeError("a partial shard was already written; a store takes no records after its last shard")
        stem = self.folder / SHARDS / f"{index:05d}"
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self._records)
        atomic_write_text(stem.with_suffix(".jsonl"), lines)
        tensors = {k: torch.cat(v).contiguous() for k, v in self._tensors.items()}
        atomic_write_bytes(stem.with_suffix(".safetensors"), save_tensors(tensors))
        self.done += len(self._records)
        self._records, self._tensors = [], {}


class ActivationStore:
    """Read access to a finished (or partial) store."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        path = self.folder / INFO
        if not path.is_file():
            raise UserError(f"{self.folder} is not an activation store (no {INFO})",
                            "capture one first: python -m experiments.capture --preset quick")
        self.info: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        self.shards = sorted((self.folder / SHARDS).glob("*.safetensors"))
        frames = [pd.read_json(s.with_suffix(".jsonl"), lines=True, dtype=False) for s in self.shards]
        self.records = _nan_to_none(pd.concat(frames, ignore_index=True)) if frames else pd.DataFrame()
        self._shard_of = np.repeat(np.arange(len(frames)), [len(f) for f in frames])

    @classmethod
    def open(cls, folder: Path | str) -> ActivationStore:
        return cls(Path(folder))

    @property
    def places(self) -> list[Place]:
        return [Place.parse(p) for p in self.info["places"]]

    @property
    def positions(self) -> list[str]:
        return list(self.info["positions"])

    def _key(self, place: Place | str, layer: int | None, position: str) -> str:
        if isinstance(place, str):
            place = Place.parse(place) if layer is None else Place(PlaceKind(place), layer)
        if place not in self.places:
            raise UserError(f"{place} was not captured in {self.folder}",
                            f"captured places: {', '.join(self.info['places'])}")
        if position not in self.positions:
            raise UserError(f"position kind {position!r} was not captured in {self.folder}",
                            f"captured position kinds: {', '.join(self.positions)}")
        return tensor_key(place, position)

    def select(self, filter: Filter = None) -> np.ndarray:
        """Boolean mask over `records` for a callable or a {column: value} dict."""
        if filter is None:
            return np.ones(len(self.records), dtype=bool)
        if callable(filter):
            return np.asarray(filter(self.records), dtype=bool)
        mask = np.ones(len(self.records), dtype=bool)
        for column, value in filter.items():
            if column not in self.records:
                raise UserError(f"filter column {column!r} is not in the records", f"columns: {', '.join(self.records.columns)}")
            mask &= (self.records[column] == value).to_numpy()
        return mask

    def load(self, place: Place | str, layer: int | None = None, position: str = "final", filter: Filter = None,
             as_: str = "numpy") -> tuple[np.ndarray | torch.Tensor, pd.DataFrame]:
        """(X [n_vectors, d_model] float32, one metadata row per vector with its `token_index`).

        `place` is a Place, `"resid_post[3]"`, or a kind with `layer` (`"resid_post", 3`).
        """
        key = self._key(place, layer, position)
        keep = self.select(filter)
        parts, metas = [], []
        for shard, path in enumerate(self.shards):
            rows = np.flatnonzero(self._shard_of == shard)
            chosen = rows[keep[rows]]
            if not len(chosen):
                continue
            counts = np.array([len(p[position]) for p in self.records["positions"].iloc[rows]])
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            take = np.concatenate([np.arange(starts[r - rows[0]], starts[r - rows[0]] + counts[r - rows[0]]) for r in chosen])
            with safe_open(str(path), framework="pt") as f:
                parts.append(f.get_tensor(key)[torch.from_numpy(take)].float())
            metas.append(self._explode(self.records.iloc[chosen], position))
        if not parts:
            d = int(self.info["d_model"])
            x = torch.zeros((0, d))
            meta = self.records.iloc[:0].assign(token_index=pd.Series(dtype=int))
        else:
            x, meta = torch.cat(parts), pd.concat(metas, ignore_index=True)
        return (x if as_ == "torch" else x.numpy()), meta

    @staticmethod
    def _explode(records: pd.DataFrame, position: str) -> pd.DataFrame:
        index = [p[position] for p in records["positions"]]
        out = records.loc[records.index.repeat([len(i) for i in index])].reset_index(drop=True)
        return out.assign(token_index=[t for ix in index for t in ix])

    def iter_vectors(self, place: Place | str, layer: int | None = None, position: str = "all",
                     batch_size: int = 4096, filter: Filter = None) -> Iterator[torch.Tensor]:
        """Float32 batches of vectors, one shard in memory at a time (the SAE trainer's feed)."""
        key = self._key(place, layer, position)
        keep = self.select(filter)
        for shard, path in enumerate(self.shards):
            rows = np.flatnonzero(self._shard_of == shard)
            if not keep[rows].any():
                continue
            if keep[rows].all():
                with safe_open(str(path), framework="pt") as f:
                    x = f.get_tensor(key).float()
            else:
                x, _ = self.load(place, layer, position, filter=lambda r, _rows=set(rows[keep[rows]].tolist()): r.index.isin(_rows), as_="torch")
            yield from x.split(batch_size)


def _nan_to_none(records: pd.DataFrame) -> pd.DataFrame:
    """JSON null stays None in text columns (pandas reads it as NaN beside strings)."""
    for column in records.columns:
        if not (pd.api.types.is_object_dtype(records[column]) or pd.api.types.is_string_dtype(records[column])):
            continue
        records[column] = pd.Series([None if isinstance(v, float) and v != v else v for v in records[column]],
                                    index=records.index, dtype=object)
    return records


def check_positions(positions: Sequence[str]) -> None:
    unknown = [p for p in positions if p not in POSITION_KINDS]
    if unknown:
        raise UserError(f"unknown position kind(s) {', '.join(unknown)}", f"use some of: {', '.join(POSITION_KINDS)}")
