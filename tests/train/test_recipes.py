"""Recipe knobs of a run: gradient accumulation, weight EMA, prune-then-finetune, saved masks, compile, CPU bf16."""

from __future__ import annotations

import json

import pytest
import torch

from randsparse.errors import ConfigError, FileFormatError, MaskMismatchError
from randsparse.sparsity import MaskSet, plan_sparsity, save_masks
from randsparse.train import Interrupted, RunDir, config_hash, fit, load_run
from randsparse.train.checkpoint import load_checkpoint
from randsparse.train.ema import WeightEMA
from randsparse.train.precision import amp_dtype
from randsparse.train.pretrained import load_initial_weights
from randsparse.train.setup import build_datasets, build_model
from tests._cli import run as run_cli
from tests.train._runs import signal_after_first_epoch, tiny_config, write_config

# A model without BatchNorm: micro-batches then make exactly the gradient of their whole batch.
MLP = ("model.name=mlp", "model.width=0.125", "model.options={image_size: 12, depth: 1}", "eval=false")


def _last(out) -> dict:
    return load_checkpoint(out / "checkpoints/last.pt")


def _interrupt_after_first_epoch_and_resume(config, out, monkeypatch) -> dict:
    """Stop `config`'s run by SIGINT one step into epoch 2, resume it, and return the summary."""
    with monkeypatch.context() as patch:
        signal_after_first_epoch(patch)
        with pytest.raises(Interrupted):
            fit(config, out)
    assert _last(out)["progress"]["batch_in_epoch"] == 1, "stopped one step into epoch 2"
    return fit(config, out, resume=True)


