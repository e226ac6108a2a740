"""The explorer's data file: one JSON file per model label, `RUN_DIR/<label>/explorer.json`.

An item is one object-level prompt and one hypothetical prompt (one property) of one model, with
what the page shows about them: both prompts' tokens and P's token alignment, the answers, the
resid_post norm of every token at every layer, the cosine similarity of the two runs at each
aligned P token per layer, and the logit lens at P's last token (object run) and at the final
token (hypothetical run). Capture writes it (`write_explorer_data`); the explorer reads it.

Rows of every per-layer list are the layers of `meta["layers"]` when given (layer numbers), else
0 … n_layers-1. Floats are stored with 5 significant digits; NaN and ±inf become null.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from introspect_mi.alignment import Alignment
from introspect_mi.errors import UserError
from introspect_mi.store import atomic_write_text

SCHEMA = "introspect_mi.explorer/1"
FILE_NAME = "explorer.json"
CAPTURE_COMMAND = "python -m experiments.capture --preset quick"
LENS_RUNS = ("object", "hypothetical")


@dataclass
class TokenTrack:
    """One token followed through the logit lens: its rank (1 = most probable) and probability per layer."""

    token: str
    rank: list[int]
    prob: list[float]


@dataclass
class LogitLens:
    """resid_post at one token of one run, read through the final norm and unembedding per layer."""

    position: int
    """Token index read (object run: P's last token; hypothetical run: the final token)."""
    top: list[list[tuple[str, float]]]
    """[n_layers][k] (token, probability), most probable first."""
    object_answer: TokenTrack | None
    """The first token of the object-level answer (None when there is no answer)."""
    property_value: TokenTrack | None
    """The first token of the correct property value, i.e. the right hypothetical answer."""


@dataclass
class ExplorerItem:
    """One item of one model, as the explorer page shows it."""

    item_id: str
    task: str
    property: str
    label: str
    """The model label (e.g. "M1", "M1-self-ft"); the page's model selector."""
    object_tokens: list[str]
    hypothetical_tokens: list[str]
    alignment: Alignment
    object_answer: str | None
    object_value: str | None
    """The property's value of the object answer: the right hypothetical answer."""
    hypothetical_answer: str | None
    correct: bool | None
    norms_object: list[list[float]]
    """[n_layers][n_object_tokens] L2 norm of resid_post."""
    norms_hypothetical: list[list[float]]
    """[n_layers][n_hypothetical_tokens] L2 norm of resid_post."""
    cosine: list[list[float]]
    """[n_layers][len(alignment.pairs)] cosine of the two runs' resid_post at each aligned pair."""
    logit_lens: dict[str, LogitLens]
    """Keys "object" and "hypothetical"."""

    @property
    def n_layers(self) -> int:
        return len(self.norms_object)

    def to_dict(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id, "task": self.task, "property": self.property, "label": self.label,
            "object_tokens": list(self.object_tokens), "hypothetical_tokens": list(self.hypothetical_tokens),
            "alignment": self.alignment.to_dict(),
            "object_answer": self.object_answer, "object_value": self.object_value,
            "hypothetical_answer": self.hypothetical_answer, "correct": None if self.correct is None else bool(self.correct),
            "norms_object": _floats(self.norms_object), "norms_hypothetical": _floats(self.norms_hypothetical),
            "cosine": _floats(self.cosine),
            "logit_lens": {run: _lens_dict(lens) for run, lens in self.logit_lens.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExplorerItem:
        return cls(
            item_id=str(d["item_id"]), task=str(d["task"]), property=str(d["property"]), label=str(d["label"]),
            object_tokens=list(d["object_tokens"]), hypothetical_tokens=list(d["hypothetical_tokens"]),
            alignment=Alignment.from_dict(d["alignment"]),
            object_answer=d["object_answer"], object_value=d["object_value"],
            hypothetical_answer=d["hypothetical_answer"], correct=d["correct"],
            norms_object=d["norms_object"], norms_hypothetical=d["norms_hypothetical"], cosine=d["cosine"],
            logit_lens={run: _lens_from(lens) for run, lens in d["logit_lens"].items()},
        )


def validate(item: ExplorerItem) -> None:
    """Raise ValueError naming the first inconsistency between the item's lists."""
    where = f"explorer item {item.item_id!r} ({item.label}, {item.property})"
    n, n_obj, n_hyp, a = item.n_layers, len(item.object_tokens), len(item.hypothetical_tokens), item.alignment
    checks = [
        (n > 0, "norms_object has no layers"),
        (len(item.norms_hypothetical) == n and len(item.cosine) == n, "norms_object, norms_hypothetical and cosine differ in layer count"),
        (all(len(r) == n_obj for r in item.norms_object), f"a norms_object row is not {n_obj} tokens long"),
        (all(len(r) == n_hyp for r in item.norms_hypothetical), f"a norms_hypothetical row is not {n_hyp} tokens long"),
        (all(len(r) == len(a.pairs) for r in item.cosine), f"a cosine row is not {len(a.pairs)} aligned pairs long"),
        (all(0 <= i < n_obj for i in [*(o for o, _ in a.pairs), *a.unmatched_object, a.object_last]), "an alignment index is outside the object tokens"),
        (all(0 <= i < n_hyp for i in [*(h for _, h in a.pairs), *a.unmatched_hypothetical, a.hypothetical_last]), "an alignment index is outside the hypothetical tokens"),
        (sorted(item.logit_lens) == sorted(LENS_RUNS), f"logit_lens keys are {sorted(item.logit_lens)}, not {list(LENS_RUNS)}"),
    ]
    for run, lens in item.logit_lens.items():
        tracks = [t for t in (lens.object_answer, lens.property_value) if t is not None]
        checks += [
            (0 <= lens.position < (n_obj if run == "object" else n_hyp), f"logit_lens[{run!r}].position is outside the prompt"),
            (len(lens.top) == n and all(len(t.rank) == len(t.prob) == n for t in tracks), f"logit_lens[{run!r}] is not {n} layers long"),
        ]
    for ok, problem in checks:
        if not ok:
            raise ValueError(f"{where}: {problem}")


def explorer_path(run_dir: Path | str, label: str) -> Path:
    """Where capture writes the explorer data of one model label."""
    return Path(run_dir) / label / FILE_NAME


def write_explorer_data(path: Path | str, items: Sequence[ExplorerItem], meta: Mapping[str, Any]) -> Path:
    """Validate and write items (JSON, atomically); `meta` is any JSON-able run information."""
    for item in items:
        validate(item)
    doc = {"schema": SCHEMA, "meta": dict(meta), "items": [item.to_dict() for item in items]}
    text = json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    atomic_write_text(Path(path), text)
    return Path(path)


def read_explorer_data(path: Path | str) -> tuple[list[ExplorerItem], dict[str, Any]]:
    """(items, meta) of one explorer file; UserError if it is not a valid one."""
    path = Path(path)
    fix = f"rerun `{CAPTURE_COMMAND}` to write it again"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read explorer data {path} ({exc})", fix) from exc
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else None
        raise UserError(f"{path} is not explorer data of schema {SCHEMA} (found {found!r})", fix)
    try:
        items = [ExplorerItem.from_dict(d) for d in doc["items"]]
        for item in items:
            validate(item)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"explorer data {path} is malformed: {exc!r}", fix) from exc
    return items, dict(doc.get("meta") or {})


def explorer_files(run_dir: Path | str) -> list[Path]:
    """Every `<label>/explorer.json` in a run folder; UserError naming what to run if there is none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist", f"pass a run folder written by `{CAPTURE_COMMAND}`")
    files = sorted(run_dir.glob(f"*/{FILE_NAME}"))
    if not files:
        raise UserError(f"no explorer data in {run_dir} (no <label>/{FILE_NAME})", f"make it with `{CAPTURE_COMMAND}`")
    return files


def _num(x: Any) -> float | None:
    if x is None:
        return None
    f = float(x)
    return float(f"{f:.5g}") if math.isfinite(f) else None


def _floats(rows: Sequence[Sequence[Any]]) -> list[list[float | None]]:
    return [[_num(v) for v in row] for row in rows]


def _track_dict(t: TokenTrack | None) -> dict[str, Any] | None:
    return None if t is None else {"token": t.token, "rank": [int(r) for r in t.rank], "prob": [_num(p) for p in t.prob]}


def _track_from(d: Mapping[str, Any] | None) -> TokenTrack | None:
    return None if d is None else TokenTrack(str(d["token"]), list(d["rank"]), list(d["prob"]))


def _lens_dict(lens: LogitLens) -> dict[str, Any]:
    return {
        "position": int(lens.position),
        "top": [[[str(tok), _num(p)] for tok, p in layer] for layer in lens.top],
        "object_answer": _track_dict(lens.object_answer),
        "property_value": _track_dict(lens.property_value),
    }


def _lens_from(d: Mapping[str, Any]) -> LogitLens:
    return LogitLens(
        position=int(d["position"]),
        top=[[(str(tok), p) for tok, p in layer] for layer in d["top"]],
        object_answer=_track_from(d["object_answer"]),
        property_value=_track_from(d["property_value"]),
    )
