"""Random masks (`randsparse.sparsity.masks`): exact counts, seeded streams, compact round trips."""

from __future__ import annotations

import itertools
import math
from collections import Counter, OrderedDict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from randsparse.errors import ConfigError, FileFormatError, MaskMismatchError
from randsparse.sparsity import MaskSet, layer_densities, prunable_shapes
from randsparse.sparsity.masks import kept_count, load_masks, save_masks

_dims = st.integers(min_value=1, max_value=9)
_shape = st.one_of(
    st.tuples(_dims, _dims),
    st.tuples(_dims, _dims, st.sampled_from([1, 3]), st.sampled_from([1, 3])),
)


@st.composite
def _layers(draw: st.DrawFn) -> tuple[dict[str, tuple[int, ...]], dict[str, float]]:
    names = draw(st.lists(st.from_regex(r"[a-z]{1,6}\.weight", fullmatch=True), min_size=1, max_size=6, unique=True))
    shapes = {n: draw(_shape) for n in names}
    densities = {n: draw(st.floats(min_value=0.0, max_value=1.0)) for n in names}
    return shapes, densities


@settings(max_examples=200, deadline=None)
@given(layers=_layers(), seed=st.integers(min_value=0, max_value=2**32))
def test_exact_sampling_keeps_round_density_times_size_per_layer(layers, seed) -> None:
    shapes, densities = layers
    masks = MaskSet.random(shapes, densities, seed)
    assert list(masks) == list(shapes)
    for name, shape in shapes.items():
        mask = masks[name]
        assert mask.dtype == torch.bool
        assert tuple(mask.shape) == shape
        assert int(mask.count_nonzero()) == round(densities[name] * math.prod(shape))


@settings(max_examples=100, deadline=None)
@given(layers=_layers(), seed=st.integers(min_value=0, max_value=2**32))
def test_same_seed_gives_the_same_masks_whatever_the_dict_order(layers, seed) -> None:
    shapes, densities = layers
    reversed_shapes = dict(reversed(list(shapes.items())))
    first = MaskSet.random(shapes, densities, seed)
    again = MaskSet.random(reversed_shapes, densities, seed)
    for name in shapes:
        assert torch.equal(first[name], again[name])


@settings(max_examples=100, deadline=None)
@given(layers=_layers(), seed=st.integers(min_value=0, max_value=2**32), data=st.data())
def test_a_layers_mask_does_not_change_when_other_layers_come_or_go(layers, seed, data) -> None:
    shapes, densities = layers
    full = MaskSet.random(shapes, densities, seed)
    kept = data.draw(st.lists(st.sampled_from(list(shapes)), unique=True, min_size=1))
    subset = MaskSet.random({n: shapes[n] for n in kept}, densities, seed)
    extra = MaskSet.random({**shapes, "zz_extra.weight": (7, 5)}, {**densities, "zz_extra.weight": 0.3}, seed)
    for name in kept:
        assert torch.equal(subset[name], full[name])
    for name in shapes:
        assert torch.equal(extra[name], full[name])


def test_different_seeds_give_different_masks() -> None:
    shapes = {"a.weight": (64, 64)}
    a = MaskSet.random(shapes, {"a.weight": 0.5}, 0)
    b = MaskSet.random(shapes, {"a.weight": 0.5}, 1)
    assert not torch.equal(a["a.weight"], b["a.weight"])
    assert a["a.weight"].count_nonzero() == b["a.weight"].count_nonzero() == 2048


def test_layers_with_equal_shapes_get_different_masks() -> None:
    shapes = {"a.weight": (32, 32), "b.weight": (32, 32)}
    masks = MaskSet.random(shapes, dict.fromkeys(shapes, 0.5), 0)
    assert not torch.equal(masks["a.weight"], masks["b.weight"])


def test_torch_generator_seed_is_reproducible_and_advances() -> None:
    shapes = {"a.weight": (16, 16)}
    densities = {"a.weight": 0.25}
    first = MaskSet.random(shapes, densities, torch.Generator().manual_seed(7))
    second = MaskSet.random(shapes, densities, torch.Generator().manual_seed(7))
    assert first.equal(second)
    gen = torch.Generator().manual_seed(7)
    draw_one = MaskSet.random(shapes, densities, gen)
    draw_two = MaskSet.random(shapes, densities, gen)
    assert draw_one.equal(first)
    assert not draw_two.equal(first)


