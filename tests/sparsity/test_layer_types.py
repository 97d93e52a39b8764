"""Layer geometry: (out, in, kernel) of every prunable layer type, and the collapse guard reading it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from randsparse.sparsity.distributions import layer_densities
from randsparse.sparsity.layer_types import (
    NORM_TYPES,
    WEIGHT_LAYER_TYPES,
    LayerGeometry,
    layer_geometry,
    shape_outputs,
)
from randsparse.sparsity.layers import PrunableSelector, prunable_shapes
from randsparse.sparsity.plan import plan_sparsity
from randsparse.sparsity.selection import layer_floors, score_densities

ALL_WEIGHT_TYPES = WEIGHT_LAYER_TYPES  # Linear and every conv, transposed ones included


@pytest.mark.parametrize(
    ("module", "geometry"),
    [
        (nn.Linear(5, 7), LayerGeometry(7, 5)),
        (nn.Conv1d(4, 6, 3, groups=2), LayerGeometry(6, 4, 3, 2, (3,))),
        (nn.Conv2d(2, 64, 3), LayerGeometry(64, 2, 9, 1, (3, 3))),
        (nn.Conv3d(4, 8, 2, groups=4), LayerGeometry(8, 4, 8, 4, (2, 2, 2))),
        (nn.ConvTranspose1d(2, 64, 3), LayerGeometry(64, 2, 3, 1, (3,))),
        (nn.ConvTranspose2d(2, 64, 3), LayerGeometry(64, 2, 9, 1, (3, 3))),
        (nn.ConvTranspose2d(4, 64, 3, groups=2), LayerGeometry(64, 4, 9, 2, (3, 3))),
        (nn.ConvTranspose3d(6, 3, 2, groups=3), LayerGeometry(3, 6, 8, 3, (2, 2, 2))),
    ],
)
def test_geometry_reads_out_in_and_kernel_of_every_layer_type(module: nn.Module, geometry: LayerGeometry) -> None:
    assert layer_geometry(module) == geometry
    if geometry.groups > 1:
        return  # PyTorch's fans ignore groups on one side; ours count the connections a unit has
    # Its fans agree with PyTorch's own (which read a transposed conv's weight the other way round).
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(module.weight)
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        fan_in, fan_out = fan_out, fan_in
    assert (geometry.fan_in, geometry.fan_out) == (fan_in, fan_out)


def test_shapes_of_prunable_layers_carry_their_geometry() -> None:
    model = nn.Sequential(nn.ConvTranspose2d(4, 64, 3, groups=2), nn.Conv2d(64, 8, 3))
    shapes = prunable_shapes(model, PrunableSelector(types=ALL_WEIGHT_TYPES))
    assert shapes["0.weight"] == (4, 32, 3, 3)  # still the weight's shape to every rule
    assert shape_outputs(shapes["0.weight"]) == 64 and shape_outputs(shapes["1.weight"]) == 8
    assert shape_outputs((8, 3, 3, 3)) == 8  # a plain shape reads as (out, in, *kernel)


def test_collapse_guard_keeps_one_weight_per_output_of_a_transposed_conv() -> None:
    model = nn.Sequential(nn.ConvTranspose2d(2, 64, 1), nn.Conv2d(64, 64, 3))
    shapes = prunable_shapes(model, PrunableSelector(types=ALL_WEIGHT_TYPES))
    assert layer_floors(shapes)["0.weight"] == 64  # not 2, its in_channels
    # The transposed conv scores lowest everywhere, so only the guard keeps it alive.
    scores = {"0.weight": torch.zeros(2, 64, 1, 1), "1.weight": torch.ones(64, 64, 3, 3)}
    densities = score_densities(shapes, 0.01, scores)
    assert round(densities["0.weight"] * 128) == 64


def test_a_score_rule_plan_keeps_as_many_weights_as_a_transposed_conv_has_outputs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.ConvTranspose2d(2, 64, 1), nn.ReLU(), nn.Conv2d(64, 64, 3))
    with torch.no_grad():
        model[0].weight.mul_(1e-3)  # smallest magnitudes: the first to go
    selector = PrunableSelector(types=ALL_WEIGHT_TYPES)
    plan = plan_sparsity(model, 0.99, "magnitude_ratio", selector=selector, mask_mode="scores")
    assert int(plan.masks["0.weight"].sum()) == 64  # the floor: one weight per output unit, not per input


def test_norm_types_are_never_prunable_and_cover_every_norm() -> None:
    for norm in (
        nn.BatchNorm1d(3),
        nn.BatchNorm2d(3),
        nn.InstanceNorm2d(3, affine=True),
        nn.LayerNorm(3),
        nn.GroupNorm(1, 3),
    ):
        assert isinstance(norm, NORM_TYPES)
        selector = PrunableSelector(types=(type(norm),))
        assert prunable_shapes(nn.Sequential(norm), selector) == {}


@pytest.mark.parametrize("rule", ["er", "erk"])
def test_er_and_erk_read_a_grouped_transposed_conv_as_the_conv_it_mirrors(rule: str) -> None:
    # Conv(4 -> 64, groups 2) and ConvTranspose(4 -> 64, groups 2): each output sees 2 inputs,
    # each input feeds 32 outputs; the weights are (64, 2, 3, 3) and (4, 32, 3, 3).
    selector = PrunableSelector(types=ALL_WEIGHT_TYPES)
    head = nn.Conv2d(64, 16, 3)
    conv = prunable_shapes(nn.Sequential(nn.Conv2d(4, 64, 3, groups=2), head), selector)
    transposed = prunable_shapes(nn.Sequential(nn.ConvTranspose2d(4, 64, 3, groups=2), head), selector)
    assert layer_densities(transposed, 0.3, rule) == pytest.approx(layer_densities(conv, 0.3, rule))
