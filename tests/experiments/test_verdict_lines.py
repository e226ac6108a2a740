"""The verdict's rules on hand-made metrics: each line says which account a measurement
supports, and "cannot decide" or "not measured" where it must."""

from __future__ import annotations

import pytest

from experiments import verdict_lines as v

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
    beyond = {"best": [{**_curve("B", "hypothetical@final", 0.01), "wrong_n": 12, "wrong_acc": 0.6, "wrong_bar": 0.2, "wrong_p": 0.01}]}
    line = v.probes_line(_results(probing=beyond))
    assert "even where the self-prediction was wrong" in line.supports and "on the 12 items whose self-prediction was wrong: 60%" in line.measured
    output = {"best": [{**_curve("B", "hypothetical@final", 0.01), "wrong_n": 12, "wrong_acc": 0.2, "wrong_bar": 0.3, "wrong_p": 0.8}]}
    assert "cannot tell these apart" in v.probes_line(_results(probing=output)).supports
    nothing = {"best": [_curve("B", "hypothetical@p_last", 0.6), _curve("B", "hypothetical@final", 0.3)]}
    assert v.probes_line(_results(probing=nothing)).supports.startswith(v.UNDECIDED)


def test_m1_vs_m2_needs_a_holm_significant_difference() -> None:
    def row(diff: float, p: float) -> dict:
        return {"property": "first_character", "run": "hypothetical@final", "self_acc": 0.7, "cross_acc": 0.7 - diff, "diff": diff,
                "diff_lo": diff - 0.1, "diff_hi": diff + 0.1, "p_holm": p, "n_items": 40}

    assert v.m1_vs_m2_line(_results(probing={"m1_vs_m2": [row(0.2, 0.01)]})).supports.startswith("state or re-simulation")
    assert v.m1_vs_m2_line(_results(probing={"m1_vs_m2": [row(-0.2, 0.01)]})).supports.startswith("reads the input")
    assert v.m1_vs_m2_line(_results(probing={"m1_vs_m2": [row(0.05, 0.4)]})).supports.startswith(v.UNDECIDED)


def _patching(**stages) -> dict:
    return {"subjects": {"self": stages}}


def test_patching_b_needs_a_holm_significant_positive_layer() -> None:
    def test(median: float, p_holm: float, layer: int = 20) -> dict:
        return {"contrast": "B − B-control", "layer": layer, "n": 24, "median": median, "ci_low": median - 0.1, "ci_high": median + 0.1, "p_holm": p_holm}

    yes = v.patching_b_line(_results(patching=_patching(patching={"contrasts": [test(0.4, 0.01, 10), test(0.3, 0.02)]})))
    assert yes.supports.startswith("does not discriminate") and "Holm p < 0.05 at L10–L20 (medians +0.30 to +0.40); n = 24" in yes.measured
    assert "n = 24 pairs" in yes.measured
    no = v.patching_b_line(_results(patching=_patching(patching={"contrasts": [test(0.4, 0.2), test(-0.3, 0.01)]})))
    assert no.supports.startswith(v.UNDECIDED)


def test_layer_ranges_joins_consecutive_layers_of_the_grid() -> None:
    assert v.layer_ranges([10, 12, 14, 20, 29], [10, 12, 14, 16, 20, 28, 29]) == "L10–L14, L20, L29"
    assert v.layer_ranges([], [10, 12]) == "none"


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
