"""The one-shot GPU check runs end to end at toy width on the CPU (the same code as on a GPU) and
writes a complete result; `--size 8b` without CUDA is one line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from experiments import bench_capture, bench_inference, bench_patching
from experiments.bench_gpu import SIZES, Result
from experiments.benchmark import main
from introspect_mi.paths import runs_dir


def fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_toy_gpu_check_writes_every_section(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("INTROSPECT_MI_RUNS", str(tmp_path))
    assert main(["gpu", "--size", "toy"]) == 0
    out = json.loads((runs_dir() / "benchmarks" / "gpu-toy.json").read_text())
    assert not (runs_dir() / "benchmarks" / "gpu.json").exists()  # a toy run never replaces the GPU table
    assert set(out) == fields(Result)
    assert set(out["inference"]) == fields(bench_inference.Result) and set(out["capture"]) == fields(bench_capture.Result)
    assert set(out["patching"]) == fields(bench_patching.Result)
    assert {"answer_only_logits", "full_sequence_logits", "max_rel_grad_diff"} <= set(out["finetune"])
    # Llama-3 shape at toy width: its vocabulary, GQA, llama3 rope scaling
    assert out["config"]["vocab_size"] == 128256 and out["config"]["rope_scaling"]["rope_type"] == "llama3"
    assert out["config"]["num_key_value_heads"] < out["config"]["num_attention_heads"]
    assert out["parameters"] > 2 * 128256 * SIZES["toy"]["hidden_size"]  # untied embedding and unembedding
    # The three engines run the very same computation: exactly equal (fp32 here, bf16 on a GPU)
    agree = out["agreement"]
    assert agree["exact"] and agree["worst"] == 0.0 and agree["within_rtol"] and agree["rtol"] == 1e-2
    assert set(agree["max_relative_error"]) == {"bridge", "nnsight"}
    assert all({"resid_post[0]", "attn_out[1]", "final_norm"} <= set(v) for v in agree["max_relative_error"].values())
    plans = out["placement"]["plans"]
    assert plans["this model on visible GPUs"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert plans["70B on 1 x 80 GB"] == {"device": "cuda", "dtype": "bfloat16", "device_map": "auto"}
    assert plans["this model on 1 x 80 GB"]["device_map"] is None
    assert out["finetune_peak_memory_gb"] is None and out["device"] == "cpu"
    assert out["patching"]["naive_vs_engine_max_abs_diff"] < 1e-4  # the engine and the naive loop agree
    text = capsys.readouterr().out
    assert "evaluation engine" in text and "gpu-toy.json" in text


def test_8b_without_cuda_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["gpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --size 8b needs a CUDA GPU") and len(err.splitlines()) == 1

