"""`--engine nnsight` captures what raw hooks capture; `--remote` refuses, in one line and before any
network call, what cannot run on NDIF."""

from __future__ import annotations

import socket

import pytest
import torch

from experiments.capture import main as capture_main
from experiments.mech_engine import check_engine
from experiments.patching import main as patching_main
from introspect_mi.actstore import ActivationStore
from introspect_mi.errors import UserError
from introspect_mi.ndif import check_remote


@pytest.fixture()
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """No NDIF key anywhere, and any network connection fails the test."""
    from nnsight import CONFIG

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("a network call was made")

    monkeypatch.setattr(socket, "create_connection", refuse)


def test_engine_choices_are_checked(no_key: None) -> None:
    with pytest.raises(UserError, match="unknown engine 'bridge'"):
        check_engine("bridge", "", ["untrained"])
    with pytest.raises(UserError, match="--remote runs nnsight traces"):
        check_engine("hooks", "meta-llama/Llama-3.1-70B", ["untrained"])
    with pytest.raises(UserError, match="cannot run the subject.*self"):
        check_engine("nnsight", "meta-llama/Llama-3.1-70B", ["untrained", "self"])
    with pytest.raises(UserError, match="no NDIF API key"):
        check_engine("nnsight", "meta-llama/Llama-3.1-70B", ["untrained"])
    check_engine("nnsight", "", ["untrained", "self", "cross"])  # local: no key needed


def test_remote_refusals_come_before_any_network_call(no_key: None, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="no NDIF API key"):
        check_remote("meta-llama/Llama-3.1-70B-Instruct")
    monkeypatch.setenv("NDIF_API_KEY", "test-key")
    with pytest.raises(UserError, match="hub id, not 'smollm2-135m-instruct'"):
        check_remote("smollm2-135m-instruct")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set"):
        check_remote("meta-llama/Llama-3.1-70B-Instruct")


def test_remote_refuses_an_unreachable_ndif(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NDIF_API_KEY", "test-key")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("NDIF_HOST", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(UserError, match=r"NDIF \(http://127.0.0.1:9\) is unreachable"):
        check_remote("meta-llama/Llama-3.1-70B-Instruct", connect_timeout=2.0)


def test_remote_without_key_is_one_line_from_the_command_line(no_key: None, capsys: pytest.CaptureFixture[str]) -> None:
    for main in (capture_main, patching_main):
        assert main(["--engine", "nnsight", "--remote", "meta-llama/Llama-3.1-70B-Instruct", "--subjects", "untrained"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: no NDIF API key for --remote") and len(err.splitlines()) == 1, err


@pytest.mark.slow
def test_capture_with_the_nnsight_engine_stores_what_hooks_store(tiny_study) -> None:
    args = ("--subjects", "untrained", "--explorer-items", "2", "--batch-size", "4", "--shard-records", "16")
    for engine in ("hooks", "nnsight"):  # plain batches on both sides: prefix reuse is hooks-only, equal to rounding
        out = tiny_study.run("capture", *args, "--name", f"mech-{engine}", "--engine", engine, "--no-prefix-reuse")
        assert out.returncode == 0, out.stderr[-3000:]
    for subject in ("untrained",):
        hooks, traced = (ActivationStore.open(tiny_study.runs / f"mech-{e}" / subject / "store") for e in ("hooks", "nnsight"))
        assert traced.info["engine"] == "nnsight" and traced.records.equals(hooks.records)
        for place in hooks.info["places"]:
            for position in hooks.info["positions"]:
                x, _ = traced.load(place, position=position, as_="torch")
                y, _ = hooks.load(place, position=position, as_="torch")
                assert torch.equal(x, y), (subject, place, position)
