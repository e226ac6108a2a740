"""`introspect-mi`: one command with subcommands.

Bad input (a wrong path, a corrupt file, an unknown name, a mismatched adapter) prints one line
`error: <problem> — <fix>` and exits with status 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from introspect_mi.errors import UserError


def _cmd_models_prepare(args: argparse.Namespace) -> None:
    from introspect_mi import embedded

    for name in args.names or list(embedded.EMBEDDED):
        embedded.prepare(name, force=args.force)


def _cmd_models_list(args: argparse.Namespace) -> None:
    from introspect_mi import embedded
    from introspect_mi.paths import checkpoints_dir

    print(f"{'name':<24} {'state':<10} {'size':>9}  description")
    for m in embedded.EMBEDDED.values():
        folder = embedded.checkpoint_dir(m.name)
        prepared = embedded.is_prepared(m.name)
        size = f"{embedded.folder_bytes(folder) / 1e6:,.0f} MB" if prepared else "-"
        print(f"{m.name:<24} {'prepared' if prepared else 'embedded':<10} {size:>9}  {m.description}")
    base = checkpoints_dir() / "base"
    others = sorted(p for p in base.glob("*") if p.is_dir() and not p.name.startswith(".") and p.name not in embedded.EMBEDDED) if base.is_dir() else []
    for folder in others:
        print(f"{folder.name:<24} {'converted':<10} {embedded.folder_bytes(folder) / 1e6:>6,.0f} MB  {folder}")
    if not all(embedded.is_prepared(n) for n in embedded.EMBEDDED):
        print("\nRun `introspect-mi models prepare` to convert the embedded models (once, ~1 min).")


def _cmd_generate(args: argparse.Namespace) -> None:
    from introspect_mi.generate import user_prompt
    from introspect_mi.inference import Engine
    from introspect_mi.models import load

    handle = load(args.model, adapter=args.adapter, device=args.device)
    prompts = [user_prompt(handle, p, system=args.system) for p in args.prompts]
    answers = Engine(handle, progress=False).greedy(prompts, args.max_new_tokens)
    for answer in answers:
        print(answer)


def _cmd_explore(args: argparse.Namespace) -> None:
    from introspect_mi.explorer import serve, write_static

    if args.static:
        print(write_static(args.run_dir, args.static))
    else:
        serve(args.run_dir, port=args.port, open_browser=not args.no_browser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="introspect-mi",
        description="Mechanistic analysis of introspection (self-prediction) in language models.",
        epilog="Studies: python -m experiments.<study> --help. Error messages and their fixes: docs/errors.md.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = sub.add_parser("models", help="prepare and list models").add_subparsers(dest="models_command", required=True, metavar="ACTION")
    prep = models.add_parser("prepare", help="convert the embedded GGUF models to safetensors once (idempotent)")
    prep.add_argument("names", nargs="*", help="embedded model names (default: all)")
    prep.add_argument("--force", action="store_true", help="convert again even if already prepared")
    prep.set_defaults(func=_cmd_models_prepare)
    models.add_parser("list", help="show embedded and prepared models with sizes").set_defaults(func=_cmd_models_list)

    gen = sub.add_parser("generate", help="greedy (T=0) answer to a prompt through the model's prompt format")
    gen.add_argument("prompts", nargs="+", help="one or more user prompts (batched)")
    gen.add_argument("--model", default="smollm2-135m-instruct", help="embedded name, HF checkpoint folder or .gguf file (default: %(default)s)")
    gen.add_argument("--adapter", default=None, help="LoRA adapter folder (peft format), merged into the weights")
    gen.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if available, else cpu)")
    gen.add_argument("--system", default="", help="system message (default: empty, as in the paper)")
    gen.add_argument("--max-new-tokens", type=int, default=32, help="answer length limit in tokens (default: %(default)s)")
    gen.set_defaults(func=_cmd_generate)

    exp = sub.add_parser("explore", help="interactive explorer of a capture run (tokens, norms, cosine, logit lens)")
    exp.add_argument("run_dir", metavar="RUN_DIR", help="run folder with <label>/explorer.json (from experiments.capture)")
    exp.add_argument("--static", metavar="OUT.html", default=None, help="write the page as one self-contained HTML file instead of serving it")
    exp.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default: %(default)s; 0: any free port)")
    exp.add_argument("--no-browser", action="store_true", help="do not open a browser; just print the URL")
    exp.set_defaults(func=_cmd_explore)
    return parser


def run_cli(func, args: argparse.Namespace) -> int:
    """Run a command; user errors become one line on stderr and exit status 2."""
    try:
        func(args)
    except UserError as exc:
        if args.debug:
            raise
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or args.debug:
            raise
        print(f"error: no space left on the device while writing {_written_path(exc)} — free disk space, then rerun the same "
              "command (finished work is kept: every result is written atomically)", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


def _written_path(exc: OSError) -> str:
    """The file a disk-full error happened on: the error's own filename, else the innermost open
    file being written (a write through a file object raises without a filename), else a path local."""
    if exc.filename:
        return str(exc.filename)
    tb, frames = exc.__traceback__, []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        values = list(frame.f_locals.values())
        for value in values:
            if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str):
                return value.name
        for value in values:
            if isinstance(value, Path):
                return str(value)
    return "a file"


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    return run_cli(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
