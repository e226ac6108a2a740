"""The SAE-features run's report, metrics and printout, built from its saved tables only."""

from __future__ import annotations

from typing import Any

import pandas as pd

from experiments.sae_features import FAMILIES, OUT, SAEFeaturesConfig
from experiments.sae_training import place_of
from introspect_mi.multiplicity import CONFIRMATORY, EXPLORATORY
from introspect_mi.saes.ablation_effects import CLEAN, RANDOM, TOP
from introspect_mi.saes.pages import page_file
from introspect_mi.store import RunDir
from introspect_mi.viz import Section, Table, write_report
from introspect_mi.viz.saes import ablation_figure, attribution_split_figure, differential_figure, overlap_figure

SAES_TEXT = (
    "resid_post TopK SAEs at layers {layers}, trained on untrained M1 only, on every token (after the shared chat-template opening) of "
    "object-level and hypothetical prompts of the study's training tasks, train split, with {shots} format demonstrations; quality "
    "measured on the first prompts, held out of training. loss_delta: next-token cross-entropy (nats) with the SAE reconstruction "
    "spliced in, minus the clean one. The second table: every analysed subject's stored vectors (held-out tasks and items), "
    "self-trained M1's included (read with untrained M1's SAEs); explained variance is around each group's own mean, which for "
    "near-identical vectors (every prompt's final token) is tiny: cosine and relative error say more there. The error term's share "
    "of the attribution on the analysed tokens is in the attribution section.")
OVERLAP_TEXT = (
    "Jaccard overlap of the active latents between the object-level prompt and the hypothetical prompt of the same item, at P's last "
    "token (only where it is the same token in both prompts) and at the final prompt token, against the hypothetical prompt paired "
    "with other items' object-level prompts that have the same token there (mean over those partners): only the item differs. Both "
    "on the same hypothetical records (those with a same-token partner; n records, their items); diff = same − other item, 95% CI "
    "from a bootstrap over items. Exploratory.")
ATTRIBUTION_TEXT = (
    "Gradient × activation of the logit difference (the correct value's first token minus the logsumexp of the other valid values' "
    "first tokens, at the final position) with respect to the SAE latents at each token of P and of the question after it, the SAE "
    "error term kept (the forward pass is unchanged). error_share: the error term's |e · ∂m/∂x| against the latents' Σ|attribution|, "
    "summed over the analysed tokens: what the SAE does not explain, which ablating latents cannot touch. relative_error: mean over "
    "those tokens of ‖e‖²/‖x‖² (pooled: Σ‖e‖²/Σ‖x‖²). Exploratory.")
ABLATION_TEXT = (
    "Zeroing latents at P's and the question's tokens (error term kept). top-k: the {k} latents with the largest total attribution "
    "on the other half of the prompts (2-fold). matched random: for each of them a latent from the same activation-frequency × "
    "mean-magnitude cell ({bins}×{bins} quantile grid over the latents active at these tokens), {draws} seeded draws. Measures, per "
    "prompt: logit difference (primary), compliance (the argmax token starts a valid value: format kept), first-token accuracy. The "
    "second table: per layer and measure, the mean change from clean under top-k and under matched random (mean over draws), and "
    "top-k − matched random per item with its 95% bootstrap CI over items and two-sided sign-flip p over items. Family "
    f"'{CONFIRMATORY}': {FAMILIES[CONFIRMATORY]}; '{EXPLORATORY}': {FAMILIES[EXPLORATORY]}.")
DIFFERENTIAL_TEXT = (
    "Latents (untrained M1's SAEs) whose mean activation at the hypothetical final token differs most between untrained (a) and "
    "self-trained (b) M1. 'own prompts': each subject's stored prompts, paired by item and property; they differ in format "
    "(untrained: with format demonstrations; self: zero-shot), so format and training changes mix. 'same prompts': self-trained M1's "
    "zero-shot prompts ({n}, spread over tasks) also run through untrained M1: only the weights differ. Exploratory.")
EFFECT_KEYS = ["n_items", "n_prompts", "draws", "top_k", "matched_random", "top_minus_random", "ci_low", "ci_high", "p_value", "p_holm",
               "family"]


def _read(run: RunDir, name: str) -> pd.DataFrame:
    return run.read_table(f"{OUT}/{name}")


