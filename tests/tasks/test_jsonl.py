"""The shared JSONL reader: file:line errors for every kind of bad line."""

from __future__ import annotations

from pathlib import Path

import pytest

from introspect_mi.errors import UserError
from introspect_mi.tasks import TaskFormatError
from introspect_mi.tasks.jsonl import read_jsonl

from .conftest import WriteJsonl, error_at


def test_error_message_shape() -> None:
    err = TaskFormatError("f.jsonl", 3, "bad thing", "do this")
    assert str(err) == "f.jsonl:3: bad thing — do this" and isinstance(err, ValueError)
    assert isinstance(err, UserError) and (err.path, err.line, err.fix) == ("f.jsonl", 3, "do this")
    assert str(TaskFormatError("f.jsonl", None, "gone", "look")) == "f.jsonl: gone — look"


def test_blank_lines_are_skipped_and_lines_counted(tmp_path: Path, write_jsonl: WriteJsonl) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [{"x": "1"}, "", {"x": "2"}])
    assert [(r.line, r.data) for r in read_jsonl(path)] == [(1, {"x": "1"}), (3, {"x": "2"})]


@pytest.mark.parametrize("bad, problem", [
    ('{"x": ', "invalid JSON"),
    ('["x"]', "expected a JSON object, got list"),
    ("42", "expected a JSON object, got int"),
])
def test_bad_lines_raise_with_file_and_line(tmp_path: Path, write_jsonl: WriteJsonl, bad: str,
                                            problem: str) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [{"x": "1"}, bad])
    with pytest.raises(TaskFormatError, match=error_at(path, 2)) as info:
        list(read_jsonl(path))
    assert problem in str(info.value) and info.value.line == 2


def test_field_checks(tmp_path: Path, write_jsonl: WriteJsonl) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [{"s": 1, "e": "  ", "ok": "v", "n": None}])
    record = next(read_jsonl(path))
    assert record.text("ok") == "v" and record.optional_text("n") is None
    for key, problem in (("s", "is int, not a string"), ("e", "is empty"),
                         ("missing", 'missing field "missing"')):
        with pytest.raises(TaskFormatError, match=error_at(path, 1)) as info:
            record.text(key)
        assert problem in str(info.value)
    with pytest.raises(TaskFormatError, match=r"unknown field.*'n'.*use only ok, s, e"):
        record.only_fields(("ok", "s", "e"))


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(TaskFormatError, match=error_at(path, None)):
        list(read_jsonl(path))
