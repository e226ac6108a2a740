"""The CLI: every bad input is one clear line and exit status 2; answers are deterministic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from introspect_mi.cli import main
from tests.test_models import bad_spec, make_adapter

CASES = {
    "missing": "does not exist",
    "no_config": "no config.json",
    "truncated_safetensors": "truncated or corrupt",
    "truncated_gguf": "truncated or corrupt",
    "unknown_name": "unknown embedded model",
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_model_is_one_line_and_exit_2(case: str, tiny_llama_dir: Path, tmp_path: Path, capsys) -> None:
    spec = bad_spec(case, tiny_llama_dir, tmp_path)
    capsys.readouterr()
    code = main(["generate", "--model", spec, "hi"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and CASES[case] in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_adapter_for_another_base_is_one_line_and_exit_2(tiny_llama_dir: Path, tmp_path: Path, capsys) -> None:
    from tests.tiny import make_llama, make_tokenizer, save_checkpoint

    tok = make_tokenizer()
    other = save_checkpoint(tmp_path / "other", make_llama(len(tok), hidden=96, seed=5), tok)
    adapter = make_adapter(other, tmp_path / "adapter")
    capsys.readouterr()  # drop the set-up's own output
    code = main(["generate", "--model", str(tiny_llama_dir), "--adapter", str(adapter), "hi"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "trained for base weights" in err and len(err.splitlines()) == 1


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "introspect_mi.cli", *args], capture_output=True, text=True, timeout=300)


def test_real_process_exit_code_and_debug_traceback(tmp_path: Path) -> None:
    plain = run_cli("generate", "--model", str(tmp_path / "nope"), "hi")
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and "does not exist" in plain.stderr
    debug = run_cli("--debug", "generate", "--model", str(tmp_path / "nope"), "hi")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_help_explains_the_commands() -> None:
    out = run_cli("--help").stdout
    for word in ("models", "generate", "--debug"):
        assert word in out


@pytest.mark.slow
def test_generate_is_deterministic() -> None:
    question = "What is the capital of France? Answer with one word."
    first, second = (run_cli("generate", "--model", "smollm2-135m-instruct", question) for _ in range(2))
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout.strip()
