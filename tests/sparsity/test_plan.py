"""`plan_sparsity`: model and global sparsity to per-layer densities and drawn masks."""

from __future__ import annotations

import pytest
import torch

from randsparse.errors import ConfigError
from randsparse.models import build
from randsparse.sparsity import PrunableSelector, plan_sparsity, sparsity_to_density
from randsparse.sparsity.plan import plan_from_masks


@pytest.mark.parametrize("distribution", ["uniform", "uniform_plus", "er", "erk", "erk_plus"])
def test_plan_on_resnet20_meets_the_budget_within_one_weight_per_layer(distribution: str) -> None:
    with torch.device("meta"):
        model = build("resnet20")
    plan = plan_sparsity(model, 0.9, distribution, seed=0)
    assert [layer.name for layer in plan.layers] == list(plan.masks)
    assert abs(plan.kept - 0.1 * plan.params) <= len(plan.layers) / 2 + 1
    for layer in plan.layers:
        assert abs(layer.kept - layer.density * layer.params) <= 0.5 + 1e-9
        assert layer.params == plan.masks[layer.name].numel()


def test_plan_of_a_meta_model_draws_real_masks_on_the_cpu() -> None:
    with torch.device("meta"):
        model = build("wide_resnet50_2", num_classes=1000)
    plan = plan_sparsity(model, 0.95, "erk", seed=1)
    assert all(m.device.type == "cpu" for m in plan.masks.values())
    weights = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert plan.params == sum(w.numel() for w in weights) == 68_814_016  # every conv and fc weight


def test_plan_to_dict_has_layers_and_totals() -> None:
    plan = plan_sparsity(build("resnet20"), 0.5, "uniform", seed=0)
    data = plan.to_dict()
    assert data["sparsity"] == 0.5
    assert data["distribution"] == "uniform"
    assert set(data["layers"][0]) == {"name", "shape", "params", "density", "kept"}
    assert data["total"] == {"params": plan.params, "kept": plan.kept, "density": plan.kept / plan.params}


def test_plan_respects_the_selector() -> None:
    plan = plan_sparsity(build("resnet20"), 0.5, "uniform", selector=PrunableSelector(exclude=r"^fc\."))
    assert "fc.weight" not in plan.masks
    assert "conv1.weight" in plan.masks


def test_plan_from_masks_reports_realised_densities() -> None:
    plan = plan_sparsity(build("resnet20"), 0.7, "erk", seed=0)
    described = plan_from_masks(plan.masks, 0.7, "file")
    assert [x.kept for x in described.layers] == [x.kept for x in plan.layers]
    for layer in described.layers:
        assert layer.density == layer.kept / layer.params


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan"), True, "0.5"])
def test_sparsity_outside_zero_one_is_a_config_error(sparsity) -> None:
    with pytest.raises(ConfigError, match="sparsity"):
        sparsity_to_density(sparsity)


def test_sparsity_to_density_is_one_minus_sparsity() -> None:
    assert sparsity_to_density(0.0) == 1.0
    assert sparsity_to_density(0.9) == pytest.approx(0.1)
