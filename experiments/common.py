"""What every experiment entry point shares: presets, config flags, run folders, errors."""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from introspect_mi.errors import UserError

CONFIGS = Path(__file__).resolve().parent / "configs"


def preset_path(preset: str) -> Path:
    """`quick` → experiments/configs/quick.toml; anything else is a path to a .toml file."""
    return CONFIGS / f"{preset}.toml" if (CONFIGS / f"{preset}.toml").is_file() else Path(preset)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="quick", help="quick | paper | path/to/preset.toml (default: quick)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")


def run_main(func: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    """Run an experiment: user errors are one line and exit status 2; Ctrl-C keeps finished work."""
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices, not results
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from introspect_mi.cli import run_cli

    return run_cli(func, args)
