"""Run lifecycle edges: every check before the first write, signals handled from the first to the last instruction."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
from pathlib import Path

import pytest

import randsparse.train.loop as loop
from randsparse.train import Interrupted, RunDir, fit
from tests._cli import run as cli
from tests.train._runs import tiny_config, write_config


def _digests(run: Path) -> dict[str, str]:
    """sha256 of every file of a run directory (what must not change when a command refuses)."""
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("finished")
    config = write_config(root / "config.yaml", tiny_config("epochs=1", "eval=false"))
    code = fit(tiny_config("epochs=1", "eval=false"), root / "run")["status"]
    assert code == "completed"
    return config, root / "run"


@pytest.mark.parametrize("odd", ["checkpoints/last.pt", "checkpoints/best.pt", "summary.json", "checkpoints"])
def test_a_run_whose_own_file_is_a_directory_is_refused_before_any_write(finished, tmp_path, capsys, odd) -> None:
    _, source = finished
    run = tmp_path / "run"
    shutil.copytree(source, run)
    target = run / odd
    if target.is_dir():
        for child in target.iterdir():
            child.unlink()
        target.rmdir()
        target.write_text("not a directory")
    else:
        target.unlink()
        target.mkdir()
    before = _digests(run)
    code, _, err = cli(["train", "--resume", str(run), "--quiet"], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "damaged" in err
    assert _digests(run) == before, "a refused resume wrote into the run"


def test_eval_refuses_an_unreadable_summary_before_writing_anything(finished, tmp_path, capsys) -> None:
    _, source = finished
    run = tmp_path / "run"
    shutil.copytree(source, run)
    (run / "summary.json").write_text("{not json")
    before = _digests(run)
    code, _, err = cli(["eval", str(run), "--no-calibration", "--fgsm", "0.01", "--attack-images", "8"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "summary" in err
    assert _digests(run) == before and not (run / "reliability.png").exists()


def _signal_inside(monkeypatch, name: str, signum: int) -> None:
    """Send `signum` to this process when `loop.<name>` is called (then let the call go on)."""
    original = getattr(loop, name)

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, name, signalled)


def test_sigterm_during_start_up_stops_with_one_line_and_exit_143(tmp_path, capsys, monkeypatch) -> None:
    config = write_config(tmp_path / "config.yaml", tiny_config("epochs=1", "eval=false"))
    _signal_inside(monkeypatch, "build_datasets", signal.SIGTERM)
    code, _, err = cli(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--quiet"], capsys)
    assert code == 143, err
    assert "SIGTERM while starting" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "summary.json").exists()
    monkeypatch.undo()
    # The advice works: the same command trains the run.
    code, _, err = cli(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--quiet"], capsys)
    assert code == 0, err


def test_sigterm_during_the_final_test_marks_the_run_interrupted_and_resume_finishes_it(tmp_path, monkeypatch) -> None:
    config = tiny_config("epochs=1", "eval=false")
    _signal_inside(monkeypatch, "final_evaluation", signal.SIGTERM)
    with pytest.raises(Interrupted, match="SIGTERM during the final test") as caught:
        fit(config, tmp_path / "run")
    assert caught.value.exit_code == 143
    summary = RunDir(tmp_path / "run").read_summary()
    assert summary["status"] == "interrupted" and summary["epochs"] == 1
    monkeypatch.undo()
    done = fit(config, tmp_path / "run", resume=True)
    assert done["status"] == "completed" and done["test_accuracy"] is not None


def test_a_signal_during_the_last_validation_stops_before_the_final_test(tmp_path, monkeypatch) -> None:
    config = tiny_config("epochs=1", "eval=false")
    _signal_inside(monkeypatch, "_finish_epoch", signal.SIGINT)
    with pytest.raises(Interrupted, match="SIGINT before the final test") as caught:
        fit(config, tmp_path / "run")
    assert caught.value.exit_code == 130
    assert RunDir(tmp_path / "run").read_summary()["status"] == "interrupted"
