"""Layer-wise density rules: reference figures, exact budget, RigL's overflow rule, custom files."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from randsparse.errors import ConfigError, InfeasibleBudgetError, UnknownNameError
from randsparse.models import build
from randsparse.sparsity import available_distributions, layer_densities, load_custom_densities, prunable_shapes
from randsparse.sparsity.distributions import uniform_plus

Shapes = dict[str, tuple[int, ...]]

# ---------------------------------------------------------------------------------------------
# Helpers written from the paper's formulas, independent of the implementation.


def _size(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _er_raw(shape: tuple[int, ...]) -> float:
    n_out, n_in = shape[0], shape[1]
    return (n_out + n_in) / (n_out * n_in)


def _erk_raw(power: float) -> Callable[[tuple[int, ...]], float]:
    def raw(shape: tuple[int, ...]) -> float:
        return (sum(shape) / math.prod(shape)) ** power

    return raw


def _rigl_densities(shapes: Shapes, density: float, raw_fn: Callable[[tuple[int, ...]], float]) -> dict[str, float]:
    """RigL's `get_sparsities` loop, transcribed: make the layers with the largest raw value dense
    while the scaled density of the largest one exceeds 1, and solve eps again."""
    dense_layers: set[str] = set()
    eps = 0.0
    while True:
        divisor = 0.0
        rhs = 0.0
        raw_probabilities: dict[str, float] = {}
        for name, shape in shapes.items():
            n_param = _size(shape)
            n_zeros = n_param * (1 - density)
            n_ones = n_param * density
            if name in dense_layers:
                rhs -= n_zeros
            else:
                rhs += n_ones
                raw_probabilities[name] = raw_fn(shape)
                divisor += raw_probabilities[name] * n_param
        if not raw_probabilities:
            break
        eps = rhs / divisor
        max_prob = max(raw_probabilities.values())
        if max_prob * eps > 1:
            dense_layers.update(n for n, p in raw_probabilities.items() if p == max_prob)
        else:
            break
    return {n: 1.0 if n in dense_layers else eps * raw_fn(s) for n, s in shapes.items()}


def _budget(shapes: Shapes, density: float) -> float:
    return density * math.fsum(_size(s) for s in shapes.values())


def _kept(shapes: Shapes, result: Mapping[str, float]) -> float:
    return math.fsum(result[n] * _size(s) for n, s in shapes.items())


def _assert_exact_budget_and_unit_interval(shapes: Shapes, density: float, result: Mapping[str, float]) -> None:
    assert set(result) == set(shapes)
    for d in result.values():
        assert 0.0 <= d <= 1.0
    budget = _budget(shapes, density)
    assert abs(_kept(shapes, result) - budget) <= 1e-6 * budget


def _assert_water_filling(shapes: Shapes, density: float, result: Mapping[str, float], raw_fn) -> None:
    """One eps: every non-dense layer at eps*raw, every dense layer with eps*raw >= 1."""
    raw = {n: raw_fn(s) for n, s in shapes.items()}
    free = [n for n in shapes if result[n] < 1.0]
    dense = [n for n in shapes if result[n] == 1.0]
    if not free:
        assert density == pytest.approx(1.0, rel=1e-6)
        return
    eps = result[free[0]] / raw[free[0]]
    for n in free:
        assert result[n] == pytest.approx(eps * raw[n], rel=1e-9)
    for n in dense:
        assert eps * raw[n] >= 1.0 - 1e-9


# ---------------------------------------------------------------------------------------------
# Strategies.

_dim = st.integers(1, 64)
_shape = st.one_of(st.tuples(_dim, _dim), st.tuples(_dim, _dim, _dim, _dim))


def _shapes(min_size: int = 1) -> st.SearchStrategy[Shapes]:
    return st.lists(_shape, min_size=min_size, max_size=12).map(
        lambda shapes: {f"block{i}.weight": s for i, s in enumerate(shapes)}
    )


_density = st.floats(0.001, 1.0, exclude_min=True, allow_nan=False)

_ALWAYS_FEASIBLE = [
    ("uniform", {}),
    ("er", {}),
    ("erk", {}),
    ("erk", {"erk_power_scale": 0.0}),
    ("erk", {"erk_power_scale": 0.3}),
    ("erk", {"erk_power_scale": 0.5}),
    ("erk", {"erk_power_scale": 2.0}),
]
_ALWAYS_FEASIBLE_IDS = [f"{name}{opts.get('erk_power_scale', '')}" for name, opts in _ALWAYS_FEASIBLE]

_SCALED = [("er", {}, _er_raw)] + [("erk", {"erk_power_scale": p}, _erk_raw(p)) for p in (1.0, 0.0, 0.3, 0.5, 2.0)]
_SCALED_IDS = ["er", "erk", "erk0", "erk0.3", "erk0.5", "erk2"]


# ---------------------------------------------------------------------------------------------
# Reference figures.


@pytest.fixture(scope="module")
def resnet20_shapes() -> Shapes:
    return prunable_shapes(build("resnet20", num_classes=10))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("conv1.weight", 0.4748),
        ("layer1.0.conv1.weight", 0.1353),
        ("layer2.0.shortcut.0.weight", 0.8012),
        ("layer3.2.conv2.weight", 0.0298),
        ("fc.weight", 0.9486),
    ],
)
def test_erk_matches_paper_figures_on_resnet20_at_density_005(resnet20_shapes: Shapes, name: str, expected: float):
    assert layer_densities(resnet20_shapes, 0.05, "erk")[name] == pytest.approx(expected, abs=5e-4)


@pytest.mark.parametrize(("name", "expected"), [("conv1.weight", 0.4448), ("fc.weight", 0.1299)])
def test_er_matches_paper_figures_on_resnet20_at_density_005(resnet20_shapes: Shapes, name: str, expected: float):
    assert layer_densities(resnet20_shapes, 0.05, "er")[name] == pytest.approx(expected, abs=5e-4)


def test_erk_matches_reference_figures_on_imagenet_resnet50_at_density_02() -> None:
    with torch.device("meta"):
        model = torchvision.models.resnet50(weights=None, num_classes=1000)
    result = layer_densities(prunable_shapes(model), 0.2, "erk")
    assert result["fc.weight"] == pytest.approx(0.148, abs=5e-4)
    assert result["conv1.weight"] == pytest.approx(0.857, abs=5e-4)


@pytest.mark.parametrize(("distribution", "options", "raw_fn"), _SCALED, ids=_SCALED_IDS)
@pytest.mark.parametrize("density", [0.01, 0.05, 0.1, 0.3, 0.5, 0.9])
def test_er_erk_match_rigl_loop_on_resnet20(resnet20_shapes, distribution, options, raw_fn, density) -> None:
    result = layer_densities(resnet20_shapes, density, distribution, **options)
    expected = _rigl_densities(resnet20_shapes, density, raw_fn)
    for name in resnet20_shapes:
        assert result[name] == pytest.approx(expected[name], rel=1e-9, abs=1e-12)


def test_erk_makes_overflowing_layers_dense_on_resnet20(resnet20_shapes: Shapes) -> None:
    # At density 0.3 the small first conv, shortcuts and classifier would exceed 1 before overflow.
    result = layer_densities(resnet20_shapes, 0.3, "erk")
    assert result["conv1.weight"] == 1.0
    assert result["fc.weight"] == 1.0
    _assert_exact_budget_and_unit_interval(resnet20_shapes, 0.3, result)


# ---------------------------------------------------------------------------------------------
# Properties of every rule.


def test_registry_lists_the_shape_rules_and_the_score_ratio_rules() -> None:
    shape_rules = {"uniform", "uniform_plus", "er", "erk", "erk_plus", "custom"}
    score_rules = {"snip_ratio", "grasp_ratio", "synflow_ratio", "magnitude_ratio"}
    assert shape_rules | score_rules <= set(available_distributions())
    assert available_distributions() == sorted(available_distributions())


@pytest.mark.parametrize(("distribution", "options"), _ALWAYS_FEASIBLE, ids=_ALWAYS_FEASIBLE_IDS)
@settings(max_examples=60, deadline=None)
@given(shapes=_shapes(), density=_density)
def test_rule_keeps_exact_budget_with_densities_in_unit_interval(distribution, options, shapes, density) -> None:
    result = layer_densities(shapes, density, distribution, **options)
    _assert_exact_budget_and_unit_interval(shapes, density, result)


@pytest.mark.parametrize(("distribution", "options"), _ALWAYS_FEASIBLE, ids=_ALWAYS_FEASIBLE_IDS)
@settings(max_examples=40, deadline=None)
@given(shapes=_shapes(), density=_density, data=st.data())
def test_rule_is_independent_of_dict_order(distribution, options, shapes, density, data) -> None:
    order = data.draw(st.permutations(list(shapes)))
    shuffled = {n: shapes[n] for n in order}
    assert layer_densities(shuffled, density, distribution, **options) == layer_densities(
        shapes, density, distribution, **options
    )


def test_uniform_gives_every_layer_the_target() -> None:
    shapes = {"a": (3, 4), "b": (10, 2, 3, 3)}
    assert layer_densities(shapes, 0.37, "uniform") == {"a": 0.37, "b": 0.37}


@pytest.mark.parametrize(("distribution", "options", "raw_fn"), _SCALED, ids=_SCALED_IDS)
@settings(max_examples=60, deadline=None)
@given(shapes=_shapes(), density=_density)
def test_er_erk_satisfy_water_filling(distribution, options, raw_fn, shapes, density) -> None:
    result = layer_densities(shapes, density, distribution, **options)
    _assert_water_filling(shapes, density, result, raw_fn)


@pytest.mark.parametrize(("distribution", "options", "raw_fn"), _SCALED, ids=_SCALED_IDS)
@settings(max_examples=60, deadline=None)
@given(shapes=_shapes(), density=_density)
def test_er_erk_match_rigl_overflow_loop(distribution, options, raw_fn, shapes, density) -> None:
    result = layer_densities(shapes, density, distribution, **options)
    expected = _rigl_densities(shapes, density, raw_fn)
    for name in shapes:
        assert result[name] == pytest.approx(expected[name], rel=1e-9, abs=1e-9)


def test_erk_at_density_one_is_dense_everywhere() -> None:
    shapes = {"a": (3, 4), "b": (16, 8, 3, 3), "c": (10, 16)}
    assert layer_densities(shapes, 1.0, "erk") == {"a": 1.0, "b": 1.0, "c": 1.0}


# ---------------------------------------------------------------------------------------------
# uniform_plus


def _clearly(value: float, threshold: float) -> int:
    """-1 / +1 when `value` is clearly below / above `threshold`, 0 when too close to call."""
    if value < threshold * (1 - 1e-6):
        return -1
    if value > threshold * (1 + 1e-6):
        return 1
    return 0


@settings(max_examples=150, deadline=None)
@given(shapes=_shapes(min_size=2), density=_density, floor=st.sampled_from([None, 0.0, 0.2, 0.5, 1.0]))
def test_uniform_plus_roles_and_budget_or_refusal_only_when_infeasible(shapes, density, floor) -> None:
    names = list(shapes)
    first, last = names[0], names[-1]
    floor_value = 0.2 if floor is None else floor
    options = {} if floor is None else {"last_layer_min_density": floor}
    minimum = _size(shapes[first]) + floor_value * _size(shapes[last])
    budget = _budget(shapes, density)
    verdict = _clearly(budget, minimum)
    try:
        result = layer_densities(shapes, density, "uniform_plus", **options)
    except InfeasibleBudgetError as exc:
        assert verdict <= 0, "refused a feasible target"
        assert "highest feasible sparsity" in str(exc)
        return
    assert verdict >= 0, "accepted an infeasible target"
    _assert_exact_budget_and_unit_interval(shapes, density, result)
    assert result[first] == 1.0
    assert result[last] >= floor_value - 1e-12
    middle = {result[n] for n in names[1:-1]}
    assert len(middle) <= 1
    if middle and result[last] > floor_value + 1e-9:
        assert result[last] == pytest.approx(middle.pop(), rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(shapes=_shapes(min_size=2), density=_density, data=st.data())
def test_uniform_plus_with_named_roles_is_independent_of_dict_order(shapes, density, data) -> None:
    names = list(shapes)
    roles = {"first_layer": names[0], "last_layer": names[-1]}
    order = data.draw(st.permutations(names))
    shuffled = {n: shapes[n] for n in order}
    try:
        expected = layer_densities(shapes, density, "uniform_plus", **roles)
    except InfeasibleBudgetError:
        with pytest.raises(InfeasibleBudgetError):
            layer_densities(shuffled, density, "uniform_plus", **roles)
        return
    assert layer_densities(shuffled, density, "uniform_plus", **roles) == expected


def test_uniform_plus_on_resnet20(resnet20_shapes: Shapes) -> None:
    result = layer_densities(resnet20_shapes, 0.1, "uniform_plus")
    names = list(resnet20_shapes)
    assert result["conv1.weight"] == 1.0
    assert result["fc.weight"] >= 0.2
    assert len({result[n] for n in names[1:-1]}) == 1
    _assert_exact_budget_and_unit_interval(resnet20_shapes, 0.1, result)


def test_uniform_plus_last_layer_shares_the_density_when_above_floor() -> None:
    shapes = {"first": (4, 3), "mid": (10, 10), "last": (5, 10)}
    result = layer_densities(shapes, 0.6, "uniform_plus")
    shared = (0.6 * 162 - 12) / 150
    assert result == pytest.approx({"first": 1.0, "mid": shared, "last": shared}, rel=1e-12)


def test_uniform_plus_names_roles_explicitly() -> None:
    shapes = {"a": (4, 4), "b": (8, 4), "c": (8, 8)}
    result = layer_densities(shapes, 0.7, "uniform_plus", first_layer="c", last_layer="a")
    assert result["c"] == 1.0
    assert result["a"] >= 0.2
    _assert_exact_budget_and_unit_interval(shapes, 0.7, result)


def test_uniform_plus_unknown_role_name_is_config_error() -> None:
    with pytest.raises(ConfigError, match="first_layer"):
        layer_densities({"a": (2, 2), "b": (2, 2)}, 0.9, "uniform_plus", first_layer="nope")


def test_uniform_plus_infeasible_message_names_highest_feasible_sparsity(resnet20_shapes: Shapes) -> None:
    total = sum(_size(s) for s in resnet20_shapes.values())
    highest = 1 - (_size(resnet20_shapes["conv1.weight"]) + 0.2 * _size(resnet20_shapes["fc.weight"])) / total
    with pytest.raises(InfeasibleBudgetError, match="highest feasible sparsity") as info:
        layer_densities(resnet20_shapes, 0.001, "uniform_plus")
    assert f"{highest:.6f}" in str(info.value)


def test_uniform_plus_single_layer_only_feasible_dense() -> None:
    assert layer_densities({"only": (3, 3)}, 1.0, "uniform_plus") == {"only": 1.0}
    with pytest.raises(InfeasibleBudgetError):
        layer_densities({"only": (3, 3)}, 0.5, "uniform_plus")


@pytest.mark.parametrize("density", [1.0, 0.5])
def test_uniform_plus_first_layer_same_as_last_layer_is_config_error(density: float) -> None:
    # Three layers, first_layer named as the (default) last layer: the rule cannot give the same
    # layer both roles. It must say so, not claim the model has one layer or fail an internal check.
    shapes = {"a": (4, 3), "b": (5, 4), "c": (6, 5)}
    with pytest.raises(ConfigError):
        layer_densities(shapes, density, "uniform_plus", first_layer="c")


# ---------------------------------------------------------------------------------------------
# erk_plus


@settings(max_examples=150, deadline=None)
@given(shapes=_shapes(), density=_density, classifier_density=st.sampled_from([0.0, 0.1, 0.5, 1.0]))
def test_erk_plus_holds_classifier_and_fills_rest_with_erk(shapes, density, classifier_density) -> None:
    names = list(shapes)
    head = names[-1]
    rest = {n: s for n, s in shapes.items() if n != head}
    budget = _budget(shapes, density)
    head_kept = classifier_density * _size(shapes[head])
    rest_total = sum(_size(s) for s in rest.values())
    too_sparse = _clearly(budget, head_kept)  # -1: the classifier alone exceeds the budget
    too_dense = _clearly(budget - head_kept, rest_total) if rest_total else _clearly(budget, head_kept)
    try:
        result = layer_densities(shapes, density, "erk_plus", classifier_density=classifier_density)
    except InfeasibleBudgetError as exc:
        assert too_sparse <= 0 or too_dense >= 0, "refused a feasible target"
        if too_sparse < 0:
            assert "highest feasible sparsity" in str(exc)
        return
    assert too_sparse >= 0 and too_dense <= 0, "accepted an infeasible target"
    _assert_exact_budget_and_unit_interval(shapes, density, result)
    assert result[head] == classifier_density
    rest_budget = budget - head_kept
    if rest and rest_budget > 1e-6 * budget:
        expected = _rigl_densities(rest, min(1.0, rest_budget / rest_total), _erk_raw(1.0))
        for n in rest:
            assert result[n] == pytest.approx(expected[n], rel=1e-6, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(shapes=_shapes(min_size=2), density=_density, data=st.data())
def test_erk_plus_with_named_classifier_is_independent_of_dict_order(shapes, density, data) -> None:
    head = list(shapes)[-1]
    options = {"classifier": head, "classifier_density": 0.5}
    order = data.draw(st.permutations(list(shapes)))
    shuffled = {n: shapes[n] for n in order}
    try:
        expected = layer_densities(shapes, density, "erk_plus", **options)
    except InfeasibleBudgetError:
        with pytest.raises(InfeasibleBudgetError):
            layer_densities(shuffled, density, "erk_plus", **options)
        return
    assert layer_densities(shuffled, density, "erk_plus", **options) == expected


def test_erk_plus_on_resnet20_keeps_classifier_at_given_density(resnet20_shapes: Shapes) -> None:
    result = layer_densities(resnet20_shapes, 0.1, "erk_plus", classifier_density=0.5)
    assert result["fc.weight"] == 0.5
    _assert_exact_budget_and_unit_interval(resnet20_shapes, 0.1, result)


def test_erk_plus_default_classifier_is_dense_last_layer(resnet20_shapes: Shapes) -> None:
    assert layer_densities(resnet20_shapes, 0.1, "erk_plus")["fc.weight"] == 1.0


def test_erk_plus_named_classifier(resnet20_shapes: Shapes) -> None:
    result = layer_densities(resnet20_shapes, 0.1, "erk_plus", classifier="conv1.weight", classifier_density=0.3)
    assert result["conv1.weight"] == 0.3
    _assert_exact_budget_and_unit_interval(resnet20_shapes, 0.1, result)


def test_erk_plus_too_sparse_message_names_highest_feasible_sparsity(resnet20_shapes: Shapes) -> None:
    total = sum(_size(s) for s in resnet20_shapes.values())
    highest = 1 - _size(resnet20_shapes["fc.weight"]) / total
    with pytest.raises(InfeasibleBudgetError, match="highest feasible sparsity") as info:
        layer_densities(resnet20_shapes, 0.001, "erk_plus", classifier_density=1.0)
    assert f"{highest:.6f}" in str(info.value)


def test_erk_plus_too_dense_for_a_sparse_classifier_is_infeasible(resnet20_shapes: Shapes) -> None:
    total = sum(_size(s) for s in resnet20_shapes.values())
    lowest = _size(resnet20_shapes["fc.weight"]) / total
    with pytest.raises(InfeasibleBudgetError) as info:
        layer_densities(resnet20_shapes, 1.0, "erk_plus", classifier_density=0.0)
    assert f"{lowest:.6f}" in str(info.value)


# ---------------------------------------------------------------------------------------------
# custom


_NET: Shapes = {
    "conv1.weight": (16, 3, 3, 3),
    "layer1.0.conv1.weight": (16, 16, 3, 3),
    "layer1.0.conv2.weight": (16, 16, 3, 3),
    "layer2.0.conv1.weight": (32, 16, 3, 3),
    "fc.weight": (10, 32),
}


def _free_density(shapes: Shapes, density: float, pinned: Mapping[str, float]) -> float:
    total = sum(_size(s) for s in shapes.values())
    pinned_kept = sum(pinned[n] * _size(shapes[n]) for n in pinned)
    free_total = sum(_size(s) for n, s in shapes.items() if n not in pinned)
    return (density * total - pinned_kept) / free_total


def test_custom_pins_exact_names_and_unpinned_layers_absorb_the_budget() -> None:
    pinned = {"conv1.weight": 1.0, "fc.weight": 0.5}
    result = layer_densities(_NET, 0.2, "custom", densities=pinned)
    assert result["conv1.weight"] == 1.0
    assert result["fc.weight"] == 0.5
    rest = _free_density(_NET, 0.2, pinned)
    for n in ("layer1.0.conv1.weight", "layer1.0.conv2.weight", "layer2.0.conv1.weight"):
        assert result[n] == pytest.approx(rest, rel=1e-12)
    _assert_exact_budget_and_unit_interval(_NET, 0.2, result)


def test_custom_regex_key_pins_every_fully_matching_layer() -> None:
    result = layer_densities(_NET, 0.2, "custom", densities={r"layer1\..*": 0.1})
    assert result["layer1.0.conv1.weight"] == 0.1
    assert result["layer1.0.conv2.weight"] == 0.1
    pinned = {"layer1.0.conv1.weight": 0.1, "layer1.0.conv2.weight": 0.1}
    assert result["conv1.weight"] == pytest.approx(_free_density(_NET, 0.2, pinned), rel=1e-12)
    _assert_exact_budget_and_unit_interval(_NET, 0.2, result)


def test_custom_regex_key_must_match_the_whole_name() -> None:
    # "conv1" is found inside several names but fully matches none of them.
    with pytest.raises(ConfigError, match="matches no prunable layer"):
        layer_densities(_NET, 0.2, "custom", densities={"conv1": 0.5})


def test_custom_exact_name_beats_regex() -> None:
    for densities in ({r".*conv1\.weight": 0.3, "conv1.weight": 0.9}, {"conv1.weight": 0.9, r".*conv1\.weight": 0.3}):
        result = layer_densities(_NET, 0.3, "custom", densities=densities)
        assert result["conv1.weight"] == 0.9
        assert result["layer1.0.conv1.weight"] == 0.3
        assert result["layer2.0.conv1.weight"] == 0.3


def test_custom_key_matching_no_layer_is_config_error() -> None:
    with pytest.raises(ConfigError, match=r"nothing\.weight"):
        layer_densities(_NET, 0.2, "custom", densities={"nothing.weight": 0.5})


def test_custom_invalid_regex_key_is_config_error() -> None:
    with pytest.raises(ConfigError):
        layer_densities(_NET, 0.2, "custom", densities={"layer(": 0.5})


def test_custom_conflicting_regexes_are_config_error() -> None:
    with pytest.raises(ConfigError, match=re.escape("layer1.0.conv1.weight")):
        layer_densities(_NET, 0.2, "custom", densities={r"layer1\..*": 0.1, r".*conv1\.weight": 0.2})


def test_custom_overlapping_regexes_with_equal_values_are_accepted() -> None:
    result = layer_densities(_NET, 0.11, "custom", densities={r"layer1\..*": 0.1, r".*conv1\.weight": 0.1})
    assert result["layer1.0.conv1.weight"] == 0.1
    assert result["conv1.weight"] == 0.1


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.5", True, None])
def test_custom_value_not_a_density_is_config_error(bad) -> None:
    with pytest.raises(ConfigError):
        layer_densities(_NET, 0.2, "custom", densities={"fc.weight": bad})


def test_custom_fully_pinned_with_matching_target_is_accepted() -> None:
    pinned = dict.fromkeys(_NET, 0.25)
    assert layer_densities(_NET, 0.25, "custom", densities=pinned) == pinned


def test_custom_fully_pinned_with_wrong_target_is_infeasible() -> None:
    with pytest.raises(InfeasibleBudgetError, match="pin every layer"):
        layer_densities(_NET, 0.5, "custom", densities={".*": 0.25})


def test_custom_pins_leaving_free_layers_above_one_are_infeasible() -> None:
    # Every layer but the tiny classifier pinned to 0, target 0.5: fc would need density > 1.
    with pytest.raises(InfeasibleBudgetError):
        layer_densities(_NET, 0.5, "custom", densities={r"(conv1|layer.*)\.weight": 0.0})


def test_custom_is_independent_of_dict_order() -> None:
    densities = {r"layer1\..*": 0.1, "fc.weight": 1.0}
    shuffled = dict(reversed(list(_NET.items())))
    assert layer_densities(shuffled, 0.2, "custom", densities=densities) == layer_densities(
        _NET, 0.2, "custom", densities=densities
    )


# load_custom_densities


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_load_custom_densities_reads_yaml_density(tmp_path, suffix: str) -> None:
    path = tmp_path / f"d{suffix}"
    path.write_text("density:\n  conv1.weight: 1.0\n  'layer1\\..*': 0.1\n  fc.weight: 1\n")
    assert load_custom_densities(path) == {"conv1.weight": 1.0, r"layer1\..*": 0.1, "fc.weight": 1.0}


def test_load_custom_densities_converts_yaml_sparsity_to_density(tmp_path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("sparsity:\n  conv1.weight: 0.0\n  fc.weight: 0.9\n")
    loaded = load_custom_densities(str(path))
    assert loaded == pytest.approx({"conv1.weight": 1.0, "fc.weight": 0.1}, abs=1e-12)


@pytest.mark.parametrize(("kind", "value", "expected"), [("density", 0.3, 0.3), ("sparsity", 0.75, 0.25)])
def test_load_custom_densities_reads_json(tmp_path, kind: str, value: float, expected: float) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps({kind: {"fc.weight": value, "conv1.weight": 1}}))
    loaded = load_custom_densities(path)
    assert loaded == pytest.approx({"fc.weight": expected, "conv1.weight": 1.0 if kind == "density" else 0.0})


def test_loaded_custom_densities_drive_the_custom_rule(tmp_path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text("sparsity:\n  'layer1\\..*': 0.9\n  fc.weight: 0.0\n")
    result = layer_densities(_NET, 0.2, "custom", densities=load_custom_densities(path))
    assert result["layer1.0.conv2.weight"] == pytest.approx(0.1)
    assert result["fc.weight"] == 1.0
    _assert_exact_budget_and_unit_interval(_NET, 0.2, result)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("two_keys.yaml", "density:\n  fc.weight: 0.5\nsparsity:\n  conv1.weight: 0.5\n"),
        ("wrong_key.yaml", "densities:\n  fc.weight: 0.5\n"),
        ("bare_mapping.yaml", "fc.weight: 0.5\n"),
        ("list.yaml", "- 0.5\n- 0.4\n"),
        ("scalar.yaml", "0.5\n"),
        ("empty.yaml", ""),
        ("not_a_mapping.yaml", "density:\n  - 0.5\n"),
        ("null_mapping.yaml", "density:\n"),
        ("string_value.yaml", "density:\n  fc.weight: half\n"),
        ("bool_value.yaml", "density:\n  fc.weight: true\n"),
        ("out_of_range.yaml", "sparsity:\n  fc.weight: 1.5\n"),
        ("negative.yaml", "density:\n  fc.weight: -0.1\n"),
        ("broken.yaml", "density: [unclosed\n"),
        ("broken.json", '{"density": {"fc.weight": 0.5}'),
        ("list.json", "[0.5]"),
        ("two_keys.json", '{"density": {}, "sparsity": {}}'),
    ],
)
def test_load_custom_densities_rejects_other_file_shapes(tmp_path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_custom_densities(path)


def test_load_custom_densities_missing_file_is_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_custom_densities(tmp_path / "absent.yaml")


# ---------------------------------------------------------------------------------------------
# layer_densities argument checks


def test_option_the_rule_does_not_take_is_config_error() -> None:
    with pytest.raises(ConfigError, match="erk_power_scale"):
        layer_densities(_NET, 0.2, "er", erk_power_scale=0.5)
    with pytest.raises(ConfigError, match="no options"):
        layer_densities(_NET, 0.2, "uniform", classifier_density=0.5)
    with pytest.raises(ConfigError, match="densities"):
        layer_densities(_NET, 0.2, "erk", densities={"fc.weight": 1.0})


def test_custom_without_densities_is_config_error() -> None:
    # A required option left out is a user error like an option too many, not a TypeError.
    with pytest.raises(ConfigError):
        layer_densities(_NET, 0.2, "custom")


def test_unknown_distribution_lists_the_known_ones() -> None:
    with pytest.raises(UnknownNameError) as info:
        layer_densities(_NET, 0.2, "erk_typo")
    assert "erk_typo" in str(info.value)
    for name in available_distributions():
        assert name in str(info.value)
    assert info.value.known == available_distributions()


@pytest.mark.parametrize("density", [0.0, -0.1, 1.0000001, 2.0, math.nan, math.inf])
def test_density_outside_zero_one_is_config_error(density: float) -> None:
    with pytest.raises(ConfigError, match="sparsity"):
        layer_densities(_NET, density, "uniform")


def test_density_one_is_accepted() -> None:
    assert set(layer_densities(_NET, 1.0, "uniform").values()) == {1.0}


def test_no_prunable_layers_is_config_error() -> None:
    with pytest.raises(ConfigError, match="no prunable layers"):
        layer_densities({}, 0.5, "erk")


def test_layer_with_zero_weights_is_config_error() -> None:
    with pytest.raises(ConfigError, match="no weights"):
        layer_densities({"a": (4, 4), "empty": (0, 4)}, 0.5, "erk")


def _paper_uniform_plus_kept(sizes: list[int], density: float) -> float:
    """Expected weights kept by the paper code's uniform+ (sparselearning/core.py): first layer dense."""
    total = sum(sizes)
    if density >= 0.2:
        return sizes[0] + density * sum(sizes[1:])
    rest = (total * density - sizes[0] - 0.2 * sizes[-1]) / total
    return sizes[0] + 0.2 * sizes[-1] + rest * sum(sizes[1:-1])


def test_uniform_plus_docstring_says_how_the_paper_code_misses_the_budget_both_ways() -> None:
    sizes = [432, 36864, 36864, 640]
    assert _paper_uniform_plus_kept(sizes, 0.5) > 0.5 * sum(sizes)  # over the budget at density >= 0.2
    assert _paper_uniform_plus_kept(sizes, 0.1) < 0.1 * sum(sizes)  # under it below 0.2
    doc = " ".join((uniform_plus.__doc__ or "").split())
    assert "keeps more than the budget" in doc and "so it keeps fewer" in doc
    shapes = {f"l{i}": (size,) for i, size in enumerate(sizes)}
    for density in (0.1, 0.5):  # ours meets it exactly
        kept = sum(d * s for d, s in zip(uniform_plus(shapes, density).values(), sizes, strict=True))
        assert kept == pytest.approx(density * sum(sizes))
