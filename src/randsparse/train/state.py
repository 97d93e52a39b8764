"""The live state of a run: its objects (`Run`), its files as one process sees them, and checkpoint save/restore.

A checkpoint holds the model, the current masks, optimizer, schedule, scaler, progress, the
sparse-training method's state (schedule, ITOP masks, metric sums), every rank's RNG states and,
with `optim.ema_decay`, the weight average; restoring one refuses a checkpoint of another config or
other masks without touching disk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from randsparse import __version__
from randsparse.errors import ConfigError, FileFormatError, MaskMismatchError
from randsparse.seeding import mix, seed_everything
from randsparse.sparsity import MaskSet
from randsparse.train.checkpoint import (
    Progress,
    load_checkpoint,
    restore_rng_states,
    rng_states,
    save_checkpoint,
    scheduler_state,
)
from randsparse.train.config import TrainConfig
from randsparse.train.distributed import Distributed
from randsparse.train.dynamic import CHECKPOINT_KEY, SparseTraining
from randsparse.train.identity import IDENTITY_VERSION, checkpoint_matches, config_hash
from randsparse.train.rundir import RunDir

log = logging.getLogger(__name__)


class RunFiles:
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
class Run:
    """The live objects of a run."""

    config: TrainConfig
    run_dir: RunDir
    dist: Distributed
    files: RunFiles
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
    tracker: Any = None  # TensorBoard / MLflow (`tracking.Tracker`), when asked for
    ema: Any = None  # the weight average (`ema.WeightEMA`), with optim.ema_decay
    plan: MaskSet | None = None  # the layer-wise rule's masks (the method's per-layer targets)
    sparse: SparseTraining | None = None  # the sparse-training method and its metrics

    @property
    def current_masks(self) -> MaskSet | None:
        """The masks enforced now (they move under a dynamic method), or None for a dense run."""
        if self.sparse is not None and self.sparse.handle is not None:
            return self.sparse.handle.masks
        return self.masks

    after_step: Any = None  # called with the run after each optimizer step (`RunHooks`)

    def checkpoint_payload(self, rank_rng: list[dict[str, Any]]) -> dict[str, Any]:
        """What a checkpoint holds; `rank_rng` are the RNG states of every rank, rank 0's first."""
        payload = {
            "config_hash": self.identity,
            "config": self.config.model_dump(mode="json"),
            "model": self.model.state_dict(),
            "masks": self.current_masks.state_dict() if self.masks is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": scheduler_state(self.scheduler),
            "scaler": self.scaler.state_dict(),
            "rng": rank_rng[0],
            "world_size": self.dist.world_size,
            "progress": self.progress.to_dict(),
            "randsparse_version": __version__,
            "identity_version": IDENTITY_VERSION,
        }
        if self.sparse is not None:
            payload[CHECKPOINT_KEY] = self.sparse.state_dict()
        if len(rank_rng) > 1:
            payload["rank_rng"] = rank_rng
        if self.ema is not None:
            payload["ema"] = self.ema.state_dict()
        return payload

    def save(self, path: Path) -> None:
        """Checkpoint to `path` (rank 0 writes; every rank must call it, as it gathers their RNG states)."""
        rank_rng = self.dist.gather_to_main(rng_states())
        if rank_rng is not None:
            self.files.save_checkpoint(path, self.checkpoint_payload(rank_rng))


@dataclass
class RunHooks:
    """What a driver of several runs (the lottery-ticket levels, `randsparse.train.lottery`) changes in one run.

    `masks` replaces the config's draw (called on every rank with the built model); `start` runs
    on a fresh run (not a resumed one) before training, with the steps per epoch; `after_step`
    runs on every rank after each optimizer step.
    """

    masks: Callable[[nn.Module], MaskSet | None] | None = None
    start: Callable[[Run, int], None] | None = None
    after_step: Callable[[Run], None] | None = None


def starting_state(run_dir: RunDir, resume: bool, config: TrainConfig) -> dict[str, Any] | None:
    """The checkpoint to resume from (None to start afresh), refusing a run directory that does not fit.

    A run that stopped before its first checkpoint (killed in epoch 1) has nothing to resume: the
    same config simply starts again there, with or without `resume`. A directory whose own files
    are not plain files is refused (`RunDir.check_files`) before anything is written.
    """
    run_dir.check_files()
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


def restore(run: Run, state: dict[str, Any]) -> None:
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
        _restore_masks(run, masks, state)
    try:
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        run.scaler.load_state_dict(state["scaler"])
        run.progress = Progress.from_dict(state["progress"])
        if run.ema is not None:
            run.ema.load_state_dict(state["ema"])
        if run.sparse is not None:
            run.sparse.load_state_dict(
                state.get(CHECKPOINT_KEY), run.progress.global_step * run.config.global_batch_size
            )
        restore_rank_rng(run, state)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        if isinstance(exc, KeyError):
            reason = f"it has no entry {exc}"
        raise FileFormatError(f"the checkpoint does not fit this model/config: {reason}") from None


def _restore_masks(run: Run, masks: MaskSet, state: dict[str, Any]) -> None:
    """Enforce the checkpoint's masks: the drawn ones for a static method; a moving method's own, checked by count."""
    if run.sparse is None or run.sparse.handle is None or not run.sparse.method.dynamic:
        if not masks.equal(run.masks):
            raise MaskMismatchError("the checkpoint's masks differ from the masks this config draws")
        return
    method = run.sparse.method
    step = int(state["progress"].get("global_step", 0))
    counts = {name: int(mask.sum()) for name, mask in masks.items()}
    if counts != method.target_counts(step):
        raise MaskMismatchError(
            f"the checkpoint's masks do not keep the per-layer counts method {method.name!r} has at step {step}"
        )
    run.sparse.handle.update_masks(masks)  # before the weights and optimizer state are loaded over them


def restore_rank_rng(run: Run, state: dict[str, Any]) -> None:
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
        seed_everything(mix(run.config.seed, run.dist.rank, run.progress.global_step))
