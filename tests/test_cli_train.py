"""`randsparse train` as a user runs it: a real process, killed and resumed, and its error exits."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from randsparse.train.checkpoint import load_checkpoint
from tests._cli import run as run_cli
from tests.train._runs import tiny_config, write_config

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _train(*args: str, cwd: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "randsparse", "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    process = _train(*args)
    out, err = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _wait_for(predicate, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"training ended early: {process.communicate()[1]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


def _epochs_done(run: Path) -> int:
    metrics = run / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


def _assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


# 64 steps per epoch, a checkpoint every 20 steps: the first one inside epoch 2 is at step 80.
_KILLABLE = (
    "epochs=2",
    "data.options.train_size=2304",
    "data.val_fraction=0.111",
    "data.batch_size=32",
    "checkpoint_every_steps=20",
)


def _checkpoint_step(run: Path) -> int:
    try:
        return load_checkpoint(run / "checkpoints/last.pt")["progress"]["global_step"]
    except Exception:  # not written yet
        return 0


def test_run_killed_mid_epoch_and_resumed_ends_with_the_same_weights(tmp_path) -> None:
    config = write_config(tmp_path / "config.yaml", tiny_config(*_KILLABLE))
    straight = _run("--config", str(config), "--out", str(tmp_path / "straight"), "--quiet")
    assert straight.returncode == 0, straight.stderr

    victim = tmp_path / "killed"
    process = _train("--config", str(config), "--out", str(victim), "--quiet")
    _wait_for(lambda: _checkpoint_step(victim) >= 80, 240, process)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    state = load_checkpoint(victim / "checkpoints/last.pt")["progress"]
    assert state["epoch"] == 1 and 0 < state["batch_in_epoch"] < 64, "the kill must land inside epoch 2"
    assert json.loads((victim / "summary.json").read_text())["status"] == "running"

    resumed = _run("--resume", str(victim), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    a = load_checkpoint(tmp_path / "straight/checkpoints/last.pt")["model"]
    b = load_checkpoint(victim / "checkpoints/last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _epochs_done(victim) == 2
    assert json.loads((victim / "summary.json").read_text())["status"] == "completed"
    straight_rows = (tmp_path / "straight/metrics.jsonl").read_text().splitlines()
    resumed_rows = (victim / "metrics.jsonl").read_text().splitlines()
    for x, y in zip(straight_rows, resumed_rows, strict=True):
        assert json.loads(x)["train_loss"] == json.loads(y)["train_loss"]


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path) -> None:
    config = write_config(tmp_path / "config.yaml", tiny_config(*_KILLABLE))
    run = tmp_path / "run"
    process = _train("--config", str(config), "--out", str(run), "--quiet")
    _wait_for(lambda: _checkpoint_step(run) >= 20, 240, process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in err
    assert "--resume" in err
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    state = load_checkpoint(run / "checkpoints/last.pt")
    assert state["progress"]["global_step"] > 20, "the checkpoint is taken when Ctrl-C arrives"
    advised = shlex.split(err.split("continue with: ", 1)[1].strip())  # the advice is run as given
    assert advised[:3] == ["randsparse", "train", "--resume"], err
    resumed = _run(*advised[2:], "--quiet")
    assert resumed.returncode == 0, resumed.stderr


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["optim.lrr=0.1"], ["optim.lrr: unknown key"]),
        (["sparsity=1.5"], ["sparsity.sparsity"]),
        (["model.name=nonet"], ["unknown model 'nonet'"]),
        (["sparsity.distribution=bogus"], ["unknown distribution 'bogus'"]),
        (["data.name=nodata"], ["unknown dataset 'nodata'"]),
        (["data.name=cifar10", "data.options={}"], ["cifar10"]),
        (["notakeyvalue"], ["key=value"]),
        (["device=cuda:3"], ["CUDA is not available"]),
        (
            ["sparsity.sparsity=0.999", "sparsity.distribution=uniform"],
            ["features.0.weight", "no weights", "highest sparsity", "allow_empty_layers"],
        ),
    ],
)
def test_bad_config_exits_2_with_one_line(tmp_path, capsys, args, fragments) -> None:
    # In-process (the CLI's own error handling); the real process's exit is checked below.
    config = write_config(tmp_path / "config.yaml", tiny_config())
    env_dir = tmp_path / "empty-data"
    env_dir.mkdir()
    argv = ["train", "--config", str(config), "--out", str(tmp_path / "run"), "--data-dir", str(env_dir), *args]
    code, _, err = run_cli(argv, capsys)
    _assert_one_line_error(subprocess.CompletedProcess(argv, code, "", err), *fragments)
    assert not (tmp_path / "run").exists()


def test_missing_config_file_and_missing_resume_dir_exit_2(tmp_path, capsys) -> None:
    _assert_one_line_error(_run("--config", str(tmp_path / "absent.yaml")), "absent.yaml")  # a real process
    for argv, fragment in [
        (["train", "--resume", str(tmp_path / "nowhere")], "nothing to resume"),
        (["train"], "--config"),
    ]:
        code, _, err = run_cli(argv, capsys)
        _assert_one_line_error(subprocess.CompletedProcess(argv, code, "", err), fragment)


def test_corrupt_checkpoint_on_resume_exits_2_and_leaves_files_untouched(tmp_path) -> None:
    config = write_config(tmp_path / "config.yaml", tiny_config("epochs=1"))
    run = tmp_path / "run"
    assert _run("--config", str(config), "--out", str(run), "--quiet").returncode == 0
    (run / "checkpoints/last.pt").write_bytes(b"\x00" * 64)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    _assert_one_line_error(_run("--resume", str(run)), "corrupt")
    assert before == {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}


def test_json_summary_on_stdout(tmp_path) -> None:
    config = write_config(tmp_path / "config.yaml", tiny_config("epochs=1"))
    result = _run("--config", str(config), "--out", str(tmp_path / "run"), "--quiet", "--format", "json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed"
    assert summary == json.loads((tmp_path / "run/summary.json").read_text())


@pytest.mark.integration
@pytest.mark.skipif(
    not FMNIST.is_dir(), reason="real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"
)
def test_quick_preset_trains_on_real_fashion_mnist(tmp_path) -> None:
    root = Path(__file__).resolve().parents[1]
    result = _run(
        "--config",
        str(root / "configs/fmnist-quick.yaml"),
        "--out",
        str(tmp_path / "run"),
        "--quiet",
        "--format",
        "json",
        "epochs=1",
        "data.subset=5000",
        "sparsity=0.5",
        "model.width=0.5",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["test_size"] == 10_000
    assert summary["train_size"] == 5000
    assert summary["test_accuracy"] > 0.6
