"""SET, RigL and GMP decisions on tiny hand-set layers: exactly which positions drop and grow."""

from __future__ import annotations

import math

import pytest
import torch

from randsparse.errors import ConfigError, RandsparseError
from randsparse.sparsity.methods import GMP, SET, RigL, Static, get_method, method_options
from randsparse.sparsity.methods.topology import (
    cosine_fraction,
    cubic_sparsity,
    drop_lowest,
    grow_highest,
    random_scores,
)


def _mask(*active: int, size: int = 8) -> torch.Tensor:
    mask = torch.zeros(size, dtype=torch.bool)
    mask[list(active)] = True
    return mask


def _positions(mask: torch.Tensor) -> list[int]:
    return mask.reshape(-1).nonzero().reshape(-1).tolist()


def test_drop_lowest_magnitude_and_tie_break_by_index():
    mask = _mask(0, 1, 2, 3, 4)
    scores = torch.tensor([0.5, 0.1, 0.1, 0.9, 0.2, 0.0, 0.0, 0.0])
    assert _positions(drop_lowest(mask, scores, 2)) == [0, 3, 4]  # 0.1 at 1 and 2 go; inactive zeros never count
    assert _positions(drop_lowest(mask, scores, 3)) == [0, 3]
    with pytest.raises(ValueError):
        drop_lowest(mask, scores, 6)


def test_grow_highest_among_inactive_only():
    mask = _mask(0, 1)
    scores = torch.tensor([9.0, 9.0, 1.0, 3.0, 3.0, 2.0, 0.0, 0.0])
    assert _positions(grow_highest(mask, scores, 2)) == [0, 1, 3, 4]
    assert _positions(grow_highest(mask, scores, 3)) == [0, 1, 3, 4, 5]


def test_rigl_drops_by_magnitude_and_grows_by_dense_gradient():
    method = RigL(total_steps=1000, update_every=10, drop_fraction=0.5, end_fraction=1.0)
    plan = {"w": _mask(0, 1, 2, 3)}
    method.start(plan, {"w": torch.zeros(8)})
    weights = {"w": torch.tensor([0.1, -2.0, 0.05, 3.0, 0, 0, 0, 0])}
    grads = {"w": torch.tensor([100.0, 0, 0, 0, 0.5, -7.0, 0.1, 6.0])}
    # step 0 of the cosine would be 0.5; at step 10 of 1000 it is 0.5/2 (1 + cos(pi/100)) -> round(0.4994 * 4) = 2
    new = method.update(10, weights, plan, grads, torch.Generator().manual_seed(0))
    # drop 0.05 (pos 2) and 0.1 (pos 0); grow |g| largest among inactive {0, 2, 4, 5, 6, 7}: 100 (0), 7 (5)
    assert _positions(new["w"]) == [0, 1, 3, 5]
    assert method.needs_dense_gradients(10) and not method.needs_dense_gradients(11)


def test_rigl_drop_fraction_decays_by_cosine_to_zero_at_end_fraction():
    method = RigL(total_steps=1000, update_every=100, drop_fraction=0.3, end_fraction=0.75)
    assert method.drop_fraction_at(0) == pytest.approx(0.3)
    assert method.drop_fraction_at(375) == pytest.approx(0.15)
    assert method.drop_fraction_at(500) == pytest.approx(0.15 * (1 + math.cos(math.pi * 500 / 750)))
    assert method.drop_fraction_at(750) == 0.0
    assert [s for s in range(1, 1001) if method.is_update_step(s)] == [100, 200, 300, 400, 500, 600, 700]
    assert cosine_fraction(10, 0.3, 0) == 0.0


def test_set_grows_at_the_generators_random_positions():
    method = SET(total_steps=100, update_every=5, drop_fraction=0.5)
    plan = {"w": _mask(0, 1, 2, 3)}
    method.start(plan, {"w": torch.zeros(8)})
    weights = {"w": torch.tensor([0.1, -2.0, 0.05, 3.0, 0, 0, 0, 0])}
    new = method.update(5, weights, plan, None, torch.Generator().manual_seed(123))
    # expected: drop positions 2 and 0, then grow the two inactive positions of highest random score
    scores = random_scores(plan["w"], torch.Generator().manual_seed(123))
    after_drop = _mask(1, 3)
    inactive = [i for i in range(8) if not after_drop[i]]
    grown = sorted(sorted(inactive, key=lambda i: (-scores[i].item(), i))[:2])
    assert _positions(new["w"]) == sorted([1, 3, *grown])
    again = method.update(5, weights, plan, None, torch.Generator().manual_seed(123))
    assert torch.equal(again["w"], new["w"])
    assert [s for s in range(1, 101) if method.is_update_step(s)] == list(range(5, 100, 5))  # never after the last step


