"""Mixed precision: the autocast dtype a config asks for and its loss scaler (static or dynamic)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from randsparse.errors import ConfigError
from randsparse.train.config import build_config
from randsparse.train.precision import StaticGradScaler, amp_dtype, build_scaler

BASE = {"model": {"name": "small_cnn"}, "data": {"name": "synthetic"}}


def _step_with_inf_gradient(scaler: torch.amp.GradScaler) -> nn.Linear:
    layer = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    before = layer.weight.detach().clone()
    scaler.scale(layer(torch.ones(1, 2)).sum()).backward()
    layer.weight.grad.fill_(float("inf"))
    scaler.step(optimizer)
    scaler.update()
    assert torch.equal(layer.weight, before), "an overflowing step is skipped"
    return layer


def test_a_static_loss_scale_multiplies_the_loss_and_never_changes() -> None:
    config = build_config({**BASE, "amp": True, "amp_dtype": "fp16", "loss_scale": 128})
    scaler = build_scaler(config, torch.device("cpu"), torch.float16)
    assert isinstance(scaler, StaticGradScaler)
    loss = torch.tensor(0.5)
    assert scaler.scale(loss).item() == 64.0
    _step_with_inf_gradient(scaler)
    assert scaler.get_scale() == 128.0
    dynamic = build_scaler(build_config({**BASE, "amp": True, "amp_dtype": "fp16"}), torch.device("cpu"), torch.float16)
    assert not isinstance(dynamic, StaticGradScaler) and dynamic.is_enabled()
    _step_with_inf_gradient(dynamic)
    assert dynamic.get_scale() < 2.0**16, "the dynamic scale backs off after an overflow"


def test_no_scaler_without_float16() -> None:
    config = build_config(BASE)
    assert not build_scaler(config, torch.device("cpu"), None).is_enabled()
    assert not build_scaler(config, torch.device("cpu"), torch.bfloat16).is_enabled()


def test_amp_dtype_is_the_configured_one_and_the_cpu_refuses_amp() -> None:
    assert amp_dtype(build_config(BASE), torch.device("cpu")) is None
    fp16 = build_config({**BASE, "amp": True, "amp_dtype": "fp16", "loss_scale": 8})
    with pytest.raises(ConfigError, match="amp needs a CUDA device"):
        amp_dtype(fp16, torch.device("cpu"))
    assert amp_dtype(fp16, torch.device("cuda")) is torch.float16
    assert amp_dtype(build_config({**BASE, "amp": True, "amp_dtype": "bf16"}), torch.device("cuda")) is torch.bfloat16
