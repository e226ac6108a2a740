"""The run store: an on-disk answer cache for model calls, and run folders with atomic writes.

`AnswerCache` keeps every model call's result, keyed by (model fingerprint incl. adapter,
rendered prompt, decoding settings), in append-only JSONL files, so a rerun or a resumed run
makes no model calls for work already done. `RunDir` is one `runs/<name>/` folder: its
resolved config, provenance, results (every file written atomically) and the pipeline stages
already finished.

Crash safety, as guaranteed (tests/test_store.py kills writers inside a write to check it):

- A `put_many` batch is one JSON line (`{"batch": [records]}`) appended under an exclusive
  `flock`, then fsynced. A writer killed inside the write (SIGKILL or SIGTERM can stop a
  multi-page write after a prefix: a short write) leaves a prefix without its final newline, a
  partial line; a batch therefore counts whole or not at all. The partial line is dropped, and
  the file truncated, when the cache next opens, and before every append (under the lock), so a
  process appending beside a killed one never glues its batch onto the fragment.
- Old files with one record per line stay readable; each such line is a record of its own.
- `RunDir.create` and `RunDir.mark_done` hold the run folder's lock (`<run>/.lock`): two
  processes never both create a run, nor lose each other's finished stages.
- Temp files of atomic writes left by killed writers are removed when a run folder or cache
  folder opens, once no live process holds them (see `introspect_mi.durable`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from introspect_mi.durable import atomic_write_bytes, atomic_write_text, file_lock, remove_stale_temps
from introspect_mi.errors import UserError
from introspect_mi.provenance import provenance, utc_now

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

KEY_CHARS = 32  # hex digits of sha256(prompt) stored as "k"
DECODING_KEY_CHARS = 16
TAIL_CHUNK = 1 << 16  # bytes read at a time when looking back for the last newline


# --- answer cache ----------------------------------------------------------------------------


def _write_once_json(path: Path, obj: Any) -> None:
    if not path.exists():
        atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def prompt_key(prompt: str) -> str:
    """The "k" of a cache record: sha256 of the prompt, shortened."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:KEY_CHARS]


def decoding_key(decoding: Mapping[str, Any]) -> str:
    """Short sha256 of the canonical JSON (sorted keys) of the decoding settings."""
    canonical = json.dumps(dict(decoding), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:DECODING_KEY_CHARS]


def safe_name(fingerprint: str) -> str:
    """A folder name for a fingerprint: itself when already safe, else sanitized plus a hash."""
    if re.fullmatch(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,99}", fingerprint):
        return fingerprint
    cleaned = re.sub(r"[^A-Za-z0-9._+-]", "_", fingerprint)[:60].strip(".")
    return f"{cleaned}-{hashlib.sha256(fingerprint.encode('utf-8')).hexdigest()[:12]}"


