"""The run store: answer cache (round trips, crash repair, writers killed inside a write) and run folders."""

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
from introspect_mi import store
from introspect_mi.store import AnswerCache, RunDir, atomic_write_text, decoding_key, prompt_key
from tests.race import Race

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
    assert [json.loads(line) for line in lines] == [{"batch": [  # one line per batch
        {"k": prompt_key("a"), "prompt": "a", "result": "alpha"},
        {"k": prompt_key("b"), "prompt": "b", "result": {"text": "β", "logprobs": [-0.5, -1.25]}},
    ]}]
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
    whole = AnswerCache._batch_line([("c", 3)])
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
    for item in [("a", 1), ("b", 2), ("c", 3)]:
        cache.put_many([item])
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
    cache.put_many([("c", 3)])
    text = cache.path.read_text().replace(prompt_key("a"), "0" * 32)  # one bad record spoils its whole batch
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


_TORN_WRITER = """
import os, resource, sys, time
from pathlib import Path
from introspect_mi.store import AnswerCache
cache = AnswerCache(Path(sys.argv[1]), sys.argv[2], {"temperature": 0.0})
whole, sig = int(sys.argv[3]), int(sys.argv[4])
def rows(b):
    return [(f"w0 b{b} r{i}", {"batch": b, "row": i, "pad": "x" * 500}) for i in range(50)]
for b in range(whole):
    cache.put_many(rows(b))
# The next batch (~28 kB) may grow the file by 3 pages only, so the kernel writes a prefix and
# returns a short count, as when a signal lands inside a multi-page write; then the signal lands.
size = cache.path.stat().st_size if cache.path.exists() else 0
print(size, flush=True)
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 3 * 4096 + 100, resource.RLIM_INFINITY))
real_write = os.write
def write_then_die(fd, data):
    n = real_write(fd, data)
    if n < len(data):
        os.kill(os.getpid(), sig)
        time.sleep(30)
    return n
os.write = write_then_die
cache.put_many(rows(whole))
sys.exit("no short write happened")
"""


def _killed_inside_a_write(tmp_path: Path, whole: int, sig: signal.Signals = signal.SIGKILL) -> tuple[Path, int]:
    """Run a writer that appends `whole` batches, then dies by `sig` inside the next batch's write.

    Returns the cache file and its size before the torn write.
    """
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    args = [sys.executable, "-c", _TORN_WRITER, str(tmp_path), FP, str(whole), str(int(sig))]
    proc = subprocess.run(args, cwd=PROJECT_ROOT, env=env, capture_output=True, timeout=300)
    assert proc.returncode == -sig, proc.stderr.decode()
    data = tmp_path / FP / f"{decoding_key({'temperature': 0.0})}.jsonl"
    before = int(proc.stdout)
    assert data.stat().st_size == before + 3 * 4096 + 100  # the prefix the kernel wrote before the kill
    return data, before


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=lambda s: s.name)
def test_sigkill_mid_append_leaves_whole_batches(tmp_path: Path, sig: signal.Signals) -> None:
    """A writer killed inside a multi-page write loses that batch whole, never part of it."""
    data, whole_size = _killed_inside_a_write(tmp_path, whole=3, sig=sig)
    cache = AnswerCache(tmp_path, FP, {"temperature": 0.0})
    assert len(cache) == 150
    rows = _batches(cache, {b: [f"w0 b{b} r{i}" for i in range(50)] for b in range(4)})
    assert rows == {b: set(range(50)) for b in range(3)}  # batch 3 is gone whole
    assert data.stat().st_size == whole_size and data.read_bytes().endswith(b"\n")

    cache.put_many([("after", "ok")])
    assert AnswerCache(tmp_path, FP, {"temperature": 0.0}).get_many(["after"]) == {"after": "ok"}


def test_sigkill_at_a_random_moment_leaves_whole_batches(tmp_path: Path) -> None:
    proc = _writer(tmp_path, writer=0, batches=-1)  # runs until killed
    data = tmp_path / FP / f"{decoding_key({'temperature': 0.0})}.jsonl"
    try:
        deadline = time.monotonic() + 300  # a loaded machine can take long to start a Python
        while not (data.exists() and data.stat().st_size > 0):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the writer never wrote"
            time.sleep(0.01)
        time.sleep(0.5)
    finally:
        proc.kill()  # SIGKILL, also when the test fails: the writer never outlives it
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


