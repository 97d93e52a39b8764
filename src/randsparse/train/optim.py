"""Optimizer, learning-rate schedule and loss built from their config sections."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from randsparse.train.config import OptimConfig, ScheduleConfig

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


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
            exempt = isinstance(module, _NORM_TYPES) or (
                config.no_decay_norm_and_bias and (name == "bias" or param.ndim <= 1)
            )
            (no_decay if exempt else decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: OptimConfig) -> Optimizer:
    """SGD (momentum, Nesterov), Adam or AdamW over `model`'s trainable parameters."""
    groups = parameter_groups(model, config)
    if config.name == "sgd":
        return torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.weight_decay
        )
    if config.name == "adam":
        return torch.optim.Adam(groups, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


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


def build_scheduler(
    optimizer: Optimizer, config: ScheduleConfig, steps_per_epoch: int, epochs: int, base_lr: float
) -> LRScheduler:
    """A scheduler stepped once per optimizer step."""
    if config.name == "onecycle":
        return OneCycleLR(optimizer, max_lr=base_lr, total_steps=steps_per_epoch * epochs, pct_start=config.pct_start)
    return LambdaLR(optimizer, LRFactor(config, steps_per_epoch, epochs, base_lr))


def build_loss(config: OptimConfig) -> nn.Module:
    """Cross-entropy, with label smoothing if configured."""
    return nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
