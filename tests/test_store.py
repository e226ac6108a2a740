"""The run store: answer cache (round trips, crash repair, real SIGKILL) and run folders."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest

from introspect_mi.errors import UserError
from introspect_mi.paths import PROJECT_ROOT
from introspect_mi.store import AnswerCache, RunDir, atomic_write_text, decoding_key, prompt_key

FP = "0123456789abcdef+fedcba9876543210"
GREEDY = {"max_new_tokens": 8, "temperature": 0.0}


# --- AnswerCache -----------------------------------------------------------------------------


def test_round_trip_and_layout(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path, FP, GREEDY)
    assert cache.missing(["a", "b", "a"]) == ["a", "b"]
    cache.put_many([("a", "alpha"), ("b", {"text": "β", "logprobs": [-0.5, -1.25]})])
    assert cache.get_many(["a", "b", "c"]) == {"a": "alpha", "b": {"text": "β", "logprobs": [-0.5, -1.25]}}
    assert cache.missing(["c", "a", "c"]) == ["c"]
    assert (cache.hits, cache.misses, cache.writes) == (1, 3, 2)

    folder = tmp_path / FP
    assert cache.path == folder / f"{decoding_key(GREEDY)}.jsonl"
    assert json.loads((folder / "model.json").read_text()) == {"fingerprint": FP}
    assert json.loads((folder / f"{decoding_key(GREEDY)}.decoding.json").read_text()) == GREEDY
    lines = cache.path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        {"k": prompt_key("a"), "prompt": "a", "result": "alpha"},
        {"k": prompt_key("b"), "prompt": "b", "result": {"text": "β", "logprobs": [-0.5, -1.25]}},
    ]
    assert len(prompt_key("a")) == 32


def test_second_open_sees_everything(tmp_path: Path) -> None:
    prompts = [f"prompt {i}" for i in range(20)]
    first = AnswerCache(tmp_path, FP, GREEDY)
    first.put_many([(p, i) for i, p in enumerate(prompts[:10])])
    first.put_many([(p, i) for i, p in enumerate(prompts[10:], start=10)])

    again = AnswerCache(tmp_path, FP, GREEDY)
    assert again.missing(prompts) == []
    assert (again.hits, again.misses, again.writes) == (20, 0, 0)
    assert again.get_many(prompts) == {p: i for i, p in enumerate(prompts)}


def test_decoding_key_ignores_key_order() -> None:
    assert decoding_key({"a": 1, "b": 2}) == decoding_key({"b": 2, "a": 1})
    assert decoding_key({"a": 1}) != decoding_key({"a": 2})


def test_settings_and_fingerprints_are_separate(tmp_path: Path) -> None:
    AnswerCache(tmp_path, FP, GREEDY).put_many([("p", "greedy")])
    sampled = AnswerCache(tmp_path, FP, {**GREEDY, "temperature": 1.0})
    other_model = AnswerCache(tmp_path, "0123456789abcdef", GREEDY)
    assert sampled.missing(["p"]) == ["p"] and other_model.missing(["p"]) == ["p"]
    sampled.put_many([("p", "sampled")])
    assert AnswerCache(tmp_path, FP, GREEDY).get_many(["p"]) == {"p": "greedy"}
    assert AnswerCache(tmp_path, FP, {"temperature": 1.0, "max_new_tokens": 8}).get_many(["p"]) == {"p": "sampled"}


def test_unsafe_fingerprint_gets_a_safe_distinct_folder(tmp_path: Path) -> None:
    a = AnswerCache(tmp_path, "org/model+adapter:1", GREEDY)
    b = AnswerCache(tmp_path, "org_model+adapter_1", GREEDY)
    assert a.folder.parent == tmp_path and a.folder != b.folder
    a.put_many([("p", 1)])
    assert b.missing(["p"]) == ["p"]


def test_duplicates_last_wins(tmp_path: Path) -> None:
    one = AnswerCache(tmp_path, FP, GREEDY)
    two = AnswerCache(tmp_path, FP, GREEDY)  # e.g. a second process
    one.put_many([("p", "first"), ("q", 1)])
    two.put_many([("p", "second")])
    assert AnswerCache(tmp_path, FP, GREEDY).get_many(["p", "q"]) == {"p": "second", "q": 1}


def test_partial_trailing_line_is_dropped_and_truncated(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = AnswerCache(tmp_path, FP, GREEDY)
    cache.put_many([("a", 1), ("b", 2)])
    good_size = cache.path.stat().st_size
    whole = AnswerCache._line("c", 3)
    with cache.path.open("ab") as f:
        f.write(whole[: len(whole) // 2])

    with caplog.at_level(logging.WARNING, logger="introspect_mi.store"):
        reopened = AnswerCache(tmp_path, FP, GREEDY)
    assert "partial" in caplog.text
    assert cache.path.stat().st_size == good_size
    assert reopened.get_many(["a", "b", "c"]) == {"a": 1, "b": 2}

    reopened.put_many([("c", 3)])
    assert AnswerCache(tmp_path, FP, GREEDY).get_many(["a", "b", "c"]) == {"a": 1, "b": 2, "c": 3}


def test_unparseable_last_line_with_newline_is_dropped(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path, FP, GREEDY)
    cache.put_many([("a", 1)])
    good_size = cache.path.stat().st_size
    with cache.path.open("ab") as f:
        f.write(b'{"k": "x", "prompt": "b", "res\n')
    assert AnswerCache(tmp_path, FP, GREEDY).get_many(["a", "b"]) == {"a": 1}
    assert cache.path.stat().st_size == good_size


def test_corrupt_middle_line_names_file_and_line(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path, FP, GREEDY)
    cache.put_many([("a", 1), ("b", 2), ("c", 3)])
    lines = cache.path.read_bytes().split(b"\n")
    lines[1] = lines[1][:-5] + b"#oops"
    cache.path.write_bytes(b"\n".join(lines))
    size = cache.path.stat().st_size

    with pytest.raises(UserError) as err:
        AnswerCache(tmp_path, FP, GREEDY)
    assert f"{cache.path}:2" in err.value.problem
    assert "delete the line or the file" in err.value.fix
    assert cache.path.stat().st_size == size  # nothing repaired behind the user's back


def test_record_with_wrong_key_is_corrupt(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path, FP, GREEDY)
    cache.put_many([("a", 1), ("b", 2)])
    text = cache.path.read_text().replace(prompt_key("a"), "0" * 32)
    cache.path.write_text(text)
    with pytest.raises(UserError, match=r":1 is not a valid cache record"):
        AnswerCache(tmp_path, FP, GREEDY)


_WRITER = """
import itertools, sys
from pathlib import Path
from introspect_mi.store import AnswerCache
cache = AnswerCache(Path(sys.argv[1]), sys.argv[2], {"temperature": 0.0})
for b in itertools.count():
    cache.put_many([(f"w{sys.argv[3]} b{b} r{i}", {"batch": b, "row": i, "pad": "x" * 500}) for i in range(50)])
    if b + 1 == int(sys.argv[4]):
        break
