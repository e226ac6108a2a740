"""Every-token activations of a model on a list of prompts: the SAE trainer's feed.

The activation store keeps a few positions per prompt, too few vectors to train an SAE; this
runs the model over the prompts (one pass records every chosen place, `capture.forward`) and
keeps every token's vector from `skip` on. `skip` defaults to the prefix all prompts share
(chat template, system turn): those tokens have identical activations in every prompt, and the
first of them is an attention sink whose norm dwarfs the rest.

Nothing runs until a place's vectors are first iterated, so `train_sae` reusing a saved SAE
costs no forward pass; the pass then serves every place, and later passes over the vectors
(training cycles through them) come from memory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from introspect_mi.batching import left_pad
from introspect_mi.capture import batches
from introspect_mi.hooks import recording
from introspect_mi.models import ModelHandle
from introspect_mi.places import Place


def shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Tokens every sequence starts with (at most the shortest one's length minus 1)."""
    if not sequences:
        return 0
    limit = min(len(s) for s in sequences) - 1
    n = 0
    while n < limit and all(s[n] == sequences[0][n] for s in sequences):
        n += 1
    return n


class ActivationStream:
    """Every token's activation from `skip` on, at each place, over token id lists."""

    def __init__(self, handle: ModelHandle, sequences: Sequence[Sequence[int]], places: Sequence[Place],
                 skip: int | None = None, batch_size: int = 8, chunk: int = 4096, progress: bool = True) -> None:
        self.handle = handle
        self.sequences = [list(s) for s in sequences]
        self.places = list(places)
        self.skip = shared_prefix_length(self.sequences) if skip is None else skip
        if any(len(s) <= self.skip for s in self.sequences):
            raise ValueError(f"every sequence needs more than skip={self.skip} tokens")
        self.batch_size = batch_size
        self.chunk = chunk
        self.progress = progress
        self._vectors: dict[Place, torch.Tensor] | None = None

    def n_vectors(self, first: int | None = None) -> int:
        """Vectors the stream yields (of its first `first` sequences)."""
        return sum(len(s) - self.skip for s in self.sequences[:first])

    def describe(self) -> dict[str, Any]:
        """What the vectors are, without computing them (for an SAE's reuse key)."""
        digest = hashlib.sha256(json.dumps(self.sequences).encode("utf-8")).hexdigest()
        return {"model": self.handle.fingerprint, "sequences": len(self.sequences), "token_ids_sha256": digest,
                "skip": self.skip, "vectors": self.n_vectors()}

    @torch.no_grad()
    def _compute(self) -> dict[Place, torch.Tensor]:
        parts: dict[Place, list[torch.Tensor]] = {p: [] for p in self.places}
        bar = tqdm(total=len(self.sequences), desc=f"activations {self.handle.name}", unit="prompt", disable=not self.progress)
        for chunk in batches(self.sequences, self.batch_size):
            batch = left_pad(list(chunk), self.handle.pad_token_id).to(self.handle.device)
            with recording(self.handle.model, self.places) as acts:
                self.handle.model(**batch.model_inputs(), logits_to_keep=1)
            for place in self.places:
                parts[place] += [acts[place][row, batch.width - n + self.skip :].float().cpu() for row, n in enumerate(batch.lengths)]
            bar.update(len(chunk))
        bar.close()
        return {p: torch.cat(v) for p, v in parts.items()}

    def vectors(self, place: Place) -> torch.Tensor:
        """[n_vectors, d_model] float32: sequence by sequence, token by token."""
        if self._vectors is None:
            self._vectors = self._compute()
        return self._vectors[place]

    def of(self, place: Place) -> _PlaceView:
        """A re-iterable over `place`'s vectors in chunks (what `train_sae` takes)."""
        if place not in self.places:
            raise ValueError(f"{place} is not one of the stream's places ({', '.join(map(str, self.places))})")
        return _PlaceView(self, place)


class _PlaceView:
    def __init__(self, stream: ActivationStream, place: Place) -> None:
        self.stream, self.place = stream, place

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield from self.stream.vectors(self.place).split(self.stream.chunk)
