"""The sections of a training run's config (model, data, sparsity, optim, schedule, distributed).

Each section validates its own keys, and checks the names and options it holds against their
registries when the config is read; `randsparse.train.config.TrainConfig` assembles them.
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, field_validator, model_validator

from randsparse.errors import ConfigError, is_real
from randsparse.schema import (
    INT64_MAX,
    MAX_BATCH,
    MAX_DEPTH,
    MAX_PROCESSES,
    MAX_TIMEOUT_S,
    MAX_WIDTH,
    SECTION,
    check_call_options,
    names_from,
    refuse_unused,
    registered,
    resolvable,
)

# Where each name's registry lists its entries (read at validation time: entries added later count).
_distributions = names_from("randsparse.sparsity", "available_distributions")
_scorers = names_from("randsparse.sparsity", "available_scorers")
_sampling_modes = names_from("randsparse.sparsity.masks", "SAMPLING_MODES")
_methods = names_from("randsparse.sparsity.methods", "available_methods")
_optimizers = names_from("randsparse.train.optim", "available_optimizers")
_schedules = names_from("randsparse.train.optim", "available_schedules")
_backends = names_from("randsparse.train.distributed", "BACKENDS")


def _call_options(what: str, fn: Any, options: dict[str, Any], skip: tuple[str, ...] = ()) -> None:
    check_call_options(what, fn, options, skip, error=ValueError)  # pydantic reports it under the key


def _regex(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {value!r} ({exc})") from None
    return value


class _Section(BaseModel):
    """Base of every config section: unknown keys, numbers given as strings or bools, nan and inf are errors."""

    model_config = SECTION


class ModelConfig(_Section):
    """Which architecture to build, and its knobs."""

    name: Annotated[str, resolvable("randsparse.models", "model_builder")] = Field(
        description="model name: registered (small_cnn, resnet20, vgg16, wrn, ...), a package's entry point,"
        " an import path package.module:builder, torchvision/<name> or timm/<name>"
    )
    width: float | None = Field(
        default=None, gt=0, le=MAX_WIDTH, description=f"width multiplier (models that have one), at most {MAX_WIDTH:g}"
    )
    depth: int | None = Field(
        default=None, ge=1, le=MAX_DEPTH, description=f"depth (models with a depth knob), at most {MAX_DEPTH}"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="other builder options, e.g. init_mode")
    init_from: str | None = Field(
        default=None,
        description="start from the weights in this file (a state dict, a randsparse or Lightning checkpoint),"
        " then prune and train: prune-then-finetune",
    )

    @model_validator(mode="after")
    def _options_fit_the_builder(self) -> ModelConfig:
        from randsparse.models import model_builder

        knobs = {k: v for k, v in (("width", self.width), ("depth", self.depth)) if v is not None}
        _call_options(f"model {self.name!r}", model_builder(self.name), {**self.options, **knobs}, _MODEL_ARGUMENTS)
        return self


# Arguments `randsparse.models.build` passes every builder itself.
_MODEL_ARGUMENTS = ("num_classes", "in_channels")


class DataConfig(_Section):
    """Which dataset, where it is, and how it is batched."""

    name: Annotated[str, resolvable("randsparse.data.registry", "get_entry")] = Field(
        description="dataset name: registered (fashion_mnist, cifar10, synthetic, ...), a package's entry point"
        " or an import path package.module:factory"
    )
    root: str | None = Field(default=None, description="directory holding the files (else the standard lookup)")
    download: bool = Field(default=False, description="let torchvision download the files when missing")
    batch_size: int = Field(default=128, ge=1, le=MAX_BATCH, description=f"examples per step, at most {MAX_BATCH}")
    eval_batch_size: int = Field(
        default=512, ge=1, le=MAX_BATCH, description=f"examples per evaluation batch, at most {MAX_BATCH}"
    )
    workers: int = Field(
        default=0, ge=0, le=MAX_PROCESSES, description=f"data-loading worker processes, at most {MAX_PROCESSES}"
    )
    val_fraction: float = Field(default=0.1, ge=0, lt=1, description="part of the training set held out")
    split_seed: int = Field(
        default=0, ge=0, le=INT64_MAX, description="seed of the train/val split (same for every run), an int64"
    )
    augment: bool = Field(default=True, description="the dataset's standard training augmentation")
    subset: int | None = Field(
        default=None, ge=1, le=INT64_MAX, description="keep only this many training examples (an int64)"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="dataset options (e.g. synthetic shape)")

    @model_validator(mode="after")
    def _options_fit_the_dataset(self) -> DataConfig:
        from randsparse.data.registry import get_entry

        _call_options(f"dataset {self.name!r}", get_entry(self.name).factory, self.options, ("directory", "like"))
        return self


class SparsityConfig(_Section):
    """How much to prune at initialisation, and with which layer-wise rule."""

    sparsity: float = Field(default=0.0, ge=0, lt=1, description="fraction of prunable weights zeroed; 0 = dense")
    distribution: Annotated[str, registered("distribution", _distributions)] = Field(
        default="erk", description="layer-wise rule (uniform, uniform_plus, er, erk, ...)"
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="rule options, e.g. erk_power_scale, classifier_density"
    )
    custom_file: str | None = Field(default=None, description="distribution custom: YAML/JSON of per-layer values")
    sampling: Annotated[str, registered("sampling mode", _sampling_modes)] = Field(
        default="exact", description="exact: exactly the kept count per layer; bernoulli: each weight independently"
    )
    seed: int | None = Field(
        default=None, ge=0, le=INT64_MAX, description="mask seed (an int64); default: the run's seed"
    )
    include: Annotated[str | None, AfterValidator(_regex)] = Field(
        default=None, description="only prune weights whose name matches this regex"
    )
    exclude: Annotated[str | None, AfterValidator(_regex)] = Field(
        default=None, description="never prune weights whose name matches this regex"
    )
    prune_embeddings: bool = Field(
        default=False, description="also prune embedding tables (nn.Embedding weights), which are dense by default"
    )
    prune: Annotated[str, registered("scorer", _scorers)] | None = Field(
        default=None,
        description="mask mode: keep the weights this method (a registered scorer) scores highest (the"
        " pruning-at-init baseline) instead of a random mask at its ratios",
    )
    score_options: dict[str, Any] = Field(
        default_factory=dict, description="options of the saliency score (e.g. num_batches, temperature, rounds)"
    )
    method: Annotated[str, registered("sparsity method", _methods)] = Field(
        default="static", description="sparse-training method: static (masks fixed), or one that moves them"
    )
    method_options: dict[str, Any] = Field(
        default_factory=dict, description="options of the sparse-training method (e.g. update_every, drop_fraction)"
    )
    masks_file: str | None = Field(
        default=None, description="train the masks saved in this file (`randsparse plan --save-masks`), not a draw"
    )
    masks_from_run: str | None = Field(
        default=None, description="train the masks of this run directory (those of its last checkpoint)"
    )

    @model_validator(mode="after")
    def _saved_masks_replace_the_draw(self) -> SparsityConfig:
        """A saved draw gives the masks: the options that would draw them must stay at their defaults."""
        given = [k for k in ("masks_file", "masks_from_run") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError("give the masks either in masks_file or masks_from_run, not both")
        if given:
            drawing = ("sparsity", "distribution", "options", "custom_file", "sampling", "seed", "include", "exclude")
            drawing += ("prune", "score_options")
            for name in drawing:
                if getattr(self, name) != type(self).model_fields[name].get_default(call_default_factory=True):
                    raise ValueError(f"{given[0]} gives the masks (and their sparsity); drop {name}")
        return self

    @model_validator(mode="after")
    def _prune_sets_the_ratio_rule(self) -> SparsityConfig:
        """``prune: snip`` draws nothing at random: it is the ``snip_ratio`` rule in mask mode."""
        from randsparse.sparsity.distributions import get_distribution
        from randsparse.sparsity.saliency import ratio_method, scorer_options

        if self.prune is not None:
            rule = f"{self.prune}_ratio"
            if self.distribution not in ("erk", rule):  # "erk" is the default, not a choice
                raise ValueError(f"prune={self.prune} uses the {rule} ratios; drop distribution={self.distribution}")
            if self.distribution != rule:
                self.distribution = rule
        if self.custom_file is not None:
            from randsparse.sparsity.distributions import distribution_options

            if "densities" not in distribution_options(self.distribution):
                raise ValueError(f"custom_file applies to distribution custom, not {self.distribution!r}")
            if "densities" in self.options:
                raise ValueError("give the custom densities either in sparsity.options.densities or custom_file")
        # `allow_empty_layers` is an option of the plan (any rule), not of the rule itself.
        if not isinstance(self.options.get("allow_empty_layers", False), bool):
            raise ValueError("options.allow_empty_layers must be true or false")
        _call_options(
            f"distribution {self.distribution!r}",
            get_distribution(self.distribution),
            {k: v for k, v in self.options.items() if k != "allow_empty_layers"},
            ("shapes", "density", "scores"),
        )
        from randsparse.sparsity.methods import get_method
        from randsparse.sparsity.methods.base import LOOP_ARGUMENTS

        _call_options(
            f"sparsity method {self.method!r}",
            get_method(self.method).__init__,
            self.method_options,
            ("self", *LOOP_ARGUMENTS),
        )
        if self.method != "static" and (self.masks_file is not None or self.masks_from_run is not None):
            raise ValueError(f"method {self.method} makes its own masks; a saved draw trains with method static")
        if self.method != "static" and self.sparsity == 0.0:
            raise ValueError(
                f"method {self.method} needs a target sparsity: set sparsity above 0 (a dense run is static)"
            )
        try:  # the method's own range checks, at load time (they do not depend on the run's length)
            get_method(self.method)(1, **self.method_options)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        scorer = ratio_method(self.distribution)
        if scorer is not None:
            unknown = sorted(set(self.score_options) - set(scorer_options(scorer)))
            if unknown:
                taken = ", ".join(scorer_options(scorer)) or "no options"
                raise ValueError(f"scorer {scorer!r} does not take option(s) {', '.join(unknown)} (it takes: {taken})")
        return self


class OptimConfig(_Section):
    """Optimizer and loss; an option the chosen optimizer does not read must stay at its default."""

    name: Annotated[str, registered("optimizer", _optimizers)] = Field(
        default="sgd", description="registered optimizer: sgd, adam, adamw (or one added with register_optimizer)"
    )
    lr: float = Field(default=0.1, gt=0, description="learning rate (finite)")
    momentum: float = Field(default=0.9, ge=0, lt=1, description="sgd only")
    nesterov: bool = Field(default=False, description="sgd only")
    weight_decay: float = Field(default=5e-4, ge=0)
    no_decay_norm_and_bias: bool = Field(
        default=False, description="exempt normalisation weights and biases from weight decay"
    )
    no_decay_norm: bool = Field(
        default=False, description="exempt normalisation weights and biases only (the paper's ImageNet code)"
    )
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        default=(0.9, 0.999), strict=False, description="adam, adamw only: two numbers in [0, 1)"
    )
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    grad_clip: float | None = Field(default=None, gt=0, description="clip the gradient norm to this value")
    accumulate_steps: int = Field(
        default=1,
        ge=1,
        le=MAX_BATCH,
        description="micro-batches of data.batch_size per optimizer step (gradient accumulation); the global"
        " batch is data.batch_size x processes x accumulate_steps",
    )
    ema_decay: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="keep an exponential moving average of the weights with this decay (e.g. 0.999), and"
        " validate, test, evaluate and export the average",
    )

    @field_validator("betas", mode="before")
    @classmethod
    def _two_numbers(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)) and not all(is_real(v) for v in value):
            raise ValueError(f"betas must be two numbers in [0, 1), got {value!r}")
        return value

    @model_validator(mode="after")
    def _options_fit_the_optimizer(self) -> OptimConfig:
        from randsparse.train.optim import optimizer_options

        refuse_unused(self, f"optimizer {self.name!r}", optimizer_options(self.name))
        if self.name == "sgd" and self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        return self


class ScheduleConfig(_Section):
    """Learning-rate schedule, stepped every batch; epochs may be fractional in milestones.

    An option the chosen schedule does not read must stay at its default.
    """

    name: Annotated[str, registered("schedule", _schedules)] = Field(
        default="cosine", description="registered schedule: constant, multistep, cosine, onecycle"
    )
    milestones: list[float] = Field(default_factory=list, description="multistep: epochs at which lr *= gamma")
    gamma: float = Field(default=0.1, gt=0, le=1, description="multistep: the lr factor at each milestone")
    warmup_epochs: float = Field(
        default=0.0, ge=0, description="linear warm-up from ~0 to lr (constant, multistep, cosine)"
    )
    warmup_per: Literal["step", "epoch"] = Field(
        default="step", description="warm-up raises lr every step, or once per epoch (the paper's ImageNet code)"
    )
    min_lr: float = Field(default=0.0, ge=0, description="cosine: final learning rate")
    pct_start: float = Field(default=0.3, gt=0, lt=1, description="onecycle: fraction of steps spent rising")

    @model_validator(mode="after")
    def _whole_warmup_epochs(self) -> ScheduleConfig:
        if self.warmup_per == "epoch" and not float(self.warmup_epochs).is_integer():
            raise ValueError(f"warmup_per=epoch needs whole warmup_epochs, got {self.warmup_epochs:g}")
        return self

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        if any(not math.isfinite(m) or m <= 0 for m in value) or any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError("milestones must be finite, positive and strictly increasing")
        return value

    @model_validator(mode="after")
    def _options_fit_the_schedule(self) -> ScheduleConfig:
        from randsparse.train.optim import schedule_options

        refuse_unused(self, f"schedule {self.name!r}", schedule_options(self.name))
        return self


class DistributedConfig(_Section):
    """How a run is spread over processes (torchrun): where it computes, not what.

    `data.batch_size` is the batch of one process; the run's global batch (what the learning rate is
    tuned for, and what its identity records) is ``data.batch_size x world_size``.
    """

    world_size: int | None = Field(
        default=None,
        ge=1,
        le=MAX_PROCESSES,
        description="processes the run trains on; empty: as many as the launcher (torchrun) starts, written"
        f" into the run's config.yaml; at most {MAX_PROCESSES}",
    )
    timeout_s: float = Field(
        default=1800.0,
        gt=0,
        le=MAX_TIMEOUT_S,
        description=f"seconds a collective waits for the other processes before failing (at most {MAX_TIMEOUT_S:g})",
    )
    backend: Annotated[str, registered("distributed backend", _backends)] = Field(
        default="auto", description="auto: nccl on CUDA, else gloo"
    )
    sync_batchnorm: bool = Field(
        default=False, description="normalise over the global batch (SyncBatchNorm, CUDA only), not each process's"
    )


class LoggingConfig(_Section):
    """Experiment tracking beyond the run directory: MLflow (TensorBoard is the top-level `tensorboard`).

    Execution-only: where a run reports, never what it computes.
    """

    mlflow: bool = Field(default=False, description="log config, metrics, summary and masks to MLflow")
    tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI; empty: a SQLite store mlflow.db in the output directory (a study's"
        " directory for its runs)",
    )
    experiment: str = Field(default="randsparse", min_length=1, description="MLflow experiment name")
    parent_run_id: str | None = Field(
        default=None, description="MLflow run this run is a child of (a study sets it for its runs)"
    )

    @model_validator(mode="after")
    def _needs_mlflow(self) -> LoggingConfig:
        for name in ("tracking_uri", "parent_run_id"):
            if getattr(self, name) is not None and not self.mlflow:
                raise ValueError(f"{name} needs mlflow=true")
        return self
