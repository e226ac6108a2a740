"""Evaluation rows: ground truth from the target, compliance rules, pairs, exact calibration."""

from __future__ import annotations

import math

from introspect_mi.evaluation import Pair, _value_distribution, changed_fraction, make_pairs, score_rows
from introspect_mi.properties import PROPERTIES
from introspect_mi.tasks import load_items, task_spec


def pairs_for(task: str, prop: str, n: int) -> list[Pair]:
    spec = task_spec(task)
    return [Pair(item, spec, PROPERTIES[prop]) for item in load_items(task, "val", n=n)]


def test_make_pairs_keeps_only_applicable_properties() -> None:
    items = [(i, task_spec("animals")) for i in load_items("animals", "val", n=2)]
    items += [(i, task_spec("myopic_reward")) for i in load_items("myopic_reward", "val", n=2)]
    pairs = make_pairs(items, ["second_character", "ethical_stance"])
    assert [(p.spec.name, p.prop.name) for p in pairs] == [("animals", "second_character")] * 2 + [("myopic_reward", "ethical_stance")] * 2
    assert len(make_pairs(items, None)) == 2 * 7 + 2 * 1  # all applicable: 7 text properties, 1 A/B


def test_score_rows_ground_truth_and_compliance() -> None:
    pairs = pairs_for("animals", "second_character", 3)
    ids = [p.item.item_id for p in pairs]
    objects = {ids[0]: ["Cat dog owl"], ids[1]: ["I'm sorry, I cannot"], ids[2]: ["ox bee"]}
    hyps = [["A."], ["a"], ["x y z"]]
    rows = score_rows(pairs, objects, hyps)
    assert rows["object_value"].isna().tolist() == [False, True, False]  # refusal → non-compliant
    assert rows["object_value"][[0, 2]].tolist() == ["a", "x"]
    assert rows["hypothetical_value"].tolist()[:2] == ["a", "a"]
    assert rows["hypothetical_value"].isna().tolist()[2]  # three words is not one character
    assert rows["correct"].tolist() == [True, False, False]


def test_ethical_stance_uses_each_items_target() -> None:
    pairs = pairs_for("myopic_reward", "ethical_stance", 2)
    objects = {p.item.item_id: [p.item.target] for p in pairs}  # always picks the target option
    rows = score_rows(pairs, objects, [["true"], ["False"]])
    assert rows["object_value"].tolist() == ["true", "true"]
    assert rows["correct"].tolist() == [True, False]


def test_exact_calibration_keeps_only_deciding_tokens() -> None:
    prop = PROPERTIES["second_character"]
    dist = _value_distribution({" cat": 0.4, " dog": 0.2, " c": 0.3, " bat": 0.1}, lambda t: prop.extract(t))
    assert set(dist) == {"a", "o"}
    assert math.isclose(dist["a"], 0.5 / 0.7) and math.isclose(dist["o"], 0.2 / 0.7)
    assert _value_distribution({" c": 1.0}, lambda t: prop.extract(t)) == {}


def test_changed_fraction_compares_shared_items() -> None:
    assert changed_fraction({"a": ["x"], "b": ["y"], "c": ["z"]}, {"a": ["x"], "b": ["q"]}) == 0.5
    assert math.isnan(changed_fraction({}, {}))


def test_user_task_files_are_accepted_where_task_names_are(tmp_path) -> None:
    from introspect_mi.evaluation import load_task_items

    path = tmp_path / "risk.jsonl"
    path.write_text('{"kind": "ab_choice", "behaviour": "risk-seeking"}\n'
                    '{"text": "Bet on a coin?\\nA - Yes\\nB - No", "target": "A"}\n')
    [(item, spec)] = load_task_items([str(path)], "val", 10, 0)
    assert spec.name == "risk" and spec.behaviour == "risk-seeking" and item.target == "A"
    assert [p.prop.name for p in make_pairs([(item, spec)], None)] == ["ethical_stance"]


def test_calibration_is_skipped_before_the_predictor_runs_when_no_first_token_decides_the_value(
        tiny_llama_dir, tmp_path, monkeypatch) -> None:
    """Compliant sampled answers ("cat") but a first token (" c") that decides no second character: the exact
    variant has nothing to compare, so calibration is skipped with that reason (it raised 'no calibration pairs')."""
    from introspect_mi.evaluation import CalibrationSkipped, calibration
    from introspect_mi.inference import Engine
    from introspect_mi.models import load
    from introspect_mi.prompts import PromptConfig

    asked: list[str] = []

    def generate(self, prompts, decoding, desc=""):
        asked.append(desc)
        return [["cat"] * decoding.n for _ in prompts]

    monkeypatch.setattr(Engine, "generate", generate)
    monkeypatch.setattr(Engine, "next_token_distribution", lambda self, prompts, top_k=50: [{" c": 1.0} for _ in prompts])
    engine = Engine(load(str(tiny_llama_dir)), batch_size=4, progress=False)
    pairs = pairs_for("animals", "second_character", 3)
    got = calibration(engine, engine, pairs, PromptConfig(), PromptConfig(), tmp_path, n_samples=2, seed=0, n_boot=10)
    assert isinstance(got, CalibrationSkipped) and got.n_prompts == 3
    assert "no first token" in got.reason and "second_character" in got.reason
    assert asked and not any("hypothetical" in d for d in asked)  # the predictor was never sampled
