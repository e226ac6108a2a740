"""Typed dataclass configs: field docstrings become `--help`, presets come from TOML, and the
resolved config is what every run saves beside its results.

A field's documentation is the string literal right under it (as in sparsify/simple_parsing)::

    @dataclass
    class EvalConfig:
        n_items: int = 100
        \"\"\"Items per task.\"\"\"
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import textwrap
import tomllib
import types
import typing
from collections.abc import Collection
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from introspect_mi.errors import UserError

T = TypeVar("T")


@cache
def field_docs(cls: type) -> dict[str, str]:
    """{field name: the docstring under it} for a dataclass (and its dataclass bases)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(the element type argparse should parse, whether the field takes a list)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    if origin in (tuple, list):
        return typing.get_args(tp)[0], True
    return tp, False


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One `--flag` per field; defaults stay unset so presets can fill them first."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        tp, many = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        shown = " ".join(map(str, default)) if isinstance(default, (tuple, list)) else default
        help_text = f"{docs.get(f.name, '')} (default: {shown})".replace("%", "%%")
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, type=tp, nargs="+" if many else None, default=None, help=help_text, metavar=f.name.upper())


def load_preset(path: Path, section: str, known_sections: Collection[str] | None = None) -> dict[str, Any]:
    """The `[section]` table of a TOML preset file. A setting outside any section, and (given
    `known_sections`) a section no experiment reads, e.g. a misspelled `[studdy]`, are errors:
    silently ignoring them would run with the defaults the user meant to change."""
    if not path.is_file():
        raise UserError(f"preset file {path} does not exist", "use --preset quick|paper or give a path to a .toml file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid TOML ({exc})", "fix the syntax at the position shown") from None
    known = ", ".join(f"[{s}]" for s in sorted(known_sections or [section]))
    loose = sorted(k for k, v in data.items() if not isinstance(v, dict))
    if loose:
        raise UserError(f"setting(s) {', '.join(loose)} in {path} are outside any [section]",
                        f"put each under the section of the experiment it configures ({known})")
    unknown = sorted(set(data) - set(known_sections)) if known_sections is not None else []
    if unknown:
        raise UserError(f"unknown section(s) {', '.join(f'[{s}]' for s in unknown)} in {path}", f"known sections: {known}")
    return dict(data.get(section, {}))


def check_types(cls: type, preset: dict[str, Any]) -> None:
    """Each preset value has its field's type (TOML has no tuples: a list stands for one; an int
    is a float): `train_tasks = "countries"` must not become a tuple of characters, and
    `eval_items = "50"` must fail here, naming the field, not deep inside a run."""
    hints = typing.get_type_hints(cls)
    for key, value in preset.items():
        if not _has_type(value, hints[key]):
            raise UserError(
                f"setting {key} = {_toml(value)} is {_describe_value(value)}, but {cls.__name__}.{key} takes {_describe(hints[key])}",
                f"write it as {key} = {_example(value, hints[key])}",
            )


def _has_type(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, arm) for arm in typing.get_args(tp))
    if origin in (tuple, list):
        (arm, *_) = typing.get_args(tp)
        return isinstance(value, (list, tuple)) and all(_has_type(v, arm) for v in value)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    return True  # a type TOML cannot spell: left to the dataclass


def _describe(tp: Any) -> str:
    """`tp` in words: "an int", "a list of str", "a float or none"."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arm) for arm in typing.get_args(tp) if arm is not type(None))
    if origin in (tuple, list):
        return f"a list of {getattr(typing.get_args(tp)[0], '__name__', 'values')}"
    name = getattr(tp, "__name__", str(tp))
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _describe_value(value: Any) -> str:
    return "a list" if isinstance(value, (list, tuple)) else _describe(type(value))


def _toml(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _example(value: Any, tp: Any) -> str:
    """The value as the field wants it where that is unambiguous ("50" → 50, "x" → ["x"]), else a placeholder."""
    base, many = _base_type(tp)
    if many and _has_type(value, base):
        return _toml([value])
    if not many and isinstance(value, str) and base in (int, float):
        try:
            return _toml(base(value))
        except ValueError:
            pass
    return f"<{_describe(tp).split(' ', 1)[1]}>"


def build(cls: type[T], preset: dict[str, Any], args: argparse.Namespace | None = None) -> T:
    """Defaults < preset < command-line flags; unknown preset keys and mistyped values are errors."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(preset) - names)
    if unknown:
        raise UserError(f"unknown setting(s) {', '.join(unknown)} for {cls.__name__}", f"known settings: {', '.join(sorted(names))}")
    check_types(cls, preset)
    values = dict(preset)
    if args is not None:
        values.update({k: v for k, v in vars(args).items() if k in names and v is not None})
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if isinstance(value, list) and _base_type(hints[key])[1]:
            values[key] = tuple(value)
    return cls(**values)


def to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready resolved config."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
