"""Lottery-ticket levels as runs: layout, parents, rewinding to step k, nested masks, refusals, exact resume."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from randsparse.errors import ConfigError, FileFormatError
from randsparse.sparsity import MaskSet
from randsparse.train import Interrupted, RunDir, fit
from randsparse.train.checkpoint import load_checkpoint
from randsparse.train.lottery import _Level, level_dir, rewind_checkpoint
from tests.train._runs import tiny_config

# 7 steps per epoch (448 training images, batches of 64); no evaluation suite, to stay fast.
_FAST = ("eval.calibration=false", "eval.reliability_diagram=false", "sparsity.method=lth")


def lth_config(*overrides: str, levels: int = 2, rewind_step: int = 3, scope: str = "global"):
    options = json.dumps({"levels": levels, "rewind_step": rewind_step, "scope": scope})
    return tiny_config("epochs=1", *_FAST, f"sparsity.method_options={options}", *overrides)


def _weights(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def _masks(run: RunDir) -> MaskSet | None:
    saved = load_checkpoint(run.last_checkpoint)["masks"]
    return MaskSet.from_state_dict(saved) if saved is not None else None


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted two-level (three trainings) lottery run, rewinding to step 3."""
    out = tmp_path_factory.mktemp("lth") / "run"
    summary = fit(lth_config("checkpoint_every_steps=2"), out)
    return out, summary


def test_each_level_is_a_run_whose_parent_is_the_previous_level(straight) -> None:
    out, summary = straight
    top = RunDir(out)
    assert summary["status"] == "completed" and summary["method"] == "lth"
    assert [row["level"] for row in summary["levels"]] == [0, 1, 2]
    assert summary["levels"][-1]["test_accuracy"] == summary["test_accuracy"], "the top summary is the last level's"
    assert summary["sparsity"] == 0.8 and summary["itop_rate"] == 1.0
    assert json.loads(top.summary_file.read_text())["levels"] == summary["levels"]
    previous = None
    for level in range(3):
        run = level_dir(top, level)
        level_summary = run.read_summary()
        assert level_summary["level"] == level and level_summary["status"] == "completed"
        assert level_summary["parent"] == (f"levels/{level - 1}" if level else None)
        assert run.config_file.is_file() and run.metrics_file.is_file() and run.best_checkpoint.is_file()
        masks = _masks(run)
        if level == 0:
            assert masks is None, "level 0 trains the dense network"
        else:
            assert masks.density() == pytest.approx(1 - summary["levels"][level]["sparsity"], abs=1e-3)
            if previous is not None:
                assert all(not bool((masks[n] & ~previous[n]).any()) for n in masks), "masks are nested"
            weights = _weights(run.last_checkpoint)
            assert all(not bool(weights[n][~masks[n]].any()) for n in masks), "pruned weights are zero"
        previous = masks
    # Every level ends at the run's last step; levels >= 1 train from the rewind step on.
    rewind = load_checkpoint(rewind_checkpoint(top))
    assert rewind["progress"]["global_step"] == 3
    for level in range(3):
        rows = [json.loads(line) for line in level_dir(top, level).metrics_file.read_text().splitlines()]
        assert rows[-1]["step"] == 7


def test_level_one_masks_are_the_global_magnitude_pruning_of_level_zero(straight) -> None:
    out, _ = straight
    top = RunDir(out)
    parent = _weights(level_dir(top, 0).last_checkpoint)
    masks = _masks(level_dir(top, 1))
    magnitudes = torch.cat([parent[n].abs().reshape(-1) for n in masks])
    kept = torch.cat([masks[n].reshape(-1) for n in masks])
    assert float(magnitudes[kept].min()) >= float(magnitudes[~kept].max())


def test_a_level_starts_from_the_rewind_weights_masked_with_a_fresh_optimizer(tmp_path, monkeypatch) -> None:
    seen = {}
    original = _Level._rewind

    def record(self, run, steps_per_epoch):
        original(self, run, steps_per_epoch)
        seen["model"] = {k: v.clone() for k, v in run.model.state_dict().items()}
        progress = run.progress
        seen["masks"] = run.masks
        seen["progress"] = (progress.global_step, progress.batch_in_epoch, len(progress.history))
        seen["optimizer_state"] = dict(run.optimizer.state)
        seen["lr"] = [group["lr"] for group in run.optimizer.param_groups]

    monkeypatch.setattr(_Level, "_rewind", record)
    fit(lth_config(levels=1, rewind_step=2), tmp_path / "run")
    rewind = load_checkpoint(rewind_checkpoint(RunDir(tmp_path / "run")))
    masks = seen["masks"]
    for name, value in seen["model"].items():
        expected = rewind["model"][name] * masks[name] if name in masks else rewind["model"][name]
        assert torch.equal(value, expected), name
    assert seen["progress"] == (2, 2, 0), "the level starts at step k, mid-epoch, with its own history"
    assert seen["optimizer_state"] == {}, "no momentum carried over"
    assert seen["lr"] == [group["lr"] for group in rewind["optimizer"]["param_groups"]], "the schedule continues"