def test_append_beside_a_killed_writer_trims_its_fragment(tmp_path: Path) -> None:
    """A process with the cache open appends after another was killed mid-write: the file stays readable."""
    survivor = AnswerCache(tmp_path, FP, {"temperature": 0.0})
    survivor.put_many([("s0", 0)])
    data, _ = _killed_inside_a_write(tmp_path, whole=1)
    survivor.put_many([("s1", 1)])  # would glue onto the killed writer's fragment
    survivor.put_many([("s2", 2)])

    reopened = AnswerCache(tmp_path, FP, {"temperature": 0.0})  # no "not a valid cache record" error
    assert reopened.get_many(["s0", "s1", "s2"]) == {"s0": 0, "s1": 1, "s2": 2}
    assert len(reopened) == 3 + 50  # the killed writer's whole batch 0 too, nothing of its torn batch 1
    lines = data.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1])


def test_files_with_one_record_per_line_stay_readable(tmp_path: Path) -> None:
    """Cache files written before batches were framed: every whole line is a record."""
    cache = AnswerCache(tmp_path, FP, GREEDY)
    old = [{"k": prompt_key(p), "prompt": p, "result": r} for p, r in [("a", 1), ("b", {"t": "β"}), ("a", 3)]]
    torn = json.dumps({"k": prompt_key("c"), "prompt": "c", "result": 4}).encode()[:20]
    cache.path.write_bytes(b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in old) + torn)

    again = AnswerCache(tmp_path, FP, GREEDY)
    assert again.get_many(["a", "b", "c"]) == {"a": 3, "b": {"t": "β"}}
    again.put_many([("c", 5), ("d", 6)])
    assert AnswerCache(tmp_path, FP, GREEDY).get_many(["a", "b", "c", "d"]) == {"a": 3, "b": {"t": "β"}, "c": 5, "d": 6}


def test_two_processes_appending_do_not_interleave(tmp_path: Path) -> None:
    procs = [_writer(tmp_path, writer=w, batches=20) for w in (1, 2)]
    try:
        for proc in procs:
            assert proc.wait(timeout=300) == 0, proc.stderr.read().decode() if proc.stderr else ""
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
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
    assert leftovers == [RunDir.LOCK]  # the run's lock file, no temp file
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


def test_two_creates_of_one_run_with_different_configs_never_both_succeed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Check-then-write: the second create runs between the first's check and its write of config.json."""
    real = store.provenance

    def paused_provenance(seed: int) -> dict:
        race.pause()  # after the first create found no config.json, before it writes one
        return real(seed)

    monkeypatch.setattr(store, "provenance", paused_provenance)
    race = Race(lambda: RunDir.create(tmp_path, "exp1", {**CONFIG, "n": 1}, seed=0),
                lambda: RunDir.create(tmp_path, "exp1", {**CONFIG, "n": 2}, seed=0))
    outcome = race.run()
    assert isinstance(outcome["first"], RunDir), outcome
    assert isinstance(outcome["second"], UserError) and "differs in: n" in outcome["second"].problem
    assert RunDir.open(tmp_path, "exp1").config["n"] == 1


def test_stages_marked_at_once_are_all_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read-modify-write of stages.json: the second mark_done runs between the first's read and its write."""
    run = RunDir.create(tmp_path, "exp1", CONFIG, seed=0)
    real = RunDir.stages

    def paused_stages(self: RunDir) -> dict:
        stages = real(self)
        race.pause()
        return stages

    monkeypatch.setattr(RunDir, "stages", paused_stages)
    race = Race(lambda: run.mark_done("a", {"rows": 1}), lambda: RunDir(run.folder).mark_done("b", {"rows": 2}))
    assert race.run() == {"first": None, "second": None}
    monkeypatch.undo()
    assert {k: v["rows"] for k, v in run.stages().items()} == {"a": 1, "b": 2}


def test_stale_temp_files_are_removed_when_a_run_or_cache_opens(tmp_path: Path) -> None:
    """Temp files of atomic writes that a kill interrupted (nobody holds their lock) go, however recent."""
    run = RunDir.create(tmp_path, "exp1", CONFIG, seed=0)
    cache = AnswerCache(tmp_path / "cache", FP, GREEDY)
    stale = [run.folder / ".metrics.json.k1l2.tmp", run.folder / "sub" / ".t.jsonl.x9.tmp", cache.folder / ".model.json.ab.tmp"]
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"partial")

    RunDir.create(tmp_path, "exp1", CONFIG, seed=0)
    AnswerCache(tmp_path / "cache", FP, GREEDY)
    assert [p for p in stale if p.exists()] == []
