"""Reading a layer sweep: the best layer of each curve and the layer where a probe first beats
its majority baseline (its 95% CI lies above it)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd


def best_rows(table: pd.DataFrame, by: Sequence[str], score: str = "acc") -> pd.DataFrame:
    """The row with the highest `score` of each `by` group (ties: the lowest layer), in group order.

    Choosing the layer on the scores it reports is optimistic: read the best layer's accuracy
    next to its baseline and control, which the same choice does not favour.
    """
    ordered = table.dropna(subset=[score]).sort_values([*by, score, "layer"], ascending=[*([True] * len(by)), False, True], kind="stable")
    return ordered.groupby(list(by), sort=True, dropna=False).head(1).reset_index(drop=True)


def onset_layer(curve: pd.DataFrame) -> int | None:
    """First layer (ascending) whose accuracy CI lies wholly above the majority baseline; None: none does."""
    above = curve[curve["acc_lo"] > curve["majority"]]
    return None if above.empty else int(above["layer"].min())


def onsets(table: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """`onset_layer` of each `by` group, as a column `onset` (None where the probe never beats majority)."""
    rows = [{**dict(zip(by, key if isinstance(key, tuple) else (key,))), "onset": onset_layer(curve)}
            for key, curve in table.groupby(list(by), sort=True, dropna=False)]
    return pd.DataFrame(rows, columns=[*by, "onset"])
