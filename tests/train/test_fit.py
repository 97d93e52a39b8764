"""`fit` end to end on synthetic data: run directory, summary, masks held, resume, faults."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from torch import nn

from randsparse import __version__
from randsparse.errors import ConfigError, FileFormatError, RandsparseError
from randsparse.sparsity import MaskSet, prunable_shapes
from randsparse.train import Interrupted, RunDir, config_hash, fit, load_run
from randsparse.train.checkpoint import load_checkpoint
from randsparse.train.identity import IDENTITY_VERSION
from tests.train._runs import signal_after_first_epoch, tiny_config

SUMMARY_KEYS = {
    "status",
    "test_accuracy",
    "best_val_accuracy",
    "epochs",
    "params_total",
    "params_prunable",
    "params_nonzero",
    "density",
    "flops_dense",
    "flops_sparse",
    "train_seconds",
    "config_hash",
}
METRIC_KEYS = {
    "epoch",
    "lr",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "seconds",
    "images_per_second",
}


def _checkpoint_identity(path) -> tuple[str, int, str]:
    state = load_checkpoint(path)
    return state["config_hash"], state["identity_version"], state["randsparse_version"]


def _weights(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_sparse_run_writes_the_run_directory(tmp_path, tiny) -> None:
    out = tmp_path / "run"
    summary = fit(tiny, out)
    run = RunDir(out)
    for path in (run.config_file, run.metrics_file, run.summary_file, run.last_checkpoint, run.best_checkpoint):
        assert path.is_file(), path
    assert set(summary) >= SUMMARY_KEYS
    assert summary == json.loads(run.summary_file.read_text())
    assert summary["status"] == "completed"
    assert summary["epochs"] == 2
    assert summary["config_hash"] == config_hash(tiny)
    assert summary["architecture"] == {"family": "small_cnn", "depth": None, "width": 0.5}
    assert _checkpoint_identity(run.last_checkpoint) == (config_hash(tiny), IDENTITY_VERSION, __version__)
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    rows = [json.loads(line) for line in run.metrics_file.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(set(r) >= METRIC_KEYS for r in rows)
    assert run.read_config() == tiny


def test_summary_counts_are_consistent_with_the_trained_weights(tmp_path, tiny) -> None:
    summary = fit(tiny, tmp_path / "run")
    loaded = load_run(tmp_path / "run", "last")
    prunable = prunable_shapes(loaded.model)
    params = dict(loaded.model.named_parameters())
    nonzero_prunable = sum(int(params[n].count_nonzero()) for n in prunable)
    dense_rest = sum(p.numel() for n, p in params.items() if n not in prunable)
    assert summary["params_nonzero"] == nonzero_prunable + dense_rest
    assert summary["params_total"] == sum(p.numel() for p in params.values())
    assert summary["params_prunable"] == sum(params[n].numel() for n in prunable)
    assert summary["density"] == pytest.approx(0.2, abs=len(prunable) / summary["params_prunable"])
    assert summary["flops_sparse"] < summary["flops_dense"]


def test_pruned_weights_are_exactly_zero_in_every_checkpoint(tmp_path, tiny) -> None:
    fit(tiny, tmp_path / "run")
    run = RunDir(tmp_path / "run")
    for path in (run.best_checkpoint, run.last_checkpoint):
        state = load_checkpoint(path)
        masks = MaskSet.from_state_dict(state["masks"])
        for name, mask in masks.items():
            assert torch.all(state["model"][name][~mask] == 0)
            assert int(state["model"][name][mask].count_nonzero()) == int(mask.sum())


def test_dense_run_has_no_masks_and_full_density(tmp_path) -> None:
    summary = fit(tiny_config("sparsity=0", "epochs=1"), tmp_path / "run")
    assert summary["density"] == 1.0
    assert summary["flops_sparse"] == summary["flops_dense"]
    assert summary["distribution"] is None
    assert load_checkpoint(RunDir(tmp_path / "run").last_checkpoint)["masks"] is None


def test_same_config_gives_bit_identical_runs(tmp_path, tiny) -> None:
    fit(tiny, tmp_path / "a")
    fit(tiny, tmp_path / "b")
    a, b = _weights(tmp_path / "a/checkpoints/last.pt"), _weights(tmp_path / "b/checkpoints/last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_existing_run_directory_is_never_overwritten(tmp_path, tiny) -> None:
    fit(tiny, tmp_path / "run")
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="already holds a run"):
        fit(tiny, tmp_path / "run")
    assert before == {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}


def test_resume_of_a_finished_run_changes_nothing_but_the_summary(tmp_path, tiny) -> None:
    fit(tiny, tmp_path / "run")
    last = (tmp_path / "run/checkpoints/last.pt").read_bytes()
    summary = fit(tiny, tmp_path / "run", resume=True)
    assert summary["status"] == "completed"
    assert (tmp_path / "run/checkpoints/last.pt").read_bytes() == last


def test_resume_with_another_config_is_refused_and_leaves_files_untouched(tmp_path, tiny) -> None:
    fit(tiny_config("epochs=1"), tmp_path / "run")
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="belongs to config"):
        fit(tiny_config("epochs=1", "optim.lr=0.5"), tmp_path / "run", resume=True)
    assert before == {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}


def test_resume_from_a_corrupt_checkpoint_is_refused_and_leaves_files_untouched(tmp_path) -> None:
    config = tiny_config("epochs=1")
    fit(config, tmp_path / "run")
    last = tmp_path / "run/checkpoints/last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(FileFormatError, match="corrupt"):
        fit(config, tmp_path / "run", resume=True)
    assert before == {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}


def test_resume_of_a_directory_without_checkpoint_is_refused(tmp_path, tiny) -> None:
    with pytest.raises(FileFormatError, match="nothing to resume"):
        fit(tiny, tmp_path / "empty", resume=True)


def test_resume_continues_a_shorter_run_to_the_same_weights(tmp_path) -> None:
    # Same identity needs the same epochs, so stop a 3-epoch run after epoch 1 via a signal at the
    # first step of epoch 2 (mid-epoch checkpoint), then resume: the result equals an uninterrupted run.
    config = tiny_config("epochs=3", "checkpoint_every_steps=5")
    fit(config, tmp_path / "straight")

    with pytest.MonkeyPatch.context() as patch:
        signal_after_first_epoch(patch)
        with pytest.raises(Interrupted, match="SIGINT"):
            fit(config, tmp_path / "resumed")
    stopped = load_checkpoint(tmp_path / "resumed/checkpoints/last.pt")["progress"]
    assert stopped["epoch"] == 1 and stopped["batch_in_epoch"] == 1, "stopped after one step of epoch 2"
    assert RunDir(tmp_path / "resumed").read_summary()["status"] == "interrupted"
    summary = fit(config, tmp_path / "resumed", resume=True)
    assert summary["status"] == "completed"
    a, b = _weights(tmp_path / "straight/checkpoints/last.pt"), _weights(tmp_path / "resumed/checkpoints/last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    straight_rows = (tmp_path / "straight/metrics.jsonl").read_text().splitlines()
    resumed_rows = (tmp_path / "resumed/metrics.jsonl").read_text().splitlines()
    assert len(resumed_rows) == 3
    for x, y in zip(straight_rows, resumed_rows, strict=True):
        x, y = json.loads(x), json.loads(y)
        for key in ("epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "step"):
            assert x[key] == y[key], key


class _NaNAfter(nn.Module):
    """Wraps a model; its training forward returns NaN from call `after` on."""

    def __init__(self, inner: nn.Module, after: int) -> None:
        super().__init__()
        self.inner, self.after, self.calls = inner, after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                return out * float("nan")
        return out


def test_nan_loss_stops_the_run_marks_it_diverged_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch) -> None:
    import randsparse.train.loop as loop

    original = loop.build_model
    monkeypatch.setattr(loop, "build_model", lambda *a, **k: _NaNAfter(original(*a, **k), after=10))
    config = tiny_config("epochs=3", "sparsity=0")  # 7 steps per epoch: NaN in epoch 2
    summary = fit(config, tmp_path / "run")
    assert summary["status"] == "diverged"
    assert "nan" in summary["error"].lower()
    state = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert state["progress"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert len((tmp_path / "run/metrics.jsonl").read_text().splitlines()) == 1


def test_training_from_a_background_thread_works_without_signal_handlers(tmp_path) -> None:
    result = {}
    thread = threading.Thread(target=lambda: result.update(fit(tiny_config("epochs=1"), tmp_path / "run")))
    thread.start()
    thread.join()
    assert result["status"] == "completed"


def test_without_validation_split_the_best_checkpoint_is_the_last(tmp_path) -> None:
    summary = fit(tiny_config("epochs=1", "data.val_fraction=0"), tmp_path / "run")
    assert summary["best_val_accuracy"] is None
    assert summary["test_accuracy"] == summary["test_accuracy_last"]
    assert (tmp_path / "run/checkpoints/best.pt").is_file()


@pytest.mark.parametrize(
    "overrides",
    [["sparsity.distribution=snip_ratio"], ["sparsity.distribution=synflow_ratio"], ["sparsity.prune=grasp"]],
    ids=["snip_ratio", "synflow_ratio", "prune_grasp"],
)
def test_saliency_rules_train_with_the_exact_budget(tmp_path, overrides) -> None:
    config = tiny_config("epochs=1", "sparsity.score_options={}", *overrides)
    summary = fit(config, tmp_path / "run")
    assert summary["status"] == "completed"
    assert summary["distribution"].endswith("_ratio")
    prunable = summary["params_prunable"]
    assert abs(summary["density"] * prunable - 0.2 * prunable) <= summary["prunable_layers"]


def test_evaluation_options_in_the_config_run_at_the_end_of_training(tmp_path) -> None:
    config = tiny_config(
        "epochs=1", "eval.ood=[gaussian, uniform]", "eval.fgsm=[0.01, 0.03]", "eval.attack_max_images=64"
    )
    summary = fit(config, tmp_path / "run")
    result = summary["eval"]
    assert 0 <= result["ece"] <= 1 and result["nll"] > 0
    assert result["accuracy"] == pytest.approx(summary["test_accuracy"])
    for name in ("gaussian", "uniform"):
        assert 0 <= result[f"ood.{name}.msp.auroc"] <= 1
    assert max(result["adv.fgsm.0.01"], result["adv.fgsm.0.03"]) <= result["adv.clean"]
    assert (tmp_path / "run/reliability.png").is_file()


def test_the_test_set_is_passed_once_when_the_suite_runs(tmp_path, monkeypatch) -> None:
    from randsparse.train import evaluation

    calls = []
    real = evaluation.evaluate_accuracy
    monkeypatch.setattr(evaluation, "evaluate_accuracy", lambda *a, **k: calls.append(1) or real(*a, **k))
    summary = fit(tiny_config("epochs=1", "eval.ood=[uniform]"), tmp_path / "run")
    assert calls == []  # the test accuracy comes from the suite's (cached) test logits
    assert summary["eval"]["accuracy"] == summary["test_accuracy"]
    assert summary["test_accuracy_last"] == summary["test_accuracy"] and summary["test_loss"] > 0
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "run/eval-cache").iterdir()) == ["ood", "test"]


def test_eval_false_skips_the_evaluation_suite(tmp_path) -> None:
    summary = fit(tiny_config("epochs=1", "eval=false"), tmp_path / "run")
    assert "eval" not in summary


def test_a_run_stopped_before_its_first_checkpoint_starts_again(tmp_path, tiny) -> None:
    out = tmp_path / "run"
    RunDir(out).write_config(tiny)  # what a run killed in its first epoch leaves behind
    assert fit(tiny, out, resume=True)["status"] == "completed"
    fresh = tmp_path / "again"
    RunDir(fresh).write_config(tiny)
    assert fit(tiny, fresh)["status"] == "completed"


def test_a_directory_holding_another_config_without_checkpoint_is_refused(tmp_path, tiny) -> None:
    out = tmp_path / "run"
    RunDir(out).write_config(tiny_config("optim.lr=0.5"))
    before = (out / "config.yaml").read_bytes()
    with pytest.raises(ConfigError, match="holds another run"):
        fit(tiny, out)
    assert (out / "config.yaml").read_bytes() == before


def test_an_unknown_or_missing_ood_set_fails_before_training(tmp_path) -> None:
    with pytest.raises(RandsparseError, match="nosuchset"):
        fit(tiny_config("eval.ood=[nosuchset]"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_model_that_cannot_take_the_inputs_fails_before_anything_is_written(tmp_path) -> None:
    # A VGG's four 2x2 poolings need inputs of at least 16x16: 4x4 images are far too small.
    config = tiny_config("model.name=vgg11", "data.options.image_size=4")
    with pytest.raises(ConfigError, match=r"cannot take this dataset's inputs of shape \(1, 4, 4\)"):
        fit(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_with_broken_rng_states_is_refused(tmp_path) -> None:
    config = tiny_config("epochs=2", "checkpoint_every_steps=3")
    import randsparse.train.loop as loop

    original = loop._finish_epoch

    def stop_after_first_epoch(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt

    loop._finish_epoch = stop_after_first_epoch
    try:
        with pytest.raises(KeyboardInterrupt):
            fit(config, tmp_path / "run")
    finally:
        loop._finish_epoch = original
    path = tmp_path / "run/checkpoints/last.pt"
    state = torch.load(path, weights_only=True)
    state["rng"] = {}
    torch.save(state, path)
    with pytest.raises(FileFormatError, match="does not fit"):
        fit(config, tmp_path / "run", resume=True)
