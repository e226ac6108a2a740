"""Concept injection, experiment E (issue 7, issue 15 point 3): does the self-report move toward
the property value a concept implies when the concept's direction is added mid-network?

A concept vector — the final-token activation of "Tell me about <word>." minus its mean over
neutral words (Lindsey 2025) — is added at one layer of the hypothetical prompt, at one of two
position sets: every token (P included: a *priming* test, the vector can act through P's
tokens as if the word were in the input) or only the tokens after P (the question and final
tokens: a *reading* test, P's states are untouched). Priming predicts an effect only when P's
tokens are hit; reading predicts one when only the question is.

The measure (per item, injected minus clean): the shift of log P(the concept's value | the answer
is a valid value) at the report's first token — the value's logit against the other valid values'
(for first characters: the 26 letters), so small effects show before a greedy report flips and a
vector that merely breaks the answer format (moves mass off every letter; `valid_mass`) does not
count. The greedy report equal to the value (and the share of reports flipped to it) is secondary.
Chance level: the clean report rate and P(value | valid) without injection (uniform: 1/26). Null:
equal-norm random vectors per concept and the other concepts' vectors.

Tests (METHODS.md): per position set × concept × scale, per item, the concept's shift minus its
random vectors' mean shift, a one-sided sign-flip p over items. The after-P set forms the
confirmatory family `CONCEPT_FAMILY` (Holm over concepts × scales, per subject); the every-token
set and the comparison with the other concepts are exploratory.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from introspect_mi.batching import left_pad
from introspect_mi.hooks import recording
from introspect_mi.logit_lens import first_token
from introspect_mi.models import ModelHandle
from introspect_mi.multiplicity import CONFIRMATORY, EXPLORATORY, holm, paired_effect
from introspect_mi.patching_pairs import ItemPrompts
from introspect_mi.places import resid_post
from introspect_mi.prompt_format import Message
from introspect_mi.properties import Property, get_property
from introspect_mi.steering import RowSteer, Steerer, random_like
from introspect_mi.steering_experiments import POSITION_SETS, position_set, read_answers

CONCEPT_TEMPLATE = "Tell me about {word}."
CONCEPT_POSITIONS = ("after_P", "all")
"""Position sets of E (keys of `POSITION_SETS`): after P (reading) and every token (priming)."""
CONFIRMATORY_POSITIONS = "after_P"
CONCEPT_FAMILY = ("E, per subject: injection at the tokens after P only, every concept × scale: per item, the shift of "
                  "log P(concept's value | a valid value) under the concept's vector minus the mean shift under its equal-norm random "
                  "vectors; one-sided sign-flip p over items, Holm over concepts × scales")


def answer_values(prop: Property) -> tuple[str, ...]:
    """The valid values a report competes among: the property's finite answer set, or the 26
    lowercase letters for a character property (an open set of single characters)."""
    if prop.answer_set is not None:
        return prop.answer_set
    if prop.name.endswith("_character"):
        return tuple(string.ascii_lowercase)
    raise ValueError(f"concept injection needs a finite answer set or a character property, not {prop.name!r}")


@torch.no_grad()
def concept_vectors(handle: ModelHandle, words: Sequence[str], baseline: Sequence[str], layer: int,
                    template: str = CONCEPT_TEMPLATE) -> dict[str, torch.Tensor]:
    """word → resid_post[layer] at the final token of `template` about the word, minus the mean over
    the `baseline` words (the concept's direction, as in Lindsey 2025)."""
    fmt = handle.prompt_format
    texts = [fmt.render([Message("system", ""), Message("user", template.format(word=w))]) for w in [*words, *baseline]]
    batch = left_pad([fmt.encode(t) for t in texts], handle.pad_token_id).to(handle.device)
    place = resid_post(layer)
    with recording(handle.model, [place]) as rec:
        handle.model(**batch.model_inputs(), logits_to_keep=1)
    acts = rec[place][:, -1].float().cpu()
    mean = acts[len(words) :].mean(0)
    return {w: acts[i] - mean for i, w in enumerate(words)}


def run_concepts(handle: ModelHandle, steerer: Steerer, items: Sequence[ItemPrompts], vectors: Mapping[str, torch.Tensor],
                 layer: int, scales: Sequence[float], *, positions: Sequence[str] = CONCEPT_POSITIONS, n_random: int = 1,
                 seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Inject each concept (and `n_random` equal-norm random vectors per concept, the same ones
    in every position set) into the hypothetical prompts at each position set and scale; one row
    per (position set, injected vector, scale, item, scored concept) with, injected and clean:
    `logprob` = log P(scored value | a valid value), `valid_mass` = log P(a valid value),
    `logprob_full` = log P(value token) over the vocabulary, and the greedy report."""
    prop = get_property(items[0].property)
    valid = answer_values(prop)
    valid_tokens = [first_token(handle, v) for v in valid]
    if None in valid_tokens or len(set(valid_tokens)) < len(valid):
        raise ValueError(f"the valid {prop.name} values {valid} do not start with distinct tokens")
    values = {w: prop.extract(w, None) for w in vectors}
    outside = [w for w, v in values.items() if v not in valid]
    if outside:
        raise ValueError(f"concept word(s) {outside} have no valid {prop.name} value")
    seqs = [it.hyp_ids for it in items]
    place, cols = resid_post(layer), torch.tensor(valid_tokens)

    def measure(vector: torch.Tensor | None, where: str) -> dict[str, object]:
        steers = [RowSteer(vector, None if vector is None else position_set(where, len(it.hyp_ids), it.hyp_p_tokens)) for it in items]
        logits = steerer.logits(seqs, steers, place)
        full = logits.log_softmax(-1)[:, cols]
        return {"logprob": logits[:, cols].log_softmax(-1), "valid_mass": full.logsumexp(-1), "logprob_full": full,
                "report": read_answers(handle, logits, prop.name, "hypothetical", [None] * len(seqs))}

    clean = measure(None, "all")
    injected = [(w, "concept", w, s, vectors[w]) for s in scales for w in vectors]
    injected += [(w, f"random-{k}", f"random-{k} ({w})", s, random_like(vectors[w], seed * 1000 + 17 * k + i))
                 for s in scales for i, w in enumerate(vectors) for k in range(n_random)]
    rows = []
    steps = [(where, *inj) for where in positions for inj in injected]
    for where, owner, kind, name, scale, vec in tqdm(steps, desc=f"concept injection {handle.name}", unit="vector", disable=not progress):
        got = measure(scale * vec, where)
        for k, it in enumerate(items):
            for w, v in values.items():
                j = valid.index(v)
                rows.append({"positions": where, "injected": name, "kind": kind, "owner": owner, "scale": scale, "item_id": it.item_id,
                             "concept": w, "value": v, "n_values": len(valid),
                             **{f"{m}{suffix}": float(r[k, j]) for m in ("logprob", "logprob_full") for suffix, r in (("", got[m]), ("_clean", clean[m]))},
                             "valid_mass": float(got["valid_mass"][k]), "valid_mass_clean": float(clean["valid_mass"][k]),
                             "report": got["report"][k], "report_clean": clean["report"][k]})
    return pd.DataFrame(rows)


def _per_vector_max(shift: pd.Series, vector: pd.Series) -> float:
    return float(shift.groupby(vector).mean().max()) if len(shift) else float("nan")


def summarise_concepts(rows: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per position set × scale × concept (one subject's rows), shifts of log P(value | valid):
    shift_own (the concept's vector), shift_random (its random vectors; _sd over items × vectors,
    _max over vectors' means), shift_other (the other concepts' vectors; _max likewise); the paired
    test vs_random_* (per item own − random mean; `status` and `p_holm` per `CONCEPT_FAMILY`) and
    vs_other_* (exploratory); chance: clean_report_rate and clean_prob (mean P(value | valid)
    without injection) against uniform; secondary: report rates and flips (reports that became the
    value) and valid_mass shifts (format breakage)."""
    out = []
    for (where, scale, concept), g in rows.groupby(["positions", "scale", "concept"], sort=False):
        g = g.assign(shift=g["logprob"] - g["logprob_clean"], mass=g["valid_mass"] - g["valid_mass_clean"], hit=g["report"] == g["value"],
                     flip=(g["report"] == g["value"]) & (g["report_clean"] != g["value"]))
        own = g[(g["kind"] == "concept") & (g["owner"] == concept)].set_index("item_id")
        rnd = g[g["kind"].str.startswith("random") & (g["owner"] == concept)]
        other = g[(g["kind"] == "concept") & (g["owner"] != concept)]
        vs_random = paired_effect(own["shift"] - rnd.groupby("item_id")["shift"].mean().reindex(own.index), seed)
        vs_other = paired_effect(own["shift"] - other.groupby("item_id")["shift"].mean().reindex(own.index), seed)
        out.append({
            "positions": where, "label": POSITION_SETS[where], "scale": scale, "concept": concept, "value": g["value"].iloc[0],
            "n": len(own), "uniform": 1.0 / int(g["n_values"].iloc[0]),
            "clean_report_rate": float((own["report_clean"] == own["value"]).mean()), "clean_prob": float(np.exp(own["logprob_clean"]).mean()),
            "shift_own": float(own["shift"].mean()), "shift_random": float(rnd["shift"].mean()), "shift_random_sd": float(rnd["shift"].std()),
            "shift_random_max": _per_vector_max(rnd["shift"], rnd["injected"]),
            "shift_other": float(other["shift"].mean()) if len(other) else float("nan"),
            "shift_other_max": _per_vector_max(other["shift"], other["injected"]),
            **{f"vs_random_{k}": v for k, v in vs_random.items() if k != "n"}, **{f"vs_other_{k}": v for k, v in vs_other.items() if k != "n"},
            "report_rate_own": float(own["hit"].mean()), "report_rate_random": float(rnd["hit"].mean()),
            "report_rate_other": float(other["hit"].mean()) if len(other) else float("nan"),
            "flips_own": float(own["flip"].mean()), "flips_random": float(rnd["flip"].mean()),
            "valid_mass_own": float(own["mass"].mean()), "valid_mass_random": float(rnd["mass"].mean()),
            "status": CONFIRMATORY if where == CONFIRMATORY_POSITIONS else EXPLORATORY,
        })
    summary = pd.DataFrame(out)
    confirm = summary["status"] == CONFIRMATORY
    summary["p_holm"] = np.nan
    summary.loc[confirm, "p_holm"] = holm(summary.loc[confirm, "vs_random_p"].to_numpy())
    return summary
