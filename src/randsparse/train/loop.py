"""`fit`: one sparse (or dense) training run from a config to a finished run directory.

The mask is drawn after the model is initialised, from its own seed, and held fixed by the sparsity
core's enforcement. Every epoch ends with validation, a checkpoint (atomic) and a metrics line; the
checkpoint with the best validation accuracy is kept apart, and the test set is touched only at the
end, to report the best and the last model. Resuming continues exactly where the checkpoint stood:
the data order of each epoch is a function of (seed, epoch), and every RNG state is restored.

Launched by torchrun, every process runs `fit` with the same arguments (see `distributed.py`): rank 0
draws the masks and writes the run directory, each process trains on its slice of every global
batch under DistributedDataParallel, and metrics are summed over the processes.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from randsparse.accel.auto_check import check_auto
from randsparse.accel.engine import engine_report, use_engine
from randsparse.accel.kept_optim import AUTO_MAX_DENSITY, use_kept_optimizer
from randsparse.data import EpochBatchSampler, EpochSampler, dataset_info
from randsparse.data import build as build_dataset
from randsparse.errors import ConfigError, RandsparseError
from randsparse.seeding import mix, seed_everything
from randsparse.sparsity import MaskSet, masks_from_model
from randsparse.train import precision
from randsparse.train.accumulation import first_micro_batch, micro_batches
from randsparse.train.checkpoint import Progress
from randsparse.train.compiled import compiled
from randsparse.train.config import TrainConfig
from randsparse.train.distributed import Distributed, persistent_buffers, resume_command, session, with_world_size
from randsparse.train.dynamic import start_sparse_training
from randsparse.train.ema import WeightEMA, averaged
from randsparse.train.evaluation import check_eval_data, eval_loader, evaluate_accuracy, final_evaluation, shard
from randsparse.train.identity import config_hash
from randsparse.train.optim import build_loss, build_optimizer, build_scheduler
from randsparse.train.pretrained import load_initial_weights
from randsparse.train.progress import EpochProgress
from randsparse.train.rundir import RunDir
from randsparse.train.setup import (
    Datasets,
    build_datasets,
    build_model,
    check_model_input,
    configure_determinism,
    draw_masks,
    draw_masks_on_main,
    train_batches,
)
from randsparse.train.signals import Interrupted, StopRequest, stop_on_signals
from randsparse.train.state import Run, RunFiles, RunHooks, restore, starting_state
from randsparse.train.summary import static_summary
from randsparse.train.tracking import open_tracker, step_values

__all__ = ["Diverged", "EpochBatchSampler", "EpochSampler", "Interrupted", "evaluate_accuracy", "fit"]

log = logging.getLogger(__name__)


class Diverged(RandsparseError):
    """The training loss became NaN or infinite."""


def _prepare(
    config: TrainConfig,
    run_dir: RunDir,
    model: nn.Module,
    masks: MaskSet | None,
    steps: int,
    dist: Distributed,
    input_shape: tuple[int, ...],
) -> Run:
    device = dist.device
    amp_dtype = precision.amp_dtype(config, device)
    if config.distributed.sync_batchnorm and dist.active:
        if device.type != "cuda":
            raise ConfigError("distributed.sync_batchnorm needs CUDA (SyncBatchNorm does not run on the CPU)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    optimizer = build_optimizer(model, config.optim)
    plan = masks  # the method says which masks training starts from (GMP: denser than the plan)
    sparse = start_sparse_training(config, model, plan, optimizer, steps * config.epochs, dist, input_shape)
    if sparse.handle is not None and sparse.method.dynamic:
        masks = sparse.handle.masks
    if sparse.handle is not None and config.engine != "dense":
        use_engine(model, config.engine)  # after attach: the engine engages the masked layers
        if device.type == "cpu":  # O(kept) optimizer steps; checkpoints keep dense-shaped state
            use_kept_optimizer(model, optimizer, 1.0 if config.engine == "sparse" else AUTO_MAX_DENSITY)
    dist.check_masks(masks_from_model(model))  # what each rank enforces, not what it was sent
    scheduler = build_scheduler(optimizer, config.schedule, steps, config.epochs, config.optim.lr)
    scaler = precision.build_scaler(config, device, amp_dtype)
    ema = WeightEMA(model, config.optim.ema_decay) if config.optim.ema_decay is not None else None
    return Run(
        config,
        run_dir,
        dist,
        RunFiles(run_dir, writes=dist.is_main),
        device,
        model,
        compiled(dist.wrap(model), config.compile),
        masks,
        optimizer,
        scheduler,
        scaler,
        amp_dtype,
        build_loss(config.optim),
        Progress(),
        config_hash(config),
        ema=ema,
        plan=plan,
        sparse=sparse,
    )


def _train_epoch(run: Run, loader: DataLoader, epoch: int, stop: StopRequest, bar: EpochProgress) -> dict:
    """Train one epoch (or its rest, after a mid-epoch resume); returns its train metrics.

    Each step sums loss, correct and count over the processes in one reduction that also carries
    whether any process was asked to stop, so every rank diverges, checkpoints and stops at the same step.
    """
    config, progress, dist = run.config, run.progress, run.dist
    run.net.train()
    sums = dict(progress.partial) or {"loss": 0.0, "correct": 0.0, "count": 0.0, "seconds": 0.0}
    started = time.perf_counter() - sums["seconds"]
    every = config.checkpoint_every_steps
    for inputs, targets in loader:
        what = f"step {progress.global_step + 1}"
        if config.engine == "auto" and run.amp_dtype is None:  # auto's choices, timed on the whole model
            check_auto(run.model, *first_micro_batch(inputs, targets, config.optim.accumulate_steps), run.loss_fn)
        if run.sparse is not None:
            run.sparse.before_step(progress.global_step + 1)
        with dist.guard(what):
            inputs = inputs.to(run.device, non_blocking=True)
            targets = targets.to(run.device, non_blocking=True)
            run.optimizer.zero_grad(set_to_none=True)
            local = torch.zeros(4, dtype=torch.float64, device=inputs.device)
            # One micro-batch unless optim.accumulate_steps asks for more (see accumulation.py).
            for x, y, share, sync in micro_batches(run.net, inputs, targets, config.optim.accumulate_steps):
                with sync:
                    with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
                        logits = run.net(x)
                        loss = run.loss_fn(logits.float(), y)
                    run.scaler.scale(loss if share == 1.0 else loss * share).backward()
                local[0] += loss.detach().double() * y.numel()
                local[1] += (logits.argmax(1) == y).sum().double()
                local[2] += y.numel()
            local[3] = float(bool(stop))
            loss_sum, correct, count, stops = dist.sum(local, what)
            if not math.isfinite(loss_sum):
                raise Diverged(f"loss became {loss_sum / count} at epoch {epoch + 1}, step {progress.global_step + 1}")
            if config.optim.grad_clip is not None:
                run.scaler.unscale_(run.optimizer)
                nn.utils.clip_grad_norm_(run.model.parameters(), config.optim.grad_clip)
            run.scaler.step(run.optimizer)
            run.scaler.update()
        if run.tracker is not None:
            run.tracker.log_step(progress.global_step + 1, step_values(run.optimizer, run.scaler, loss_sum / count))
        run.scheduler.step()
        progress.global_step += 1
        if run.sparse is not None:
            run.sparse.after_step(progress.global_step, count)  # the method's update, if this is its step
        if run.ema is not None:  # after any mask update: the average never holds a weight pruned now
            run.ema.update(run.model)
        progress.batch_in_epoch += 1
        if run.after_step is not None:
            run.after_step(run)
        sums["loss"] += loss_sum
        sums["correct"] += correct
        sums["count"] += count
        sums["seconds"] = time.perf_counter() - started
        bar.advance(sums)
        # One process decides alone only when it is alone; several agree through `stops`.
        stopping = stops > 0 if dist.active else bool(stop)
        if stopping or (every and progress.global_step % every == 0):
            progress.partial = dict(sums)
            run.save(run.run_dir.last_checkpoint)
            if stopping:
                raise Interrupted(
                    f"stopped by {stop.get('signal', 'a signal to another process')} at epoch {epoch + 1}, step"
                    f" {progress.global_step}; checkpoint saved; continue with:"
                    f" {resume_command(run.run_dir.path, run.dist.world_size)}",
                    stop.signal or "SIGINT",
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

    Under torchrun every process calls `fit` with the same arguments; `data.batch_size` is then each
    process's batch, and rank 0 writes `out_dir` and returns the full summary (the other ranks
    return it without the evaluation suite's results). See docs/distributed.md.
    """
    with session(config.distributed, config.device) as dist:
        config = with_world_size(config, dist.world_size)
        if config.sparsity.method == "lth":  # lottery tickets: one run per level, under out_dir/levels/
            from randsparse.train.lottery import fit_levels

            return fit_levels(config, RunDir(out_dir), dist, resume, show_progress)
        return _fit(config, RunDir(out_dir), dist, resume, show_progress)


