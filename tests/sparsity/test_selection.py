"""Scores to densities (ratio mode) and to masks (mask mode): exact budget, top scores, collapse guard."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from randsparse.errors import ConfigError, InfeasibleBudgetError
from randsparse.sparsity import MaskSet, available_distributions, available_scorers, layer_densities
from randsparse.sparsity.masks import kept_count
from randsparse.sparsity.selection import (
    layer_floors,
    masks_from_scores,
    score_densities,
    top_flags,
    top_score_masks,
)

Shapes = dict[str, tuple[int, ...]]


@st.composite
def _layers(draw: st.DrawFn, distinct: bool = True) -> tuple[Shapes, dict[str, torch.Tensor]]:
    """2-4 small layers and scores for them: a random permutation (distinct) or few levels (many ties)."""
    count = draw(st.integers(2, 4))
    shapes = {
        f"layer{i}.weight": (draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.sampled_from([1, 3])))
        for i in range(count)
    }
    total = sum(math.prod(s) for s in shapes.values())
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    if distinct:
        flat = torch.randperm(total, generator=generator).double()
    else:
        flat = torch.randint(0, 3, (total,), generator=generator).double()
    pieces = flat.split([math.prod(s) for s in shapes.values()])
    scores = {name: piece.reshape(shape) for (name, shape), piece in zip(shapes.items(), pieces, strict=True)}
    return shapes, scores


def _global_top(scores: dict[str, torch.Tensor], keep: int) -> dict[str, torch.Tensor]:
    """Reference: keep the `keep` largest of distinct scores, by sorting everything."""
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    threshold = torch.sort(flat, descending=True).values[keep - 1] if keep else math.inf
    return {n: s >= threshold for n, s in scores.items()}


@settings(max_examples=80, deadline=None)
@given(layers=_layers(), fraction=st.floats(0.0, 1.0))
def test_mask_mode_keeps_exactly_the_global_top_scored_weights(layers, fraction: float) -> None:
    shapes, scores = layers
    total = sum(math.prod(s) for s in shapes.values())
    keep = max(1, round(fraction * total))
    masks = masks_from_scores(scores, keep / total, allow_collapse=True)
    expected = _global_top(scores, keep)
    assert list(masks) == list(shapes)
    for name in shapes:
        assert torch.equal(masks[name], expected[name]), name
    assert masks.num_kept() == keep


@settings(max_examples=80, deadline=None)
@given(layers=_layers(distinct=False), density=st.floats(0.001, 1.0, exclude_min=True), guard=st.booleans())
def test_ratio_mode_meets_the_budget_exactly_and_matches_mask_mode_counts(layers, density: float, guard: bool) -> None:
    shapes, scores = layers
    total = sum(math.prod(s) for s in shapes.values())
    options = {"allow_collapse": not guard, "min_weights_per_output": 0 if not guard else 1}
    try:
        densities = layer_densities(shapes, density, "snip_ratio", scores=scores, **options)
    except InfeasibleBudgetError:
        assert guard
        assert sum(layer_floors(shapes).values()) > math.floor(density * total + 1e-9 * total)
        return
    kept = math.fsum(densities[n] * math.prod(s) for n, s in shapes.items())
    assert kept == pytest.approx(density * total, rel=1e-9, abs=1e-9)
    assert all(0.0 <= d <= 1.0 for d in densities.values())
    drawn = MaskSet.random(shapes, densities, seed=3)
    top = top_score_masks(scores, densities)
    assert [s.kept for s in drawn.summary()] == [s.kept for s in top.summary()]
    assert abs(drawn.num_kept() - density * total) <= 1
    if guard:
        floors = layer_floors(shapes)
        assert all(s.kept >= floors[s.name] for s in top.summary())


@settings(max_examples=50, deadline=None)
@given(layers=_layers(), fraction=st.floats(0.01, 1.0))
def test_ratio_densities_are_each_layers_share_of_the_global_top_scores(layers, fraction: float) -> None:
    shapes, scores = layers
    total = sum(math.prod(s) for s in shapes.values())
    keep = max(1, round(fraction * total))
    densities = score_densities(shapes, keep / total, scores, allow_collapse=True)
    expected = _global_top(scores, keep)
    for name, shape in shapes.items():
        assert densities[name] * math.prod(shape) == pytest.approx(int(expected[name].sum()), abs=1e-6)


def test_fractional_budget_goes_to_the_layer_of_the_next_best_score() -> None:
    scores = {"a": torch.tensor([[4.0, 1.0]]), "b": torch.tensor([[3.0, 2.0]])}
    densities = score_densities({"a": (1, 2), "b": (1, 2)}, 2.5 / 4, scores, allow_collapse=True)
    assert densities == {"a": pytest.approx(0.5), "b": pytest.approx(0.75)}  # a: 1 weight, b: 1 + 0.5


def test_selection_with_ties_does_not_depend_on_dict_order() -> None:
    shapes = {"b.weight": (4, 3), "a.weight": (5, 2), "c.weight": (2, 2)}
    scores = {n: torch.ones(s) for n, s in shapes.items()}
    reversed_scores = dict(reversed(list(scores.items())))
    reversed_shapes = dict(reversed(list(shapes.items())))
    forward = masks_from_scores(scores, 0.4, allow_collapse=True)
    backward = masks_from_scores(reversed_scores, 0.4, allow_collapse=True)
    assert all(torch.equal(forward[n], backward[n]) for n in shapes)
    assert score_densities(shapes, 0.4, scores, allow_collapse=True) == score_densities(
        reversed_shapes, 0.4, reversed_scores, allow_collapse=True
    )


def test_top_flags_breaks_ties_by_position() -> None:
    values = torch.tensor([1.0, 2.0, 2.0, 0.0, 2.0])
    assert top_flags(values, 2).tolist() == [False, True, True, False, False]
    assert top_flags(values, 0).sum() == 0
    assert top_flags(values, 5).all()


# ---------------------------------------------------------------------------------------------
# Layer-collapse guard.

_SHAPES = {"first.weight": (8, 4), "middle.weight": (6, 8), "last.weight": (3, 6)}


def _scores_starving_middle() -> dict[str, torch.Tensor]:
    """Scores where every weight of the middle layer ranks below every other weight."""
    generator = torch.Generator().manual_seed(0)
    scores = {n: 1.0 + torch.rand(s, generator=generator, dtype=torch.float64) for n, s in _SHAPES.items()}
    scores["middle.weight"] = scores["middle.weight"] - 1.0  # in [0, 1)
    return scores


def test_guard_raises_a_collapsed_layer_to_one_weight_per_output_unit_and_names_it(caplog) -> None:
    scores = _scores_starving_middle()
    with caplog.at_level(logging.WARNING):
        densities = score_densities(_SHAPES, 0.2, scores)
    kept = {n: densities[n] * math.prod(s) for n, s in _SHAPES.items()}
    assert kept["middle.weight"] == pytest.approx(6)  # one per output unit
    assert math.fsum(kept.values()) == pytest.approx(0.2 * 98)
    assert "middle.weight" in caplog.text and "guard" in caplog.text
    masks = masks_from_scores(scores, 0.2)
    middle = scores["middle.weight"].reshape(-1)
    assert torch.equal(masks["middle.weight"].reshape(-1), middle >= torch.sort(middle, descending=True).values[5])


def test_allow_collapse_leaves_the_layer_empty_and_warns_that_the_network_is_disconnected(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        densities = score_densities(_SHAPES, 0.2, _scores_starving_middle(), allow_collapse=True)
    assert densities["middle.weight"] == 0.0
    assert "disconnected" in caplog.text and "middle.weight" in caplog.text


def test_no_warning_when_no_layer_falls_below_its_floor(caplog) -> None:
    generator = torch.Generator().manual_seed(1)
    scores = {n: torch.rand(s, generator=generator) for n, s in _SHAPES.items()}
    with caplog.at_level(logging.WARNING):
        score_densities(_SHAPES, 0.5, scores)
    assert caplog.text == ""


def test_min_density_floor_holds_every_layer_at_that_density() -> None:
    densities = score_densities(_SHAPES, 0.3, _scores_starving_middle(), min_weights_per_output=0, min_density=0.25)
    assert densities["middle.weight"] * 48 == pytest.approx(12)


def test_floors_above_the_budget_are_infeasible_and_say_the_highest_feasible_sparsity() -> None:
    with pytest.raises(InfeasibleBudgetError, match=r"highest sparsity it allows is 0\.826531"):
        score_densities(_SHAPES, 0.1, _scores_starving_middle(), min_weights_per_output=1)  # floors 17 > 9.8


def test_layer_floors_are_capped_at_the_layer_size() -> None:
    assert layer_floors({"tiny": (2, 1), "wide": (3, 10)}, min_weights_per_output=4) == {"tiny": 2, "wide": 12}
    with pytest.raises(ConfigError, match="min_density"):
        layer_floors(_SHAPES, min_density=1.5)
    with pytest.raises(ConfigError, match="min_weights_per_output"):
        layer_floors(_SHAPES, min_weights_per_output=-1)


# ---------------------------------------------------------------------------------------------
# Registry and bad input.


def test_every_scorer_has_a_registered_ratio_distribution() -> None:
    assert {"snip", "grasp", "synflow", "magnitude"} <= set(available_scorers())
    for method in available_scorers():
        assert f"{method}_ratio" in available_distributions()


def test_ratio_distribution_without_scores_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="scores"):
        layer_densities(_SHAPES, 0.5, "grasp_ratio")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("last.weight"), "no scores for prunable layer 'last.weight'"),
        (lambda s: s.update(extra=torch.ones(2)), "'extra', which is not a prunable layer"),
        (lambda s: s.update({"first.weight": torch.ones(4, 8)}), "shape"),
        (lambda s: s["first.weight"].__setitem__((0, 0), math.nan), "not all finite"),
        (lambda s: s.update({"first.weight": torch.ones(8, 4, dtype=torch.long)}), "floating-point"),
    ],
    ids=["missing_layer", "extra_layer", "wrong_shape", "nan", "integer"],
)
def test_scores_that_do_not_fit_the_layers_are_config_errors(change, message: str) -> None:
    scores = _scores_starving_middle()
    change(scores)
    with pytest.raises(ConfigError, match=message):
        layer_densities(_SHAPES, 0.5, "snip_ratio", scores=scores)


def test_mask_mode_counts_round_like_an_exact_random_draw() -> None:
    scores = _scores_starving_middle()
    densities = score_densities(_SHAPES, 0.37, scores)
    masks = masks_from_scores(scores, 0.37)
    for name, shape in _SHAPES.items():
        assert int(masks[name].sum()) == kept_count(densities[name], math.prod(shape))
