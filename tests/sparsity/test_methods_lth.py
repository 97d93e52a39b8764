"""LTH's pure decisions: level sparsities and magnitude pruning (global threshold, layer-wise) on hand-set tensors."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from randsparse.errors import ConfigError
from randsparse.sparsity.methods import available_methods, get_method, method_options
from randsparse.sparsity.methods.lth import (
    LotteryTicket,
    global_magnitude_masks,
    layerwise_magnitude_masks,
    level_sparsities,
)


def test_lth_is_registered_with_its_options() -> None:
    assert "lth" in available_methods()
    assert get_method("lth") is LotteryTicket
    assert method_options("lth") == ["levels", "rewind_step", "scope"]
    assert not LotteryTicket(100).is_update_step(1), "within a level the masks are fixed"


def test_level_sparsities_keep_the_same_fraction_each_level_and_end_at_the_target() -> None:
    assert level_sparsities(0.75, 2) == [0.0, 0.5, 0.75]
    got = level_sparsities(0.96, 3)
    assert got[0] == 0.0 and got[-1] == pytest.approx(0.96, abs=1e-12)
    kept = [1 - s for s in got]
    ratios = [b / a for a, b in itertools.pairwise(kept)]
    assert ratios == pytest.approx([0.04 ** (1 / 3)] * 3)


def test_global_threshold_keeps_exactly_the_largest_active_magnitudes_over_all_layers() -> None:
    a = torch.tensor([[0.9, -0.1], [0.5, 0.05]])
    b = torch.tensor([0.3, -0.7, 0.2, 0.01, 2.0, -0.4])
    masks = {
        "a": torch.tensor([[True, True], [True, True]]),
        "b": torch.tensor([True, True, True, True, False, True]),  # 2.0 was pruned before: stays pruned
    }
    # 10 weights, density 0.4 -> keep 4: active magnitudes 0.9, 0.7, 0.5, 0.4 | 0.3, 0.2, 0.1, 0.05, 0.01
    new = global_magnitude_masks({"a": a, "b": b}, masks, 0.4)
    assert new["a"].tolist() == [[True, False], [True, False]]
    assert new["b"].tolist() == [False, True, False, False, False, True]
    # The threshold is global: layer a keeps 2 of 4, layer b 2 of 6 (densities redistributed).
    assert [int(new[n].sum()) for n in ("a", "b")] == [2, 2]


def test_global_threshold_from_a_dense_parent_and_ties_go_to_the_first_layer_then_position() -> None:
    weights = {"b": torch.tensor([0.5, 0.5]), "a": torch.tensor([0.5, 1.0, 0.5])}
    new = global_magnitude_masks(weights, None, 0.6)  # keep 3 of 5: 1.0, then two of the four 0.5
    assert new["a"].tolist() == [True, True, True]
    assert new["b"].tolist() == [False, False]
    assert list(new) == ["b", "a"], "masks keep the weights' order"


def test_layerwise_pruning_keeps_each_layer_s_own_density() -> None:
    a = torch.tensor([0.9, -0.1, 0.5, 0.05])
    b = torch.tensor([0.3, -0.7, 0.2, 0.01, 2.0, -0.4])
    masks = {"a": torch.ones(4, dtype=torch.bool), "b": torch.tensor([True, True, True, True, False, True])}
    new = layerwise_magnitude_masks({"a": a, "b": b}, masks, {"a": 0.25, "b": 0.5})
    assert new["a"].tolist() == [True, False, False, False]
    assert new["b"].tolist() == [True, True, False, False, False, True]
    # A rule asking for more than a layer still has keeps what it has (never revives a pruned weight).
    more = layerwise_magnitude_masks({"a": a, "b": b}, masks, {"a": 0.25, "b": 1.0})
    assert more["b"].tolist() == masks["b"].tolist()


def test_method_dispatches_on_scope() -> None:
    weights = {"a": torch.tensor([3.0, 2.0, 1.0, 0.5]), "b": torch.tensor([0.1, 0.2, 0.3, 0.4])}
    glob = LotteryTicket(10, scope="global").next_masks(weights, None, 0.5)
    assert glob["a"].all() and not glob["b"].any()
    layer = LotteryTicket(10, scope="layerwise").next_masks(weights, None, 0.5, {"a": 0.5, "b": 0.5})
    assert int(layer["a"].sum()) == int(layer["b"].sum()) == 2
    with pytest.raises(ConfigError, match="per-layer densities"):
        LotteryTicket(10, scope="layerwise").next_masks(weights, None, 0.5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"levels": 0}, "levels"),
        ({"levels": 2.5}, "levels"),
        ({"rewind_step": -1}, "rewind_step"),
        ({"scope": "local"}, "scope"),
    ],
)
def test_bad_options_are_one_line_config_errors(options, message) -> None:
    with pytest.raises(ConfigError, match=message):
        LotteryTicket(10, **options)


def test_a_rewind_step_past_the_run_is_refused_once_steps_are_known() -> None:
    method = LotteryTicket(1, rewind_step=10)  # the config check knows no run length yet
    method.check_steps(11)
    with pytest.raises(ConfigError, match="below the run's 10"):
        method.check_steps(10)


def test_keeping_more_than_is_active_is_refused() -> None:
    with pytest.raises(ConfigError, match="only 1 are still active"):
        global_magnitude_masks({"a": torch.ones(4)}, {"a": torch.tensor([True, False, False, False])}, 0.5)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(1, 12), min_size=1, max_size=4),
    st.floats(0.05, 1.0),
    st.integers(0, 2**31 - 1),
)
def test_global_pruning_is_nested_exact_and_a_magnitude_threshold(sizes, density, seed) -> None:
    generator = torch.Generator().manual_seed(seed)
    weights = {f"l{i}": torch.randn(n, generator=generator) for i, n in enumerate(sizes)}
    masks = {name: torch.rand(w.shape, generator=generator) < 0.9 for name, w in weights.items()}
    active = sum(int(m.sum()) for m in masks.values())
    total = sum(sizes)
    keep = round(density * total)
    if keep > active:
        return
    new = global_magnitude_masks(weights, masks, density)
    assert sum(int(m.sum()) for m in new.values()) == keep
    kept, dropped = [], []
    for name, mask in new.items():
        assert not bool((mask & ~masks[name]).any()), "a pruned weight came back"
        kept += weights[name][mask].abs().tolist()
        dropped += weights[name][masks[name] & ~mask].abs().tolist()
    if kept and dropped:
        assert min(kept) >= max(dropped)