"""


def _writer(tmp_path: Path, writer: int, batches: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    args = [sys.executable, "-c", _WRITER, str(tmp_path), FP, str(writer), str(batches)]
    return subprocess.Popen(args, cwd=PROJECT_ROOT, env=env, stderr=subprocess.PIPE)


def _batches(cache: AnswerCache, prompts_of: dict[int, list[str]]) -> dict[int, set[int]]:
    rows: dict[int, set[int]] = defaultdict(set)
    for prompt, result in cache.get_many([p for ps in prompts_of.values() for p in ps]).items():
        assert prompt.endswith(f"r{result['row']}") and result["pad"] == "x" * 500
        rows[result["batch"]].add(result["row"])
    return rows


def test_sigkill_mid_append_leaves_whole_batches(tmp_path: Path) -> None:
    proc = _writer(tmp_path, writer=0, batches=-1)  # runs until killed
    data = tmp_path / FP / f"{decoding_key({'temperature': 0.0})}.jsonl"
    deadline = time.monotonic() + 10
    while not (data.exists() and data.stat().st_size > 0):
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "the writer never wrote"
        time.sleep(0.01)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    cache = AnswerCache(tmp_path, FP, {"temperature": 0.0})
    assert data.read_bytes().endswith(b"\n")
    assert all(json.loads(line) for line in data.read_text().splitlines())
    n = len(cache)
    assert n > 0 and n % 50 == 0
    rows = _batches(cache, {b: [f"w0 b{b} r{i}" for i in range(50)] for b in range(n // 50 + 1)})
    assert sorted(rows) == list(range(n // 50))  # batches in order, none half-written
    assert all(r == set(range(50)) for r in rows.values())

    cache.put_many([("after", "ok")])
    assert AnswerCache(tmp_path, FP, {"temperature": 0.0}).get_many(["after"]) == {"after": "ok"}


def test_two_processes_appending_do_not_interleave(tmp_path: Path) -> None:
    procs = [_writer(tmp_path, writer=w, batches=20) for w in (1, 2)]
    for proc in procs:
        assert proc.wait(timeout=30) == 0, proc.stderr.read().decode() if proc.stderr else ""
    cache = AnswerCache(tmp_path, FP, {"temperature": 0.0})
    assert len(cache) == 2 * 20 * 50
    for w in (1, 2):
        prompts = {b: [f"w{w} b{b} r{i}" for i in range(50)] for b in range(20)}
        assert cache.missing([p for ps in prompts.values() for p in ps]) == []


# --- RunDir ----------------------------------------------------------------------------------


CONFIG = {"model": "smollm2-135m", "tasks": ["animals", "colors"], "n": 100, "out": Path("/tmp/x")}


def test_create_writes_config_and_provenance(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "exp1", CONFIG, seed=7)
    assert run.folder == tmp_path / "exp1"
    text = run.path("config.json").read_text()
    assert json.loads(text) == {"model": "smollm2-135m", "n": 100, "out": "/tmp/x", "tasks": ["animals", "colors"]}
    assert list(json.loads(text)) == sorted(json.loads(text)) and "\n  " in text  # pretty, sorted

    prov = run.read_json("provenance.json")
    assert prov["seed"] == 7 and prov["hostname"] and prov["started_utc"].endswith("+00:00")
    assert {"python", "torch", "transformers", "peft", "transformer_lens", "nnsight", "sae_lens", "numpy", "pandas"} <= set(prov["versions"])
    assert prov["versions"]["pandas"] == pd.__version__
    if (PROJECT_ROOT / ".git").exists():
        assert len(prov["git"]["commit"]) == 40 and isinstance(prov["git"]["dirty"], bool)
    else:
        assert prov["git"] == {"commit": None, "dirty": None}


def test_same_config_resumes_different_config_is_refused(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "exp1", CONFIG, seed=7)
    run.write_json("results.json", {"accuracy": 0.5})

    again = RunDir.create(tmp_path, "exp1", dict(reversed(list(CONFIG.items()))), seed=7)
    assert again.read_json("results.json") == {"accuracy": 0.5}
    assert len(again.read_json("provenance.json")["resumed"]) == 1

    with pytest.raises(UserError) as err:
        RunDir.create(tmp_path, "exp1", {**CONFIG, "n": 200}, seed=7)
    assert "exp1" in err.value.problem and "differs in: n)" in err.value.problem
    assert "--name" in err.value.fix and "delete" in err.value.fix
    assert run.config["n"] == 100 and run.read_json("results.json") == {"accuracy": 0.5}


@pytest.mark.parametrize("name", ["", "..", "a/b", ".hidden"])
def test_bad_run_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(UserError):
        RunDir.create(tmp_path, name, CONFIG, seed=0)


def test_open_missing_run(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no run"):
        RunDir.open(tmp_path, "nope")
    RunDir.create(tmp_path, "yes", CONFIG, seed=0)
    assert RunDir.open(tmp_path, "yes").config["n"] == 100


def test_writes_round_trip_atomically(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "exp1", CONFIG, seed=0)
    run.write_json("metrics.json", {"acc": 0.25, "names": ["β"]})
    run.write_text("notes/readme.txt", "hello\n")
    df = pd.DataFrame({"prompt": ["01", "2020-01-01"], "logprob": [-0.1234567890123, float("nan")], "n": [1, 2], "ok": [True, False]})
    run.write_table("answers", df, csv=True)
    run.write_table("empty", pd.DataFrame())

    assert run.read_json("metrics.json") == {"acc": 0.25, "names": ["β"]}
    assert run.path("notes/readme.txt").read_text() == "hello\n" and run.exists("notes/readme.txt")
    back = run.read_table("answers")
    assert back["prompt"].tolist() == ["01", "2020-01-01"]  # strings are not re-typed
    assert back["n"].tolist() == [1, 2] and back["ok"].tolist() == [True, False]
    assert back["logprob"][0] == pytest.approx(-0.1234567890123, abs=1e-13) and pd.isna(back["logprob"][1])
    assert pd.read_csv(run.path("answers.csv"))["n"].tolist() == [1, 2]
    assert run.read_table("empty").empty

    run.write_json("metrics.json", {"acc": 0.5})  # overwrite in place
    assert run.read_json("metrics.json") == {"acc": 0.5}
    leftovers = [p.name for p in run.folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]
    assert leftovers == []
    with pytest.raises(ValueError):
        run.path("../escape.json")


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a.json"
    atomic_write_text(target, "old")

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_stages_resume(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "exp1", CONFIG, seed=0)
    assert not run.stage_done("generate") and run.stages() == {}
    run.mark_done("generate", {"rows": 100, "model_calls": 100})
    run.mark_done("score", {})

    resumed = RunDir.create(tmp_path, "exp1", CONFIG, seed=0)
    assert resumed.stage_done("generate") and resumed.stage_done("score") and not resumed.stage_done("plot")
    assert resumed.stages()["generate"]["rows"] == 100 and "finished_utc" in resumed.stages()["generate"]
    assert not [p for p in run.folder.iterdir() if p.name.endswith(".tmp")]
