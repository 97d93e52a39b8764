"""`plan_sparsity`: model and global sparsity to per-layer densities and drawn masks."""

from __future__ import annotations

import pytest
import torch

from randsparse.errors import ConfigError, InfeasibleBudgetError
from randsparse.models import build
from randsparse.sparsity import PrunableSelector, plan_sparsity, sparsity_to_density
from randsparse.sparsity.masks import MaskSet
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


def _narrow_cnn() -> torch.nn.Module:
    with torch.device("meta"):
        return build("small_cnn", width=0.25, in_channels=1)  # first conv: 4 x 1 x 3 x 3 = 36 weights


def test_a_plan_leaving_a_layer_empty_is_refused_naming_it_and_the_highest_connected_sparsity() -> None:
    with pytest.raises(InfeasibleBudgetError) as info:
        plan_sparsity(_narrow_cnn(), 0.99, "uniform")
    message = str(info.value)
    assert "features.0.weight (0 of 36 kept)" in message and "\n" not in message
    assert "0.986111" in message  # round(36 * 0.013889) = 1 weight; any higher sparsity keeps none
    assert "allow_empty_layers" in message
    assert plan_sparsity(_narrow_cnn(), 0.986111, "uniform").layers[0].kept == 1


def test_every_rule_and_a_custom_file_get_the_empty_layer_check() -> None:
    model = _narrow_cnn()
    for distribution in ("uniform", "er", "erk"):
        with pytest.raises(InfeasibleBudgetError, match="no weights"):
            plan_sparsity(model, 0.9995, distribution)
    with pytest.raises(InfeasibleBudgetError, match=r"features\.0\.weight.*no sparsity of this rule"):
        plan_sparsity(model, 0.5, "custom", densities={"features.0.weight": 0.0})


def test_empty_layers_are_accepted_when_asked_for() -> None:
    plan = plan_sparsity(_narrow_cnn(), 0.99, "uniform", allow_empty_layers=True)
    assert plan.layers[0].kept == 0


def test_a_score_rule_with_collapse_allowed_may_leave_layers_empty() -> None:
    torch.manual_seed(0)
    model = build("small_cnn", width=0.25, in_channels=1)
    with torch.no_grad():
        model.features[0].weight.mul_(1e-6)
    plan = plan_sparsity(model, 0.99, "magnitude_ratio", mask_mode="scores", allow_collapse=True)
    assert plan.layers[0].kept == 0  # allow_collapse is the explicit opt-in of the score rules


def test_existing_masks_with_an_empty_layer_are_refused() -> None:
    masks = MaskSet({"a.weight": torch.zeros(4, 3, dtype=torch.bool), "b.weight": torch.ones(2, 4, dtype=torch.bool)})
    with pytest.raises(InfeasibleBudgetError, match=r"a\.weight \(0 of 12 kept\)"):
        plan_from_masks(masks, 0.6, "file")
    assert plan_from_masks(masks, 0.6, "file", allow_empty_layers=True).kept == 8
