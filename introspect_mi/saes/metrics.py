"""How good an SAE is: reconstruction of stored vectors, and the model's loss with the SAE spliced in."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from introspect_mi.places import Place
from introspect_mi.saes.splice import batched, editing, positions_mask, reconstruction_edit

if TYPE_CHECKING:
    from sae_lens import SAE

    from introspect_mi.models import ModelHandle


@dataclass(frozen=True)
class ReconstructionMetrics:
    explained_variance: float  # 1 − Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over all vectors
    l0: float  # mean number of active latents per vector
    dead_fraction: float  # fraction of latents that never fire on these vectors
    mse: float  # mean ‖x − x̂‖² per vector
    n_vectors: int


@torch.no_grad()
def reconstruction_metrics(sae: SAE, batches: Iterable[torch.Tensor]) -> ReconstructionMetrics:
    """Explained variance, L0 and dead-latent fraction over vectors [n, d_in] (sums in float64)."""
    n = 0
    total = torch.zeros(sae.cfg.d_in, dtype=torch.float64)
    square = residual = active = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    for x in batches:
        x = x.to(sae.device)
        f = sae.encode(x)
        err = (sae.decode(f).double() - x.double()).pow(2).sum().item()
        xd = x.double().cpu()
        n += len(x)
        total += xd.sum(0)
        square += xd.pow(2).sum().item()
        residual += err
        nonzero = (f != 0).cpu()
        active += nonzero.sum().item()
        fired |= nonzero.any(0)
    if n == 0:
        raise ValueError("no vectors to measure the SAE on")
    variance = square - total.pow(2).sum().item() / n
    return ReconstructionMetrics(
        explained_variance=1.0 - residual / variance if variance > 0 else float("nan"),
        l0=active / n, dead_fraction=1.0 - fired.float().mean().item(), mse=residual / n, n_vectors=n,
    )


@dataclass(frozen=True)
class SplicedLoss:
    clean: float  # mean next-token cross-entropy of the model as is
    spliced: float  # the same with the place's activation replaced by the SAE reconstruction
    n_tokens: int  # predicted tokens averaged over

    @property
    def delta(self) -> float:
        """spliced − clean: the loss the SAE's reconstruction error costs (nats per token)."""
        return self.spliced - self.clean


def _next_token_loss_sum(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """Σ cross-entropy of predicting token t+1 at every t where both are real tokens, and their count."""
    pairs = mask[:, :-1].bool() & mask[:, 1:].bool()
    ce = F.cross_entropy(logits[:, :-1][pairs].float(), input_ids[:, 1:][pairs], reduction="sum")
    return ce.item(), int(pairs.sum())


@torch.no_grad()
def spliced_loss(
    handle: ModelHandle, sae: SAE, place: Place, sequences: Sequence[Sequence[int]], batch_size: int = 8, splice_from: int = 0,
) -> SplicedLoss:
    """Next-token loss over `sequences` (token id lists) clean and with the SAE spliced in at `place`.

    The reconstruction replaces every real token's activation from index `splice_from` on (1 keeps
    the first token, often an attention sink with a huge norm, as it is).
    """
    model = handle.model
    sums = {"clean": 0.0, "spliced": 0.0}
    count = 0
    for _rows, batch in batched(handle, sequences, batch_size):
        inputs = batch.model_inputs()
        clean, n = _next_token_loss_sum(model(**inputs).logits, batch.input_ids, batch.attention_mask)
        with editing(model, place, reconstruction_edit(sae, positions_mask(batch, splice_from=splice_from))):
            spliced, _ = _next_token_loss_sum(model(**inputs).logits, batch.input_ids, batch.attention_mask)
        sums["clean"] += clean
        sums["spliced"] += spliced
        count += n
    if count == 0:
        raise ValueError("no next-token predictions: give sequences of at least 2 tokens")
    return SplicedLoss(clean=sums["clean"] / count, spliced=sums["spliced"] / count, n_tokens=count)
