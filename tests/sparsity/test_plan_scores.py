"""`plan_sparsity` with score-ratio distributions: ratio mode (random within layers) and mask mode (top scores)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from randsparse.errors import ConfigError, InfeasibleBudgetError
from randsparse.models import build
from randsparse.sparsity import compute_scores, masks_from_scores, plan_sparsity, score_densities
from randsparse.sparsity.masks import kept_count


def _model(seed: int = 0) -> torch.nn.Module:
    model = build("small_cnn", width=0.25)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model


def _data(count: int = 40) -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(count, 3, 8, 8, generator=generator), torch.arange(count) % 10)


def test_ratio_mode_draws_random_masks_at_the_score_densities() -> None:
    model = _model()
    plan = plan_sparsity(model, 0.8, "snip_ratio", seed=3, data=_data(), score_options={"batch_size": 16})
    scores = compute_scores("snip", model, _data(), seed=3, batch_size=16)
    densities = score_densities({n: tuple(s.shape) for n, s in scores.items()}, 0.2, scores)
    assert plan.distribution == "snip_ratio" and plan.mask_mode == "random"
    for layer in plan.layers:
        assert layer.density == pytest.approx(densities[layer.name])
        assert layer.kept == kept_count(densities[layer.name], layer.params)
    top = masks_from_scores(scores, 0.2)
    assert not all(torch.equal(plan.masks[n], top[n]) for n in top)  # random within layers, not the top scores


def test_mask_mode_keeps_the_top_scores_with_the_same_counts_as_ratio_mode() -> None:
    model = _model()
    ratio = plan_sparsity(model, 0.9, "magnitude_ratio", seed=0)
    masked = plan_sparsity(model, 0.9, "magnitude_ratio", seed=0, mask_mode="scores")
    expected = masks_from_scores(compute_scores("magnitude", model), 0.1)
    assert masked.mask_mode == "scores" and masked.to_dict()["mask_mode"] == "scores"
    assert masked.masks.equal(expected)
    assert [x.kept for x in masked.layers] == [x.kept for x in ratio.layers]
    assert abs(masked.kept - 0.1 * masked.params) <= 1


def test_synflow_ratio_gets_the_target_density_for_its_iterative_pruning() -> None:
    model = _model()
    plan = plan_sparsity(
        model, 0.95, "synflow_ratio", mask_mode="scores", input_shape=(3, 8, 8), score_options={"rounds": 5}
    )
    scores = compute_scores("synflow", model, input_shape=(3, 8, 8), density=0.05, rounds=5)
    assert plan.masks.equal(masks_from_scores(scores, 0.05))


def test_given_scores_plan_a_model_on_the_meta_device() -> None:
    scores = compute_scores("magnitude", _model())
    with torch.device("meta"):
        meta = build("small_cnn", width=0.25)
    plan = plan_sparsity(meta, 0.7, "magnitude_ratio", seed=1, scores=scores)
    assert abs(plan.kept - 0.3 * plan.params) <= 1


def test_ratio_plan_is_deterministic_for_a_seed() -> None:
    model = _model()
    first = plan_sparsity(model, 0.8, "grasp_ratio", seed=5, data=_data(), score_options={"samples_per_class": 2})
    again = plan_sparsity(model, 0.8, "grasp_ratio", seed=5, data=_data(), score_options={"samples_per_class": 2})
    assert first.masks.equal(again.masks)


def test_collapse_guard_options_reach_the_score_rule() -> None:
    model = _model()
    with pytest.raises(InfeasibleBudgetError, match="layer-collapse guard"):
        plan_sparsity(model, 0.999, "magnitude_ratio")
    free = plan_sparsity(model, 0.999, "magnitude_ratio", allow_collapse=True)
    assert any(layer.kept == 0 for layer in free.layers)
    floored = plan_sparsity(model, 0.98, "magnitude_ratio", min_weights_per_output=0, min_density=0.01)
    assert all(layer.kept >= 0.01 * layer.params for layer in floored.layers)


@pytest.mark.parametrize(
    ("distribution", "kwargs", "message"),
    [
        ("erk", {"score_options": {"num_batches": 2}}, "score_options only apply to score-ratio distributions"),
        ("erk", {"mask_mode": "scores"}, "mask mode 'scores' only apply"),
        ("snip_ratio", {"mask_mode": "top"}, "unknown mask mode"),
        ("snip_ratio", {}, "snip scores need labelled data"),
        ("magnitude_ratio", {"mask_mode": "scores", "sampling": "bernoulli"}, "sampling must be 'exact'"),
        ("magnitude_ratio", {"allow_collapse": True, "min_density": 2.0}, "min_density"),
        ("erk", {"allow_collapse": True}, r"distribution 'erk' does not take option\(s\) allow_collapse"),
    ],
)
def test_score_options_out_of_place_are_config_errors(distribution: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_sparsity(_model(), 0.9, distribution, **kwargs)


def test_shape_only_rules_ignore_the_data_offered_for_scores() -> None:
    model = _model()
    offered = plan_sparsity(model, 0.9, "erk", seed=2, data=_data(), input_shape=(3, 8, 8))
    assert offered.masks.equal(plan_sparsity(model, 0.9, "erk", seed=2).masks)


def test_scores_together_with_data_are_refused() -> None:
    model = _model()
    scores = compute_scores("magnitude", model)
    with pytest.raises(ConfigError, match="scores are given, so data do not apply"):
        plan_sparsity(model, 0.9, "magnitude_ratio", scores=scores, data=_data())
