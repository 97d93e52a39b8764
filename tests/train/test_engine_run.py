"""`train.engine` in a run: engine.json written, identity unchanged, and a run switches engines on resume."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from randsparse.train import RunDir, config_hash, fit
from randsparse.train.checkpoint import load_checkpoint
from tests.train._runs import signal_after_first_epoch, tiny_config


def test_the_engine_is_not_part_of_the_identity() -> None:
    hashes = {config_hash(tiny_config(f"engine={mode}")) for mode in ("auto", "dense", "sparse")}
    assert len(hashes) == 1


def test_an_auto_run_records_its_decisions(tmp_path) -> None:
    summary = fit(tiny_config("epochs=1", "engine=auto"), tmp_path / "run")
    assert summary["status"] == "completed"
    report = json.loads(RunDir(tmp_path / "run").engine_file.read_text())
    names = [layer["name"] for layer in report["layers"]]
    assert names and all(layer["decisions"] for layer in report["layers"])
    for layer in report["layers"]:
        assert layer["decisions"][0]["input"][0] == 64  # the real batch shape
        assert set(layer["decisions"][0]["fwd_bwd_ms"]) == {"dense", "sparse"}
    checks = report["whole_model_checks"]  # auto's choices timed on the whole model, per batch shape
    assert checks and checks[0]["input"][0] == 64
    unforced = {layer["name"] for layer in report["layers"] if not layer["forced_dense"]}
    assert unforced >= set(checks[-1].get("kept_sparse", []))


@pytest.mark.parametrize(("first", "then"), [("sparse", "dense"), ("dense", "sparse")])
def test_a_run_resumes_with_the_other_engine(tmp_path, monkeypatch, first: str, then: str) -> None:
    straight = fit(tiny_config("engine=dense"), tmp_path / "straight")
    with monkeypatch.context() as patch:
        signal_after_first_epoch(patch)
        with pytest.raises(Exception, match="stopped"):
            fit(tiny_config(f"engine={first}"), tmp_path / "switched")
    assert RunDir(tmp_path / "switched").read_summary()["status"] == "interrupted"
    summary = fit(tiny_config(f"engine={then}"), tmp_path / "switched", resume=True)
    assert summary["status"] == "completed"
    assert summary["config_hash"] == straight["config_hash"]
    a = load_checkpoint(tmp_path / "straight/checkpoints/last.pt")
    b = load_checkpoint(tmp_path / "switched/checkpoints/last.pt")
    assert list(a["model"]) == list(b["model"])
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=1e-3, atol=1e-4, msg=name)
    assert abs(summary["test_accuracy"] - straight["test_accuracy"]) <= 0.02


@pytest.mark.integration
def test_two_processes_train_with_the_sparse_engine(tmp_path) -> None:
    from tests.train._runs import write_config
    from tests.train.test_distributed import WORKER, _config, _env, _weights

    config = write_config(tmp_path / "config.yaml", _config("engine=sparse", "epochs=1"))
    dump = tmp_path / "dump"
    dump.mkdir()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    command = [*launcher, str(WORKER), str(dump), "--config", str(config), "--out", str(tmp_path / "ddp"), "--quiet"]
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    rank0, rank1 = (torch.load(dump / f"rank{r}-epoch1.pt")["model"] for r in range(2))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    report = json.loads(RunDir(tmp_path / "ddp").engine_file.read_text())
    assert report["layers"] and all(layer["mode"] == "sparse" for layer in report["layers"])
    fit(_config("data.batch_size=64", "engine=dense", "epochs=1"), tmp_path / "single")
    ddp, single = _weights(tmp_path / "ddp"), _weights(tmp_path / "single")
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["set", "rigl", "gmp"])
def test_a_moving_method_trains_the_same_model_with_the_sparse_engine(tmp_path, method: str) -> None:
    """Masks that move re-pack the sparse layers and re-index the kept optimizer; RigL's dense-gradient
    steps run masked dense. The masks and weights follow the masked dense run's."""
    options = "{update_every: 2}" if method != "gmp" else "{update_every: 2, initial_sparsity: 0.5}"
    common = ("epochs=1", f"sparsity.method={method}", f"sparsity.method_options={options}")
    runs = {engine: tmp_path / engine for engine in ("dense", "sparse")}
    summaries = {engine: fit(tiny_config(*common, f"engine={engine}"), out) for engine, out in runs.items()}
    assert summaries["sparse"]["mask_change"] > 0
    assert summaries["sparse"]["mask_updates"] == summaries["dense"]["mask_updates"] > 0
    dense, sparse = (load_checkpoint(out / "checkpoints/last.pt") for out in runs.values())
    for name, value in dense["model"].items():
        torch.testing.assert_close(sparse["model"][name], value, rtol=1e-3, atol=1e-4, msg=name)
    report = json.loads(RunDir(runs["sparse"]).engine_file.read_text())
    assert all(layer["repacks"] > 1 for layer in report["layers"])  # re-packed after mask updates
