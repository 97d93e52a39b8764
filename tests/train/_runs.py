"""Small synthetic run configs shared by the training tests."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import yaml

from randsparse.train import TrainConfig, apply_overrides, build_config

# A learnable 10-class task of 1x12x12 images: an epoch of 512 images takes well under a second.
SYNTHETIC = {
    "name": "synthetic",
    "batch_size": 64,
    "eval_batch_size": 256,
    "val_fraction": 0.125,
    "options": {"num_classes": 10, "channels": 1, "image_size": 12, "train_size": 512, "test_size": 256},
}


def tiny_config(*overrides: str, **sections: Any) -> TrainConfig:
    """A two-epoch, 80 %-sparse ERK run of a narrow small_cnn on synthetic data."""
    data: dict[str, Any] = {
        "model": {"name": "small_cnn", "width": 0.5},
        "data": dict(SYNTHETIC),
        "sparsity": {"sparsity": 0.8, "distribution": "erk"},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "cosine"},
        "epochs": 2,
        "seed": 0,
        "device": "cpu",
        "deterministic": True,
        **sections,
    }
    return build_config(apply_overrides(data, list(overrides)))


def write_config(path: Path, config: TrainConfig) -> Path:
    """Write `config` as YAML to `path` and return the path."""
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


def signal_after_first_epoch(monkeypatch: Any) -> None:
    """Send this process SIGINT once the first epoch is finished (and checkpointed), within `monkeypatch`.

    `fit` then stops one step into the second epoch, with an ``interrupted`` summary.
    """
    import randsparse.train.loop as loop

    original = loop._finish_epoch
    calls = {"n": 0}

    def finish_then_signal(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(loop, "_finish_epoch", finish_then_signal)
