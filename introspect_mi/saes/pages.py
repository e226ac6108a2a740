"""Feature pages: one HTML page per SAE latent, from data the analyses already computed.

A page shows why the latent was picked (its attribution or training-change statistics), the
stored items and the tokens in context where it fires most, the histogram of its activations
and the tokens its decoder direction promotes and suppresses (its logit effect). Pages of one
folder share one plotly.min.js file written beside them (a page is a few kB, not 4 MB).

`top_examples` and `token_context` turn feature activations and their metadata into the page's
tables; `logit_effect` reads the decoder direction through the model's output. Nothing here runs
the model forward.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from introspect_mi.logit_lens import unembed
from introspect_mi.places import Place
from introspect_mi.viz.report import Section, Table, write_plotlyjs, write_report
from introspect_mi.viz.saes import activation_histogram, logit_effect_figure

if TYPE_CHECKING:
    from sae_lens import SAE

    from introspect_mi.models import ModelHandle


@dataclass(frozen=True)
class FeaturePage:
    """Everything one latent's page shows."""

    place: Place
    feature: int
    summary: pd.DataFrame
    """Why it was chosen and its statistics: columns `what`, `value` (one row each)."""
    activations: Mapping[str, np.ndarray] = field(default_factory=dict)
    """Group label (e.g. "untrained · hypothetical · final") → the latent's activation on every vector of the group."""
    top_items: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Stored vectors where it fires most (from `top_examples`)."""
    top_tokens: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Tokens in context where it fires most (from `top_examples`, with a `context` column)."""
    logit_effect: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Columns token, logit (from `logit_effect`)."""

    @property
    def file_name(self) -> str:
        return page_file(self.place, self.feature)

    @property
    def title(self) -> str:
        return f"SAE latent {self.feature} at {self.place}"


def page_file(place: Place, feature: int) -> str:
    """`resid_post.16-f00042.html`: the file name of a latent's page."""
    where = place.kind.value if place.layer is None else f"{place.kind.value}.{place.layer}"
    return f"{where}-f{feature:05d}.html"


def top_examples(values: np.ndarray | torch.Tensor, meta: pd.DataFrame, n: int, distinct: Sequence[str] | None = None) -> pd.DataFrame:
    """The `n` rows of `meta` with the largest positive `values` (one per row), largest first,
    with an `activation` column. Rows where the latent is silent never appear, nor rows equal to
    an earlier one in the `distinct` columns (None: all; e.g. leave out the property to show P's
    last token once when several prompts differ only after it)."""
    values = np.asarray(values, dtype=float)
    if len(values) != len(meta):
        raise ValueError(f"{len(values)} activations for {len(meta)} metadata rows")
    order = np.argsort(-values, kind="stable")
    order = order[values[order] > 0]
    table = meta.iloc[order].assign(activation=values[order])
    table = table.drop_duplicates(subset=None if distinct is None else [*distinct, "activation"])
    return table.head(n).reset_index(drop=True)


def visible(text: str) -> str:
    """Token text for a table cell: newlines shown as ⏎."""
    return text.replace("\n", "⏎")


def token_context(tokens: Sequence[str], index: int, width: int = 8) -> str:
    """The tokens around `index` joined as text, the token itself in ⟦ ⟧ (newlines shown as ⏎)."""
    if not 0 <= index < len(tokens):
        raise ValueError(f"token index {index} is outside a prompt of {len(tokens)} tokens")
    left = visible("".join(tokens[max(0, index - width) : index]))
    right = visible("".join(tokens[index + 1 : index + 1 + width]))
    return f"{'…' if index > width else ''}{left}⟦{visible(tokens[index])}⟧{right}{'…' if index + 1 + width < len(tokens) else ''}"


@torch.no_grad()
def logit_effect(handle: ModelHandle, sae: SAE, feature: int, n: int = 10) -> pd.DataFrame:
    """The `n` tokens the latent's decoder direction promotes most and the `n` it suppresses most,
    read through the final norm and the unembedding (the logit lens of the direction)."""
    direction = sae.W_dec[feature].detach().float()[None]
    logits = unembed(handle, direction)[0].cpu()
    top, bottom = logits.topk(n), (-logits).topk(n)
    ids = top.indices.tolist() + bottom.indices.tolist()
    return pd.DataFrame({"token": [handle.tokenizer.decode([i]) for i in ids], "token_id": ids,
                         "logit": top.values.tolist() + (-bottom.values).tolist()})


def page_sections(page: FeaturePage) -> list[Section]:
    """The page's sections: summary, activations, top items, top tokens, logit effect."""
    sections = [Section("Summary", tables=[Table(page.summary, percent_columns=[])])]
    if page.activations:
        sections.append(Section("Activations", figures=[activation_histogram(page.activations, f"Latent {page.feature}: activation histogram")]))
    if not page.top_items.empty:
        sections.append(Section("Top-activating stored items", tables=[Table(page.top_items, percent_columns=[])],
                                text="Vectors of the activation store (P's last token, the final prompt token) where the latent fires most."))
    if not page.top_tokens.empty:
        sections.append(Section("Top-activating tokens in context", tables=[Table(page.top_tokens, percent_columns=[])],
                                text="Tokens of P and of the question in the analysed hypothetical prompts; ⟦ ⟧ marks the token."))
    if not page.logit_effect.empty:
        sections.append(Section("Logit effect", figures=[logit_effect_figure(page.logit_effect)],
                                text="The decoder direction read through the final norm and unembedding: "
                                     "what the latent pushes the next token towards."))
    return sections


def write_feature_pages(folder: Path | str, pages: Sequence[FeaturePage], back_link: str | None = None) -> list[Path]:
    """One HTML page per latent in `folder` (plus the plotly.min.js they share); returns the paths.
    `back_link`: href (relative to `folder`) of the report the pages belong to."""
    folder = Path(folder)
    script = write_plotlyjs(folder)
    paths = []
    for page in pages:
        sections = page_sections(page)
        if back_link:
            sections.append(Section("More", links=[(back_link, "back to the SAE report")]))
        paths.append(write_report(folder / page.file_name, page.title, sections, plotly_src=script))
    return paths
