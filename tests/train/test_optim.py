"""Optimizers, decay exemptions and learning-rate schedules."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from randsparse.train.config import OptimConfig, ScheduleConfig
from randsparse.train.optim import build_loss, build_optimizer, build_scheduler


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


@pytest.mark.parametrize(
    ("name", "kind"), [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)]
)
def test_optimizer_kind_and_hyperparameters(name: str, kind: type) -> None:
    optimizer = build_optimizer(_net(), OptimConfig(name=name, lr=0.05, weight_decay=1e-3))
    assert isinstance(optimizer, kind)
    assert optimizer.param_groups[0]["lr"] == 0.05
    assert optimizer.param_groups[0]["weight_decay"] == 1e-3


def test_sgd_takes_momentum_and_nesterov() -> None:
    optimizer = build_optimizer(_net(), OptimConfig(momentum=0.8, nesterov=True))
    assert optimizer.param_groups[0]["momentum"] == 0.8
    assert optimizer.param_groups[0]["nesterov"] is True


def test_norm_weights_and_biases_can_be_exempt_from_weight_decay() -> None:
    model = _net()
    optimizer = build_optimizer(model, OptimConfig(weight_decay=5e-4, no_decay_norm_and_bias=True))
    decayed, exempt = optimizer.param_groups
    assert {id(p) for p in decayed["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert {id(p) for p in exempt["params"]} == {
        id(model[0].bias),
        id(model[1].weight),
        id(model[1].bias),
        id(model[3].bias),
    }
    assert exempt["weight_decay"] == 0.0 and decayed["weight_decay"] == 5e-4


def _lrs(schedule: ScheduleConfig, steps_per_epoch: int = 10, epochs: int = 10, lr: float = 0.1) -> list[float]:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = build_scheduler(optimizer, schedule, steps_per_epoch, epochs, lr)
    lrs = []
    for _ in range(steps_per_epoch * epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_multistep_decays_at_the_milestones() -> None:
    lrs = _lrs(ScheduleConfig(name="multistep", milestones=[5, 8], gamma=0.1))
    assert lrs[49] == pytest.approx(0.1)
    assert lrs[50] == pytest.approx(0.01)
    assert lrs[79] == pytest.approx(0.01)
    assert lrs[80] == pytest.approx(0.001)


def test_cosine_falls_from_lr_to_min_lr() -> None:
    lrs = _lrs(ScheduleConfig(name="cosine", min_lr=0.001))
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[50] == pytest.approx(0.001 + 0.099 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(b <= a for a, b in itertools.pairwise(lrs))
    assert lrs[-1] > 0.001 and lrs[-1] < 0.002


def test_linear_warmup_rises_to_the_base_lr_then_follows_the_schedule() -> None:
    lrs = _lrs(ScheduleConfig(name="multistep", milestones=[5], warmup_epochs=2))
    assert lrs[0] == pytest.approx(0.1 / 20)
    assert lrs[19] == pytest.approx(0.1)
    assert all(b > a for a, b in itertools.pairwise(lrs[:20]))
    assert lrs[20] == pytest.approx(0.1)
    assert lrs[50] == pytest.approx(0.01)


def test_onecycle_rises_then_falls() -> None:
    lrs = _lrs(ScheduleConfig(name="onecycle", pct_start=0.3))
    peak = lrs.index(max(lrs))
    assert 25 <= peak <= 35
    assert max(lrs) == pytest.approx(0.1)
    assert lrs[0] < 0.01 and lrs[-1] < 0.001


def test_constant_schedule() -> None:
    assert set(_lrs(ScheduleConfig(name="constant"))) == {0.1}


def test_loss_has_label_smoothing() -> None:
    assert build_loss(OptimConfig(label_smoothing=0.1)).label_smoothing == 0.1


def test_norm_parameters_alone_can_be_exempt_from_weight_decay() -> None:
    """The paper's ImageNet code: batch-norm parameters skip weight decay, the classifier's bias keeps it."""
    model = _net()
    optimizer = build_optimizer(model, OptimConfig(weight_decay=1e-4, no_decay_norm=True))
    decayed, exempt = optimizer.param_groups
    assert {id(p) for p in exempt["params"]} == {id(model[1].weight), id(model[1].bias)}
    assert {id(p) for p in decayed["params"]} == {
        id(model[0].weight),
        id(model[0].bias),
        id(model[3].weight),
        id(model[3].bias),
    }
    assert exempt["weight_decay"] == 0.0 and decayed["weight_decay"] == 1e-4


def test_warmup_per_epoch_holds_each_warmup_epochs_lr_as_the_papers_imagenet_code() -> None:
    """lr x (e + 1) / (W + 1) for the whole of warm-up epoch e < W, then the schedule."""
    lrs = _lrs(ScheduleConfig(name="multistep", milestones=[5], warmup_epochs=3, warmup_per="epoch"))
    for epoch, factor in enumerate([1 / 4, 2 / 4, 3 / 4, 1.0]):
        assert lrs[epoch * 10 : epoch * 10 + 10] == pytest.approx([0.1 * factor] * 10), epoch
    assert lrs[50] == pytest.approx(0.01)
    per_step = _lrs(ScheduleConfig(name="multistep", milestones=[5], warmup_epochs=3))
    assert per_step[:30] != lrs[:30] and per_step[30:] == pytest.approx(lrs[30:])