def write_sae_report(run: RunDir, config: SAEFeaturesConfig, missing: dict[str, str], pages: dict[tuple[int, int], list[str]]) -> None:
    """sae/report.html from the saved tables."""
    quality, fit, overlap = _read(run, "sae_quality"), _read(run, "store_fit"), _read(run, "overlap")
    summary, features = _read(run, "attribution_summary"), _read(run, "attribution_features")
    ablation = _read(run, "ablation").astype({"layer": "Int64", "draw": "Int64"})  # the clean row has neither
    effects = _read(run, "ablation_effects")
    note = "".join(f"\n\nNot analysed: {s} ({why})." for s, why in missing.items())
    sections = [
        Section("SAEs", tables=[
            Table(quality.drop(columns=["folder"]), caption="TopK SAEs on untrained M1 (held-out training prompts)",
                  percent_columns=["explained_variance", "dead_fraction"]),
            Table(fit, caption="Reconstruction of each subject's stored vectors (held-out items)",
                  percent_columns=["explained_variance", "relative_error"]),
        ], text=SAES_TEXT.format(layers=list(config.layers), shots=list(config.train_shots)) + note),
        Section("Object-level vs hypothetical run", figures=[overlap_figure(overlap)], tables=[Table(overlap, percent_columns=[])],
                text=OVERLAP_TEXT),
        Section("Attribution: P's tokens vs the question, latents vs the error term", figures=[attribution_split_figure(summary)],
                tables=[Table(summary, percent_columns=["share_p", "error_share", "relative_error", "relative_error_pooled"]),
                        Table(features[features["rank"] <= 10], caption="Top latents by total attribution", percent_columns=[])],
                text=ATTRIBUTION_TEXT),
        Section("Ablation: top-k attributed vs matched random latents", figures=[ablation_figure(effects)],
                tables=[Table(effects, caption="Top-k − matched random, per item (paired)", percent_columns=[]),
                        Table(ablation, caption="Every condition (mean over the prompts)",
                              percent_columns=["accuracy", "d_accuracy", "compliance", "d_compliance"])],
                text=ABLATION_TEXT.format(k=config.ablate_k, bins=config.match_bins, draws=config.random_draws)),
    ]
    if run.exists(f"{OUT}/differential.jsonl"):
        diff = _read(run, "differential")
        sections.append(Section("What self-prediction training changed",
                                figures=[differential_figure(diff[diff["inputs"] == inputs], title=f"Training change on the {inputs}")
                                         for inputs in dict.fromkeys(diff["inputs"])],
                                tables=[Table(diff[diff["rank"] <= 10], percent_columns=["frac_active_a", "frac_active_b"])],
                                text=DIFFERENTIAL_TEXT.format(n=config.differential_items)))
    else:
        sections.append(Section("What self-prediction training changed", text="Needs the stores of both untrained and self-trained M1." + note))
    sections.append(Section("Feature pages", links=[(f"features/{page_file(place_of(layer), f)}", f"L{layer} latent {f}: " + "; ".join(why))
                                                    for (layer, f), why in sorted(pages.items())]))
    write_report(run.path(f"{OUT}/report.html"), f"SAE features · {run.name}", sections)


def _ablation_metrics(ablation: pd.DataFrame) -> dict[str, Any]:
    """Per subject: n and the clean measures; per layer, the mean change under top-k and under the matched random draws."""
    out: dict[str, Any] = {}
    for subject, part in ablation.groupby("subject", sort=False):
        clean = part[part["condition"] == CLEAN].iloc[0]
        entry: dict[str, Any] = {"n": int(clean["n"]), "clean_logit_difference": clean["logit_difference"],
                                 "clean_compliance": clean["compliance"], "clean_accuracy": clean["accuracy"], "clean_logit": clean["logit"]}
        for layer, rows in part[part["condition"] != CLEAN].groupby("layer"):
            top, rnd = rows[rows["condition"] == TOP].iloc[0], rows[rows["condition"] == RANDOM]
            layer_entry = {}
            for m in ("logit_difference", "compliance", "accuracy", "logit"):
                layer_entry[f"top_k_d_{m}"] = top[f"d_{m}"]
                layer_entry[f"random_d_{m}_mean"] = rnd[f"d_{m}"].mean()
                layer_entry[f"random_d_{m}_sd"] = rnd[f"d_{m}"].std(ddof=1) if len(rnd) > 1 else None
            entry[f"L{int(layer)}"] = layer_entry
        out[subject] = entry
    return out


