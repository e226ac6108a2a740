"""The SAE experiment's analysed prompts and their attribution tables.

Per subject, a seeded draw of hypothetical prompts (spread over tasks, half of them scored correct
by the study) whose correct value has at least one other valid value to be told apart from; each
prompt's analysed positions are P's tokens and the question's tokens after P. The attribution
tables split the gradient × activation attribution of the logit difference (correct value vs the
other valid values, `introspect_mi.saes.answers`) between P and the question, and between the SAE's
latents and its error term, and say how large the error is on these tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from experiments.capture import spread
from introspect_mi.errors import UserError
from introspect_mi.models import ModelHandle
from introspect_mi.saes.analysis import Attribution
from introspect_mi.saes.answers import AnswerTokens, answer_tokens, valid_values


@dataclass
class Prompts:
    """The analysed hypothetical prompts of one subject."""

    records: pd.DataFrame
    sequences: list[list[int]]
    positions: list[list[int]]  # P's tokens, then the question's
    p_sets: list[set[int]]
    answers: AnswerTokens  # the correct value's first token and the other valid values' first tokens


def scorable(handle: ModelHandle, records: pd.DataFrame) -> pd.DataFrame:
    """The hypothetical records with a correct value and at least one other valid value (another first token)."""
    valued = records["object_value"].fillna("").astype(str).str.len() > 0
    hyp = records[(records["kind"] == "hypothetical") & valued]
    tokens = answer_tokens(handle, hyp, valid_values(hyp))
    return hyp[[len(o) > 0 for o in tokens.others]]


def choose_records(records: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Up to `n` hypothetical records with a defined correct value: a seeded draw spread over
    tasks, half of them ones the study scored correct (so that ablation has correct answers to lose)."""
    valued = records["object_value"].fillna("").astype(str).str.len() > 0
    hyp = records[(records["kind"] == "hypothetical") & valued].sample(frac=1.0, random_state=seed)
    correct = hyp["correct"].astype(bool)
    chosen = pd.concat([spread(hyp[correct], n // 2), spread(hyp[~correct], n - n // 2)])
    if len(chosen) < n:
        chosen = pd.concat([chosen, spread(hyp.drop(chosen.index), n - len(chosen))])
    return chosen.sort_values("record")


def analysis_prompts(handle: ModelHandle, records: pd.DataFrame, values: dict[tuple[str, str], list[str]]) -> Prompts:
    """Token ids, analysed positions and answer tokens of the chosen `records` (`values`: the valid values per task and property)."""
    sequences, positions, p_sets = [], [], []
    for r in records.itertuples():
        ids = handle.prompt_format.encode(r.text)
        if len(ids) != len(r.tokens):
            raise UserError(f"record {r.record} re-encodes to {len(ids)} tokens, the store has {len(r.tokens)}",
                            "the store was captured with another tokenizer or prompt format: capture again")
        p = list(r.p_tokens)
        sequences.append(ids)
        positions.append(p + list(range(p[-1] + 1, len(ids))))
        p_sets.append(set(p))
    return Prompts(records.reset_index(drop=True), sequences, positions, p_sets, answer_tokens(handle, records, values))


def attribution_tables(subject: str, prompts: Prompts, attrs: dict[int, Attribution]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per prompt × layer: attribution summed at P's and at the question's tokens, the
    error term's attribution and size; one row per layer × latent: its total attribution, at P
    and at the question)."""
    items, features = [], []
    for layer, a in attrs.items():
        d_sae = a.attr[0].shape[1]
        total, at_p, active = torch.zeros(d_sae, dtype=torch.float64), torch.zeros(d_sae, dtype=torch.float64), torch.zeros(d_sae)
        for i, r in enumerate(prompts.records.itertuples()):
            is_p = torch.tensor([pos in prompts.p_sets[i] for pos in a.positions[i]])
            attr = a.attr[i].double()
            row = {"subject": subject, "layer": layer, "record": r.record, "item_id": r.item_id, "task": r.task, "property": r.property,
                   "logit_difference": float(a.metric[i]), "attr_p": float(attr[is_p].sum()), "attr_q": float(attr[~is_p].sum()),
                   "abs_p": float(attr[is_p].abs().sum()), "abs_q": float(attr[~is_p].abs().sum()),
                   "n_p": int(is_p.sum()), "n_q": int((~is_p).sum())}
            if a.error_attr:
                err = a.error_attr[i].double()
                row |= {"attr_error": float(err.sum()), "abs_error": float(err.abs().sum()), "error_sq": float(a.error_sq[i].sum()),
                        "norm_sq": float(a.norm_sq[i].sum()), "relative_error_sum": float((a.error_sq[i] / a.norm_sq[i]).double().sum())}
            items.append(row)
            total += attr.sum(0)
            at_p += attr[is_p].sum(0)
            active += (a.acts[i] > 0).any(0).float()
        features.append(pd.DataFrame({"subject": subject, "layer": layer, "feature": range(d_sae), "total": total.numpy(),
                                      "at_p": at_p.numpy(), "at_q": (total - at_p).numpy(), "items_active": active.numpy().astype(int)}))
    feats = pd.concat(features, ignore_index=True).sort_values(["layer", "total"], ascending=[True, False], kind="stable")
    feats["rank"] = feats.groupby("layer").cumcount() + 1
    return pd.DataFrame(items), feats.reset_index(drop=True)


def attribution_summary(items: pd.DataFrame) -> pd.DataFrame:
    """Per subject and layer: mean per prompt of the attribution at P's and the question's tokens;
    where measured, the error term's share of the |attribution| (|e · ∂m/∂x| against the latents'
    Σ|attribution|, summed over tokens), its signed mean per prompt, and the SAE's relative
    reconstruction error on the analysed tokens (mean over tokens of ‖e‖²/‖x‖², and pooled Σ‖e‖²/Σ‖x‖²)."""
    g = items.groupby(["subject", "layer"], sort=False)
    out = g.agg(n=("record", "size"), logit_difference=("logit_difference", "mean"), attr_p=("attr_p", "mean"), attr_q=("attr_q", "mean"),
                abs_p=("abs_p", "mean"), abs_q=("abs_q", "mean")).reset_index()
    sums = g[[c for c in ("abs_p", "abs_q", "n_p", "n_q", "abs_error", "error_sq", "norm_sq", "relative_error_sum") if c in items]].sum()
    sums = sums.reset_index(drop=True)
    out["share_p"] = sums["abs_p"] / (sums["abs_p"] + sums["abs_q"])
    out["abs_p_per_token"] = sums["abs_p"] / sums["n_p"]
    out["abs_q_per_token"] = sums["abs_q"] / sums["n_q"]
    if "abs_error" in items:
        out["attr_error"] = g["attr_error"].mean().to_numpy()
        out["error_share"] = sums["abs_error"] / (sums["abs_error"] + sums["abs_p"] + sums["abs_q"])
        out["relative_error"] = sums["relative_error_sum"] / (sums["n_p"] + sums["n_q"])
        out["relative_error_pooled"] = sums["error_sq"] / sums["norm_sq"]
    return out
