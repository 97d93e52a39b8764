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
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from randsparse import __version__
from randsparse.data import SeededIndices, build_ood, dataset_info
from randsparse.data import build as build_dataset
from randsparse.errors import ConfigError, FileFormatError, MaskMismatchError, RandsparseError
from randsparse.evaluate.complexity import count_flops, count_params
from randsparse.evaluate.trained import evaluate_trained
from randsparse.models import ModelSpec
from randsparse.sparsity import MaskSet, attach, masks_from_model, prunable_shapes
from randsparse.train import precision
from randsparse.train.checkpoint import (
    Progress,
    load_checkpoint,
    restore_rng_states,
    rng_states,
    save_checkpoint,
    scheduler_state,
)
from randsparse.train.config import TrainConfig
from randsparse.train.distributed import (
    Distributed,
    model_state_tensors,
    persistent_buffers,
    resume_command,
    session,
    with_world_size,
)
from randsparse.train.identity import IDENTITY_VERSION, checkpoint_matches, config_hash
from randsparse.train.optim import build_loss, build_optimizer, build_scheduler
from randsparse.train.progress import EpochProgress
from randsparse.train.rundir import RunDir
from randsparse.train.setup import (
    build_datasets,
    build_model,
    check_model_input,
    configure_determinism,
    draw_masks,
    needs_scores,
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


class EpochBatchSampler(Sampler[list[int]]):
    """One process's batches of an epoch: `EpochSampler`'s order cut into global batches, one slice per process.

    A global batch holds ``batch_size x world_size`` items; process `rank` takes its `rank`-th slice
    of `batch_size`. So the union of the processes' batches at step k is the single-process batch at
    step k of the same global size, whatever the number of processes. Every batch carries the seed of
    its augmentation (`SeededIndices`), a function of (seed, epoch, step, rank): a mid-epoch resume
    replays the same augmentation, with any number of loader workers. Several processes need full
    global batches (`drop_last`), so that each one's gradient weighs as much as the others'.
    """

    def __init__(
        self, order: EpochSampler, batch_size: int, *, drop_last: bool, rank: int = 0, world_size: int = 1
    ) -> None:
        if world_size > 1 and not drop_last:
            raise ValueError("several processes need full global batches: drop_last=True")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.order = order
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.start_step = 0

    @property
    def global_batch_size(self) -> int:
        """Items per step over all processes."""
        return self.batch_size * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in a whole epoch."""
        size, batch = self.order.size, self.global_batch_size
        return size // batch if self.drop_last else math.ceil(size / batch)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Batches of epoch `epoch` (0-based), from step `start_step` of it on."""
        self.start_step = start_step
        self.order.set_epoch(epoch, min(start_step * self.global_batch_size, self.order.size))

    def __iter__(self) -> Iterator[list[int]]:
        order = list(self.order)
        batch, first = self.global_batch_size, self.rank * self.batch_size
        for k in range(len(self)):
            step = self.start_step + k
            mine = order[k * batch : (k + 1) * batch][first : first + self.batch_size]
            yield SeededIndices(mine, seed=_mix(self.order.seed, self.order.epoch, step, self.rank))

    def __len__(self) -> int:
        return max(self.steps_per_epoch - self.start_step, 0)


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


def _shard(dataset: Dataset, dist: Distributed) -> Dataset:
    """This process's share of an evaluation set (every `world_size`-th item), or the whole set in one process."""
    if not dist.active:
        return dataset
    return Subset(dataset, range(dist.rank, len(dataset), dist.world_size))  # type: ignore[arg-type]


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    dist: Distributed | None = None,
) -> dict[str, float]:
    """Mean loss and top-1 accuracy of `model` over `loader`, in eval mode.

    With `dist`, each process passes its shard of the set and the sums are taken over all of them.
    """
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
    if dist is not None and dist.active:
        loss_sum, correct, count = dist.sum(torch.tensor([loss_sum, correct, count], dtype=torch.float64))
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


