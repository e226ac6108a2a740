"""Sparse autoencoders (sae-lens) on our places: train, load, measure, analyse.

Modules: `train` (TopK SAEs with sae-lens's `SAETrainer` on a stream of activation vectors),
`load` (sae-lens folders from local disk, mapped onto `Place`s), `splice` (running the model with
an SAE edit at one place), `metrics` (explained variance, L0, dead latents, spliced next-token
loss), `analysis` (feature overlap between runs, gradient × activation attribution to the latents
and the error term, ablation, differential features), `shared_prefix` (attribution and ablation
computing each prompt's unedited prefix once), `answers` (logit difference of the correct value
against the other valid values, compliance), `controls` (top attributed latents out of fold, random
latents matched on activation frequency and magnitude), `ablation_effects` (per-prompt effects,
top-k vs matched random per item), `store_encoding` (stored vectors through SAEs: fit, overlap with
a same-token control, differential latents).

Format on disk
--------------
An SAE is a folder in sae-lens's own format: `cfg.json` + `sae_weights.safetensors`, as
`SAE.save_model` writes them. SAEs we train live under `checkpoints/saes/<model fingerprint>/
<place>-<config hash>/` (`train.sae_dir`) and also hold `introspect_mi_sae.json` (place, model
fingerprint, training config, data description, metrics). Nothing is fetched from a hub at run
time: `load_sae` reads the folder and nothing else.

The config's hook name says where the SAE sits. TransformerLens names (`blocks.9.hook_resid_post`,
`hook_resid_pre`, `hook_attn_out`, `hook_mlp_out`) and our TransformerBridge names
(`blocks.9.hook_out`, `blocks.9.hook_in`, `blocks.9.attn.hook_out`, `blocks.9.mlp.hook_out`,
`ln_final.hook_out`) map onto `resid_post[9]` etc. (`load.place_of_hook`); any other name needs
`place=` given explicitly. SAEs on attention heads (`hook_z`) and transcoders are refused.
On Gemma-2/3, TransformerLens's `hook_attn_out`/`hook_mlp_out` sit after the post-norms and do
not match our attn_out/mlp_out: `load_sae(..., handle=...)` refuses that pairing.

Using a downloaded pretrained SAE (e.g. Llama Scope for Llama-3.1-8B)
---------------------------------------------------------------------
Llama Scope is published in its own layout (`hyperparams.json`, `checkpoints/final.safetensors`),
which sae-lens converts. Once, on a machine with network access:

    hf download fnlp/Llama3_1-8B-Base-LXR-8x --include "Llama3_1-8B-Base-L15R-8x/*"
    python -c "from sae_lens import SAE; \
        SAE.from_pretrained('llama_scope_lxr_8x', 'l15r_8x').save_model('checkpoints/saes/llama-scope/L15R-8x')"

(`from_pretrained` reads the Hugging Face cache, so with the files downloaded it also works with
HF_HUB_OFFLINE=1; it folds Llama Scope's input normalisation into the weights, so the saved SAE
takes raw residual vectors.) Then, offline:

    from introspect_mi.models import load
    from introspect_mi.saes import load_sae
    handle = load("/path/to/Meta-Llama-3.1-8B")
    loaded = load_sae("checkpoints/saes/llama-scope/L15R-8x", handle=handle)   # → resid_post[15]

Llama Scope's `hook_point_in` (`blocks.15.hook_resid_post`; LXA → `hook_attn_out`, LXM →
`hook_mlp_out`) becomes the hook name, hence the place. Any other SAE saved by sae-lens
(`SAE.save_model`, or `save_inference_model` after training) loads the same way. Check that the
SAE was trained on the model you load (Llama Scope: Llama-3.1-8B base): `handle=` checks the
width and layer count, not the weights.
"""

from introspect_mi.saes.analysis import (
    Attribution,
    FeatureOverlap,
    ablated_final_logits,
    answer_logit,
    attribute,
    compare_features,
    differential_features,
    encode,
)
from introspect_mi.saes.load import LoadedSAE, load_sae, place_of_hook
from introspect_mi.saes.metrics import ReconstructionMetrics, SplicedLoss, reconstruction_metrics, spliced_loss
from introspect_mi.saes.train import SAETrainConfig, sae_dir, train_sae

__all__ = [
    "Attribution", "FeatureOverlap", "LoadedSAE", "ReconstructionMetrics", "SAETrainConfig", "SplicedLoss",
    "ablated_final_logits", "answer_logit", "attribute", "compare_features", "differential_features", "encode",
    "load_sae", "place_of_hook", "reconstruction_metrics", "sae_dir", "spliced_loss", "train_sae",
]