def metrics_from_tables(run: RunDir) -> dict[str, Any]:
    """The headline numbers, from the saved tables (every result keyed with its family)."""
    out: dict[str, Any] = {"families": FAMILIES, "saes": {
        f"L{r.layer}": {"explained_variance": r.explained_variance, "l0": r.l0, "dead_fraction": r.dead_fraction, "loss_delta": r.loss_delta,
                        "clean_loss": r.clean_loss, "d_sae": r.d_sae, "reused": bool(r.reused)}
        for r in _read(run, "sae_quality").itertuples()}}
    out["store_fit"] = {f"{r.subject} L{r.layer} {r.run} {r.position}": {"n": r.n, "explained_variance": r.explained_variance,
                                                                         "cosine": r.cosine, "relative_error": r.relative_error}
                        for r in _read(run, "store_fit").itertuples()}
    out["overlap"] = {f"{r.subject} L{r.layer} {r.position}": {"n": r.n, "items": r.items, "jaccard_same": r.jaccard_same,
                                                               "jaccard_other": r.jaccard_other, "jaccard_diff": r.jaccard_diff,
                                                               "ci_low": r.diff_ci_low, "ci_high": r.diff_ci_high, "family": EXPLORATORY}
                      for r in _read(run, "overlap").itertuples()}
    out["attribution"] = {f"{r.subject} L{r.layer}": {"n": r.n, "share_p": r.share_p, "attr_p": r.attr_p, "attr_q": r.attr_q,
                                                      "logit_difference": r.logit_difference, "error_share": r.error_share,
                                                      "attr_error": r.attr_error, "relative_error": r.relative_error,
                                                      "relative_error_pooled": r.relative_error_pooled, "family": EXPLORATORY}
                          for r in _read(run, "attribution_summary").itertuples()}
    out["ablation"] = _ablation_metrics(_read(run, "ablation"))
    effects = _read(run, "ablation_effects")
    out["ablation_effects"] = {f"{r['subject']} L{r['layer']} {r['measure']}": {k: None if pd.isna(r[k]) else r[k] for k in EFFECT_KEYS}
                               for r in effects.to_dict("records")}  # p_holm: None outside the confirmatory family
    if run.exists(f"{OUT}/differential.jsonl"):
        diff = _read(run, "differential")
        out["differential_top"] = {f"{inputs} L{layer}": [{"feature": int(r.feature), "untrained": r.mean_a, "self": r.mean_b}
                                                          for r in part.head(5).itertuples()]
                                   for (inputs, layer), part in diff.groupby(["inputs", "layer"], sort=False)}
    return out


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    lines = [f"SAE {layer}: explained variance {m['explained_variance']:.1%}, L0 {m['l0']:.1f}, dead {m['dead_fraction']:.1%}, "
             f"spliced loss {m['loss_delta']:+.3f} nats" for layer, m in metrics["saes"].items()]
    for key, o in metrics["overlap"].items():
        lines.append(f"overlap {key}: Jaccard same item {o['jaccard_same']:.2f}, other item same token {o['jaccard_other']:.2f}, "
                     f"diff {o['jaccard_diff']:+.2f} [{o['ci_low']:+.2f}, {o['ci_high']:+.2f}] (n={o['n']}, {o['items']} items)")
    for key, a in metrics["attribution"].items():
        lines.append(f"attribution {key}: {a['share_p']:.0%} of the latents' |attribution| at P's tokens; error term {a['error_share']:.0%} "
                     f"of all |attribution| (signed {a['attr_error']:+.3f} vs latents {a['attr_p'] + a['attr_q']:+.3f}); "
                     f"relative error {a['relative_error']:.1%}")
    for subject, ab in metrics["ablation"].items():
        lines.append(f"ablation {subject}: clean logit difference {ab['clean_logit_difference']:+.2f}, compliance {ab['clean_compliance']:.0%}, "
                     f"accuracy {ab['clean_accuracy']:.0%} on {ab['n']} prompts")
    for key, e in metrics["ablation_effects"].items():
        holm = f", Holm p {e['p_holm']:.3f}" if e["family"] == CONFIRMATORY else ""
        lines.append(f"  {key}: top-k {e['top_k']:+.3f}, matched random {e['matched_random']:+.3f}, top − random "
                     f"{e['top_minus_random']:+.3f} [{e['ci_low']:+.3f}, {e['ci_high']:+.3f}] p {e['p_value']:.3f}{holm} "
                     f"({e['family']}, {e['n_items']} items)")
    for layer, top in metrics.get("differential_top", {}).items():
        lines.append(f"training change {layer}: " + ", ".join(f"#{t['feature']} {t['untrained']:.2f}→{t['self']:.2f}" for t in top[:3]))
    return lines
