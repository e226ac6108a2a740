"""`python -m experiments.capture` end to end on a hand-made tiny study: stores, logit lens,
explorer data and report; a rerun reuses everything."""

from __future__ import annotations

import pytest

from introspect_mi.actstore import ActivationStore
from introspect_mi.explorer.data import read_explorer_data


@pytest.mark.slow
def test_capture_writes_stores_lens_and_explorer_then_reuses(tiny_study) -> None:
    args = ("--subjects", "untrained", "self", "cross", "--name", "mech", "--explorer-items", "3", "--batch-size", "4",
            "--shard-records", "16")
    first = tiny_study.run("capture", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    run = tiny_study.runs / "mech"
    for subject in ("untrained", "self", "cross"):
        store = ActivationStore.open(run / subject / "store")
        records = store.records
        assert set(records["kind"]) == {"object", "hypothetical"}
        assert records.loc[records["kind"] == "object", "item_id"].is_unique
        hyp = records[records["kind"] == "hypothetical"]
        assert hyp["alignment"].map(lambda a: len(a["pairs"]) > 0).all()
        x, meta = store.load("resid_post", 0, "answer_first", filter={"kind": "hypothetical"})
        assert len(x) == len(hyp) == len(meta)
        items, _ = read_explorer_data(run / subject / "explorer.json")
        assert len(items) == 3 and len({i.task for i in items}) == 2  # spread over both tasks
        assert (run / subject / "logit_lens_summary.csv").exists()
    assert (run / "logit_lens" / "report.html").read_text().count('<div id="fig-') == 1
    second = tiny_study.run("capture", *args)
    assert second.returncode == 0 and second.stdout.count("finished earlier, reused") == 3


def test_a_missing_study_is_one_clear_line(tiny_study) -> None:
    out = tiny_study.run("capture", "--study", "nope")  # the later --study wins
    assert out.returncode == 2 and "error: no run 'nope'" in out.stderr and "Traceback" not in out.stderr
