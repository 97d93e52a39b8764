"""Runs and study stores made by release 0.1.0 (tests/fixtures/) still resume, evaluate, load and count as done."""

from __future__ import annotations

import json

import pytest
import torch

from randsparse.experiments import load_study, open_store, prepare, run_study
from randsparse.train import RunDir, load_run
from randsparse.train.identity import IDENTITY_VERSION, config_hash
from tests._cli import run
from tests.train._fixtures import V0_DENSE_ID, V0_RUN_ID, copy_fixture


def test_load_run_reads_a_run_of_0_1_0(tmp_path) -> None:
    run_dir = copy_fixture("run_v0_1_0", tmp_path)
    for which in ("best", "last"):
        loaded = load_run(run_dir, which)
        assert loaded.epoch == 1
        assert loaded.masks is not None
        assert loaded.model(torch.zeros(2, 1, 6, 6)).shape == (2, 3)


def test_randsparse_eval_evaluates_a_run_of_0_1_0(tmp_path, capsys) -> None:
    run_dir = copy_fixture("run_v0_1_0", tmp_path)
    code, out, err = run(["eval", str(run_dir), "--calibration", "--format", "json"], capsys)
    assert code == 0, err
    assert 0.0 <= json.loads(out)["ece"] <= 1.0
    assert "ece" in RunDir(run_dir).read_summary()["eval"]


def test_resume_of_a_finished_run_of_0_1_0_is_accepted(tmp_path, capsys) -> None:
    run_dir = copy_fixture("run_v0_1_0", tmp_path)
    code, _, err = run(["train", "--resume", str(run_dir), "--quiet"], capsys)
    assert code == 0, err
    summary = RunDir(run_dir).read_summary()
    assert summary["status"] == "completed"
    assert summary["epochs"] == 1


def test_a_checkpoint_of_a_newer_identity_version_exits_2_with_one_line(tmp_path, capsys) -> None:
    run_dir = copy_fixture("run_v0_1_0", tmp_path)
    path = run_dir / "checkpoints" / "best.pt"
    state = torch.load(path, weights_only=False)
    state.update(identity_version=IDENTITY_VERSION + 1, randsparse_version="9.0.0")
    torch.save(state, path)
    before = path.read_bytes()
    code, _, err = run(["eval", str(run_dir), "--calibration"], capsys)
    assert code == 2
    assert "identity version" in err and "upgrade randsparse" in err
    assert len(err.strip().splitlines()) == 1
    assert path.read_bytes() == before


def test_a_study_store_of_0_1_0_counts_its_runs_as_done(tmp_path, monkeypatch) -> None:
    study_dir = copy_fixture("study_v0_1_0", tmp_path)
    study, base = load_study(study_dir / "study.yaml")
    _, specs = prepare(study, base, study_dir)
    assert sorted(s.id for s in specs) == sorted([V0_RUN_ID, V0_DENSE_ID])
    assert all(s.legacy_ids == (config_hash(s.config),) for s in specs)

    def no_data_needed(specs: list) -> None:
        assert not specs, "a run that is done was queued again"

    monkeypatch.setattr("randsparse.experiments.runner.make_executor", lambda *a, **k: _NoRuns())
    monkeypatch.setattr("randsparse.experiments.runner.check_data", no_data_needed)
    status = run_study(study, base, study_dir)
    assert status.counts["done"] == 2 and status.counts["pending"] == 0
    assert {row.id for row in open_store(study_dir).rows()} == {V0_RUN_ID, V0_DENSE_ID}


class _NoRuns:
    """An executor that must not be given anything."""

    slots = 1

    def submit(self, *args: object) -> None:
        raise AssertionError("a run that is done was submitted again")

    def wait(self, handles: list, timeout: float) -> list:
        return []

    def interrupt(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


@pytest.mark.parametrize("which", ["best", "last"])
def test_the_fixture_checkpoints_hold_the_old_id(which) -> None:
    """The fixture really is of the old format (a guard against regenerating it)."""
    from tests.train._fixtures import FIXTURES

    state = torch.load(FIXTURES / "run_v0_1_0" / "checkpoints" / f"{which}.pt", weights_only=False)
    assert state["config_hash"] == V0_RUN_ID
    assert "identity_version" not in state
    assert state["randsparse_version"] == "0.1.0"


def test_the_default_run_directory_of_a_run_of_0_1_0_is_found(tmp_path, monkeypatch) -> None:
    from randsparse.cli.train import _default_out
    from tests.train._fixtures import FIXTURES

    monkeypatch.chdir(tmp_path)
    config = RunDir(FIXTURES / "run_v0_1_0").read_config()
    fresh = _default_out(config)
    assert fresh.name.endswith(config_hash(config)[:8])
    old = fresh.with_name(fresh.name.removesuffix(config_hash(config)[:8]) + V0_RUN_ID[:8])
    old.mkdir(parents=True)
    assert _default_out(config) == old  # `randsparse train` then says to --resume it, not train it again


def test_a_run_whose_config_no_longer_parses_says_which_release_made_it(tmp_path, capsys) -> None:
    run_dir = copy_fixture("run_v0_1_0", tmp_path)
    config = run_dir / "config.yaml"
    config.write_text(config.read_text() + "an_option_since_removed: 1\n")
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({**summary, "randsparse_version": "0.0.9"}))
    code, _, err = run(["eval", str(run_dir), "--calibration"], capsys)
    assert code == 2
    assert "an_option_since_removed" in err and "made by randsparse 0.0.9" in err
    assert len(err.strip().splitlines()) == 1