@pytest.mark.parametrize("block", [None, 2], ids=["one_block", "blocks_of_two"])
def test_exact_draw_is_uniform_over_subsets(block, monkeypatch) -> None:
    # Six positions, keep two: each of the 15 subsets should come up equally often.
    if block is not None:
        monkeypatch.setattr("randsparse.sparsity.masks._BLOCK", block)
    draws = 3000
    counts: Counter[tuple[int, ...]] = Counter()
    for seed in range(draws):
        mask = MaskSet.random({"w": (6,)}, {"w": 2 / 6}, seed)["w"]
        counts[tuple(torch.nonzero(mask).flatten().tolist())] += 1
    subsets = list(itertools.combinations(range(6), 2))
    assert set(counts) == set(subsets)
    expected = draws / len(subsets)
    chi_square = sum((counts[s] - expected) ** 2 / expected for s in subsets)
    assert chi_square < 36.1  # chi-square, 14 degrees of freedom, p = 0.001


def test_exact_draw_positions_are_uniform_on_a_large_layer() -> None:
    # Each position of a 1000-weight layer is kept with probability 0.1 across 400 draws.
    hits = torch.zeros(1000)
    for seed in range(400):
        hits += MaskSet.random({"w": (1000,)}, {"w": 0.1}, seed)["w"].float()
    assert hits.sum() == 400 * 100
    frequency = hits / 400
    assert abs(float(frequency[:500].mean()) - 0.1) < 0.01
    assert abs(float(frequency[500:].mean()) - 0.1) < 0.01
    assert float(frequency.std()) < 0.03  # binomial std is 0.015


def test_bernoulli_sampling_has_the_right_mean_but_a_random_count() -> None:
    shapes = {"w": (100, 100)}
    counts = [int(MaskSet.random(shapes, {"w": 0.1}, seed, "bernoulli")["w"].count_nonzero()) for seed in range(20)]
    assert len(set(counts)) > 1
    assert abs(sum(counts) / len(counts) - 1000) < 30


@pytest.mark.parametrize(
    ("density", "size", "kept"), [(0.0, 10, 0), (1.0, 10, 10), (0.05, 10, 0), (0.15, 10, 2), (0.5, 3, 2)]
)
def test_kept_count_rounds_density_times_size(density: float, size: int, kept: int) -> None:
    assert kept_count(density, size) == kept


def test_random_rejects_bad_arguments() -> None:
    shapes = {"w": (3, 3)}
    with pytest.raises(ConfigError, match="sampling"):
        MaskSet.random(shapes, {"w": 0.5}, 0, "poisson")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no density"):
        MaskSet.random(shapes, {}, 0)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        MaskSet.random(shapes, {"w": 1.5}, 0)
    with pytest.raises(ConfigError, match="seed"):
        MaskSet.random(shapes, {"w": 0.5}, -1)


def test_maskset_holds_bool_tensors_only() -> None:
    with pytest.raises(TypeError):
        MaskSet({"w": torch.ones(3)})


def test_summary_and_totals() -> None:
    masks = MaskSet({"a": torch.tensor([[True, False], [False, False]]), "b": torch.ones(3, dtype=torch.bool)})
    rows = masks.summary()
    assert [(r.name, r.shape, r.params, r.kept) for r in rows] == [("a", (2, 2), 4, 1), ("b", (3,), 3, 3)]
    assert rows[0].density == 0.25
    assert masks.num_params() == 7
    assert masks.num_kept() == 4
    assert masks.density() == pytest.approx(4 / 7)
    assert MaskSet.ones({"a": (2, 3)}).density() == 1.0


@settings(max_examples=100, deadline=None)
@given(layers=_layers(), seed=st.integers(min_value=0, max_value=2**16))
def test_state_dict_round_trip_is_exact_and_bit_packed(layers, seed) -> None:
    shapes, densities = layers
    masks = MaskSet.random(shapes, densities, seed)
    state = masks.state_dict()
    for name, entry in state["masks"].items():
        assert entry["bits"].dtype == torch.uint8
        assert entry["bits"].numel() == (math.prod(shapes[name]) + 7) // 8
    restored = MaskSet.from_state_dict(state)
    assert restored.equal(masks)
    target = MaskSet.ones({"other": (2,)})
    target.load_state_dict(state)
    assert target.equal(masks)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda s: {**s, "format": "something-else"},
        lambda s: {"format": s["format"]},
        lambda s: {**s, "masks": {"w": {"shape": [4, 4]}}},
        lambda s: {**s, "masks": {"w": {"shape": [4, 5], "bits": s["masks"]["w"]["bits"]}}},
        lambda s: "not a dict",
    ],
    ids=["format", "no_masks", "no_bits", "wrong_bit_count", "not_a_mapping"],
)
def test_malformed_state_is_a_mask_mismatch_error(corrupt) -> None:
    state = MaskSet.random({"w": (4, 4)}, {"w": 0.5}, 0).state_dict()
    with pytest.raises(MaskMismatchError):
        MaskSet.from_state_dict(corrupt(state))


