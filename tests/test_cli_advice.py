"""Advice in error messages works for the command that gave it: each test runs the advised fix."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torchvision

from randsparse.cli import train as cli_train
from randsparse.data import lookup
from randsparse.experiments import open_store
from tests._cli import run
from tests.data.writers import write_mnist_dir
from tests.experiments._studies import write_study
from tests.train._runs import tiny_config, write_config

ONE_DOWNLOAD = 2  # torchvision's FashionMNIST is created once per split


class _FakeFashionMNIST:
    """Stands in for torchvision's downloader (no network in tests): writes tiny files where torchvision would."""

    calls: list[str] = []  # noqa: RUF012  (shared on purpose: records calls across instances)

    def __init__(self, root: str, train: bool, download: bool) -> None:
        assert download
        self.calls.append(root)
        write_mnist_dir(Path(root) / "FashionMNIST" / "raw", n_train=64, n_test=16, gz=True)


@pytest.fixture
def empty_world(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """No dataset anywhere (system folder and cache in tmp_path), a fake downloader; returns its calls."""
    monkeypatch.delenv(lookup.ENV_VAR, raising=False)
    monkeypatch.setattr(lookup, "SYSTEM_DATA_DIRS", (tmp_path / "system",))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _FakeFashionMNIST.calls = []
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", _FakeFashionMNIST)
    return _FakeFashionMNIST.calls


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Records the torchrun command `train --nproc` would exec, instead of replacing the test process."""
    started: list[list[str]] = []

    def execv(path: str, command: list[str]) -> None:
        started.append(list(command))
        raise SystemExit(0)  # exec never returns

    monkeypatch.setattr(cli_train.os, "execv", execv)
    return started


def _advised_flag(err: str) -> str:
    """The flag a one-line error tells the user to pass."""
    assert err.count("\n") == 1 and "Traceback" not in err, err
    match = re.search(r"pass (--[a-z][a-z-]*)", err)
    assert match, err
    return match.group(1)


def _fmnist_config(tmp_path: Path) -> Path:
    config = tiny_config("data.name=fashion_mnist", "data.options={}", "epochs=1", "data.batch_size=16")
    return write_config(tmp_path / "config.yaml", config)


def test_train_missing_dataset_advice_is_a_flag_train_takes(tmp_path, capsys, empty_world) -> None:
    argv = ["train", "--config", str(_fmnist_config(tmp_path)), "--out", str(tmp_path / "run"), "--quiet"]
    code, _, err = run(argv, capsys)
    assert code == 2 and "not found" in err
    flag = _advised_flag(err)
    code, _, err = run([*argv, flag], capsys)
    assert code == 0, err
    assert len(empty_world) == ONE_DOWNLOAD, "downloaded once"
    assert (tmp_path / "run" / "summary.json").is_file()


def test_eval_missing_dataset_advice_is_a_flag_eval_takes(tmp_path, capsys, empty_world) -> None:
    run_dir = tmp_path / "run"
    _FakeFashionMNIST(str(lookup.cache_dir()), train=True, download=True)  # files there before training
    argv = ["train", "--config", str(_fmnist_config(tmp_path)), "--out", str(run_dir), "--quiet"]
    assert run(argv, capsys)[0] == 0
    shutil.rmtree(lookup.cache_dir())  # the dataset is gone by the time the run is evaluated
    argv = ["eval", str(run_dir), "--no-calibration", "--format", "json"]
    code, _, err = run(argv, capsys)
    assert code == 2 and "not found" in err
    code, _, err = run([*argv, _advised_flag(err)], capsys)
    assert code == 0, err
    assert len(empty_world) == 1 + ONE_DOWNLOAD


def test_study_missing_dataset_advice_is_a_flag_study_takes(tmp_path, capsys, empty_world) -> None:
    path = write_study(tmp_path / "s.yaml", grid={"sparsity": [0.5]})
    argv = ["study", str(path), "--out", str(tmp_path / "study"), "--executor", "sequential", "--quiet"]
    argv += ["data.name=fashion_mnist", "data.options={}", "data.batch_size=16"]
    code, _, err = run(argv, capsys)
    assert code == 2 and "not found" in err
    code, _, err = run([*argv, _advised_flag(err)], capsys)
    assert code == 0, err
    assert len(empty_world) == ONE_DOWNLOAD


def test_train_nproc_refuses_a_missing_dataset_before_starting_any_process(
    tmp_path, capsys, empty_world, launches
) -> None:
    argv = ["train", "--nproc", "4", "--config", str(_fmnist_config(tmp_path)), "--out", str(tmp_path / "run")]
    code, _, err = run(argv, capsys)
    assert code == 2 and "not found" in err
    assert launches == [], "no process was started"
    flag = _advised_flag(err)
    code, _, err = run([*argv, flag], capsys)
    assert code == 0, err
    assert len(empty_world) == ONE_DOWNLOAD, "downloaded once, before the processes start"
    assert len(launches) == 1 and flag in launches[0]


def test_train_nproc_refuses_a_bad_model_or_run_directory_before_starting_any_process(
    tmp_path, capsys, launches
) -> None:
    config = write_config(tmp_path / "config.yaml", tiny_config("data.options.image_size=2"))
    code, _, err = run(["train", "--nproc", "2", "--config", str(config), "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and err.count("\n") == 1 and launches == [], err
    code, _, err = run(["train", "--nproc", "2", "--resume", str(tmp_path / "nothing")], capsys)
    assert code == 2 and err.count("\n") == 1 and launches == [], err


def test_plan_missing_dataset_advice_is_a_flag_plan_takes(capsys, empty_world) -> None:
    argv = ["plan", "--model", "small_cnn", "--sparsity", "0.5", "--distribution", "snip_ratio"]
    argv += ["--data", "fashion_mnist", "--batch-size", "16"]
    code, _, err = run(argv, capsys)
    assert code == 2 and "not found" in err
    code, out, err = run([*argv, _advised_flag(err)], capsys)
    assert code == 0, err
    assert len(empty_world) == ONE_DOWNLOAD and "small_cnn" in out


def test_a_study_directory_keeps_its_run_set_unless_rebound(tmp_path, capsys) -> None:
    path = write_study(tmp_path / "s.yaml", grid={"sparsity": [0.5]})
    argv = ["study", str(path), "--out", str(tmp_path / "study"), "--executor", "sequential", "--quiet"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    code, _, err = run([*argv, "data.workers=0"], capsys)  # not part of any run's identity: the same runs
    assert code == 0, err
    before = (tmp_path / "study" / "results.sqlite").read_bytes()
    code, _, err = run([*argv, "optim.lr=0.02"], capsys)
    assert code == 2 and "another run set" in err
    assert (tmp_path / "study" / "results.sqlite").read_bytes() == before, "nothing written"
    code, _, err = run([*argv, "optim.lr=0.02", _advised_flag(err)], capsys)
    assert code == 0, err
    rows = open_store(tmp_path / "study").rows(include_old=True)
    assert len(rows) == 4 and sum(r.status == "done" for r in rows) == 4


def test_empty_layer_advice_works_for_plan_and_for_train(tmp_path, capsys) -> None:
    plan = ["plan", "--model", "small_cnn", "--width", "0.25", "--in-channels", "1", "--sparsity", "0.99"]
    plan += ["--distribution", "uniform"]
    code, _, err = run(plan, capsys)
    assert code == 2 and "--allow-empty-layers" in err, err
    code, _, err = run([*plan, "--allow-empty-layers"], capsys)
    assert code == 0, err

    config = write_config(tmp_path / "c.yaml", tiny_config("epochs=1", "eval=false"))
    train = ["train", "--config", str(config), "--quiet", "model.width=0.25", "sparsity=0.99"]
    train += ["sparsity.distribution=uniform"]
    code, _, err = run([*train, "--out", str(tmp_path / "refused")], capsys)
    assert code == 2, err
    advised = re.search(r"train, study: (\S+=true)", err)
    assert advised, err
    assert not (tmp_path / "refused").exists()
    code, _, err = run([*train, advised.group(1), "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err


def test_running_out_of_memory_is_one_line_and_exit_2(monkeypatch, capsys) -> None:
    from randsparse.cli import plan as cli_plan

    def allocate(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(cli_plan, "build_model_from_args", allocate)
    code, _, err = run(["plan", "--model", "resnet20", "--sparsity", "0.5"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "out of memory" in err, err
