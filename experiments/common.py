"""What every experiment entry point shares: presets, config flags, run folders, errors."""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


CONFIGS = Path(__file__).resolve().parent / "configs"


PRESET_SECTIONS = ("evaluate", "study", "capture", "sae_features", "probing", "patching")
"""The `[section]`s a preset may hold: one per experiment that reads one (finetune_sweep and the
mechanistic experiments also read `[study]`)."""


def preset_path(preset: str) -> Path:
    """`quick` → experiments/configs/quick.toml; anything else is a path to a .toml file."""
    return CONFIGS / f"{preset}.toml" if (CONFIGS / f"{preset}.toml").is_file() else Path(preset)


def load_preset(preset: str, section: str) -> dict[str, Any]:
    """The preset's `[section]`; a section that no experiment reads (a typo) is an error."""
    from introspect_mi import config as cfg

    return cfg.load_preset(preset_path(preset), section, PRESET_SECTIONS)


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


def config_main(argv: Sequence[str] | None, *, prog: str, doc: str | None, config: type, section: str,
                run: Callable[[Any, str], Any]) -> int:
    """The entry point of a one-config experiment: `--preset` + one flag per config field (help
    from the field docstrings); defaults < the preset's `[section]` < flags; then `run(config, preset)`."""
    from introspect_mi import config as cfg

    args = config_parser(prog=prog, doc=doc, config=config).parse_args(argv)
    return run_main(lambda a: run(cfg.build(config, load_preset(a.preset, section), a), a.preset), args)


def config_parser(*, prog: str, doc: str | None, config: type) -> argparse.ArgumentParser:
    """`--preset`, `--debug` and one flag per field of the `config` dataclass (help from its docstrings)."""
    from introspect_mi import config as cfg

    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    cfg.add_arguments(parser, config)
    return parser
