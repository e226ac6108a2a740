"""The verdict table reads saved results and applies its rules: each line says which account a
measurement supports, and says "cannot decide" or "not measured" where it must."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import verdict as v

NAN = float("nan")


def _endpoint(diff: float, lo: float, hi: float) -> dict:
    return {"primary_endpoint": {"primary": {"diff": diff, "diff_ci_low": lo, "diff_ci_high": hi, "p_value": 0.5, "n_pairs": 400,
                                             "n_items": 150, "mdd": 0.06}}}


def _results(**kw) -> v.Results:
    base = dict(study=None, probing=None, patching=None, sae=None, lens={}, sources={})
    return v.Results(**{**base, **kw})


def _curve(experiment: str, run: str, p_holm: float, acc: float = 0.7, lo: float = 0.6, bar: float = 0.33, family: str = "confirmatory") -> dict:
    return {"experiment": experiment, "subject": "self", "property": "first_character", "split": "items", "family": family,
            "test_run": run, "train_run": run, "nested_acc": acc, "nested_lo": lo, "nested_hi": 0.8, "task_majority": bar,
            "p_holm": p_holm, "n_test": 43}


@pytest.mark.parametrize(("diff", "lo", "hi", "expected"), [
    (0.10, 0.04, 0.16, "state or re-simulation"),
    (-0.01, -0.05, 0.03, "consistent with reading the input"),
    (-0.10, -0.16, -0.04, "cross predicts M1 better"),
])
def test_behaviour_line_follows_the_primary_endpoints_interval(diff: float, lo: float, hi: float, expected: str) -> None:
    line = v.behaviour_line(_results(study=_endpoint(diff, lo, hi)))
    assert expected in line.supports and "400 pairs of 150 items" in line.measured and line.family == v.CONTEXT


def test_every_line_says_not_measured_when_its_results_are_missing() -> None:
    lines = v.verdict(_results())
    assert len(lines) == len(v.LINES)
    assert all(line.measured.startswith("not measured") and line.supports == "—" for line in lines)


def test_lens_calls_re_simulation_only_when_the_answer_surfaces_first() -> None:
    rows = [{"layer": i, "n": 480, "answer_median_rank": a, "property_median_rank": p} for i, (a, p) in enumerate([(900, 800), (50, 400), (10, 20)])]
    assert v.lens_line(_results(lens={"self": rows})).supports == "re-simulation"
    late = [{**r, "answer_median_rank": 5000} for r in rows]
    assert v.lens_line(_results(lens={"self": late})).supports.startswith("not re-simulation")
    assert "mixed" in v.lens_line(_results(lens={"self": rows, "untrained": late})).supports


def test_probes_line_tells_a_state_at_p_from_a_final_token_only_result() -> None:
    final_only = {"best": [_curve("B", "hypothetical@final", 0.01), _curve("B", "hypothetical@p_last", 0.6)]}
    line = v.probes_line(_results(probing=final_only))
    assert "only at the question's final token" in line.supports and "Holm p = 0.01" in line.measured
    at_p = {"best": [_curve("B", "hypothetical@p_last", 0.02)]}
    assert v.probes_line(_results(probing=at_p)).supports.startswith("a state at P")
    nothing = {"best": [_curve("B", "hypothetical@p_last", 0.6), _curve("B", "hypothetical@final", 0.3)]}
    assert v.probes_line(_results(probing=nothing)).supports.startswith(v.UNDECIDED)


def test_m1_vs_m2_needs_a_holm_significant_difference() -> None:
    def row(diff: float, p: float) -> dict:
        return {"property": "first_character", "run": "hypothetical@final", "self_acc": 0.7, "cross_acc": 0.7 - diff, "diff": diff,
                "diff_lo": diff - 0.1, "diff_hi": diff + 0.1, "p_holm": p, "n_items": 40}

    assert v.m1_vs_m2_line(_results(probing={"m1_vs_m2": [row(0.2, 0.01)]})).supports.startswith("state or re-simulation")
    assert v.m1_vs_m2_line(_results(probing={"m1_vs_m2": [row(-0.2, 0.01)]})).supports.startswith("reads the input")
    assert v.m1_vs_m2_line(_results(probing={"m1_vs_m2": [row(0.05, 0.4)]})).supports.startswith(v.UNDECIDED)


def test_markdown_has_one_row_per_line_and_escapes_pipes() -> None:
    line = v.Line("a | b", "exploratory", "s", "r", "i", "m", "x", "src")
    text = v.markdown([line, line])
    assert text.count("\n") == 4 and "a \\| b" in text


def test_read_results_hashes_every_file_it_reads(tmp_path: Path) -> None:
    study, capture = tmp_path / "study", tmp_path / "mech"
    (capture / "probing").mkdir(parents=True)
    (capture / "self").mkdir()
    study.mkdir()
    (study / "metrics.json").write_text(json.dumps(_endpoint(0.0, -0.1, 0.1)))
    (capture / "probing" / "metrics.json").write_text('{"best": [], "bar": NaN}')
    (capture / "self" / "logit_lens_summary.jsonl").write_text('{"layer": 0, "n": 3, "answer_median_rank": 1, "property_median_rank": 2}\n')
    r = v.read_results(study, capture)
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


def _patching(**stages) -> dict:
    return {"subjects": {"self": stages}}


def test_patching_b_needs_a_holm_significant_positive_layer() -> None:
    def test(median: float, p_holm: float, layer: int = 20) -> dict:
        return {"contrast": "B − B-control", "layer": layer, "n": 24, "median": median, "ci_low": median - 0.1, "ci_high": median + 0.1, "p_holm": p_holm}

    yes = v.patching_b_line(_results(patching=_patching(patching={"contrasts": [test(0.4, 0.01, 10), test(0.3, 0.02)]})))
    assert yes.supports.startswith("state or re-simulation") and "2 of 2 layers (L10–L20)" in yes.measured and "n = 24 pairs" in yes.measured
    no = v.patching_b_line(_results(patching=_patching(patching={"contrasts": [test(0.4, 0.2), test(-0.3, 0.01)]})))
    assert no.supports.startswith(v.UNDECIDED)


def test_concept_injection_after_p_reads_a_state_every_token_only_primes() -> None:
    def row(positions: str, p: float, mean: float = 0.5, other_p: float = 0.01) -> dict:
        return {"positions": positions, "p_holm": p if positions == "after_P" else NAN, "vs_random_p": p, "vs_random_mean": mean,
                "vs_other_p": other_p, "vs_other_mean": 0.3, "n": 24, "clean_report_rate": 0.05}

    after = v.concepts_line(_results(patching=_patching(concepts={"summary": [row("after_P", 0.01), row("all", 0.01)]})))
    assert after.supports.startswith("state")
    generic = v.concepts_line(_results(patching=_patching(concepts={"summary": [row("after_P", 0.01, other_p=0.5), row("all", 0.01)]})))
    assert generic.supports.startswith("weak support") and "0 of them also beat the other concepts" in generic.measured
    prime = v.concepts_line(_results(patching=_patching(concepts={"summary": [row("after_P", 0.3), row("all", 0.01)]})))
    assert prime.supports.startswith("priming")
    against = v.concepts_line(_results(patching=_patching(concepts={"summary": [row("after_P", 0.01, -0.5), row("all", 0.3)]})))
    assert against.supports.startswith(v.UNDECIDED)


def test_steering_without_a_beyond_random_object_change_cannot_decide() -> None:
    tests = [{"kind": "object", "scale": 8.0, "gain_mean": -0.1, "gain_ci_low": -0.3, "gain_ci_high": 0.1, "p_holm": 0.9},
             {"kind": "hypothetical", "scale": 8.0, "gain_mean": 0.5, "gain_ci_low": 0.3, "gain_ci_high": 0.7, "p_holm": NAN}]
    steering = {"items": 24, "scale": 8.0, "dose": 0.35, "pattern": "none", "sweep_tests": tests}
    line = v.steering_line(_results(patching=_patching(steering=steering)))
    assert line.supports.startswith(v.UNDECIDED) and "0 of 1 scales" in line.measured
    skipped = v.steering_line(_results(patching=_patching(steering={"skipped": "one value"})))
    assert skipped.measured.startswith("not measured")


def test_sae_line_names_the_layers_where_top_features_beat_matched_random() -> None:
    def effect(diff: float, p: float) -> dict:
        return {"top_minus_random": diff, "ci_low": diff - 0.2, "ci_high": diff + 0.2, "p_holm": p, "n_items": 16}

    sae = {"ablation_effects": {"self L16 logit_difference": effect(-1.2, 0.01), "self L8 logit_difference": effect(-0.1, 0.6),
                                "self L16 compliance": effect(-0.5, None)},
           "attribution": {"self L16": {"share_p": 0.52, "error_share": 0.3}}}
    line = v.sae_line(_results(sae=sae))
    assert "self L16" in line.supports and "self L8" not in line.supports and "52% of the latents' attribution" in line.measured
