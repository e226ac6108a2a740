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
import textwrap
import tomllib
import types
import typing
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


def load_preset(path: Path, section: str) -> dict[str, Any]:
    """The `[section]` table of a TOML preset file."""
    if not path.is_file():
        raise UserError(f"preset file {path} does not exist", "use --preset quick|paper or give a path to a .toml file")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path} is not valid TOML ({exc})", "fix the syntax at the position shown") from None
    return dict(data.get(section, {}))


def build(cls: type[T], preset: dict[str, Any], args: argparse.Namespace | None = None) -> T:
    """Defaults < preset < command-line flags; unknown preset keys are an error."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(preset) - names)
    if unknown:
        raise UserError(f"unknown setting(s) {', '.join(unknown)} for {cls.__name__}", f"known settings: {', '.join(sorted(names))}")
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
