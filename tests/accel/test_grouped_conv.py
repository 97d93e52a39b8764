"""Grouped convolutions survive export: the loaded model equals the masked one (F.conv2d) for every geometry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from randsparse.accel import SparseConv2d, sparse_modules
from randsparse.accel.export import export_bytes, load
from randsparse.models import registry as model_registry

TOLERANCE = 1e-5


class _GroupedNet(nn.Module):
    """A stem conv, then one grouped conv of the geometry under test."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        groups: int,
        per_group: int,
        out_per_group: int,
        kernel: int,
        stride: int,
        dilation: int,
        padding: int,
    ) -> None:
        super().__init__()
        channels = groups * per_group
        self.stem = nn.Conv2d(in_channels, channels, 1)
        self.grouped = nn.Conv2d(
            channels, groups * out_per_group, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.grouped(self.stem(x))


def _build_grouped(
    num_classes: int = 10,
    in_channels: int = 3,
    groups: int = 48,
    per_group: int = 1,
    out_per_group: int = 1,
    kernel: int = 3,
    stride: int = 1,
    dilation: int = 1,
    padding: int = 1,
) -> nn.Module:
    return _GroupedNet(num_classes, in_channels, groups, per_group, out_per_group, kernel, stride, dilation, padding)


@pytest.fixture(autouse=True)
def grouped_model(monkeypatch: pytest.MonkeyPatch) -> None:
    builders = model_registry._BUILDERS.copy()
    builders.add("grouped_test", _build_grouped)
    monkeypatch.setattr(model_registry, "_BUILDERS", builders)


def _export_and_compare(options: dict, size: int, density: float, seed: int, mode: str = "auto") -> None:
    torch.manual_seed(seed)
    model = _build_grouped(**options).eval()
    generator = torch.Generator().manual_seed(seed)
    masks = {
        name: torch.rand(p.shape, generator=generator) < density
        for name, p in model.named_parameters()
        if name.endswith("weight")
    }
    with torch.no_grad():
        for name, mask in masks.items():
            model.get_parameter(name).mul_(mask)
    spec = {"name": "grouped_test", "num_classes": 10, "in_channels": 3, "options": options}
    loaded = load(export_bytes(model, masks, spec), mode=mode)
    x = torch.randn(2, 3, size, size, generator=generator)
    with torch.no_grad():
        stem = model.stem(x)
        g = model.grouped
        expected = F.conv2d(stem, g.weight * masks["grouped.weight"], g.bias, g.stride, g.padding, g.dilation, g.groups)
        actual = loaded(x)
    assert actual.shape == expected.shape
    scale = expected.abs().max().item() or 1.0
    assert (actual - expected).abs().max().item() / scale < TOLERANCE


@pytest.mark.parametrize("mode", ["auto", "dense", "sparse"])
def test_an_exported_depthwise_conv_runs_its_first_batch_in_every_mode(mode: str) -> None:
    # issue 13, fault 4: groups = channels = 48 crashed with "index -2 is out of bounds" in auto mode
    _export_and_compare({"groups": 48}, size=8, density=0.3, seed=0, mode=mode)


def test_padding_entries_point_inside_their_own_group() -> None:
    layer = nn.Conv2d(6, 6, 3, groups=3)
    sparse = SparseConv2d.from_dense(layer, torch.zeros_like(layer.weight, dtype=torch.bool), mode="dense")
    rows = torch.repeat_interleave(torch.arange(6), sparse.rowptr[1:] - sparse.rowptr[:-1])
    assert torch.equal(sparse.channel.long() // 2, rows // 2)  # every entry is padding here
    assert torch.equal(sparse.dense_weight(), torch.zeros_like(layer.weight))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    groups=st.integers(1, 4),
    per_group=st.integers(1, 3),
    out_per_group=st.integers(1, 3),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 2),
    padding=st.integers(0, 2),
    density=st.sampled_from([0.0, 0.2, 0.7, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_exported_grouped_conv_equals_the_masked_conv(
    groups: int,
    per_group: int,
    out_per_group: int,
    kernel: int,
    stride: int,
    dilation: int,
    padding: int,
    density: float,
    seed: int,
) -> None:
    options = dict(
        groups=groups,
        per_group=per_group,
        out_per_group=out_per_group,
        kernel=kernel,
        stride=stride,
        dilation=dilation,
        padding=padding,
    )
    size = dilation * (kernel - 1) + 1 + seed % 4  # at least one output pixel
    _export_and_compare(options, size=size, density=density, seed=seed)


def test_grouped_layers_load_as_sparse_modules() -> None:
    model = _build_grouped()
    masks = {"grouped.weight": torch.ones_like(model.grouped.weight, dtype=torch.bool)}
    loaded = load(export_bytes(model, masks, {"name": "grouped_test", "options": {}}), mode="sparse")
    assert [name for name, _ in sparse_modules(loaded)] == ["grouped"]
