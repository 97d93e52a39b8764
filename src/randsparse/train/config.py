"""The validated configuration of one training run, loaded from YAML plus ``key=value`` overrides.

One definition of every option serves the YAML files, the command line and the run's identity
(`randsparse.train.identity`: the options that change the result, so the same experiment always
gets the same id). The sections it is made of live in `randsparse.train.sections` (re-exported here).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from randsparse.errors import ConfigError, is_real, validation_message
from randsparse.evaluate.config import RunEvalConfig
from randsparse.schema import INT64_MAX, MAX_EPOCHS
from randsparse.storage import read_mapping
from randsparse.train.sections import (
    DataConfig,
    DistributedConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    SparsityConfig,
    _Section,
)

__all__ = [
    "DataConfig",
    "DistributedConfig",
    "LoggingConfig",
    "ModelConfig",
    "OptimConfig",
    "ScheduleConfig",
    "SparsityConfig",
    "TrainConfig",
    "apply_overrides",
    "build_config",
    "dump_config",
    "load_config",
    "parse_override",
    "read_yaml",
]


class TrainConfig(_Section):
    """Everything that defines one training run."""

    model: ModelConfig
    data: DataConfig
    sparsity: SparsityConfig = Field(default_factory=SparsityConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    epochs: int = Field(default=10, ge=1, le=MAX_EPOCHS, description=f"training epochs, at most {MAX_EPOCHS}")
    seed: int = Field(
        default=0, ge=0, le=INT64_MAX, description="seeds model init, data order and augmentation (an int64)"
    )
    device: str = Field(default="auto", description="auto (CUDA if present, else CPU), cpu, cuda, cuda:1, ...")
    engine: Literal["auto", "dense", "sparse"] = Field(
        default="dense",
        description="how masked layers train on the CPU: dense (masked dense ops), sparse (work in proportion"
        " to the kept weights), auto (per layer, whichever measures faster)",
    )
    amp: bool = Field(default=False, description="mixed precision (bfloat16/float16 autocast) on CUDA")
    amp_dtype: Literal["auto", "bf16", "fp16"] = Field(
        default="auto", description="autocast dtype of amp; auto: bf16 where the GPU has it, else fp16"
    )
    loss_scale: Literal["dynamic"] | Annotated[float, Field(gt=0)] = Field(
        default="dynamic", description="fp16 loss scaling: dynamic, or a static scale (the paper's ImageNet code)"
    )
    deterministic: bool = Field(default=False, description="deterministic algorithms: bit-exact reruns")
    checkpoint_every_steps: int | None = Field(
        default=None, ge=1, le=INT64_MAX, description="also checkpoint every N steps (an int64)"
    )
    tensorboard: bool = Field(
        default=False, description="also log to TensorBoard, per step and per epoch (needs the tensorboard package)"
    )
    logging: LoggingConfig = Field(
        default_factory=LoggingConfig, description="experiment tracking (MLflow); see docs/integrations.md"
    )
    compile: bool | str = Field(
        default=False,
        description="train through torch.compile: true (default backend) or a backend name, e.g. aot_eager",
    )
    eval: RunEvalConfig = Field(
        default_factory=RunEvalConfig, description="evaluation of the best model at the end of training"
    )
    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig, description="multi-process training (torchrun); see docs/distributed.md"
    )

    @field_validator("eval", mode="before")
    @classmethod
    def _eval_off(cls, value: Any) -> Any:
        """``eval: false`` (or null) turns the end-of-training evaluation beyond accuracy off."""
        if value is False or value is None:
            return {"calibration": False, "reliability_diagram": False}
        return value

    @field_validator("sparsity", mode="before")
    @classmethod
    def _sparsity_shorthand(cls, value: Any) -> Any:
        """``sparsity: 0.9`` is short for ``sparsity: {sparsity: 0.9}``."""
        if is_real(value):
            return {"sparsity": value}
        return value

    @field_validator("compile")
    @classmethod
    def _known_backend(cls, value: bool | str) -> bool | str:
        if isinstance(value, str):  # a backend name is checked when the config is read, not at launch
            from randsparse.train.compiled import check_backend

            try:
                check_backend(value)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value != "auto":
            try:
                import torch

                torch.device(value)
            except (RuntimeError, ValueError):
                raise ValueError(f"not a device: {value!r} (auto, cpu, cuda, cuda:N, mps)") from None
        return value

    @model_validator(mode="after")
    def _precision_options_need_amp(self) -> TrainConfig:
        if self.amp_dtype != "auto" and not self.amp:
            raise ValueError(f"amp_dtype={self.amp_dtype} needs amp=true")
        if self.loss_scale != "dynamic" and self.amp_dtype != "fp16":
            raise ValueError("a static loss_scale needs amp=true amp_dtype=fp16 (bf16 needs no loss scaling)")
        return self

    @model_validator(mode="after")
    def _schedule_fits_the_run(self) -> TrainConfig:
        if self.schedule.warmup_epochs > self.epochs:
            raise ValueError(f"schedule.warmup_epochs ({self.schedule.warmup_epochs:g}) exceeds epochs ({self.epochs})")
        if self.schedule.min_lr > self.optim.lr:
            raise ValueError(f"schedule.min_lr ({self.schedule.min_lr:g}) exceeds optim.lr ({self.optim.lr:g})")
        return self

    @property
    def mask_seed(self) -> int:
        """Seed of the random mask: `sparsity.seed`, else the run's seed."""
        return self.seed if self.sparsity.seed is None else self.sparsity.seed

    @property
    def world_size(self) -> int:
        """Processes the run trains on (1 unless `distributed.world_size` says more)."""
        return self.distributed.world_size or 1

    @property
    def global_batch_size(self) -> int:
        """Examples per optimizer step, all processes: `data.batch_size` x `world_size` x `optim.accumulate_steps`."""
        return self.data.batch_size * self.world_size * self.optim.accumulate_steps

    @property
    def is_dense(self) -> bool:
        """True when nothing is pruned (no sparsity and no saved masks)."""
        saved = self.sparsity.masks_file is not None or self.sparsity.masks_from_run is not None
        return self.sparsity.sparsity == 0.0 and not saved


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` to (["a", "b"], value), the value read as YAML (numbers, lists, booleans)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. optim.lr=0.05)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of `data` with each ``key.path=value`` set (sections created as needed)."""
    result = json.loads(json.dumps(data))
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for part in path[:-1]:
            child = node.get(part)
            if child is None or (not isinstance(child, dict) and part == "sparsity"):
                # `sparsity: 0.9` shorthand in a file, then `sparsity.distribution=...` on the command line
                child = {} if child is None else {"sparsity": child}
                node[part] = child
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is a value, not a section")
            node = child
        if path == ["sparsity"] and isinstance(node.get("sparsity"), dict) and not isinstance(value, dict):
            node["sparsity"]["sparsity"] = value  # `sparsity=0.9` keeps the rest of the section
        else:
            node[path[-1]] = value
    return result


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in YAML file `path`; unreadable or malformed files are a `ConfigError`."""
    return read_mapping(path, "config")


def build_config(data: dict[str, Any], source: str = "", what: str = "config") -> TrainConfig:
    """Validate a plain mapping into a `TrainConfig`; every problem is named in one `ConfigError`."""
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, f"{what} {source or '(command line)'}")) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read YAML `path` (if any), apply ``key=value`` `overrides`, and validate."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, list(overrides or []))
    return build_config(data, str(path) if path is not None else "")


def dump_config(config: TrainConfig) -> str:
    """The fully resolved config as YAML (what a run directory's ``config.yaml`` holds)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
