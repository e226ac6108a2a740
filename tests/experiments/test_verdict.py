"""python -m experiments.verdict: reads saved results (hashing each file), writes the table as
markdown, JSON and HTML, and refuses a capture without mechanistic results."""

from __future__ import annotations

import json
from pathlib import Path

from experiments import verdict
from experiments import verdict_lines as v
from tests.experiments.test_verdict_lines import _endpoint


def test_markdown_has_one_row_per_line_and_escapes_pipes() -> None:
    line = v.Line("a | b", "exploratory", "s", "r", "i", "m", "x", "src")
    text = verdict.markdown([line, line])
    assert text.count("\n") == 4 and "a \\| b" in text


def test_read_results_hashes_every_file_it_reads(tmp_path: Path) -> None:
    study, capture = tmp_path / "study", tmp_path / "mech"
    (capture / "probing").mkdir(parents=True)
    (capture / "self").mkdir()
    study.mkdir()
    (study / "metrics.json").write_text(json.dumps(_endpoint(0.0, -0.1, 0.1)))
    (capture / "probing" / "metrics.json").write_text('{"best": [], "bar": NaN}')
    (capture / "self" / "logit_lens_summary.jsonl").write_text('{"layer": 0, "n": 3, "answer_median_rank": 1, "property_median_rank": 2}\n')
    r = verdict.read_results(study, capture)
    assert r.patching is None and r.sae is None and r.lens["self"][0]["n"] == 3
    assert len(r.sources) == 3 and all(len(h) == 64 for h in r.sources.values())


def test_cli_writes_the_table_from_saved_results_and_refuses_an_empty_capture(tiny_study) -> None:
    """End to end: a capture run holding only a probing metrics.json gives a table whose M1 vs M2 line is measured and
    whose missing experiments say so; a capture without any mechanistic result is one clear line, exit 2."""
    capture = tiny_study.runs / "mech-v"
    (capture / "probing").mkdir(parents=True)
    (capture / "config.json").write_text("{}")
    row = {"property": "first_character", "run": "hypothetical@final", "self_acc": 0.8, "cross_acc": 0.5, "diff": 0.3,
           "diff_lo": 0.1, "diff_hi": 0.5, "p_holm": 0.004, "n_items": 40}
    (capture / "probing" / "metrics.json").write_text(json.dumps({"best": [], "onsets": [], "m1_vs_m2": [row]}))
    out = tiny_study.run("verdict", "--capture", "mech-v")
    assert out.returncode == 0, out.stderr[-2000:]
    table = (capture / "verdict" / "verdict.md").read_text()
    assert "self 80% vs M2 50%, +30.0 [+10.0, +50.0], Holm p = 0.004, n = 40" in table and "not measured: no steering results" in table
    saved = json.loads((capture / "verdict" / "verdict.json").read_text())
    assert str(capture / "probing" / "metrics.json") in saved["sources"] and (capture / "verdict" / "report.html").is_file()

    (tiny_study.runs / "mech-empty").mkdir()
    (tiny_study.runs / "mech-empty" / "config.json").write_text("{}")
    empty = tiny_study.run("verdict", "--capture", "mech-empty")
    assert empty.returncode == 2 and "no mechanistic results" in empty.stderr and "Traceback" not in empty.stderr
