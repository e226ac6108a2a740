"""What the mechanistic experiments share (experiments/mech.py): which study they analyse, and the
one store check that keeps a capture of another state of the study from being reused or read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from experiments.behavioral_config import EvalConfig
from experiments.capture import CaptureConfig, main_capture
from experiments.common import config_parser
from experiments.finetune_sweep import SweepConfig
from experiments.mech import StudyChoice, StudyView, capture_identity, capture_stores, open_study, study_name
from experiments.patching import PatchingConfig, main_patching
from experiments.probing import ProbingConfig, main_probing
from experiments.sae_features import SAEFeaturesConfig, main_sae_features
from introspect_mi import config as cfg
from introspect_mi.actstore import StoreWriter
from introspect_mi.errors import UserError
from introspect_mi.store import RunDir
from tests.experiments.conftest import TinyStudy
from tests.test_models import make_adapter


@pytest.fixture()
def study(tiny_study: TinyStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TinyStudy:
    """A private copy of the tiny study (tests here change it), runs/ and checkpoints/ pointing at it."""
    copy = TinyStudy(tiny_study.name, tmp_path / "runs", tmp_path / "checkpoints")
    shutil.copytree(tiny_study.runs / tiny_study.name, copy.runs / copy.name)
    shutil.copytree(tiny_study.checkpoints, copy.checkpoints)
    monkeypatch.setenv("INTROSPECT_MI_RUNS", str(copy.runs))
    monkeypatch.setenv("INTROSPECT_MI_CHECKPOINTS", str(copy.checkpoints))
    return copy


def relabel(study: TinyStudy, slug: int) -> None:
    """The study's rows for one subject with other object-level answers (as a rerun with other data would leave them)."""
    run = RunDir(study.runs / study.name)
    rows = run.read_table(f"rows_{slug}")
    rows["object_answer"] = rows["object_answer"].map(lambda a: f"zebra {a}")
    run.write_table(f"rows_{slug}", rows)


def rewrite_config(study: TinyStudy, **changes: object) -> None:
    """The study folder as a rerun with other settings (e.g. per_cell) would leave it."""
    path = study.runs / study.name / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def fake_store(folder: Path, identity: dict[str, str] | None, n_records: int = 0) -> None:
    """store.json of a capture (no shard written yet) made from `identity`."""
    info = {"places": [], "positions": ["final"], "dtype": "float32", "n_layers": 1, "d_model": 2, "n_records": n_records}
    StoreWriter(folder, {**info, **({"identity": identity} if identity else {})})


# --- which study -----------------------------------------------------------------------------------


def test_m1_and_m2_choose_the_study_the_study_command_names() -> None:
    assert study_name("quick", StudyChoice()) == "study-smollm2-135m-instruct-gemma3-270m"
    assert study_name("quick", StudyChoice(m1="/models/Llama-3-8B")) == "study-_models_Llama-3-8B-gemma3-270m"
    assert study_name("quick", StudyChoice(m2="other")) == "study-smollm2-135m-instruct-other"
    assert study_name("quick", StudyChoice(study="mine", m1="x")) == "mine"


@pytest.mark.parametrize("config", [CaptureConfig, ProbingConfig, PatchingConfig, SAEFeaturesConfig])
def test_every_mechanistic_experiment_takes_m1_and_m2_flags(config: type) -> None:
    args = config_parser(prog="x", doc=None, config=config).parse_args(["--m1", "a", "--m2", "b", "--study", "s"])
    assert (lambda c: (c.study, c.m1, c.m2))(cfg.build(config, {}, args)) == ("s", "a", "b")


def test_an_m1_other_than_the_studys_is_an_error(study: TinyStudy) -> None:
    with pytest.raises(UserError, match="was run with m1 .*, not /other/model"):
        open_study("quick", StudyChoice(study=study.name, m1="/other/model"))
    assert open_study("quick", StudyChoice(study=study.name, m1=StudyView(study.name).config.m1)).name == study.name


@pytest.mark.parametrize("config", [EvalConfig(), SweepConfig()], ids=["evaluate", "sweep"])
def test_a_study_flag_naming_an_evaluate_run_or_a_sweep_is_one_clear_error(config: object, study: TinyStudy) -> None:
    run = RunDir.create(study.runs, "not-a-study", cfg.to_dict(config), seed=0)
    run.write_json("metrics.json", {})
    with pytest.raises(UserError, match="run 'not-a-study' is not a behavioural study"):
        StudyView("not-a-study")