class _RunFiles:
    """The run directory as one process sees it: rank 0 writes it, the other ranks keep the summary in memory."""

    def __init__(self, run_dir: RunDir, writes: bool) -> None:
        self.run_dir = run_dir
        self.writes = writes
        self._summary: dict[str, Any] = {}

    def write_config(self, config: TrainConfig) -> None:
        if self.writes:
            self.run_dir.write_config(config)

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        if self.writes:
            self.run_dir.write_metrics(history)

    def update_summary(self, **fields: Any) -> dict[str, Any]:
        if self.writes:
            return self.run_dir.update_summary(**fields)
        self._summary.update(fields)
        return dict(self._summary)

    def save_checkpoint(self, path: Path, payload: dict[str, Any]) -> None:
        if self.writes:
            save_checkpoint(path, payload)


@dataclass
class _Run:
    """The live objects of a run."""

    config: TrainConfig
    run_dir: RunDir
    dist: Distributed
    files: _RunFiles
    device: torch.device
    model: nn.Module  # the model itself: its state dict has no DDP "module." prefix
    net: nn.Module  # what trains: `model`, or `model` in DistributedDataParallel
    masks: MaskSet | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    loss_fn: nn.Module
    progress: Progress
    identity: str
    writer: Any = None  # TensorBoard SummaryWriter, when asked for

    def checkpoint_payload(self, rank_rng: list[dict[str, Any]]) -> dict[str, Any]:
        """What a checkpoint holds; `rank_rng` are the RNG states of every rank, rank 0's first."""
        payload = {
            "config_hash": self.identity,
            "config": self.config.model_dump(mode="json"),
            "model": self.model.state_dict(),
            "masks": self.masks.state_dict() if self.masks is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": scheduler_state(self.scheduler),
            "scaler": self.scaler.state_dict(),
            "rng": rank_rng[0],
            "world_size": self.dist.world_size,
            "progress": self.progress.to_dict(),
            "randsparse_version": __version__,
            "identity_version": IDENTITY_VERSION,
        }
        if len(rank_rng) > 1:
            payload["rank_rng"] = rank_rng
        return payload

    def save(self, path: Path) -> None:
        """Checkpoint to `path` (rank 0 writes; every rank must call it, as it gathers their RNG states)."""
        rank_rng = self.dist.gather_to_main(rng_states())
        if rank_rng is not None:
            self.files.save_checkpoint(path, self.checkpoint_payload(rank_rng))