class AnswerCache:
    """Results of model calls for one (model fingerprint, decoding settings), kept on disk.

    Files: `root/<safe fingerprint>/<decoding key>.jsonl` (one line per `put_many` batch,
    `{"batch": [record, ...]}`, a record being `{"k": sha256(prompt)[:32], "prompt": ..., "result": ...}`;
    files written before batches were framed hold one record per line, read as they are),
    `<decoding key>.decoding.json` beside it (the settings that file holds), `model.json` (the
    fingerprint) and a `.lock` per JSONL. Duplicate prompts: the last record wins. Counters:
    `hits` and `misses` count the unique prompts looked up by `missing()`; `writes` counts the
    records written.
    """

    def __init__(self, root: Path, fingerprint: str, decoding: Mapping[str, Any]) -> None:
        self.fingerprint = fingerprint
        self.decoding = dict(decoding)
        self.folder = Path(root) / safe_name(fingerprint)
        key = decoding_key(self.decoding)
        self.path = self.folder / f"{key}.jsonl"
        self.lock_path = self.folder / f"{key}.lock"
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self._index: dict[str, Any] = {}

        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.folder)
        model_json = self.folder / "model.json"
        _write_once_json(model_json, {"fingerprint": fingerprint})
        recorded = _read_json_file(model_json).get("fingerprint")
        if recorded != fingerprint:
            raise UserError(
                f"{model_json} records fingerprint {recorded!r}, not {fingerprint!r}",
                "the cache folder is damaged or shared by mistake; delete it (it is a cache)",
            )
        _write_once_json(self.folder / f"{key}.decoding.json", self.decoding)
        with self._locked():
            self._load()

    # lookups

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, prompt: object) -> bool:
        return prompt in self._index

    def get_many(self, prompts: Sequence[str]) -> dict[str, Any]:
        """prompt → result for the prompts present (absent ones are left out)."""
        return {p: self._index[p] for p in prompts if p in self._index}

    def missing(self, prompts: Sequence[str]) -> list[str]:
        """The prompts without a result, in input order, each once. Updates `hits`/`misses`."""
        unique = list(dict.fromkeys(prompts))
        todo = [p for p in unique if p not in self._index]
        self.misses += len(todo)
        self.hits += len(unique) - len(todo)
        return todo

    # writes

    def put_many(self, items: Sequence[tuple[str, Any]]) -> None:
        """Append one call's results as one line + fsync, so the batch counts whole or not at all."""
        items = list(items)
        if not items:
            return
        data = self._batch_line(items)
        with self._locked():
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                start = self._trim_partial_tail(fd)
                try:
                    written = os.write(fd, data)
                    while written < len(data):  # short write (rare on regular files): finish under the lock
                        written += os.write(fd, data[written:])
                    os.fsync(fd)
                except BaseException:
                    os.ftruncate(fd, start)  # never leave a torn batch that a later append would bury
                    raise
            finally:
                os.close(fd)
        for prompt, result in items:
            self._index[prompt] = result
        self.writes += len(items)

    @staticmethod
    def _batch_line(items: Sequence[tuple[str, Any]]) -> bytes:
        """One JSONL line holding the whole batch: a torn write of it is a partial line, never a shorter batch."""
        records = []
        for prompt, result in items:
            if not isinstance(prompt, str):
                raise TypeError(f"cache prompts must be str, not {type(prompt).__name__}")
            records.append({"k": prompt_key(prompt), "prompt": prompt, "result": result})
        return (json.dumps({"batch": records}, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")

    def _trim_partial_tail(self, fd: int) -> int:
        """Cut a partial last line (a writer killed mid-append) off the open file; return the new size.

        Called under the lock before each append, so a batch never lands glued onto a fragment.
        """
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return size
        keep, end = 0, size
        while end > 0:
            begin = max(0, end - TAIL_CHUNK)
            at = os.pread(fd, end - begin, begin).rfind(b"\n")
            if at >= 0:
                keep = begin + at + 1
                break
            end = begin
        log.warning("%s: dropping a partial last batch (%d bytes) left by an interrupted write", self.path, size - keep)
        os.ftruncate(fd, keep)
        return keep

    # loading

    def _locked(self) -> AbstractContextManager[None]:
        """Exclusive flock on the `.lock` file: appends and the open-time repair never interleave."""
        return file_lock(self.lock_path)

    def _load(self) -> None:
        """Read the records; truncate a partial tail (a crashed append); reject corrupt middle lines."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline, else a partial line
        good_end = len(data) - len(tail)
        records: list[tuple[str, Any]] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            batch = _parse_line(line)
            if batch is not None:
                records.extend(batch)
            elif number == len(lines) and not tail:
                good_end -= len(line) + 1  # the last line is unreadable: treat it as a torn append
            else:
                raise UserError(
                    f"{self.path}:{number} is not a valid cache record",
                    "delete the line or the file; it is a cache",
                )
        if good_end < len(data):
            log.warning("%s: dropping a partial last line (%d bytes) left by an interrupted write", self.path, len(data) - good_end)
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())
        for prompt, result in records:
            self._index[prompt] = result


def _parse_line(line: bytes) -> list[tuple[str, Any]] | None:
    """The (prompt, result) pairs of one JSONL line (a batch, or an old one-record line); None if malformed."""
    try:
        obj = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None
    if isinstance(obj, dict) and set(obj) == {"batch"}:
        if not isinstance(obj["batch"], list) or not obj["batch"]:
            return None
        pairs = [p for p in map(_record, obj["batch"]) if p is not None]
        return pairs if len(pairs) == len(obj["batch"]) else None
    pair = _record(obj)
    return None if pair is None else [pair]


def _record(record: Any) -> tuple[str, Any] | None:
    """(prompt, result) of one record, or None if it is not well formed (its key must match its prompt)."""
    if not isinstance(record, dict) or "result" not in record or not isinstance(record.get("prompt"), str):
        return None
    if record.get("k") != prompt_key(record["prompt"]):
        return None
    return record["prompt"], record["result"]


def _read_json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is unreadable ({exc})", "delete it or restore it from a backup") from None


# --- run folders -----------------------------------------------------------------------------


def _canonical_config(config: Mapping[str, Any]) -> str:
    """Pretty JSON with sorted keys; Paths and other non-JSON values are written as strings."""
    return json.dumps(dict(config), indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"


class RunDir:
    """One run folder `runs/<name>/`: config, provenance, results and finished stages.

    Every file goes through `atomic_write_bytes`, so a crash never leaves a torn result, and
    `stages.json` lets a resumed run skip stages already done. Creating or resuming the run and
    recording a stage hold the folder's `.lock`, so concurrent processes neither both start it nor
    lose each other's stages.
    """

    LOCK = ".lock"
    CONFIG = "config.json"
    PROVENANCE = "provenance.json"
    STAGES = "stages.json"

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.name = self.folder.name

    @classmethod
    def create(cls, root: Path, name: str, config: Mapping[str, Any], seed: int) -> RunDir:
        """Create `root/name/` or resume it when it holds the same config (a different one is an error)."""
        if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
            raise UserError(f"invalid run name {name!r}", "use a plain folder name such as `exp1` for --name")
        run = cls(Path(root) / name)
        run.folder.mkdir(parents=True, exist_ok=True)
        with file_lock(run.folder / cls.LOCK):  # the check and the writes below are one step
            remove_stale_temps(run.folder, recursive=True)
            run._create(name, _canonical_config(config), seed)
        return run

    def _create(self, name: str, text: str, seed: int) -> None:
        """Write a new run's provenance and config, or append to a matching one's provenance."""
        if self.exists(self.CONFIG):
            old = self.read_json(self.CONFIG)
            new = json.loads(text)
            if old != new:
                keys = sorted(k for k in set(old) | set(new) if old.get(k, _ABSENT) != new.get(k, _ABSENT)) if isinstance(old, dict) else []
                raise UserError(
                    f"run name {name!r} is taken by a different config in {self.folder} (differs in: {', '.join(keys) or 'everything'})",
                    "pick another --name, or delete that folder to start over (finished results are never overwritten)",
                )
            prov = self.read_json(self.PROVENANCE) if self.exists(self.PROVENANCE) else provenance(seed)
            prov.setdefault("resumed", []).append(provenance(seed))
            self.write_json(self.PROVENANCE, prov)
        else:
            self.write_json(self.PROVENANCE, provenance(seed))
            self.write_text(self.CONFIG, text)  # last: a folder with a config.json is a started run

    @classmethod
    def open(cls, root: Path, name: str) -> RunDir:
        """An existing run, for reading."""
        run = cls(Path(root) / name)
        if not run.exists(cls.CONFIG):
            raise UserError(f"no run {name!r} in {root}", f"list the runs with `ls {root}` or start one with --name {name}")
        return run

    # paths

    def path(self, name: str) -> Path:
        """A file in the run folder (sub-folders allowed; nothing outside it)."""
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ValueError(f"run file names are relative paths inside the run folder, not {name!r}")
        return self.folder / rel

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    @property
    def config(self) -> dict[str, Any]:
        return self.read_json(self.CONFIG)

    # writes (all atomic)

    def write_bytes(self, name: str, data: bytes) -> Path:
        path = self.path(name)
        atomic_write_bytes(path, data)
        return path

    def write_text(self, name: str, text: str) -> Path:
        return self.write_bytes(name, text.encode("utf-8"))

    def write_json(self, name: str, obj: Any) -> Path:
        return self.write_text(name, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")

    def write_table(self, name: str, df: pd.DataFrame, csv: bool = False) -> Path:
        """`<name>.jsonl` (one record per row; floats to 15 significant digits, ±inf become null), plus `.csv` if asked."""
        stem = name.removesuffix(".jsonl")
        path = self.write_text(f"{stem}.jsonl", df.to_json(orient="records", lines=True, double_precision=15, force_ascii=False))
        if csv:
            self.write_text(f"{stem}.csv", df.to_csv(index=False))
        return path

    # reads

    def read_json(self, name: str) -> Any:
        return _read_json_file(self.path(name))

    def read_table(self, name: str) -> pd.DataFrame:
        """A table written by `write_table` (no type guessing: strings stay strings)."""
        import io

        import pandas as pd

        text = self.path(f"{name.removesuffix('.jsonl')}.jsonl").read_text(encoding="utf-8")
        if not text.strip():
            return pd.DataFrame()
        return pd.read_json(io.StringIO(text), lines=True, dtype=False)

    # stages

    def stages(self) -> dict[str, dict[str, Any]]:
        """stage → what `mark_done` recorded, for the stages finished so far."""
        return self.read_json(self.STAGES) if self.exists(self.STAGES) else {}

    def stage_done(self, stage: str) -> bool:
        return stage in self.stages()

    def mark_done(self, stage: str, info: Mapping[str, Any] | None = None) -> None:
        """Record a finished stage (atomic rewrite of stages.json, under the lock), so a resumed run skips it."""
        with file_lock(self.folder / self.LOCK):
            stages = self.stages()
            stages[stage] = {**dict(info or {}), "finished_utc": utc_now()}
            self.write_json(self.STAGES, stages)


_ABSENT = object()
