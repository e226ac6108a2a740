"""Typed configs: docstrings become --help, precedence is defaults < preset < flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest

from introspect_mi import config as cfg
from introspect_mi.errors import UserError


@dataclass(frozen=True)
class Demo:
    tasks: tuple[str, ...] = ("animals",)
    """Tasks to run."""
    limit: int = 10
    """Items per task."""
    verbose: bool = False
    """Say more."""
    name: str = ""


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser, Demo)
    return parser.parse_args(argv)


def test_field_docstrings_become_help() -> None:
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser, Demo)
    text = parser.format_help()
    assert "Items per task. (default: 10)" in text and "Tasks to run." in text
    assert cfg.field_docs(Demo) == {"tasks": "Tasks to run.", "limit": "Items per task.", "verbose": "Say more."}


def test_flags_override_preset_override_defaults() -> None:
    assert cfg.build(Demo, {}, parse([])) == Demo()
    assert cfg.build(Demo, {"limit": 5, "tasks": ["a", "b"]}, parse([])) == Demo(tasks=("a", "b"), limit=5)
    assert cfg.build(Demo, {"limit": 5}, parse(["--limit", "7", "--tasks", "x", "--verbose"])) == Demo(tasks=("x",), limit=7, verbose=True)


def test_unknown_preset_key_names_the_known_ones() -> None:
    with pytest.raises(UserError, match="unknown setting.*limt.*known settings: limit"):
        cfg.build(Demo, {"limt": 3})


def test_preset_file_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        cfg.load_preset(tmp_path / "nope.toml", "evaluate")
    bad = tmp_path / "bad.toml"
    bad.write_text("[evaluate\nlimit = 3")
    with pytest.raises(UserError, match="not valid TOML"):
        cfg.load_preset(bad, "evaluate")
    good = tmp_path / "good.toml"
    good.write_text("[evaluate]\nlimit = 3\n[other]\nx = 1\n")
    assert cfg.load_preset(good, "evaluate") == {"limit": 3}


def test_to_dict_is_json_ready() -> None:
    assert cfg.to_dict(Demo()) == {"tasks": ["animals"], "limit": 10, "verbose": False, "name": ""}
