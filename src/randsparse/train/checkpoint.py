"""Checkpoints: everything a run needs to continue exactly, written atomically, read defensively.

A checkpoint holds the model's weights, its masks (bit-packed), the optimizer, scheduler and
gradient-scaler states, every RNG state, the position in training (epoch, batch within it, global
step), the per-epoch history and the best validation result so far, the sparse-training method's
state under ``sparse_training`` (absent in older checkpoints), and the identity of the config that
produced it. Loading refuses a file that is not a randsparse checkpoint, is corrupt, or
belongs to another config, before anything is changed.

A distributed run's checkpoint is written by rank 0 and is the same file: the model's state dict
without DDP's ``module.`` prefix (so `load_run`, ``eval`` and a single-process resume read it), rank
0's RNG states under ``rng``, plus ``world_size`` and every rank's RNG states under ``rank_rng`` (a
resume with as many processes restores each rank's streams; see docs/distributed.md).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from randsparse.errors import FileFormatError, MaskMismatchError, is_integer, is_real
from randsparse.sparsity.masks import MaskSet
from randsparse.storage import atomic_torch_save, read_torch

CHECKPOINT_FORMAT = "randsparse.checkpoint/v1"
FILE_KIND = "checkpoint"  # the kind sealed into the file (see randsparse.storage)


@dataclass
class Progress:
    """Where training stands: counts of finished work and the best validation result so far."""

    epoch: int = 0  # epochs fully finished
    batch_in_epoch: int = 0  # batches of epoch `epoch + 1` already trained (mid-epoch checkpoints)
    global_step: int = 0
    train_seconds: float = 0.0
    best_val_accuracy: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    # Running train loss/accuracy sums of a partly trained epoch, so a resumed epoch reports the same.
    partial: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for the checkpoint."""
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Progress:
        """Inverse of `to_dict`."""
        return cls(**data)


def rng_states() -> dict[str, Any]:
    """Every global RNG state a run touches, in a form `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        },
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Put back the RNG states recorded by `rng_states`."""
    torch.set_rng_state(states["torch"])
    np_state = states["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached"],
        )
    )
    random.setstate(_python_state_from_plain(states["python"]))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def _python_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_plain(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically (a crash leaves the previous file intact), sealed with its checksum."""
    atomic_torch_save({"format": CHECKPOINT_FORMAT, **payload}, path, kind=FILE_KIND)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (or by the previous release, without a checksum).

    Raises `FileFormatError` naming the file when it is missing, damaged (checksum mismatch),
    not a randsparse checkpoint, incomplete, or holds entries of the wrong type or shape (state
    dict not a mapping of tensors, negative or non-integer counters, corrupt masks), before anything
    is changed.
    """
    path = Path(path)
    content, kind = read_torch(path, "checkpoint")
    if not isinstance(content, dict) or content.get("format") != CHECKPOINT_FORMAT or kind not in (None, FILE_KIND):
        raise FileFormatError(f"{str(path)!r} is not a randsparse checkpoint")
    missing = [k for k in ("config_hash", "model", "progress", "rng") if k not in content]
    if missing:
        raise FileFormatError(f"checkpoint {str(path)!r} is incomplete (no {', '.join(missing)})")
    problem = _structure_problem(content)
    if problem:
        raise FileFormatError(f"checkpoint {str(path)!r} is corrupt: {problem}")
    return content


def _structure_problem(content: dict[str, Any]) -> str | None:
    """What is wrong with the types of a checkpoint's entries, or None."""
    if not isinstance(content["config_hash"], str):
        return "'config_hash' is not a string"
    model = content["model"]
    if not isinstance(model, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()
    ):
        return "'model' is not a mapping of names to tensors"
    for key in ("rng", "optimizer", "scheduler", "scaler"):
        if key in content and not isinstance(content[key], dict):
            return f"{key!r} is not a mapping"
    if "world_size" in content and not (is_integer(content["world_size"]) and content["world_size"] >= 1):
        return "'world_size' is not a positive integer"
    if "rank_rng" in content and not (
        isinstance(content["rank_rng"], list) and all(isinstance(r, dict) for r in content["rank_rng"])
    ):
        return "'rank_rng' is not a list of mappings"
    sparse = content.get("sparse_training")
    if sparse is not None:
        if not isinstance(sparse, dict) or not isinstance(sparse.get("state"), dict):
            return "'sparse_training' is not a mapping with the method's 'state'"
        if not all(is_real(sparse.get(k)) for k in ("train_flops", "updates", "change_sum", "epoch_updates")):
            return "'sparse_training' has a missing or non-numeric counter"
        if sparse.get("ever_active") is not None:
            try:
                MaskSet.from_state_dict(sparse["ever_active"])
            except MaskMismatchError as exc:
                return f"sparse_training ever_active: {exc}"
    problem = _progress_problem(content["progress"])
    if problem:
        return problem
    if content.get("masks") is not None:
        try:
            MaskSet.from_state_dict(content["masks"])
        except MaskMismatchError as exc:
            return f"masks: {exc}"
    return None


def _progress_problem(progress: Any) -> str | None:
    if not isinstance(progress, dict):
        return "'progress' is not a mapping"
    known = set(Progress.__dataclass_fields__)
    unknown = sorted(str(k) for k in set(progress) - known)
    if unknown:
        return f"'progress' has unknown entry {unknown[0]!r}"
    for key in ("epoch", "batch_in_epoch", "global_step"):
        if key in progress and not (is_integer(progress[key]) and progress[key] >= 0):
            return f"progress {key!r} is not a non-negative integer"
    checks = {
        "train_seconds": lambda v: is_real(v) and v >= 0,
        "best_val_accuracy": lambda v: v is None or is_real(v),
        "best_epoch": lambda v: v is None or (is_integer(v) and v >= 0),
        "history": lambda v: isinstance(v, list) and all(isinstance(row, dict) for row in v),
        "partial": lambda v: isinstance(v, dict) and all(is_real(x) for x in v.values()),
    }
    for key, ok in checks.items():
        if key in progress and not ok(progress[key]):
            return f"progress {key!r} has the wrong type"
    return None


def scheduler_state(scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    """The scheduler's counters only: schedule functions are rebuilt from the config, not pickled."""
    state = scheduler.state_dict()
    if "lr_lambdas" in state:
        state["lr_lambdas"] = [None] * len(state["lr_lambdas"])
    return state