def test_a_second_start_without_resume_and_another_config_are_refused(straight, tmp_path) -> None:
    out, _ = straight
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="already holds a run"):
        fit(lth_config("checkpoint_every_steps=2"), out)
    with pytest.raises(ConfigError, match="another run"):
        fit(lth_config("checkpoint_every_steps=2", "optim.lr=0.5"), out, resume=True)
    with pytest.raises(ConfigError, match="is level 1 of the lottery-ticket run"):
        fit(lth_config("checkpoint_every_steps=2"), out / "levels/1", resume=True)
    with pytest.raises(FileFormatError, match="nothing to resume"):
        fit(lth_config(), tmp_path / "empty", resume=True)
    with pytest.raises(ConfigError, match="target sparsity"):
        fit(lth_config("sparsity.sparsity=0"), tmp_path / "dense")
    with pytest.raises(ConfigError, match="rewind_step 99"):
        fit(lth_config(rewind_step=99), tmp_path / "late")
    assert not (tmp_path / "late").exists(), "refused before anything is written"
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(("level", "step"), [(0, 2), (1, 5)], ids=["level0-before-rewind-step", "level1-mid-epoch"])
def test_killed_mid_level_and_resumed_ends_bit_identical(straight, tmp_path, monkeypatch, level, step) -> None:
    out, summary = straight
    original = _Level.after_step

    def signal_once(self, run):
        original(self, run)
        if self.level == level and run.progress.global_step == step and not getattr(signal_once, "sent", False):
            signal_once.sent = True
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(_Level, "after_step", signal_once)
    config = lth_config("checkpoint_every_steps=2")
    with pytest.raises(Interrupted, match="SIGINT"):
        fit(config, tmp_path / "run")
    top = RunDir(tmp_path / "run")
    assert top.read_summary()["status"] == "interrupted" and top.read_summary()["level"] == level
    assert load_checkpoint(level_dir(top, level).last_checkpoint)["progress"]["global_step"] == step
    trained = []

    def count(self, run):
        original(self, run)
        trained.append((self.level, run.progress.global_step))

    monkeypatch.setattr(_Level, "after_step", count)
    resumed = fit(config, tmp_path / "run", resume=True)
    # The resume continued from the checkpoint (it did not train the level again from its start).
    assert trained[0] == (level, step + 1) and len(trained) == (7 - step) + (2 - level) * (7 - 3)
    assert resumed["status"] == "completed"
    for lvl in range(3):
        a = _weights(level_dir(RunDir(out), lvl).last_checkpoint)
        b = _weights(level_dir(top, lvl).last_checkpoint)
        assert all(torch.equal(a[k], b[k]) for k in a), f"level {lvl}"
    assert [r["test_accuracy"] for r in resumed["levels"]] == [r["test_accuracy"] for r in summary["levels"]]


def test_layerwise_scope_keeps_the_rule_s_per_layer_densities_at_each_level(tmp_path) -> None:
    from randsparse.sparsity import layer_densities
    from randsparse.sparsity.masks import kept_count

    fit(lth_config(levels=1, rewind_step=0, scope="layerwise"), tmp_path / "run")
    masks = _masks(level_dir(RunDir(tmp_path / "run"), 1))
    densities = layer_densities(masks.shapes, 0.2, "erk")
    assert {n: int(m.sum()) for n, m in masks.items()} == {n: kept_count(densities[n], masks[n].numel()) for n in masks}


def test_level_zero_is_exactly_the_dense_run_of_the_same_config(straight, tmp_path) -> None:
    out, _ = straight
    fit(
        tiny_config("epochs=1", "eval.calibration=false", "eval.reliability_diagram=false", "sparsity.sparsity=0"),
        tmp_path / "dense",
    )
    a = _weights(level_dir(RunDir(out), 0).last_checkpoint)
    b = _weights(tmp_path / "dense/checkpoints/last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.integration
def test_the_cli_trains_resumes_and_refuses_a_lottery_run_with_one_line(tmp_path, capsys) -> None:
    from tests._cli import run as cli
    from tests.train._runs import write_config

    config = write_config(tmp_path / "lth.yaml", lth_config(levels=1, rewind_step=2))
    out = str(tmp_path / "run")
    code, _, err = cli(["train", "--config", str(config), "--out", out, "--quiet"], capsys)
    assert code == 0, err
    code, _, err = cli(["train", "--config", str(config), "--out", out, "--quiet"], capsys)
    assert code == 2 and "already holds a run" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(["train", "--resume", out, "--quiet"], capsys)
    assert code == 0, err
    assert RunDir(out).read_summary()["status"] == "completed"
    bad = ["train", "--config", str(config), "--out", str(tmp_path / "bad"), "--quiet"]
    code, _, err = cli([*bad, 'sparsity.method_options={"scope": "nearby"}'], capsys)
    assert code == 2 and "scope" in err and len(err.strip().splitlines()) == 1


def test_the_weight_average_rewinds_with_the_weights(tmp_path, monkeypatch) -> None:
    # With optim.ema_decay, a level >= 1 starts from the step-k average (masked), not from its fresh init.
    seen = {}
    original = _Level._rewind

    def record(self, run, steps_per_epoch):
        original(self, run, steps_per_epoch)
        seen["ema"] = {k: v.clone() for k, v in run.ema.average.items()}
        seen["masks"] = run.masks

    monkeypatch.setattr(_Level, "_rewind", record)
    fit(lth_config("optim.ema_decay=0.9", levels=1, rewind_step=2), tmp_path / "run")
    rewind = load_checkpoint(rewind_checkpoint(RunDir(tmp_path / "run")))
    masks = seen["masks"]
    for name, value in seen["ema"].items():
        expected = rewind["ema"][name] * masks[name] if name in masks else rewind["ema"][name]
        assert torch.equal(value, expected), name


@pytest.mark.parametrize("method", ["lth", "rigl", "gmp"])
def test_a_method_that_makes_its_own_masks_refuses_a_saved_draw_in_one_line(method: str, tmp_path) -> None:
    # Without the check the message asked for a target sparsity, which a saved draw must not set.
    with pytest.raises(ConfigError, match="makes its own masks; a saved draw trains with method static") as info:
        tiny_config(f"sparsity.method={method}", "sparsity=0", f"sparsity.masks_file={tmp_path / 'm.pt'}")
    assert "\n" not in str(info.value)
