"""Dynamic sparse training through `fit`: bit-exact kill/resume, per-layer counts, DST metrics and FLOPs, errors."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

import randsparse.train.dynamic as dynamic
from randsparse.cli import main as cli_main
from randsparse.errors import ConfigError, MaskMismatchError
from randsparse.evaluate.complexity import count_flops
from randsparse.sparsity import MaskSet
from randsparse.train import Interrupted, fit, load_run
from randsparse.train.checkpoint import load_checkpoint, save_checkpoint
from randsparse.train.dynamic import SparseTraining
from tests.train._runs import tiny_config, write_config

# 448 training images, batch 64: 7 steps per epoch, 14 in all; ERK at 80 %.
RIGL = ("epochs=2", "sparsity.method=rigl", "sparsity.method_options={update_every: 2}")


def _counts(masks: MaskSet) -> dict[str, int]:
    return {name: int(mask.sum()) for name, mask in masks.items()}


def _rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _stop_after_step(monkeypatch, stop_step: int) -> None:
    """Send SIGINT during step `stop_step`'s after-step hook: the loop checkpoints that step and stops."""
    after_step = SparseTraining.after_step

    def after_then_signal(self, step, examples):
        after_step(self, step, examples)
        if step == stop_step:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(SparseTraining, "after_step", after_then_signal)


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it is written, the last periodic checkpoint is what remains."""


def test_rigl_crashed_after_its_last_checkpoint_resumes_bit_identical(tmp_path, monkeypatch, straight_rigl):
    straight, _ = straight_rigl
    config = tiny_config(*RIGL, "checkpoint_every_steps=3")  # execution-only: the same run as `straight`
    after_step = SparseTraining.after_step

    def after_then_die(self, step, examples):
        after_step(self, step, examples)
        if step == 6:  # after the updates of steps 4 and 6; the last checkpoint is step 3's
            raise _Killed

    with monkeypatch.context() as patch:
        patch.setattr(SparseTraining, "after_step", after_then_die)
        with pytest.raises(_Killed):
            fit(config, tmp_path / "killed")
    assert load_checkpoint(tmp_path / "killed/checkpoints/last.pt")["progress"]["global_step"] == 3
    fit(config, tmp_path / "killed", resume=True)
    a = load_checkpoint(straight / "checkpoints/last.pt")["model"]
    b = load_checkpoint(tmp_path / "killed/checkpoints/last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def straight_rigl(tmp_path_factory):
    out = tmp_path_factory.mktemp("rigl") / "straight"
    return out, fit(tiny_config(*RIGL), out)


@pytest.mark.parametrize("stop_step", [4, 9])  # right after an update; mid-epoch 2, after an odd step
def test_rigl_killed_at_a_step_and_resumed_ends_bit_identical(tmp_path, monkeypatch, straight_rigl, stop_step):
    straight, _ = straight_rigl
    config = tiny_config(*RIGL)
    with monkeypatch.context() as patch:
        _stop_after_step(patch, stop_step)
        with pytest.raises(Interrupted):
            fit(config, tmp_path / "resumed")
    saved = load_checkpoint(tmp_path / "resumed/checkpoints/last.pt")
    assert saved["progress"]["global_step"] == stop_step
    assert saved["sparse_training"]["updates"] == stop_step // 2
    fit(config, tmp_path / "resumed", resume=True)
    a = load_checkpoint(straight / "checkpoints/last.pt")
    b = load_checkpoint(tmp_path / "resumed/checkpoints/last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert MaskSet.from_state_dict(a["masks"]).equal(MaskSet.from_state_dict(b["masks"]))
    sa, sb = a["sparse_training"], b["sparse_training"]
    assert {k: v for k, v in sa.items() if k != "ever_active"} == {k: v for k, v in sb.items() if k != "ever_active"}
    assert MaskSet.from_state_dict(sa["ever_active"]).equal(MaskSet.from_state_dict(sb["ever_active"]))
    for x, y in zip(_rows(straight), _rows(tmp_path / "resumed"), strict=True):
        for key in ("train_loss", "val_accuracy", "itop_rate", "mask_change", "mask_updates"):
            assert x[key] == y[key], key


def test_rigl_moves_the_masks_and_keeps_the_plan_counts(straight_rigl):
    out, summary = straight_rigl
    loaded = load_run(out, "last")
    config = tiny_config(*RIGL)
    plan = tiny_config(*RIGL[:1])  # the same draw, static
    static_masks = load_run_masks_of(plan, out.parent / "static")
    assert _counts(loaded.masks) == _counts(static_masks)
    assert not loaded.masks.equal(static_masks)
    params = dict(loaded.model.named_parameters())
    assert all(torch.all(params[n].detach()[~m] == 0) for n, m in loaded.masks.items())
    assert summary["method"] == "rigl" and config.sparsity.method == "rigl"
    assert summary["mask_updates"] == 4  # after steps 2, 4, 6, 8 (< round(0.75 x 14) = 10)
    assert 0 < summary["mask_change"] < 0.3
    assert summary["itop_rate"] > summary["density"]
    rows = _rows(out)
    assert [r["mask_updates"] for r in rows] == [3, 1]
    assert rows[-1]["itop_rate"] == summary["itop_rate"]


def load_run_masks_of(config, out) -> MaskSet:
    if not (out / "checkpoints/last.pt").exists():
        fit(config, out)
    return load_run(out, "last").masks


def test_train_flops_follow_the_rigl_appendix(tmp_path, straight_rigl):
    _, rigl = straight_rigl
    static = fit(tiny_config("epochs=2"), tmp_path / "static")
    loaded = load_run(tmp_path / "static", "last")
    report = count_flops(loaded.model, (1, 12, 12), loaded.masks)
    examples = 7 * 64
    assert static["train_flops"] == pytest.approx(2 * 3 * report.sparse * examples * 2)
    assert static["method"] == "static" and static["mask_change"] == 0.0 and static["mask_updates"] == 0
    assert static["itop_rate"] == pytest.approx(static["density"])
    # four of RigL's steps read the dense gradient: 2 x sparse + 1 x dense forward MACs instead of 3 x sparse
    extra = 2 * (report.dense - report.sparse) * 64 * 4
    assert rigl["train_flops"] == pytest.approx(static["train_flops"] + extra)


@pytest.mark.parametrize("method", ["set", "gmp"])
def test_set_and_gmp_end_at_the_plan_counts(tmp_path, method):
    summary = fit(
        tiny_config("epochs=2", f"sparsity.method={method}", "sparsity.method_options={update_every: 3}"),
        tmp_path / "r",
    )
    loaded = load_run(tmp_path / "r", "last")
    static = load_run_masks_of(tiny_config("epochs=2"), tmp_path / "static")
    assert _counts(loaded.masks) == _counts(static)
    assert summary["method"] == method and summary["mask_updates"] > 0
    if method == "gmp":  # from dense: every weight was active once; more FLOPs than a run sparse from the start
        assert summary["itop_rate"] == 1.0
        assert _rows(tmp_path / "r")[0]["mask_change"] > 0


def test_a_checkpoint_with_other_counts_is_refused_on_resume(tmp_path, monkeypatch):
    config = tiny_config(*RIGL)
    with monkeypatch.context() as patch:
        _stop_after_step(patch, 3)
        with pytest.raises(Interrupted):
            fit(config, tmp_path / "run")
    path = tmp_path / "run/checkpoints/last.pt"
    state = load_checkpoint(path)
    masks = MaskSet.from_state_dict(state["masks"])
    first = next(iter(masks))
    changed = {n: m.clone() for n, m in masks.items()}
    flat = changed[first].view(-1)
    flat[flat.nonzero()[0]] = False  # one weight fewer than the plan keeps
    state["masks"] = MaskSet(changed).state_dict()
    save_checkpoint(path, {k: v for k, v in state.items() if k != "format"})
    before = path.read_bytes()
    with pytest.raises(MaskMismatchError, match="per-layer counts"):
        fit(config, tmp_path / "run", resume=True)
    assert path.read_bytes() == before


def test_every_update_checks_that_the_ranks_agree(tmp_path, monkeypatch):
    checked = []
    config = tiny_config("epochs=1", "sparsity.method=set", "sparsity.method_options={update_every: 3}")
    original = dynamic.Distributed.check_masks

    def record(self, masks):
        checked.append(_counts(masks))
        return original(self, masks)

    monkeypatch.setattr(dynamic.Distributed, "check_masks", record)
    fit(config, tmp_path / "r")
    assert len(checked) == 1 + 2  # at the start, then after steps 3 and 6


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sparsity.method_options={drop_fraction: 1.5}", "drop_fraction must be in (0, 1), got 1.5"),
        ("sparsity.method_options={update_every: 0}", "update_every must be at least 1"),
        ("sparsity.method_options={end_frac: 0.5}", "does not take option(s) end_frac"),
        ("sparsity=0", "needs a target"),
    ],
)
def test_bad_method_options_are_one_line_errors_with_exit_2(tmp_path, capsys, override, message):
    path = write_config(tmp_path / "config.yaml", tiny_config("epochs=1"))
    code = cli_main(["train", "--config", str(path), "--out", str(tmp_path / "r"), "sparsity.method=rigl", override])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    with pytest.raises(ConfigError):
        tiny_config("sparsity.method=rigl", override)
    assert not (tmp_path / "r").exists()


def test_a_step_the_loss_scaler_skips_does_not_move_the_update_steps(tmp_path, monkeypatch):
    import randsparse.train.loop as loop

    updates = []
    update = SparseTraining._update

    def record(self, step):
        updates.append(step)
        update(self, step)

    build_scaler = loop.precision.build_scaler

    def skipping_scaler(*args, **kwargs):
        scaler = build_scaler(*args, **kwargs)
        calls = {"n": 0}
        step = scaler.step

        def maybe_step(optimizer, *a, **k):  # step 2 overflows: the scaler skips the optimizer step
            calls["n"] += 1
            return None if calls["n"] == 2 else step(optimizer, *a, **k)

        scaler.step = maybe_step
        return scaler

    monkeypatch.setattr(SparseTraining, "_update", record)
    monkeypatch.setattr(loop.precision, "build_scaler", skipping_scaler)
    fit(tiny_config("epochs=1", "sparsity.method=set", "sparsity.method_options={update_every: 2}"), tmp_path / "r")
    assert updates == [2, 4, 6]


@pytest.mark.parametrize(
    "entry", ["not a mapping", {"state": {}, "train_flops": "x"}, {"state": {}, "ever_active": {"format": 0}}]
)
def test_a_corrupt_sparse_training_entry_is_a_file_format_error(tmp_path, straight_rigl, entry):
    from randsparse.errors import FileFormatError

    straight, _ = straight_rigl
    state = load_checkpoint(straight / "checkpoints/last.pt")
    if isinstance(entry, dict) and "ever_active" in entry:
        entry = {**state["sparse_training"], **entry}
    state["sparse_training"] = entry
    path = tmp_path / "bad.pt"
    save_checkpoint(path, {k: v for k, v in state.items() if k != "format"})
    with pytest.raises(FileFormatError, match="sparse_training"):
        load_checkpoint(path)


def test_the_weight_average_never_holds_a_weight_the_last_update_pruned(tmp_path):
    # GMP with end_fraction 1 prunes after the very last step: the average validated, tested and
    # checkpointed must already be masked by it (it was averaged before the update, and kept them).
    fit(
        tiny_config(
            "epochs=1",
            "eval=false",
            "optim.ema_decay=0.5",
            "sparsity.method=gmp",
            "sparsity.method_options={update_every: 3, end_fraction: 1.0}",
        ),
        tmp_path / "r",
    )
    state = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")
    masks = MaskSet.from_state_dict(state["masks"])
    assert state["sparse_training"] is not None
    for name, mask in masks.items():
        assert torch.all(state["ema"][name][~mask] == 0), name
