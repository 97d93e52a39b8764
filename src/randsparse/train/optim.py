"""Optimizer, learning-rate schedule and loss built from their config sections.

Optimizers and schedules are registries (`register_optimizer`, `register_schedule`): the config
accepts exactly the registered names, and refuses an option the chosen entry does not read.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from randsparse.registry import Registry
from randsparse.sparsity.layer_types import NORM_TYPES
from randsparse.train.config import OptimConfig, ScheduleConfig


def parameter_groups(model: nn.Module, config: OptimConfig) -> list[dict]:
    """Trainable parameters, split so normalisation weights and biases skip weight decay if asked.

    `no_decay_norm_and_bias` exempts the parameters of normalisation layers, every bias and every
    other vector; `no_decay_norm` exempts the parameters of normalisation layers only (the paper's
    ImageNet code: its ``bn`` parameters, while the classifier's bias keeps its decay).
    """
    if not (config.no_decay_norm_and_bias or config.no_decay_norm):
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            exempt = isinstance(module, NORM_TYPES) or (
                config.no_decay_norm_and_bias and (name == "bias" or param.ndim <= 1)
            )
            (no_decay if exempt else decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


OptimizerFactory = Callable[[list[dict], OptimConfig], Optimizer]
ScheduleFactory = Callable[[Optimizer, ScheduleConfig, int, int, float], LRScheduler]

# `OptimConfig` options every optimizer honours (the loss and the loop read the last three).
COMMON_OPTIM_OPTIONS = (
    "name",
    "lr",
    "weight_decay",
    "no_decay_norm_and_bias",
    "no_decay_norm",
    "label_smoothing",
    "grad_clip",
    "accumulate_steps",
    "ema_decay",
)


@dataclass(frozen=True)
class _Entry:
    """A registered optimizer or schedule: its factory and the config options it reads."""

    factory: Callable[..., object]
    options: tuple[str, ...]


_OPTIMIZERS: Registry[_Entry] = Registry("optimizer")
_SCHEDULES: Registry[_Entry] = Registry("schedule")


def register_optimizer(name: str, *, options: tuple[str, ...] = ()) -> Callable[[OptimizerFactory], OptimizerFactory]:
    """Decorator adding ``factory(param_groups, config) -> Optimizer`` under `name`.

    `options`: the `OptimConfig` fields it reads beyond `COMMON_OPTIM_OPTIONS`; a config setting
    any other field to a non-default value is refused.
    """

    def decorate(factory: OptimizerFactory) -> OptimizerFactory:
        _OPTIMIZERS.add(name, _Entry(factory, tuple(options)))
        return factory

    return decorate


def register_schedule(name: str, *, options: tuple[str, ...] = ()) -> Callable[[ScheduleFactory], ScheduleFactory]:
    """Decorator adding ``factory(optimizer, config, steps_per_epoch, epochs, base_lr) -> LRScheduler``.

    `options`: the `ScheduleConfig` fields it reads (besides `name`); a config setting any other
    field to a non-default value is refused. The scheduler is stepped once per optimizer step.
    """

    def decorate(factory: ScheduleFactory) -> ScheduleFactory:
        _SCHEDULES.add(name, _Entry(factory, tuple(options)))
        return factory

    return decorate


def available_optimizers() -> list[str]:
    """Names of every registered optimizer, sorted."""
    return _OPTIMIZERS.names()


def available_schedules() -> list[str]:
    """Names of every registered learning-rate schedule, sorted."""
    return _SCHEDULES.names()


def optimizer_options(name: str) -> tuple[str, ...]:
    """`OptimConfig` fields the optimizer `name` reads (common ones included)."""
    return COMMON_OPTIM_OPTIONS + _OPTIMIZERS[name].options


def schedule_options(name: str) -> tuple[str, ...]:
    """`ScheduleConfig` fields the schedule `name` reads (`name` included)."""
    return ("name", *_SCHEDULES[name].options)


@register_optimizer("sgd", options=("momentum", "nesterov"))
def _sgd(groups: list[dict], config: OptimConfig) -> Optimizer:
    return torch.optim.SGD(
        groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.weight_decay
    )


@register_optimizer("adam", options=("betas",))
def _adam(groups: list[dict], config: OptimConfig) -> Optimizer:
    return torch.optim.Adam(groups, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


@register_optimizer("adamw", options=("betas",))
def _adamw(groups: list[dict], config: OptimConfig) -> Optimizer:
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


def build_optimizer(model: nn.Module, config: OptimConfig) -> Optimizer:
    """The registered optimizer `config.name` (SGD, Adam, AdamW, ...) over `model`'s trainable parameters."""
    return _OPTIMIZERS[config.name].factory(parameter_groups(model, config), config)  # type: ignore[return-value]


class LRFactor:
    """Learning-rate multiplier at a given optimizer step: warm-up, then constant/multistep/cosine.

    Warm-up over W epochs: per step, ``(step + 1) / (W x steps_per_epoch)``; per epoch, held for
    the whole of epoch ``e < W`` at ``(e + 1) / (W + 1)``, as the paper's ImageNet code does
    (VITA-Group/Random_Pruning, ``adjust_learning_rate``).

    A callable object rather than a lambda, so it pickles; it holds no state beyond the config, so
    the scheduler's step counter is all a checkpoint needs.
    """

    def __init__(self, config: ScheduleConfig, steps_per_epoch: int, epochs: int, base_lr: float) -> None:
        self.config = config
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = steps_per_epoch * epochs
        self.warmup_steps = round(config.warmup_epochs * steps_per_epoch)
        self.min_factor = config.min_lr / base_lr

    def __call__(self, step: int) -> float:
        cfg = self.config
        if step < self.warmup_steps:
            if cfg.warmup_per == "epoch":
                return (step // self.steps_per_epoch + 1) / (cfg.warmup_epochs + 1)
            return (step + 1) / self.warmup_steps
        if cfg.name == "multistep":
            epoch = step / self.steps_per_epoch
            return cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)
        if cfg.name == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0


def _lambda_schedule(
    optimizer: Optimizer, config: ScheduleConfig, steps_per_epoch: int, epochs: int, base_lr: float
) -> LRScheduler:
    return LambdaLR(optimizer, LRFactor(config, steps_per_epoch, epochs, base_lr))


for _name, _options in (
    ("constant", ("warmup_epochs", "warmup_per")),
    ("multistep", ("warmup_epochs", "warmup_per", "milestones", "gamma")),
    ("cosine", ("warmup_epochs", "warmup_per", "min_lr")),
):
    register_schedule(_name, options=_options)(_lambda_schedule)


@register_schedule("onecycle", options=("pct_start",))
def _onecycle(
    optimizer: Optimizer, config: ScheduleConfig, steps_per_epoch: int, epochs: int, base_lr: float
) -> LRScheduler:
    return OneCycleLR(optimizer, max_lr=base_lr, total_steps=steps_per_epoch * epochs, pct_start=config.pct_start)


def build_scheduler(
    optimizer: Optimizer, config: ScheduleConfig, steps_per_epoch: int, epochs: int, base_lr: float
) -> LRScheduler:
    """The registered schedule `config.name`, stepped once per optimizer step."""
    factory = _SCHEDULES[config.name].factory
    return factory(optimizer, config, steps_per_epoch, epochs, base_lr)  # type: ignore[return-value]


def build_loss(config: OptimConfig) -> nn.Module:
    """Cross-entropy, with label smoothing if configured."""
    return nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
