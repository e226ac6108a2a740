"""Specification of probes.config: documented fields become flags; bad values are UserErrors."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from introspect_mi import config as cfg
from introspect_mi.errors import UserError
from probes.config import ProbeConfig


def test_every_field_is_documented_and_parsed_from_flags() -> None:
    docs = cfg.field_docs(ProbeConfig)
    assert set(docs) == {f.name for f in dataclasses.fields(ProbeConfig)} and all(docs.values())
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser, ProbeConfig)
    built = cfg.build(ProbeConfig, {"folds": 3}, parser.parse_args(["--c-grid", "0.1", "1", "--seed", "2"]))
    assert built == ProbeConfig(c_grid=(0.1, 1.0), folds=3, seed=2)


@pytest.mark.parametrize("bad", [{"c_grid": ()}, {"c_grid": (0.1, -1.0)}, {"folds": 1}, {"max_iter": 0},
                                 {"tol": 0.0}, {"n_boot": 0}])
def test_bad_values_are_user_errors(bad: dict) -> None:
    with pytest.raises(UserError):
        ProbeConfig(**bad)
