"""One verdict table: does self-prediction read an internal state, re-simulate P, or read the input? (issue 15)

    python -m experiments.verdict --preset quick

For each line of evidence the study produced (the behavioural primary endpoint, the logit lens,
probes at P and at the question's final token, transfer, answer identity before property, M1's
vs M2's activations, patching A/B/C, steering, concept injection, SAE ablation) the table states
what each account predicts, what was measured (n, estimate, interval, control), whether the
result is confirmatory (a family declared in code, Holm-adjusted) or exploratory, and which
account it supports — or that it cannot tell them apart. The accounts:

- *reads an internal state*: the hypothetical prompt's answer is read from a state that encodes
  the model's own behaviour on P (computed at P's tokens), beyond what P's text gives;
- *re-simulates P*: the model recomputes its object-level answer inside the hypothetical run and
  derives the property from it (the answer itself surfaces before its property);
- *reads the input*: the answer follows from P's text as any model reading it would see it
  (another model trained on the same labels, or a classifier on P's tokens, does as well).

Reads saved results only (the study's metrics.json and the mechanistic run's reports), never a
model, so it runs in seconds after `make mech`. Output: runs/<capture>/verdict/{verdict.json,
verdict.md, report.html}; the README's verdict table is verdict.md.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from experiments.common import config_main
from experiments.mech import StudyChoice, open_capture, open_study
from experiments.verdict_lines import ALPHA, Line, Results, verdict
from introspect_mi.errors import UserError
from introspect_mi.store import RunDir


@dataclass(frozen=True)
class VerdictConfig(StudyChoice):
    capture: str = ""
    """The mechanistic run (capture) whose probing, patching and SAE results are read (empty: mech-<study>)."""
    name: str = "verdict"
    """Output folder inside the capture run."""


def read_results(study: Path, capture: Path) -> Results:
    sources: dict[str, str] = {}

    def text(path: Path) -> str | None:
        if not path.is_file():
            return None
        data = path.read_bytes()
        sources[str(path)] = hashlib.sha256(data).hexdigest()
        return data.decode("utf-8")

    def metrics(path: Path) -> Any:
        raw = text(path)
        return None if raw is None else json.loads(raw)

    lens = {summary.parent.name: [json.loads(line) for line in (text(summary) or "").splitlines() if line.strip()]
            for summary in sorted(capture.glob("*/logit_lens_summary.jsonl"))}
    return Results(metrics(study / "metrics.json"), metrics(capture / "probing" / "metrics.json"),
                   metrics(capture / "patching" / "metrics.json"), metrics(capture / "sae" / "metrics.json"), lens, sources)


# --- output ----------------------------------------------------------------------------------------

HEADER = ("Evidence", "Family", "Reads a state predicts", "Re-simulates P predicts", "Reads the input predicts", "Measured", "Supports")


def markdown(lines: Sequence[Line]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    rows = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    rows += ["| " + " | ".join(cell(x) for x in (l.evidence, l.family, l.state, l.resimulation, l.input, l.measured, l.supports)) + " |" for l in lines]
    return "\n".join(rows) + "\n"


def write_verdict(run: RunDir, lines: Sequence[Line], sources: Mapping[str, str]) -> None:
    import pandas as pd

    from introspect_mi.viz import Section, Table, write_report

    run.write_json("verdict.json", {"accounts": ["reads an internal state", "re-simulates P", "reads the input"], "alpha": ALPHA,
                                    "lines": [asdict(l) for l in lines], "sources": dict(sources)})
    run.write_text("verdict.md", markdown(lines))
    frame = pd.DataFrame([asdict(l) for l in lines]).rename(columns=dict(zip(
        ("evidence", "family", "state", "resimulation", "input", "measured", "supports"), HEADER)))
    write_report(run.path("report.html"), "Verdict: reads an internal state, re-simulates P, or reads the input?",
                 [Section("Verdict table", tables=[Table(frame, "One line per line of evidence", [])], text=__doc__ or "")])


def main_verdict(config: VerdictConfig, preset: str) -> list[Line]:
    view = open_study(preset, config)
    capture = open_capture(config.capture or f"mech-{view.name}", preset)
    results = read_results(view.run.folder, capture.folder)
    if not any((results.probing, results.patching, results.sae)):
        raise UserError(f"no mechanistic results in {capture.folder}", "run make mech (or the probing, patching and sae_features experiments) first")
    lines = verdict(results)
    run = RunDir.create(capture.folder, config.name, {"verdict": {"capture": capture.folder.name, "study": view.name}}, seed=0)
    write_verdict(run, lines, results.sources)
    print(markdown(lines))
    print(f"report: {run.path('report.html')}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    return config_main(argv, prog="python -m experiments.verdict", doc=__doc__, config=VerdictConfig, section="verdict", run=main_verdict)


if __name__ == "__main__":
    sys.exit(main())
