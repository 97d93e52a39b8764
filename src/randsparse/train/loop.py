"""`fit`: one sparse (or dense) training run from a config to a finished run directory.

The mask is drawn after the model is initialised, from its own seed, and held fixed by the sparsity
core's enforcement. Every epoch ends with validation, a checkpoint (atomic) and a metrics line; the
checkpoint with the best validation accuracy is kept apart, and the test set is touched only at the
end, to report the best and the last model. Resuming continues exactly where the checkpoint stood:
the data order of each epoch is a function of (seed, epoch), and every RNG state is restored.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from randsparse import __version__
from randsparse.errors import ConfigError, FileFormatError, MaskMismatchError, RandsparseError
from randsparse.evaluate.complexity import count_flops, count_params
from randsparse.evaluate.trained import evaluate_trained
from randsparse.sparsity import MaskSet, attach, prunable_shapes
from randsparse.train.checkpoint import (
    Progress,
    load_checkpoint,
    restore_rng_states,
    rng_states,
    save_checkpoint,
    scheduler_state,
)
from randsparse.train.config import TrainConfig, config_hash
from randsparse.train.optim import build_loss, build_optimizer, build_scheduler
from randsparse.train.progress import EpochProgress
from randsparse.train.rundir import RunDir
from randsparse.train.setup import (
    build_datasets,
    build_model,
    configure_determinism,
    draw_masks,
    needs_scores,
    resolve_device,
    score_dataset,
    seed_everything,
)

log = logging.getLogger(__name__)


class Diverged(RandsparseError):
    """The training loss became NaN or infinite."""


class Interrupted(RandsparseError):
    """Training was stopped by a signal (Ctrl-C, SIGTERM) after saving a checkpoint."""


class EpochSampler(Sampler[int]):
    """A fresh random order for every epoch, a pure function of (seed, epoch); can start part-way."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Order of epoch `epoch` (0-based), skipping its first `start` items."""
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
        order = torch.randperm(self.size, generator=generator)
        return iter(order[self.start :].tolist())

    def __len__(self) -> int:
        return self.size - self.start


def _mix(*values: int) -> int:
    """Combine integers into one 63-bit seed (different inputs give unrelated streams)."""
    seed = 0x9E3779B97F4A7C15
    for value in values:
        seed = (seed ^ (value + 0x9E3779B97F4A7C15 + (seed << 6) + (seed >> 2))) % 2**63
    return seed