def check_before_launch(config: TrainConfig, out_dir: str | Path, *, resume: bool = False) -> None:
    """Refuse once, before any process of a multi-process run starts, what each process would refuse.

    Checks the run directory, the dataset (downloading it here, once, when `data.download` allows),
    the OOD sets of the evaluation, whether the model takes the dataset's input, and the files of
    `model.init_from` and of saved masks; raises the
    `RandsparseError` `fit` would raise. Used by ``randsparse train --nproc N`` before torchrun.
    """
    if config.sparsity.method == "lth":
        from randsparse.train.lottery import check_top

        check_top(RunDir(out_dir), resume, config)
    else:
        starting_state(RunDir(out_dir), resume, config)
    data = config.data
    build_dataset(data.name, split="test", root=data.root, download=data.download, **data.options)
    info = dataset_info(data.name, root=data.root, **data.options)
    model = build_model(config.model, info)
    check_model_input(model, info.shape, config.model.name)
    check_eval_data(config, info)
    if config.model.init_from is not None:
        load_initial_weights(model, config.model.init_from)
    if config.sparsity.masks_file is not None or config.sparsity.masks_from_run is not None:
        draw_masks(config.sparsity, model, config.mask_seed)  # a saved draw: read and checked only


def _fit(
    config: TrainConfig,
    run_dir: RunDir,
    dist: Distributed,
    resume: bool,
    show_progress: bool | None,
    hooks: RunHooks | None = None,
) -> dict:
    # Signals are handled from here to the end: at once outside the training steps, after a step within them.
    with stop_on_signals() as stop:
        stop.phase = "while starting; nothing was trained yet: run the same command again"
        state = dist.from_main(lambda: starting_state(run_dir, resume, config), "reading the run directory")
        again = resume_command(run_dir.path, dist.world_size)
        if state is not None:
            stop.phase = f"while starting; continue with: {again}"
        configure_determinism(config.deterministic)
        seed_everything(config.seed)
        data = build_datasets(config.data)
        model = build_model(config.model, data.info)  # initialised from the run's seed, the same on every rank
        if config.model.init_from is not None:  # prune-then-finetune: the user's weights, then the masks
            load_initial_weights(model, config.model.init_from)
        input_shape = data.info.shape
        check_model_input(model, input_shape, config.model.name)
        check_eval_data(config, data.info)
        hooks = hooks or RunHooks()
        draw = hooks.masks or (lambda m: draw_masks_on_main(config, m, input_shape, dist))
        masks = draw(model)
        batches = train_batches(config, len(data.train), dist)
        run = _prepare(config, run_dir, model, masks, batches.steps_per_epoch, dist, input_shape)
        run.after_step = hooks.after_step
        if dist.rank > 0:  # rank 0 continues the single-process stream; the others get their own (dropout)
            seed_everything(mix(config.seed, dist.rank))
        if dist.is_main:
            run.tracker = open_tracker(config, run_dir.path, masks)
        try:
            if state is not None:
                restore(run, state)
                at = (run.progress.epoch + 1, run.progress.global_step)
                log.info("resuming %s at epoch %d, step %d", run_dir.path, *at)
            else:
                if hooks.start is not None:
                    hooks.start(run, batches.steps_per_epoch)
                run.files.write_config(config)
                log.info("training into %s", run_dir.path)
            run.files.write_metrics(run.progress.history)
        except BaseException:
            if run.tracker is not None:
                run.tracker.close()
            raise
        return _train_and_test(run, data, batches, stop, again, show_progress)


