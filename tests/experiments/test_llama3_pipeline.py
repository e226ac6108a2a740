"""The whole pipeline on Llama-3-shaped models (tests/llama3.py: Meta's tokenizer, the Instruct
template, GQA, llama3 RoPE, 128k vocabulary) at toy sizes: the behavioural study (object answers,
self and cross finetunes, evaluation, behaviour change), then capture, probing, patching and SAE
features on it. M1 has the 3.1-style tokenizer config (EOS `<|eot_id|>`, a pad token, untied
embeddings), M2 the 3.0-style one (EOS `<|end_of_text|>`, no pad, tied). Both are scripted to
answer one letter and `<|eot_id|>`, so every answer is compliant and there is data to train on.
Each command runs in this process through its CLI entry point (`main(argv)`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from introspect_mi.actstore import ActivationStore
from introspect_mi.store import RunDir
from tests.llama3 import EOT

TASKS = ("animals", "mcq_general")
PROPERTIES = ("first_character", "among_a_or_c")
STUDY = ["--train-tasks", "countries", "mcq_arithmetic", "--held-out-tasks", *TASKS, "--properties", *PROPERTIES,
         "--train-items", "6", "--per-cell", "6", "--eval-items", "10", "--epochs", "1", "--calibration-items", "2",
         "--calibration-samples", "2", "--calibration-property", "first_character", "--behaviour-change-items", "8",
         "--n-boot", "50", "--name", "llama3"]
SUBJECTS = ("untrained", "self", "cross")
# Random tiny weights give clean gaps far below the preset's 0.5: --min-gap 0 keeps pairs to patch.
PATCHING = ["--tasks", *TASKS, "--properties", *PROPERTIES, "--pair-candidates", "4", "--min-gap", "0", "--exact-cells", "4",
            "--steer-task", "animals", "--steer-property", "first_character", "--steer-items", "4", "--steer-scales", "1", "4",
            "--n-random", "1", "--concepts", "cat", "dog", "--baseline-words", "fox", "owl", "--concept-items", "2"]
SAE = ["--layers", "0", "1", "--train-items", "4", "--eval-prompts", "2", "--expansion", "2", "--k", "4",
       "--training-samples", "1024", "--sae-batch-size", "128", "--analysis-items", "4", "--ablate-k", "2", "--random-draws", "2",
       "--top-features", "1", "--page-examples", "3", "--batch-size", "4", "--differential-items", "6"]


def run(module: str, *argv: str) -> None:
    import importlib

    code = importlib.import_module(f"experiments.{module}").main(list(argv))
    assert code in (0, None), f"python -m experiments.{module} exited with {code}"


@pytest.mark.slow
def test_the_whole_pipeline_runs_on_llama3_shaped_models(llama3_dirs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs, checkpoints = tmp_path / "runs", tmp_path / "checkpoints"
    monkeypatch.setenv("INTROSPECT_MI_RUNS", str(runs))
    monkeypatch.setenv("INTROSPECT_MI_CHECKPOINTS", str(checkpoints))
    m1, m2 = str(llama3_dirs["3.1"]), str(llama3_dirs["3.0"])

    run("behavioral", "--preset", "quick", "--m1", m1, "--m2", m2, *STUDY)
    study = RunDir(runs / "llama3")
    metrics = json.loads((study.folder / "metrics.json").read_text())
    assert len(metrics["predictors"]) >= 3 and all(p["overall"]["n_items"] > 0 for p in metrics["predictors"].values())
    assert set(metrics["finetunes"]) == {"self", "cross", "behaviour_change"}
    for name in ("self", "cross", "behaviour_change"):  # both tokenizer configs train the stop at <|eot_id|>
        sidecar = json.loads((checkpoints / "adapters" / "llama3" / name / "introspect_mi_adapter.json").read_text())
        assert sidecar["end_of_answer_ids"] == [EOT]
    untrained = study.read_table("rows_0")  # untrained M1 on itself: answers stopped after one letter
    assert set(untrained["object_answer"]) <= {"A", "B", "C", "D"} and untrained["object_answer"].nunique() >= 2

    run("capture", "--study", "llama3", "--subjects", *SUBJECTS, "--name", "mech", "--explorer-items", "2", "--batch-size", "8")
    for subject in SUBJECTS:
        records = ActivationStore.open(runs / "mech" / subject / "store").records
        assert set(records["kind"]) == {"object", "hypothetical"}
        assert records["tokens"].map(lambda t: t.count("<|begin_of_text|>") == 1 and t[0] == "<|begin_of_text|>").all()
        hyp = records[records["kind"] == "hypothetical"]
        assert hyp["alignment"].map(lambda a: len(a["pairs"]) > 0).all()
        # the capture's greedy first token is the study's answer (same prompt ids, same stop)
        assert (hyp["answer_token"] == hyp["hypothetical_answer"].str[:1]).all()

    run("probing", "--study", "llama3", "--capture", "mech", "--subjects", *SUBJECTS, "--properties", *PROPERTIES,
        "--c-grid", "0.1", "--n-boot", "50", "--min-class-items", "2", "--item-folds", "2")
    probing = json.loads((runs / "mech" / "probing" / "metrics.json").read_text())
    assert probing["subjects"] and set(probing["subjects"]) <= set(SUBJECTS)  # untrained M1's labels may leave no cell

    # untrained M1 answers every held-out animals item with one letter: no pair to patch, so the
    # trained subjects (their behaviour: self-trained M1's, which varies) are patched
    run("patching", "--study", "llama3", "--capture", "mech", "--subjects", "self", "cross", *PATCHING)
    patching = json.loads((runs / "mech" / "patching" / "metrics.json").read_text())
    assert set(patching["subjects"]) == {"self", "cross"}
    assert all(m["patching"]["pairs"] >= 1 for m in patching["subjects"].values())

    run("sae_features", "--study", "llama3", "--capture", "mech", *SAE)
    sae = json.loads((runs / "mech" / "sae" / "metrics.json").read_text())
    assert sae["subjects"] == ["untrained", "self"] and set(sae["saes"]) == {"L0", "L1"}
