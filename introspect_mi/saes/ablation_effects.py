"""What an ablation did, per prompt, and the paired comparison of top-attributed vs matched random latents.

Every analysed prompt is scored under every condition (clean, top-k at a layer, each matched
random draw at that layer) on three measures: the logit difference of the correct value against
the other valid values (`answers.logit_difference`, the primary measure), compliance (the argmax
token still starts a valid value) and first-token accuracy. An ablation's effect on a prompt is its
change from the clean run; the comparison of interest is, per prompt, top-k's effect minus the mean
effect of the matched random draws. Prompts of one item are averaged first (items are the
independent units): a sign-flip test over items, and a bootstrap interval over items.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from introspect_mi.multiplicity import sign_flip_p
from introspect_mi.paired import clustered_mean
from introspect_mi.saes.answers import AnswerTokens, compliant, logit_difference

MEASURES = ("logit_difference", "compliance", "accuracy")
CLEAN, TOP, RANDOM = "clean", "top-k", "matched random"


def ablation_items(subject: str, logits: Mapping[str, torch.Tensor], info: Mapping[str, Mapping[str, Any]], answers: AnswerTokens,
                   records: pd.DataFrame) -> pd.DataFrame:
    """One row per condition × prompt: the three measures (and the raw logit of the correct token)
    under the condition, and their change from the same prompt's clean run (`d_<measure>`).
    `info[name]` holds the condition's layer, condition (clean / top-k / matched random) and draw."""
    targets = torch.tensor(answers.targets)
    frames = []
    for name, lg in logits.items():
        frames.append(pd.DataFrame({
            "subject": subject, **{key: [value] * len(lg) for key, value in info[name].items()},
            "record": records["record"].to_numpy(), "item_id": records["item_id"].to_numpy(), "task": records["task"].to_numpy(),
            "property": records["property"].to_numpy(),
            "logit_difference": logit_difference(lg, answers.targets, answers.others).numpy(),
            "compliance": compliant(lg, answers).double().numpy(), "accuracy": (lg.argmax(-1) == targets).double().numpy(),
            "logit": lg.gather(1, targets[:, None])[:, 0].numpy()}))
    table = pd.concat(frames, ignore_index=True)
    clean = table[table["condition"] == CLEAN].set_index("record")
    for m in (*MEASURES, "logit"):
        table[f"d_{m}"] = table[m] - table["record"].map(clean[m])
    return table


def ablation_summary(items: pd.DataFrame) -> pd.DataFrame:
    """Per subject and condition (each draw its own row): n and the mean of every measure and change."""
    keys = ["subject", "layer", "condition", "draw", "features"]
    values = [*MEASURES, "logit", *(f"d_{m}" for m in (*MEASURES, "logit"))]
    out = items.groupby(keys, sort=False, dropna=False)[values].mean().reset_index()
    out.insert(len(keys), "n", items.groupby(keys, sort=False, dropna=False).size().to_numpy())
    return out


def paired_effects(items: pd.DataFrame, n_boot: int, sign_flips: int, seed: int) -> pd.DataFrame:
    """Per subject × layer × measure: the mean change under top-k and under matched random latents
    (mean over draws), and top-k − matched random per item with its bootstrap 95% CI over items
    and its two-sided sign-flip p over items."""
    rows = []
    for (subject, layer), part in items[items["condition"] != CLEAN].groupby(["subject", "layer"], sort=False):
        for measure in MEASURES:
            col = f"d_{measure}"
            top = part[part["condition"] == TOP].set_index("record")[col]
            rnd = part[part["condition"] == RANDOM].groupby("record")[col].mean()
            prompts = part[part["condition"] == TOP].set_index("record")
            diff = (top - rnd.reindex(top.index)).to_numpy()
            keep = ~np.isnan(diff)
            item_ids = prompts["item_id"].to_numpy()[keep]
            per_item = pd.Series(diff[keep]).groupby(item_ids).mean()
            est = clustered_mean(diff[keep], item_ids, n_boot=n_boot, seed=seed)
            rows.append({"subject": subject, "layer": int(layer), "measure": measure, "n_prompts": int(keep.sum()), "n_items": len(per_item),
                         "draws": int(part.loc[part["condition"] == RANDOM, "draw"].nunique()),
                         "top_k": float(np.nanmean(top.to_numpy())), "matched_random": float(np.nanmean(rnd.to_numpy())),
                         "top_minus_random": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high,
                         "p_value": sign_flip_p(per_item.to_numpy(), n_perm=sign_flips, seed=seed, two_sided=True)})
    return pd.DataFrame(rows)