def test_set_and_rigl_keep_every_layer_count_on_2d_layers():
    gen = torch.Generator().manual_seed(0)
    plan = {"a": torch.rand(6, 5, generator=gen) < 0.3, "b": torch.rand(4, 3, 3, 3, generator=gen) < 0.5}
    weights = {k: torch.randn(v.shape, generator=gen) * v for k, v in plan.items()}
    grads = {k: torch.randn(v.shape, generator=gen) for k, v in plan.items()}
    for method in (SET(50, update_every=1), RigL(50, update_every=1)):
        method.start(plan, weights)
        masks = plan
        for step in range(1, 10):
            masks = method.update(step, weights, masks, grads, torch.Generator().manual_seed(step))
            assert {k: int(v.sum()) for k, v in masks.items()} == method.target_counts(step) == method.plan_counts


def test_gmp_cubic_schedule_values():
    assert cubic_sparsity(0, 0.0, 0.9, 0, 100) == 0.0
    assert cubic_sparsity(50, 0.0, 0.9, 0, 100) == pytest.approx(0.9 - 0.9 * 0.5**3)
    assert cubic_sparsity(25, 0.5, 0.9, 0, 100) == pytest.approx(0.9 - 0.4 * 0.75**3)
    assert cubic_sparsity(200, 0.0, 0.9, 0, 100) == 0.9
    method = GMP(total_steps=1000, update_every=100, begin_fraction=0.0, end_fraction=0.5)
    plan = {"w": _mask(*range(10), size=100)}  # 90 % sparse at the end
    weights = {"w": torch.arange(100, dtype=torch.float32) - 50}  # |w| smallest at index 50
    masks = method.start(plan, weights)
    assert int(masks["w"].sum()) == 100  # from dense
    kept = {}
    for step in range(1, 1001):
        if method.is_update_step(step):
            masks = method.update(step, weights, masks, None, torch.Generator())
            kept[step] = int(masks["w"].sum())
            assert kept[step] == method.target_counts(step)["w"]
    # pruned count 90 (1 - (t/500))^3 complement, rounded: 44, 71, 84, 89, 90
    assert kept == {100: 56, 200: 29, 300: 16, 400: 11, 500: 10}
    assert _positions(masks["w"]) == [
        0,
        1,
        2,
        3,
        4,
        95,
        96,
        97,
        98,
        99,
    ]  # largest |w|; ties: lower index dropped
    assert method.target_counts(150)["w"] == 56 and method.target_counts(50)["w"] == 100


def test_gmp_initial_sparsity_prunes_by_magnitude_at_start():
    method = GMP(total_steps=10, initial_sparsity=0.5)
    plan = {"w": _mask(0, 1, size=8)}
    masks = method.start(plan, {"w": torch.tensor([1.0, -8, 3, 0.5, 7, 2, -6, 4])})
    assert _positions(masks["w"]) == [1, 4, 6, 7]


@pytest.mark.parametrize(
    ("name", "options", "fragment"),
    [
        ("rigl", {"drop_fraction": 1.5}, "drop_fraction must be in (0, 1)"),
        ("set", {"drop_fraction": 0.0}, "drop_fraction"),
        ("rigl", {"update_every": 0}, "update_every must be at least 1"),
        ("rigl", {"end_fraction": 0.0}, "end_fraction"),
        ("gmp", {"begin_fraction": 0.8, "end_fraction": 0.5}, "end_fraction must be in (0.8, 1]"),
        ("gmp", {"initial_sparsity": 1.0}, "initial_sparsity"),
    ],
)
def test_options_out_of_range_are_one_line_config_errors(name, options, fragment):
    with pytest.raises(ConfigError) as info:
        get_method(name)(100, **options)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_method_options_exclude_loop_arguments():
    assert method_options("rigl") == ["update_every", "drop_fraction", "end_fraction"]
    assert method_options("gmp") == ["update_every", "begin_fraction", "end_fraction", "initial_sparsity"]
    assert method_options("static") == []


def test_static_keeps_the_plan_object_and_never_updates():
    method = Static(100)
    plan = {"w": _mask(1, 2)}
    assert method.start(plan, {"w": torch.zeros(8)}) is plan
    assert not any(method.is_update_step(s) for s in range(1, 101))
    assert not method.dynamic


def test_rigl_without_gradients_is_an_error():
    method = RigL(100, update_every=1)
    plan = {"w": _mask(1, 2)}
    method.start(plan, {"w": torch.zeros(8)})
    with pytest.raises(RandsparseError):
        method.update(1, {"w": torch.zeros(8)}, plan, None, torch.Generator())
