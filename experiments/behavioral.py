"""The behavioural study on local weights (Binder et al. 2024, PROTOCOL.md).

    python -m experiments.behavioral --preset quick          the whole study (below)
    python -m experiments.behavioral evaluate --preset quick  one evaluation of given models
    python -m experiments.behavioral seeds --preset quick --seeds 3    the endpoint over finetune seeds
    python -m experiments.behavioral scaling --preset quick            accuracy vs training-set size
    (seeds and scaling: experiments/behavioral_replicates.py; not part of `make study`)

The study, every stage cached or resumable: M1's object-level answers on the training tasks →
self-prediction data (plus, with --object-replay, M1's own object-level answers) → LoRA-finetune
M1 (self; with --self-rounds N, N rounds, each relabelled with the previous round's behaviour:
experiments/behavioral_training.py) → self-trained M1's object answers → cross data (the same questions labelled with
self-trained M1's behaviour; replay of the same items with M2's own answers) → finetune M2
(cross) → evaluate on held-out tasks (untrained M1 on itself, self-trained M1 on itself,
cross-trained M2 on self-trained M1; the input-only control, which reads only P's text
(probes/input_only.py), trained on cross's labels and, as an upper bound, cross-validated within
the held-out pairs; mode baselines, CIs) → the primary endpoint (self − cross on
the same pairs, paired and item-clustered, declared in experiments/behavioral_endpoint.py;
printed first, the rest is exploratory) → calibration (CIs over prompts, noise floor) → untrained vs
self-trained M1 on the training tasks' val items (did the finetune work in distribution?) →
behaviour change (finetune self-trained M1 on M2's object answers, then ask whether its
self-predictions follow its new or its old behaviour). Results: runs/<name>/report.html,
metrics.json and a printed summary.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from experiments.behavioral_config import EvalConfig, ScalingConfig, SeedsConfig, StudyConfig
from experiments.common import add_common_arguments, load_preset, run_main
from introspect_mi import config as cfg


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.behavioral", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    cfg.add_arguments(parser, StudyConfig)
    parser.set_defaults(func=_run_study)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    ev = sub.add_parser("evaluate", help="predictors' hypothetical answers vs a target's behaviour")
    add_common_arguments(ev)
    cfg.add_arguments(ev, EvalConfig)
    ev.set_defaults(func=_run_evaluate)
    for name, config, text in (("seeds", SeedsConfig, "the study's self vs cross endpoint over N finetune seeds (mean, spread)"),
                               ("scaling", ScalingConfig, "self, cross and input-only accuracy vs training-set size, with a figure")):
        p = sub.add_parser(name, help=text)
        add_common_arguments(p)
        cfg.add_arguments(p, config)
        p.set_defaults(func=_run_replicates, config=config, command=name)
    return parser


def _run_evaluate(args: argparse.Namespace) -> None:
    from experiments.behavioral_eval import evaluate

    evaluate(cfg.build(EvalConfig, load_preset(args.preset, "evaluate"), args))


def _run_study(args: argparse.Namespace) -> None:
    from experiments.behavioral_study import study

    study(cfg.build(StudyConfig, load_preset(args.preset, "study"), args))


def _run_replicates(args: argparse.Namespace) -> None:
    from experiments import behavioral_replicates

    getattr(behavioral_replicates, args.command)(cfg.build(args.config, load_preset(args.preset, "study"), args))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