def test_save_and_load_masks_round_trip_with_metadata(tmp_path) -> None:
    masks = MaskSet.random({"a": (5, 7), "b": (3,)}, {"a": 0.3, "b": 1.0}, 3)
    path = tmp_path / "sub" / "masks.pt"
    save_masks(masks, path, model="toy", sparsity=0.5)
    loaded, metadata = load_masks(path)
    assert loaded.equal(masks)
    assert metadata == {"model": "toy", "sparsity": 0.5}
    assert [p.name for p in path.parent.iterdir()] == ["masks.pt"], "a temporary file was left behind"


def test_load_masks_refuses_missing_and_foreign_files(tmp_path) -> None:
    with pytest.raises(FileFormatError, match="does not exist"):
        load_masks(tmp_path / "absent.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(2)}, foreign)
    with pytest.raises(FileFormatError, match="not a randsparse mask file"):
        load_masks(foreign)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 not a torch file")
    with pytest.raises(FileFormatError, match="cannot read"):
        load_masks(garbage)


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(conv=nn.Conv2d(3, 8, 3), bn=nn.BatchNorm2d(8), flat=nn.Flatten(), fc=nn.Linear(8, 4))
    )


def _masks_for(model: nn.Module, density: float = 0.5) -> MaskSet:
    shapes = prunable_shapes(model)
    return MaskSet.random(shapes, layer_densities(shapes, density, "uniform"), 0)


def test_validate_accepts_a_fitting_mask_set() -> None:
    model = _net()
    _masks_for(model).validate(model, expected=prunable_shapes(model))


def test_validate_names_the_first_layer_with_a_wrong_shape() -> None:
    model = _net()
    masks = MaskSet({"conv.weight": torch.ones(8, 3, 3, 3, dtype=torch.bool), "fc.weight": torch.ones(5, 8).bool()})
    with pytest.raises(MaskMismatchError, match=r"'fc\.weight' has shape \(5, 8\).*\(4, 8\)"):
        masks.validate(model)


def test_validate_names_a_mask_for_a_parameter_the_model_lacks() -> None:
    model = _net()
    masks = MaskSet({**_masks_for(model), "head.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(MaskMismatchError, match=r"head\.weight"):
        masks.validate(model)


def test_validate_with_expected_layers_names_an_uncovered_layer() -> None:
    model = _net()
    masks = MaskSet({"conv.weight": _masks_for(model)["conv.weight"]})
    masks.validate(model)  # a partial set fits the parameters it names
    with pytest.raises(MaskMismatchError, match=r"'fc\.weight' has no mask"):
        masks.validate(model, expected=prunable_shapes(model))


def test_validate_with_expected_layers_refuses_a_mask_on_a_non_prunable_parameter() -> None:
    model = _net()
    masks = MaskSet({**_masks_for(model), "bn.weight": torch.ones(8, dtype=torch.bool)})
    with pytest.raises(MaskMismatchError, match=r"bn\.weight.*not a prunable layer"):
        masks.validate(model, expected=prunable_shapes(model))


def test_apply_zeroes_exactly_the_pruned_weights() -> None:
    model = _net()
    masks = _masks_for(model, 0.3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks.apply_(model)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert torch.all(params[name][~mask] == 0)
        assert torch.equal(params[name][mask], before[name][mask])
    assert torch.equal(params["bn.weight"], before["bn.weight"])
    assert torch.equal(params["conv.bias"], before["conv.bias"])


def test_apply_refuses_masks_that_do_not_fit_and_leaves_the_model_untouched() -> None:
    model = _net()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = MaskSet({"conv.weight": torch.zeros(8, 3, 3, 3, dtype=torch.bool), "fc.weight": torch.zeros(4, 9).bool()})
    with pytest.raises(MaskMismatchError):
        masks.apply_(model)
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name])


def test_masks_are_drawn_on_the_cpu_and_move_with_to() -> None:
    masks = MaskSet.random({"w": (4, 4)}, {"w": 0.5}, 0)
    assert masks["w"].device.type == "cpu"
    moved = masks.to("meta")
    assert moved["w"].device.type == "meta"
    assert list(moved) == ["w"]


@settings(max_examples=100, deadline=None)
@given(size=st.integers(min_value=1, max_value=60), fraction=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_exact_count_holds_across_drawing_blocks(size, fraction, seed, monkeypatch_block) -> None:
    keep = round(fraction * size)
    mask = MaskSet.random({"w": (size,)}, {"w": keep / size}, seed)["w"]
    assert int(mask.count_nonzero()) == keep


@pytest.fixture(scope="module")
def monkeypatch_block():
    """Draw in blocks of 7 elements, so small layers cross many block boundaries."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("randsparse.sparsity.masks._BLOCK", 7)
        yield