def _same_run(a, b) -> None:
    """Bit-identical weights (and weight averages) and metrics of two run directories."""
    sa, sb = _last(a), _last(b)
    for key in ("model", "ema"):
        if key in sa or key in sb:
            assert set(sa[key]) == set(sb[key])
            assert all(torch.equal(sa[key][k], sb[key][k]) for k in sa[key]), key
    rows_a, rows_b = (a / "metrics.jsonl").read_text().splitlines(), (b / "metrics.jsonl").read_text().splitlines()
    for x, y in zip(rows_a, rows_b, strict=True):
        x, y = json.loads(x), json.loads(y)
        for key in ("lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "step"):
            assert x[key] == y[key], key


# --- gradient accumulation -------------------------------------------------------------------------


def test_accumulation_is_the_global_batch_it_makes_up() -> None:
    accumulated = tiny_config("data.batch_size=32", "optim.accumulate_steps=2")
    assert accumulated.global_batch_size == 64
    assert config_hash(accumulated) == config_hash(tiny_config())
    assert config_hash(tiny_config("optim.accumulate_steps=2")) != config_hash(tiny_config())


def test_accumulated_micro_batches_train_like_their_whole_batch(tmp_path) -> None:
    whole = fit(tiny_config(*MLP, "epochs=1"), tmp_path / "whole")
    split = fit(tiny_config(*MLP, "epochs=1", "data.batch_size=16", "optim.accumulate_steps=4"), tmp_path / "split")
    assert whole["config_hash"] == split["config_hash"]
    a, b = _last(tmp_path / "whole")["model"], _last(tmp_path / "split")["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert not all(torch.equal(a[k], b[k]) for k in a), "the micro-batches really were separate passes"


def test_an_accumulating_run_resumes_bit_identically(tmp_path, monkeypatch) -> None:
    config = tiny_config("data.batch_size=32", "optim.accumulate_steps=2", "epochs=2")
    fit(config, tmp_path / "straight")
    assert _interrupt_after_first_epoch_and_resume(config, tmp_path / "resumed", monkeypatch)["status"] == "completed"
    _same_run(tmp_path / "straight", tmp_path / "resumed")


# --- weight EMA --------------------------------------------------------------------------------------


def test_the_average_follows_the_weights_with_its_decay_and_stays_masked() -> None:
    model = torch.nn.Linear(4, 3)
    mask = torch.rand(3, 4) > 0.5
    from randsparse.sparsity import attach

    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    attach(model, {"weight": mask}, optimizer)
    ema = WeightEMA(model, 0.9)
    before = {k: v.clone() for k, v in ema.average.items()}
    model(torch.randn(8, 4)).square().sum().backward()
    optimizer.step()
    ema.update(model)
    for name, p in model.named_parameters():
        assert torch.allclose(ema.average[name], 0.9 * before[name] + 0.1 * p.detach())
    assert torch.all(ema.average["weight"][~mask] == 0)
    with ema.swapped_in(model):
        assert torch.equal(model.weight, ema.average["weight"])
    assert not torch.equal(model.weight, ema.average["weight"])
    with pytest.raises(ValueError, match="ema_decay"):
        WeightEMA(model, 1.0)


def test_an_ema_run_tests_and_checkpoints_the_masked_average(tmp_path) -> None:
    out = tmp_path / "run"
    summary = fit(tiny_config("optim.ema_decay=0.9", "eval=false"), out)
    state = _last(out)
    masks = MaskSet.from_state_dict(state["masks"])
    for name, mask in masks.items():
        assert torch.all(state["ema"][name][~mask] == 0), name
        assert not torch.equal(state["ema"][name], state["model"][name])
    loaded = load_run(out, "last")  # eval and export read the average
    for name, p in loaded.model.named_parameters():
        assert torch.equal(p.detach(), state["ema"][name]), name
    from randsparse.train.evaluation import eval_loader, evaluate_accuracy

    data = build_datasets(loaded.config.data)
    loader = eval_loader(data.test, 256, 0, torch.device("cpu"))
    tested = evaluate_accuracy(loaded.model, loader, torch.nn.CrossEntropyLoss(), torch.device("cpu"), None)
    assert tested["accuracy"] == summary["test_accuracy_last"]
    assert config_hash(tiny_config("optim.ema_decay=0.9")) != config_hash(tiny_config())


def test_an_ema_run_resumes_bit_identically(tmp_path, monkeypatch) -> None:
    config = tiny_config("optim.ema_decay=0.8", "eval=false")
    fit(config, tmp_path / "straight")
    _interrupt_after_first_epoch_and_resume(config, tmp_path / "resumed", monkeypatch)
    _same_run(tmp_path / "straight", tmp_path / "resumed")


# --- prune-then-finetune ---------------------------------------------------------------------------


def test_init_from_loads_the_users_weights_before_pruning(tmp_path) -> None:
    config = tiny_config("epochs=1")
    model = build_model(config.model, build_datasets(config.data).info)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # unlike any initialisation
    torch.save({"model": {f"net.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "w.pt")  # prefixed
    # lr tiny and no momentum or decay: the trained weights are the loaded ones, pruned
    out = tmp_path / "run"
    tuned = tiny_config("epochs=1", f"model.init_from={tmp_path / 'w.pt'}", "optim.lr=1.0e-12", "optim.momentum=0")
    fit(tuned.model_copy(update={"optim": tuned.optim.model_copy(update={"weight_decay": 0.0})}), out)
    state = _last(out)
    masks = MaskSet.from_state_dict(state["masks"])
    for name, value in model.state_dict().items():
        expected = value * masks[name] if name in masks else value
        if value.is_floating_point() and "running" not in name:
            assert torch.allclose(state["model"][name], expected, atol=1e-6), name
    assert config_hash(tuned) != config_hash(tiny_config("epochs=1", "optim.lr=1.0e-12", "optim.momentum=0"))


def test_init_from_refuses_a_file_that_does_not_fit_in_one_line(tmp_path, capsys) -> None:
    model = torch.nn.Linear(3, 2)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(FileFormatError, match="corrupt or unreadable"):
        load_initial_weights(model, tmp_path / "junk.pt")
    torch.save({"weight": torch.zeros(2, 4), "bias": torch.zeros(2)}, tmp_path / "shape.pt")
    with pytest.raises(FileFormatError, match="'weight' has shape"):
        load_initial_weights(model, tmp_path / "shape.pt")
    torch.save({"other": torch.zeros(2)}, tmp_path / "keys.pt")
    with pytest.raises(FileFormatError, match="does not fit the model: no entry"):
        load_initial_weights(model, tmp_path / "keys.pt")
    with pytest.raises(FileFormatError, match="does not exist"):
        load_initial_weights(model, tmp_path / "absent.pt")
    config = write_config(tmp_path / "c.yaml", tiny_config(f"model.init_from={tmp_path / 'keys.pt'}"))
    code, _, err = run_cli(["train", "--config", str(config), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and err.count("\n") == 1 and "model.init_from" in err, err
    assert not (tmp_path / "run").exists()


# --- saved masks -----------------------------------------------------------------------------------


def _saved_draw(tmp_path, config, sparsity=0.7, seed=5):
    model = build_model(config.model, build_datasets(config.data).info)
    masks = plan_sparsity(model, sparsity, "uniform", seed).masks
    save_masks(masks, tmp_path / "masks.pt")
    return masks


def test_a_saved_draw_is_trained_as_it_is(tmp_path) -> None:
    base = tiny_config("epochs=1", "sparsity=0")
    masks = _saved_draw(tmp_path, base)
    config = tiny_config("epochs=1", "sparsity=0", f"sparsity.masks_file={tmp_path / 'masks.pt'}")
    assert not config.is_dense and config_hash(config) != config_hash(base)
    fit(config, tmp_path / "run")
    trained = MaskSet.from_state_dict(_last(tmp_path / "run")["masks"])
    assert trained.equal(masks)
    # ... and another run trains the masks of this one
    again = tiny_config("epochs=1", "seed=3", "sparsity=0", f"sparsity.masks_from_run={tmp_path / 'run'}")
    fit(again, tmp_path / "again")
    assert MaskSet.from_state_dict(_last(tmp_path / "again")["masks"]).equal(masks)


def test_saved_masks_that_do_not_fit_are_one_line_and_exit_2(tmp_path, capsys) -> None:
    _saved_draw(tmp_path, tiny_config("model.width=1.0"))  # another width: other shapes
    config = tiny_config("epochs=1", f"sparsity.masks_file={tmp_path / 'masks.pt'}", "sparsity=0")
    with pytest.raises(MaskMismatchError, match=r"masks_file .* do not fit the model: mask for .* has shape"):
        fit(config, tmp_path / "run")
    assert not (tmp_path / "run/config.yaml").exists()
    path = write_config(tmp_path / "c.yaml", config)
    code, _, err = run_cli(["train", "--config", str(path), "--out", str(tmp_path / "cli")], capsys)
    assert code == 2 and err.count("\n") == 1 and "do not fit the model" in err, err
    dense = tiny_config("sparsity=0", "epochs=1")
    fit(dense, tmp_path / "dense")
    with pytest.raises(FileFormatError, match="is a dense run"):
        fit(tiny_config("sparsity=0", f"sparsity.masks_from_run={tmp_path / 'dense'}"), tmp_path / "x")
    with pytest.raises(FileFormatError, match="holds no checkpoint"):
        fit(tiny_config("sparsity=0", f"sparsity.masks_from_run={tmp_path / 'nothing'}"), tmp_path / "y")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("sparsity.masks_file=m.pt", "sparsity=0.9"), "masks_file gives the masks .* drop sparsity"),
        (("sparsity.masks_file=m.pt", "sparsity.masks_from_run=r", "sparsity=0"), "either in masks_file or"),
        (("sparsity.masks_from_run=r", "sparsity=0", "sparsity.distribution=er"), "drop distribution"),
        (("optim.accumulate_steps=0",), "accumulate_steps"),
        (("optim.ema_decay=1.5",), "ema_decay"),
        (("logging.tracking_uri=x",), "tracking_uri needs mlflow=true"),
    ],
)
def test_recipe_options_are_validated_in_one_line(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        tiny_config(*overrides)
    assert "\n" not in str(caught.value)


# --- compile, CPU bf16, per-step TensorBoard ------------------------------------------------------------


def test_a_compiled_run_keeps_its_identity_and_its_masks(tmp_path) -> None:
    config = tiny_config("epochs=1", "compile=aot_eager", "eval=false")
    assert config_hash(config) == config_hash(tiny_config("epochs=1", "eval=false"))
    fit(config, tmp_path / "run")
    state = _last(tmp_path / "run")
    assert not any(k.startswith("_orig_mod") for k in state["model"])
    for name, mask in MaskSet.from_state_dict(state["masks"]).items():
        assert torch.all(state["model"][name][~mask] == 0)
    with pytest.raises(ConfigError, match=r"unknown torch\.compile backend 'nope'"):
        fit(tiny_config("compile=nope"), tmp_path / "nope")


def test_bf16_autocast_trains_on_the_cpu_and_fp16_is_refused(tmp_path) -> None:
    config = tiny_config("epochs=1", "amp=true", "amp_dtype=bf16", "eval=false")
    assert amp_dtype(config, torch.device("cpu")) is torch.bfloat16
    summary = fit(config, tmp_path / "run")
    assert summary["status"] == "completed"
    state = _last(tmp_path / "run")
    for name, mask in MaskSet.from_state_dict(state["masks"]).items():
        assert torch.all(state["model"][name][~mask] == 0)
    with pytest.raises(ConfigError, match="amp needs a CUDA device"):
        amp_dtype(tiny_config("amp=true"), torch.device("cpu"))


def test_tensorboard_gets_every_step_and_every_epoch(tmp_path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    summary = fit(tiny_config("tensorboard=true", "eval=false"), tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run/tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("step/train_loss")]
    last = RunDir(tmp_path / "run").read_summary()
    assert steps == list(range(1, _last(tmp_path / "run")["progress"]["global_step"] + 1))
    assert len(events.Scalars("step/lr")) == len(steps)
    assert [e.step for e in events.Scalars("train_loss")] == [1, 2]
    assert last["status"] == summary["status"] == "completed"


def test_the_launch_check_and_a_study_read_the_users_files_before_anything_starts(tmp_path) -> None:
    from randsparse.experiments.study import StudyConfig, expand
    from randsparse.train.loop import check_before_launch

    with pytest.raises(FileFormatError, match=r"model\.init_from .* does not exist"):
        check_before_launch(tiny_config(f"model.init_from={tmp_path / 'absent.pt'}"), tmp_path / "a")
    _saved_draw(tmp_path, tiny_config("model.width=1.0"))
    with pytest.raises(MaskMismatchError, match="do not fit the model"):
        check_before_launch(tiny_config("sparsity=0", f"sparsity.masks_file={tmp_path / 'masks.pt'}"), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    base = json.loads(tiny_config("sparsity=0").model_dump_json())
    base["sparsity"]["masks_file"] = str(tmp_path / "absent.pt")
    with pytest.raises(FileFormatError, match=r"absent\.pt"):
        expand(StudyConfig(grid={"seed": [0, 1]}, dense_baselines=False), base)
