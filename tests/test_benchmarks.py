"""Benchmark scripts exit with their verdict: 0 on PASS, non-zero on FAIL (so scripts and CI can act on it)."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
WITH_VERDICT = [
    "data_loader",
    "enforce_overhead",
    "eval_time",
    "fused_backward",
    "mask_creation",
    "saliency_time",
    "sparse_checkpoint_size",
    "sparse_conv_never_slower",
    "sparse_mlp_speedup",
    "sparse_roundtrip_all",
    "train_end_to_end",
    "train_layers",
    "train_step",
    "train_throughput",
]


def _load(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as `python benchmarks/<name>.py` has it
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", WITH_VERDICT)
def test_a_benchmark_exits_with_the_status_of_its_verdict(name: str) -> None:
    tree = ast.parse((BENCHMARKS / f"{name}.py").read_text())
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    last = main.body[-1]
    assert isinstance(last, ast.Return) and last.value is not None and ast.unparse(last.value).startswith("verdict(")
    guard = tree.body[-1]
    assert isinstance(guard, ast.If) and ast.unparse(guard.body[0]) == "sys.exit(main())"


def test_verdict_is_pass_and_0_only_when_every_target_is_met(monkeypatch, capsys) -> None:
    verdict = _load("_verdict", monkeypatch).verdict
    assert verdict({"a < 1": True, "b < 2": True}) == 0
    assert capsys.readouterr().out == "PASS: a < 1; b < 2\n"
    assert verdict({"a < 1": True, "b < 2": False}) == 1
    assert capsys.readouterr().out == "FAIL: missed b < 2\n"
    assert verdict({}) == 1  # a run that checked nothing has not met its targets
    assert capsys.readouterr().out.startswith("FAIL")


@pytest.mark.parametrize(("sparsity", "status", "line"), [("0.1", 1, "FAIL"), ("0.98", 0, "PASS")])
def test_the_checkpoint_size_benchmark_fails_with_status_1(monkeypatch, capsys, sparsity, status, line) -> None:
    module = _load("sparse_checkpoint_size", monkeypatch)
    monkeypatch.setattr(sys, "argv", ["sparse_checkpoint_size.py", "--model", "small_cnn", "--sparsity", sparsity])
    assert module.main() == status
    assert capsys.readouterr().out.splitlines()[-1].startswith(line)
