"""SAEs with chosen weights, written to disk in sae-lens format, for the SAE tests."""

from __future__ import annotations

from pathlib import Path

import torch


def random_topk(d_in: int, d_sae: int, k: int, hook_name: str | None = "blocks.1.hook_resid_post", seed: int = 0):
    """An inference TopK SAE with random weights (scaled so that it reconstructs badly but finitely)."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(seed)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, metadata=SAEMetadata(hook_name=hook_name)))
    with torch.no_grad():
        sae.W_enc.normal_(0, d_in**-0.5)
        sae.W_dec.normal_(0, d_in**-0.5)
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae.eval()


def perfect_sae(d_in: int, hook_name: str = "blocks.1.hook_resid_post", dtype: torch.dtype = torch.float32):
    """A ReLU SAE with latents relu(x) and relu(−x) and decoder [I; −I]: decode(encode(x)) == x exactly."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    eye = torch.eye(d_in, dtype=dtype)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=2 * d_in, dtype=str(dtype).removeprefix("torch."), metadata=SAEMetadata(hook_name=hook_name)))
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def saved(sae, folder: Path) -> Path:
    """`folder` holding `sae` in sae-lens format (cfg.json + sae_weights.safetensors)."""
    sae.save_model(folder)
    return folder
