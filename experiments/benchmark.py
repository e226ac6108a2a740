"""Benchmarks, one subcommand each: `python -m experiments.benchmark <what> [options]`.

    inference   naive per-prompt generate vs the batched Engine vs a plain batched forward
    finetune    LoRA training tokens/s, logits only where the loss is vs full-sequence logits
    patching    layer × position patching sweep, batched engine vs one forward per cell; attribution
    steering    steering (D) and concept injection (E) entering at the steered layer vs from the embeddings (same answers)
    capture     capture to disk vs a plain batched forward vs per-prompt run_with_cache; peak memory
    probing     probe fitting in one process vs forked workers on the study's stores (same tables)
    gpu         all of the above on a Llama-3-8B-shaped random model in bf16, engine agreement, placement
    stages      per-stage wall time, CPU time and peak memory of a finished `make study` (its run folders)

Each benchmark lives in its own module (`experiments/bench_<what>.py`) exposing
`add_parser(subparsers)`, which registers its subcommand and sets `run` to the function that
executes it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BENCHMARKS = ("bench_inference", "bench_finetune", "bench_patching", "bench_steering", "bench_capture", "bench_probing", "bench_gpu", "bench_stages")  # modules under experiments/, one subcommand each


def build_parser() -> argparse.ArgumentParser:
    """The dispatcher's parser, one subparser per benchmark module."""
    import importlib

    parser = argparse.ArgumentParser(prog="python -m experiments.benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name in BENCHMARKS:
        importlib.import_module(f"experiments.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one benchmark; a user error is one line and exit status 2."""
    from introspect_mi.cli import run_cli

    args = build_parser().parse_args(argv)
    return run_cli(args.run, args)


if __name__ == "__main__":
    sys.exit(main())