def test_the_cli_says_so_in_one_line(study: TinyStudy) -> None:
    RunDir.create(study.runs, "an-evaluate-run", cfg.to_dict(EvalConfig()), seed=0).write_json("metrics.json", {})
    out = TinyStudy("an-evaluate-run", study.runs, study.checkpoints).run("probing")
    assert out.returncode == 2 and "error: run 'an-evaluate-run' is not a behavioural study" in out.stderr
    assert "Traceback" not in out.stderr


# --- the store check -------------------------------------------------------------------------------


def test_capture_stores_reads_a_store_of_this_study_and_refuses_a_stale_or_unidentified_one(study: TinyStudy) -> None:
    view = StudyView(study.name)
    capture = RunDir.create(study.runs, "cap", {"capture": 1}, seed=0)
    fake_store(capture.path("untrained/store"), capture_identity(view, view.subject("untrained")))
    fake_store(capture.path("self/store"), capture_identity(view, view.subject("self")), n_records=5)
    stores, missing = capture_stores(capture, view, ["untrained", "self", "cross"])
    assert list(stores) == ["untrained"]
    assert "incomplete (0 of 5 records" in missing["self"] and "no activation store for cross" in missing["cross"]

    make_adapter(Path(view.config.m1), study.checkpoints / "adapters" / study.name / "self", seed=7)  # the study retrained M1
    with pytest.raises(UserError, match=r"self store .* another state of the study 'tiny' \(differs in: fingerprint\)"):
        capture_stores(capture, view, ["self"])
    relabel(study, 0)
    with pytest.raises(UserError, match=r"differs in: labels\)"):
        capture_stores(capture, StudyView(study.name), ["untrained"])
    fake_store(capture.path("cross/store"), None)
    with pytest.raises(UserError, match="records no identity"):
        capture_stores(capture, view, ["cross"])


def test_other_items_change_the_identity(study: TinyStudy) -> None:
    view = StudyView(study.name)
    before = capture_identity(view, view.subject("untrained"))
    rewrite_config(study, eval_items=5)
    after = capture_identity(StudyView(study.name), StudyView(study.name).subject("untrained"))
    assert {k for k in before if before[k] != after[k]} == {"study_config", "items", "labels"}


def test_a_model_known_here_only_by_its_hub_id_is_fingerprinted_as_its_remote_handle_is(study: TinyStudy) -> None:
    rewrite_config(study, m1="meta-llama/Llama-3.1-8B-Instruct")  # a study whose untrained subject is captured on NDIF
    view = StudyView(study.name)
    assert capture_identity(view, view.subject("untrained"))["fingerprint"] == "hub:meta-llama/Llama-3.1-8B-Instruct"


# --- end to end: a changed study is never reused ---------------------------------------------------


def test_a_changed_study_makes_capture_probing_patching_and_sae_features_refuse_the_old_capture(study: TinyStudy) -> None:
    capture = CaptureConfig(study=study.name, subjects=("untrained",), explorer_items=1, batch_size=8, shard_records=64)
    main_capture(capture, "quick")
    assert main_capture(capture, "quick")["untrained"]["n_records"] > 0  # unchanged: reused

    rewrite_config(study, per_cell=7)  # the study rerun with another per_cell
    with pytest.raises(UserError, match=r"untrained store .* another state of the study 'tiny' \(differs in: study_config\)"):
        main_capture(capture, "quick")
    probing = ProbingConfig(study=study.name, subjects=("untrained",), experiments=("A",), c_grid=(0.1,), n_boot=10, item_folds=2)
    with pytest.raises(UserError, match=r"differs in: study_config\)"):
        main_probing(probing, "quick")
    assert not (study.runs / f"mech-{study.name}" / "probing").exists()
    with pytest.raises(UserError, match=r"differs in: study_config\)"):
        main_patching(PatchingConfig(study=study.name, subjects=("untrained",)), "quick")
    with pytest.raises(UserError, match=r"differs in: study_config\)"):
        main_sae_features(SAEFeaturesConfig(study=study.name, subjects=("untrained",)), "quick")
    assert not (study.runs / f"mech-{study.name}" / "sae").exists()