def _loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device, **kwargs: Any) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        **kwargs,
    )


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module, loader: DataLoader, loss_fn: nn.Module, device: torch.device, amp_dtype: torch.dtype | None
) -> dict[str, float]:
    """Mean loss and top-1 accuracy of `model` over `loader`, in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for inputs, targets in loader:
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(inputs)
        loss_sum += float(loss_fn(logits.float(), targets)) * targets.numel()
        correct += int((logits.argmax(1) == targets).sum())
        count += targets.numel()
    model.train(was_training)
    return {"loss": loss_sum / max(count, 1), "accuracy": correct / max(count, 1)}


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[dict[str, str]]:
    """Turn the first SIGINT/SIGTERM into a request to stop (checked after each step)."""
    request: dict[str, str] = {}
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: Any) -> None:
        request["signal"] = signal.Signals(signum).name
        signal.signal(signum, previous[signum])  # a second one stops at once

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, handler)
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@dataclass
class _Run:
    """The live objects of a run."""

    config: TrainConfig
    run_dir: RunDir
    device: torch.device
    model: nn.Module
    masks: MaskSet | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    loss_fn: nn.Module
    progress: Progress
    identity: str
    writer: Any = None  # TensorBoard SummaryWriter, when asked for

    def checkpoint_payload(self) -> dict[str, Any]:
        return {
            "config_hash": self.identity,
            "config": self.config.model_dump(mode="json"),
            "model": self.model.state_dict(),
            "masks": self.masks.state_dict() if self.masks is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": scheduler_state(self.scheduler),
            "scaler": self.scaler.state_dict(),
            "rng": rng_states(),
            "progress": self.progress.to_dict(),
            "randsparse_version": __version__,
        }

    def save(self, path: Path) -> None:
        save_checkpoint(path, self.checkpoint_payload())


def _amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if not config.amp:
        return None
    if device.type != "cuda":
        raise ConfigError(f"amp needs a CUDA device, but this run is on {device.type}; set amp=false")
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _prepare(config: TrainConfig, run_dir: RunDir, model: nn.Module, masks: MaskSet | None, steps: int) -> _Run:
    device = resolve_device(config.device)
    amp_dtype = _amp_dtype(config, device)
    model.to(device)
    optimizer = build_optimizer(model, config.optim)
    if masks is not None:
        attach(model, masks, optimizer)
    scheduler = build_scheduler(optimizer, config.schedule, steps, config.epochs, config.optim.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return _Run(
        config,
        run_dir,
        device,
        model,
        masks,
        optimizer,
        scheduler,
        scaler,
        amp_dtype,
        build_loss(config.optim),
        Progress(),
        config_hash(config),
    )


def _restore(run: _Run, state: dict[str, Any]) -> None:
    """Load a checkpoint into a freshly prepared run; a mismatch changes nothing on disk."""
    if state["config_hash"] != run.identity:
        raise ConfigError(
            f"the checkpoint in {str(run.run_dir.path)!r} belongs to config {state['config_hash']}, not to this"
            f" config ({run.identity}); resume with the run's own config.yaml (drop the overrides)"
        )
    saved_masks = state.get("masks")
    if (saved_masks is None) != (run.masks is None):
        raise MaskMismatchError("the checkpoint's masks do not match the config (dense vs sparse)")
    if saved_masks is not None:
        try:
            masks = MaskSet.from_state_dict(saved_masks)
        except MaskMismatchError as exc:
            raise FileFormatError(f"checkpoint masks are corrupt: {exc}") from None
        masks.validate(run.model, expected=list(run.masks))
        if not masks.equal(run.masks):
            raise MaskMismatchError("the checkpoint's masks differ from the masks this config draws")
    try:
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        run.scaler.load_state_dict(state["scaler"])
        run.progress = Progress.from_dict(state["progress"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise FileFormatError(f"the checkpoint does not fit this model/config: {reason}") from None
    restore_rng_states(state["rng"])


def _train_epoch(run: _Run, loader: DataLoader, epoch: int, stop: dict[str, str], bar: EpochProgress) -> dict:
    """Train one epoch (or its rest, after a mid-epoch resume); returns its train metrics."""
    config, model, progress = run.config, run.model, run.progress
    model.train()
    sums = dict(progress.partial) or {"loss": 0.0, "correct": 0.0, "count": 0.0, "seconds": 0.0}
    started = time.perf_counter() - sums["seconds"]
    every = config.checkpoint_every_steps
    for inputs, targets in loader:
        inputs = inputs.to(run.device, non_blocking=True)
        targets = targets.to(run.device, non_blocking=True)
        with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
            logits = model(inputs)
            loss = run.loss_fn(logits.float(), targets)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise Diverged(f"loss became {loss_value} at epoch {epoch + 1}, step {progress.global_step + 1}")
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        if config.optim.grad_clip is not None:
            run.scaler.unscale_(run.optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        progress.global_step += 1
        progress.batch_in_epoch += 1
        sums["loss"] += loss_value * targets.numel()
        sums["correct"] += float((logits.argmax(1) == targets).sum())
        sums["count"] += targets.numel()
        sums["seconds"] = time.perf_counter() - started
        bar.advance(sums)
        if stop or (every and progress.global_step % every == 0):
            progress.partial = dict(sums)
            run.save(run.run_dir.last_checkpoint)
            if stop:
                raise Interrupted(
                    f"stopped by {stop['signal']} at epoch {epoch + 1}, step {progress.global_step}; checkpoint"
                    f" saved; continue with: randsparse train --resume {run.run_dir.path}"
                )
    progress.partial = {}
    seconds = time.perf_counter() - started
    count = max(sums["count"], 1)
    return {
        "train_loss": sums["loss"] / count,
        "train_accuracy": sums["correct"] / count,
        "seconds": seconds,
        "images_per_second": sums["count"] / seconds if seconds > 0 else None,
    }


def fit(
    config: TrainConfig, out_dir: str | Path, *, resume: bool = False, show_progress: bool | None = None
) -> dict[str, Any]:
    """Train the run described by `config` into `out_dir`; returns its summary.

    With `resume`, `out_dir` must hold a checkpoint of the same config, and training continues
    from it; otherwise `out_dir` must not hold a run yet, so nothing existing is overwritten.
    """
    run_dir = RunDir(out_dir)
    if resume:
        if not run_dir.last_checkpoint.is_file():
            raise FileFormatError(f"nothing to resume in {str(run_dir.path)!r}: no checkpoints/last.pt")
        state = load_checkpoint(run_dir.last_checkpoint)  # refuse a corrupt file before touching anything
    elif run_dir.has_run():
        raise ConfigError(
            f"{str(run_dir.path)!r} already holds a run; resume it with --resume, or choose another --out"
        )
    configure_determinism(config.deterministic)
    seed_everything(config.seed)
    data = build_datasets(config.data)
    model = build_model(config.model, data.info)  # initialised from the run's seed
    input_shape = (data.info.channels, data.info.image_size, data.info.image_size)
    score_data = None
    if needs_scores(config.sparsity):  # saliency scores are taken on un-augmented training images
        score_data = score_dataset(config.data)
    masks = draw_masks(config.sparsity, model, config.mask_seed, score_data, input_shape)
    batch_size = config.data.batch_size
    drop_last = len(data.train) >= 2 * batch_size  # full batches (BatchNorm), unless the set is tiny
    steps = len(data.train) // batch_size if drop_last else math.ceil(len(data.train) / batch_size)
    run = _prepare(config, run_dir, model, masks, steps)
    if config.tensorboard:
        run.writer = _tensorboard_writer(run_dir.path / "tensorboard")
    if resume:
        _restore(run, state)
        log.info("resuming %s at epoch %d, step %d", run_dir.path, run.progress.epoch + 1, run.progress.global_step)
    else:
        run_dir.write_config(config)
        log.info("training into %s", run_dir.path)
    run_dir.write_metrics(run.progress.history)

    static = _static_summary(run, data, input_shape)
    run_dir.update_summary(**static, status="running", epochs=run.progress.epoch)

    sampler = EpochSampler(len(data.train), config.seed)
    train_loader = _loader(
        data.train, batch_size, config.data.workers, run.device, sampler=sampler, drop_last=drop_last,
        generator=torch.Generator(),
    )  # fmt: skip
    eval_size = config.data.eval_batch_size
    val_loader = _loader(data.val, eval_size, config.data.workers, run.device) if data.val is not None else None
    show = show_progress if show_progress is not None else False
    try:
        with _stop_on_signals() as stop:
            for epoch in range(run.progress.epoch, config.epochs):
                sampler.set_epoch(epoch, run.progress.batch_in_epoch * batch_size)
                train_loader.generator.manual_seed(_mix(config.seed, epoch, run.progress.batch_in_epoch))
                with EpochProgress(epoch + 1, config.epochs, len(train_loader), enabled=show) as bar:
                    row = _train_epoch(run, train_loader, epoch, stop, bar)
                _finish_epoch(run, epoch, row, val_loader)
        status = "completed"
    except Diverged as exc:
        status = "diverged"
        log.error("%s; keeping the last good checkpoint", exc)
        run_dir.update_summary(status=status, error=str(exc), epochs=run.progress.epoch)
        return run_dir.read_summary()
    except Interrupted:
        status = "interrupted"
        run_dir.update_summary(status=status, epochs=run.progress.epoch, train_seconds=run.progress.train_seconds)
        raise
    except BaseException as exc:
        run_dir.update_summary(status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if run.writer is not None:
            run.writer.close()
    final = _final_evaluation(run, data, eval_size)
    return run_dir.update_summary(
        **final,
        status=status,
        epochs=run.progress.epoch,
        best_val_accuracy=run.progress.best_val_accuracy,
        best_epoch=run.progress.best_epoch,
        train_seconds=run.progress.train_seconds,
        finished_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )


def _tensorboard_writer(path: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("tensorboard=true needs TensorBoard: pip install 'randsparse[tensorboard]'") from None
    return SummaryWriter(str(path))


def _finish_epoch(run: _Run, epoch: int, row: dict[str, Any], val_loader: DataLoader | None) -> None:
    """Validate, record the epoch, and checkpoint (best first, then last)."""
    progress = run.progress
    val = evaluate_accuracy(run.model, val_loader, run.loss_fn, run.device, run.amp_dtype) if val_loader else {}
    lr = run.optimizer.param_groups[0]["lr"]
    record = {
        "epoch": epoch + 1,
        "lr": lr,
        **row,
        "val_loss": val.get("loss"),
        "val_accuracy": val.get("accuracy"),
        "step": progress.global_step,
    }
    progress.history.append(record)
    progress.epoch = epoch + 1
    progress.batch_in_epoch = 0
    progress.train_seconds += row["seconds"]
    improved = val and (progress.best_val_accuracy is None or val["accuracy"] > progress.best_val_accuracy)
    if improved:
        progress.best_val_accuracy, progress.best_epoch = val["accuracy"], epoch + 1
    if improved or val_loader is None:  # without validation, the best model is the last one
        run.save(run.run_dir.best_checkpoint)
    run.save(run.run_dir.last_checkpoint)
    run.run_dir.write_metrics(progress.history)
    run.run_dir.update_summary(epochs=progress.epoch, best_val_accuracy=progress.best_val_accuracy)
    if run.writer is not None:
        for key, value in record.items():
            if key not in ("epoch", "step") and isinstance(value, (int, float)):
                run.writer.add_scalar(key, value, epoch + 1)
        run.writer.flush()
    val_text = f", val loss {val['loss']:.4f} acc {val['accuracy']:.4f}" if val else ""
    log.info(
        "epoch %d/%d: train loss %.4f acc %.4f%s, %.1f s, %.0f img/s",
        epoch + 1,
        run.config.epochs,
        row["train_loss"],
        row["train_accuracy"],
        val_text,
        row["seconds"],
        row["images_per_second"] or 0,
    )


def _final_evaluation(run: _Run, data: Any, batch_size: int) -> dict[str, Any]:
    """Test accuracy of the last model and of the best-on-validation model; the eval suite on the best."""
    loader = _loader(data.test, batch_size, run.config.data.workers, run.device)
    last = evaluate_accuracy(run.model, loader, run.loss_fn, run.device, run.amp_dtype)
    best = last
    current = None
    best_epoch = run.progress.best_epoch or run.progress.epoch
    if best_epoch != run.progress.epoch:
        best_state = load_checkpoint(run.run_dir.best_checkpoint)
        current = {k: v.clone() for k, v in run.model.state_dict().items()}
        run.model.load_state_dict(best_state["model"])
        best = evaluate_accuracy(run.model, loader, run.loss_fn, run.device, run.amp_dtype)
    result = {
        "test_accuracy": best["accuracy"],
        "test_loss": best["loss"],
        "test_accuracy_last": last["accuracy"],
        "test_loss_last": last["loss"],
    }
    options = run.config.eval
    if options.calibration or options.ood or options.attacks:
        identity = f"{run.identity}-best-epoch{best_epoch}"
        result["eval"] = evaluate_trained(
            run.model, run.config.data, data.info, options, out_dir=run.run_dir.path, identity=identity
        )
    if current is not None:
        run.model.load_state_dict(current)
    return result


def _static_summary(run: _Run, data: Any, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """What a run is, known before training: sizes, FLOPs, identity."""
    params = count_params(run.model, run.masks)
    flops = count_flops(run.model, input_shape, run.masks)
    config = run.config
    return {
        "config_hash": run.identity,
        "model": config.model.name,
        "dataset": config.data.name,
        "sparsity": config.sparsity.sparsity,
        "distribution": None if config.is_dense else config.sparsity.distribution,
        "params_total": params.total,
        "params_prunable": params.prunable,
        "params_nonzero": params.nonzero,
        "density": params.density,
        "prunable_layers": len(prunable_shapes(run.model)),
        "flops_dense": flops.dense,
        "flops_sparse": flops.sparse,
        "train_size": len(data.train),
        "val_size": len(data.val) if data.val is not None else 0,
        "test_size": len(data.test),
        "device": str(run.device),
        "host": socket.gethostname(),
        "torch_version": torch.__version__,
        "randsparse_version": __version__,
    }