def _prepare(
    config: TrainConfig, run_dir: RunDir, model: nn.Module, masks: MaskSet | None, steps: int, dist: Distributed
) -> _Run:
    device = dist.device
    amp_dtype = precision.amp_dtype(config, device)
    if config.distributed.sync_batchnorm and dist.active:
        if device.type != "cuda":
            raise ConfigError("distributed.sync_batchnorm needs CUDA (SyncBatchNorm does not run on the CPU)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    optimizer = build_optimizer(model, config.optim)
    if masks is not None:
        attach(model, masks, optimizer)
    dist.check_masks(masks_from_model(model))  # what each rank enforces, not what it was sent
    scheduler = build_scheduler(optimizer, config.schedule, steps, config.epochs, config.optim.lr)
    scaler = precision.build_scaler(config, device, amp_dtype)
    return _Run(
        config,
        run_dir,
        dist,
        _RunFiles(run_dir, writes=dist.is_main),
        device,
        model,
        dist.wrap(model),
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
    if not checkpoint_matches(state, run.config, repr(str(run.run_dir.last_checkpoint))):
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
        _restore_rank_rng(run, state)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        if isinstance(exc, KeyError):
            reason = f"it has no entry {exc}"
        raise FileFormatError(f"the checkpoint does not fit this model/config: {reason}") from None


def _restore_rank_rng(run: _Run, state: dict[str, Any]) -> None:
    """This rank's RNG states from the checkpoint: its own if it was written by as many processes, else reseeded.

    Rank 0 always continues the checkpoint's main stream. With another number of processes the other
    ranks' streams (dropout, third-party transforms) restart from (seed, rank, step): data order,
    global batch and schedule still continue exactly, but the result is no longer bit-identical.
    """
    saved_world = int(state.get("world_size", 1))
    if run.dist.is_main and saved_world != run.dist.world_size:
        log.warning(
            "resuming a run checkpointed by %d process(es) on %d: ranks other than 0 draw new random streams",
            saved_world,
            run.dist.world_size,
        )
    if run.dist.is_main:
        restore_rng_states(state["rng"])
    elif saved_world == run.dist.world_size and "rank_rng" in state:
        restore_rng_states(state["rank_rng"][run.dist.rank])
    else:
        seed_everything(_mix(run.config.seed, run.dist.rank, run.progress.global_step))


def _train_epoch(run: _Run, loader: DataLoader, epoch: int, stop: dict[str, str], bar: EpochProgress) -> dict:
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
        with dist.guard(what):
            inputs = inputs.to(run.device, non_blocking=True)
            targets = targets.to(run.device, non_blocking=True)
            with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
                logits = run.net(inputs)
                loss = run.loss_fn(logits.float(), targets)
            local = torch.stack(
                [
                    loss.detach().double() * targets.numel(),
                    (logits.argmax(1) == targets).sum().double(),
                    torch.tensor(float(targets.numel()), dtype=torch.float64, device=loss.device),
                    torch.tensor(float(bool(stop)), dtype=torch.float64, device=loss.device),
                ]
            )
            loss_sum, correct, count, stops = dist.sum(local, what)
            if not math.isfinite(loss_sum):
                raise Diverged(f"loss became {loss_sum / count} at epoch {epoch + 1}, step {progress.global_step + 1}")
            run.optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()
            if config.optim.grad_clip is not None:
                run.scaler.unscale_(run.optimizer)
                nn.utils.clip_grad_norm_(run.model.parameters(), config.optim.grad_clip)
            run.scaler.step(run.optimizer)
            run.scaler.update()
        run.scheduler.step()
        progress.global_step += 1
        progress.batch_in_epoch += 1
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
                    f" {resume_command(run.run_dir.path, run.dist.world_size)}"
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
        return _fit(config, RunDir(out_dir), dist, resume, show_progress)


def _starting_state(run_dir: RunDir, resume: bool, config: TrainConfig) -> dict[str, Any] | None:
    """The checkpoint to resume from (None to start afresh), refusing a run directory that does not fit.

    A run that stopped before its first checkpoint (killed in epoch 1) has nothing to resume: the
    same config simply starts again there, with or without `resume`.
    """
    if run_dir.last_checkpoint.is_file():
        if not resume:
            raise ConfigError(
                f"{str(run_dir.path)!r} already holds a run; resume it with --resume, or choose another --out"
            )
        return load_checkpoint(run_dir.last_checkpoint)  # refuse a corrupt file before touching anything
    if run_dir.config_file.is_file():
        if config_hash(run_dir.read_config()) != config_hash(config):
            raise ConfigError(
                f"{str(run_dir.path)!r} holds another run (a different config.yaml); choose another --out"
            )
        log.warning("%s stopped before its first checkpoint: starting it again", run_dir.path)
        return None
    if resume:
        raise FileFormatError(f"nothing to resume in {str(run_dir.path)!r}: no checkpoints/last.pt")
    return None


def check_before_launch(config: TrainConfig, out_dir: str | Path, *, resume: bool = False) -> None:
    """Refuse once, before any process of a multi-process run starts, what each process would refuse.

    Checks the run directory, the dataset (downloading it here, once, when `data.download` allows),
    the OOD sets of the evaluation and whether the model takes the dataset's input; raises the
    `RandsparseError` `fit` would raise. Used by ``randsparse train --nproc N`` before torchrun.
    """
    _starting_state(RunDir(out_dir), resume, config)
    data = config.data
    build_dataset(data.name, split="test", root=data.root, download=data.download, **data.options)
    info = dataset_info(data.name, root=data.root, **data.options)
    check_model_input(build_model(config.model, info), info.shape, config.model.name)
    _check_eval_data(config, info)


def _draw_masks_on_main(
    config: TrainConfig, model: nn.Module, input_shape: tuple[int, ...], dist: Distributed
) -> MaskSet | None:
    """The run's masks, drawn (or scored) once on rank 0 and sent, bit-packed, to every rank."""

    def draw() -> dict[str, Any] | None:
        score_data = None
        if needs_scores(config.sparsity):  # saliency scores are taken on un-augmented training images
            score_data = score_dataset(config.data)
        masks = draw_masks(config.sparsity, model, config.mask_seed, score_data, input_shape)
        return masks.state_dict() if masks is not None else None

    packed = dist.from_main(draw, "drawing the masks")
    return MaskSet.from_state_dict(packed) if packed is not None else None


def _train_batches(config: TrainConfig, size: int, dist: Distributed) -> EpochBatchSampler:
    """This process's batch sampler; several processes take full global batches only."""
    batch = config.data.batch_size
    if dist.active:
        if size < config.global_batch_size:
            raise ConfigError(
                f"the training set ({size} examples) is smaller than one global batch ({dist.world_size} processes"
                f" x data.batch_size {batch}); use fewer processes or a smaller data.batch_size"
            )
        drop_last = True
    else:
        drop_last = size >= 2 * batch  # full batches (BatchNorm), unless the set is tiny
    order = EpochSampler(size, config.seed)
    return EpochBatchSampler(order, batch, drop_last=drop_last, rank=dist.rank, world_size=dist.world_size)


def _fit(config: TrainConfig, run_dir: RunDir, dist: Distributed, resume: bool, show_progress: bool | None) -> dict:
    state = dist.from_main(lambda: _starting_state(run_dir, resume, config), "reading the run directory")
    configure_determinism(config.deterministic)
    seed_everything(config.seed)
    data = build_datasets(config.data)
    model = build_model(config.model, data.info)  # initialised from the run's seed, the same on every rank
    input_shape = data.info.shape
    check_model_input(model, input_shape, config.model.name)
    _check_eval_data(config, data.info)
    masks = _draw_masks_on_main(config, model, input_shape, dist)
    batches = _train_batches(config, len(data.train), dist)
    run = _prepare(config, run_dir, model, masks, batches.steps_per_epoch, dist)
    if dist.rank > 0:  # rank 0 continues the single-process stream; the others get their own (dropout)
        seed_everything(_mix(config.seed, dist.rank))
    if config.tensorboard and dist.is_main:
        run.writer = _tensorboard_writer(run_dir.path / "tensorboard")
    if state is not None:
        _restore(run, state)
        log.info("resuming %s at epoch %d, step %d", run_dir.path, run.progress.epoch + 1, run.progress.global_step)
    else:
        run.files.write_config(config)
        log.info("training into %s", run_dir.path)
    run.files.write_metrics(run.progress.history)

    static = _static_summary(run, data, input_shape)
    run.files.update_summary(**static, status="running", epochs=run.progress.epoch)

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
        val_loader = _loader(_shard(data.val, dist), eval_size, config.data.workers, run.device)
    show = bool(show_progress) and dist.is_main
    try:
        with _stop_on_signals() as stop:
            for epoch in range(run.progress.epoch, config.epochs):
                batches.set_epoch(epoch, run.progress.batch_in_epoch)
                train_loader.generator.manual_seed(_mix(config.seed, epoch, run.progress.batch_in_epoch, dist.rank))
                with EpochProgress(epoch + 1, config.epochs, len(train_loader), enabled=show) as bar:
                    row = _train_epoch(run, train_loader, epoch, stop, bar)
                _finish_epoch(run, epoch, row, val_loader)
        status = "completed"
    except Diverged as exc:
        status = "diverged"
        log.error("%s; keeping the last good checkpoint", exc)
        return run.files.update_summary(status=status, error=str(exc), epochs=run.progress.epoch)
    except Interrupted:
        status = "interrupted"
        run.files.update_summary(status=status, epochs=run.progress.epoch, train_seconds=run.progress.train_seconds)
        raise
    except BaseException as exc:
        run.files.update_summary(status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if run.writer is not None:
            run.writer.close()
    final = _final_evaluation(run, data, eval_size)
    return run.files.update_summary(
        **final,
        status=status,
        epochs=run.progress.epoch,
        best_val_accuracy=run.progress.best_val_accuracy,
        best_epoch=run.progress.best_epoch,
        train_seconds=run.progress.train_seconds,
        finished_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )


def _check_eval_data(config: TrainConfig, info: Any) -> None:
    """The OOD sets the end-of-training evaluation needs, checked before training, not after it."""
    for name in config.eval.ood:
        build_ood(info, name, root=config.data.root, download=config.data.download)


def _tensorboard_writer(path: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("tensorboard=true needs TensorBoard: pip install 'randsparse[tensorboard]'") from None
    return SummaryWriter(str(path))


def _finish_epoch(run: _Run, epoch: int, row: dict[str, Any], val_loader: DataLoader | None) -> None:
    """Validate, record the epoch, and checkpoint (best first, then last)."""
    progress = run.progress
    # Each rank's BatchNorm statistics saw only its own batches: take rank 0's, the ones the checkpoint holds.
    run.dist.broadcast_from_main(persistent_buffers(run.model), "the end of the epoch")
    val = {}
    if val_loader is not None:
        val = evaluate_accuracy(run.model, val_loader, run.loss_fn, run.device, run.amp_dtype, run.dist)
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
    run.files.write_metrics(progress.history)
    run.files.update_summary(epochs=progress.epoch, best_val_accuracy=progress.best_val_accuracy)
    if run.writer is not None:
        for key, value in record.items():
            if key not in ("epoch", "step") and isinstance(value, (int, float)):
                run.writer.add_scalar(key, value, epoch + 1)
        run.writer.flush()
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


def _final_evaluation(run: _Run, data: Any, batch_size: int) -> dict[str, Any]:
    """Test accuracy of the last model and of the best-on-validation model; the eval suite on the best.

    The test set is split over the processes; the evaluation suite (calibration, OOD, attacks) runs on
    rank 0 alone, which writes its files.
    """
    dist = run.dist
    loader = _loader(_shard(data.test, dist), batch_size, run.config.data.workers, run.device)
    last = evaluate_accuracy(run.model, loader, run.loss_fn, run.device, run.amp_dtype, dist)
    best = last
    current = None
    best_epoch = run.progress.best_epoch or run.progress.epoch
    if best_epoch != run.progress.epoch:  # the same decision on every rank: progress is reduced
        current = {k: v.clone() for k, v in run.model.state_dict().items()}
        if dist.is_main:
            run.model.load_state_dict(load_checkpoint(run.run_dir.best_checkpoint)["model"])
        dist.broadcast_from_main(model_state_tensors(run.model), "loading the best model")
        best = evaluate_accuracy(run.model, loader, run.loss_fn, run.device, run.amp_dtype, dist)
    result = {
        "test_accuracy": best["accuracy"],
        "test_loss": best["loss"],
        "test_accuracy_last": last["accuracy"],
        "test_loss_last": last["loss"],
    }
    options = run.config.eval
    if dist.is_main and (options.calibration or options.ood or options.attacks):
        run.files.update_summary(**result)  # the accuracies stand whatever becomes of the suite
        identity = f"{run.identity}-best-epoch{best_epoch}"
        try:
            result["eval"] = evaluate_trained(
                run.model,
                run.config.data,
                data.info,
                options,
                out_dir=run.run_dir.path,
                identity=identity,
                test=data.test,
            )
        except RandsparseError as exc:
            log.error("the evaluation suite failed: %s (run `randsparse eval %s` to retry)", exc, run.run_dir.path)
            result["eval_error"] = str(exc)
    if current is not None:
        run.model.load_state_dict(current)
    return result


def _static_summary(run: _Run, data: Any, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """What a run is, known before training: sizes, FLOPs, identity, how many processes share the batch."""
    params = count_params(run.model, run.masks)
    flops = count_flops(run.model, input_shape, run.masks)
    config = run.config
    return {
        "config_hash": run.identity,
        "model": config.model.name,
        "architecture": ModelSpec.from_config(config.model).architecture(),  # family, depth, width
        "dataset": config.data.name,
        "sparsity": config.sparsity.sparsity,
        "distribution": None if config.is_dense else config.sparsity.distribution,
        "params_total": params.total,
        "params_prunable": params.prunable,
        "params_nonzero": params.nonzero,
        "density": params.density,
        "prunable_layers": len(run.masks) if run.masks is not None else len(prunable_shapes(run.model)),
        "flops_dense": flops.dense,
        "flops_sparse": flops.sparse,
        "train_size": len(data.train),
        "val_size": len(data.val) if data.val is not None else 0,
        "test_size": len(data.test),
        "world_size": run.dist.world_size,
        "batch_size": config.data.batch_size,
        "global_batch_size": config.global_batch_size,
        "device": str(run.device),
        "host": socket.gethostname(),
        "torch_version": torch.__version__,
        "randsparse_version": __version__,
    }