def _train_and_test(
    run: Run, data: Datasets, batches: EpochBatchSampler, stop: StopRequest, again: str, show_progress: bool | None
) -> dict:
    """The epochs, then the final test; the summary records how it ended (completed, diverged, interrupted, failed)."""
    config, dist = run.config, run.dist
    train_loader = DataLoader(
        data.train,
        batch_sampler=batches,
        num_workers=config.data.workers,
        pin_memory=run.device.type == "cuda",
        generator=torch.Generator(),
    )
    eval_size = config.data.eval_batch_size
    val_loader = None
    if data.val is not None:
        val_loader = eval_loader(shard(data.val, dist), eval_size, config.data.workers, run.device)
    show = bool(show_progress) and dist.is_main
    summary = None
    try:
        run.files.update_summary(
            **static_summary(run, data, data.info.shape), status="running", epochs=run.progress.epoch
        )
        stop.phase = f"during training (a second signal stops at once); continue from the last checkpoint with: {again}"
        with stop.deferring():
            for epoch in range(run.progress.epoch, config.epochs):
                batches.set_epoch(epoch, run.progress.batch_in_epoch)
                train_loader.generator.manual_seed(mix(config.seed, epoch, run.progress.batch_in_epoch, dist.rank))
                with EpochProgress(epoch + 1, config.epochs, len(train_loader), enabled=show) as bar:
                    row = _train_epoch(run, train_loader, epoch, stop, bar)
                _finish_epoch(run, epoch, row, val_loader)
        if stop:  # it came during the last validation: the last checkpoint holds the finished training
            raise Interrupted(f"stopped by {stop.signal} before the final test; finish it with: {again}", stop.signal)
        stop.phase = f"during the final test (training is complete and saved); finish it with: {again}"
        final = final_evaluation(run, data, eval_size)
        summary = run.files.update_summary(
            **final,
            status="completed",
            epochs=run.progress.epoch,
            best_val_accuracy=run.progress.best_val_accuracy,
            best_epoch=run.progress.best_epoch,
            train_seconds=run.progress.train_seconds,
            **(run.sparse.summary() if run.sparse is not None else {}),  # itop_rate, mask_change, train_flops, ...
            finished_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        )
    except Diverged as exc:
        log.error("%s; keeping the last good checkpoint", exc)
        summary = run.files.update_summary(status="diverged", error=str(exc), epochs=run.progress.epoch)
    except Interrupted:
        summary = run.files.update_summary(
            status="interrupted", epochs=run.progress.epoch, train_seconds=run.progress.train_seconds
        )
        raise
    except BaseException as exc:
        summary = run.files.update_summary(status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if run.tracker is not None:
            run.tracker.close(summary)
    return summary


def _finish_epoch(run: Run, epoch: int, row: dict[str, Any], val_loader: DataLoader | None) -> None:
    """Validate, record the epoch, and checkpoint (best first, then last)."""
    progress = run.progress
    # Each rank's BatchNorm statistics saw only its own batches: take rank 0's, the ones the checkpoint holds.
    run.dist.broadcast_from_main(persistent_buffers(run.model), "the end of the epoch")
    val = {}
    if val_loader is not None:
        with averaged(run.model, run.ema):  # with optim.ema_decay, the average is what is validated
            val = evaluate_accuracy(run.model, val_loader, run.loss_fn, run.device, run.amp_dtype, run.dist)
    lr = run.optimizer.param_groups[0]["lr"]
    record = {
        "epoch": epoch + 1,
        "lr": lr,
        **row,
        "val_loss": val.get("loss"),
        "val_accuracy": val.get("accuracy"),
        "step": progress.global_step,
        **(run.sparse.epoch_metrics() if run.sparse is not None else {}),  # itop_rate, mask_change, mask_updates
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
    run.files.write_metrics(progress.history)
    run.files.update_summary(epochs=progress.epoch, best_val_accuracy=progress.best_val_accuracy)
    if run.config.engine != "dense" and run.dist.is_main:
        run.run_dir.write_engine(engine_report(run.model))
    if run.tracker is not None:
        run.tracker.log_epoch(epoch + 1, record)
    if not run.dist.is_main:
        return
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
