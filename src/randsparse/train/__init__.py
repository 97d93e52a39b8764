"""The training engine: config, fixed-mask training loop, checkpoints and resume, run directories."""

from randsparse.train.config import (
    TrainConfig,
    apply_overrides,
    build_config,
    dump_config,
    load_config,
)
from randsparse.train.identity import config_hash
from randsparse.train.loop import Diverged, EpochSampler, Interrupted, evaluate_accuracy, fit
from randsparse.train.rundir import RunDir
from randsparse.train.runs import LoadedRun, load_run

__all__ = [
    "Diverged",
    "EpochSampler",
    "Interrupted",
    "LoadedRun",
    "RunDir",
    "TrainConfig",
    "apply_overrides",
    "build_config",
    "config_hash",
    "dump_config",
    "evaluate_accuracy",
    "fit",
    "load_config",
    "load_run",
]
