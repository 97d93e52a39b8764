"""Which parameters are prunable: `prunable_parameters` / `prunable_shapes` and their filters."""

from __future__ import annotations

import pytest
from torch import nn

from randsparse.errors import ConfigError
from randsparse.sparsity import PrunableSelector, prunable_parameters, prunable_shapes


class _Zoo(nn.Module):
    """Every kind of layer once (twice for Conv2d variants), with biases and norms in between."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(2, 4, 3)
        self.bn1 = nn.BatchNorm1d(4)
        self.c2 = nn.Conv2d(4, 8, 3)
        self.bn2 = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 8, 3, groups=2)
        self.gn = nn.GroupNorm(2, 8)
        self.depthwise = nn.Conv2d(8, 8, 3, groups=8, bias=False)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.c3 = nn.Conv3d(8, 2, 1)
        self.bn3 = nn.BatchNorm3d(2)
        self.head = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.ReLU(), nn.Linear(5, 3))


_ZOO_PRUNABLE = {
    "c1.weight": (4, 2, 3),
    "c2.weight": (8, 4, 3, 3),
    "grouped.weight": (8, 4, 3, 3),
    "depthwise.weight": (8, 1, 3, 3),
    "c3.weight": (2, 8, 1, 1, 1),
    "head.0.weight": (5, 6),
    "head.3.weight": (3, 5),
}

_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)


def test_default_selects_conv_and_linear_weights_in_registration_order() -> None:
    shapes = prunable_shapes(_Zoo())
    assert list(shapes.items()) == list(_ZOO_PRUNABLE.items())


def test_default_includes_grouped_and_depthwise_conv() -> None:
    shapes = prunable_shapes(_Zoo())
    assert shapes["grouped.weight"] == (8, 4, 3, 3)
    assert shapes["depthwise.weight"] == (8, 1, 3, 3)


def test_prunable_parameters_are_the_models_own_weight_tensors() -> None:
    model = _Zoo()
    params = prunable_parameters(model)
    named = dict(model.named_parameters())
    assert list(params) == list(_ZOO_PRUNABLE)
    for name, param in params.items():
        assert param is named[name]


def test_prunable_shapes_are_tuples() -> None:
    for shape in prunable_shapes(_Zoo()).values():
        assert isinstance(shape, tuple)


def test_biases_and_norm_weights_never_selected_by_default() -> None:
    names = set(prunable_shapes(_Zoo()))
    assert not any(n.endswith(".bias") for n in names)
    assert not names & {"bn1.weight", "bn2.weight", "gn.weight", "inorm.weight", "bn3.weight", "head.1.weight"}


def test_norm_weights_never_selected_even_when_user_types_include_them() -> None:
    selector = PrunableSelector(types=(*_NORM_TYPES, nn.Linear))
    assert list(prunable_shapes(_Zoo(), selector)) == ["head.0.weight", "head.3.weight"]


def test_norm_only_type_filter_selects_nothing() -> None:
    assert prunable_shapes(_Zoo(), PrunableSelector(types=_NORM_TYPES)) == {}


def test_biases_never_selected_even_when_a_regex_asks_for_them() -> None:
    assert prunable_shapes(_Zoo(), PrunableSelector(include=r"bias")) == {}


def test_include_by_module_type() -> None:
    shapes = prunable_shapes(_Zoo(), PrunableSelector(types=(nn.Linear,)))
    assert list(shapes) == ["head.0.weight", "head.3.weight"]


def test_exclude_by_module_type() -> None:
    shapes = prunable_shapes(_Zoo(), PrunableSelector(exclude_types=(nn.Conv2d,)))
    assert list(shapes) == ["c1.weight", "c3.weight", "head.0.weight", "head.3.weight"]


def test_include_by_name_regex_uses_search() -> None:
    shapes = prunable_shapes(_Zoo(), PrunableSelector(include=r"^head\."))
    assert list(shapes) == ["head.0.weight", "head.3.weight"]
    shapes = prunable_shapes(_Zoo(), PrunableSelector(include=r"wise"))
    assert list(shapes) == ["depthwise.weight"]


def test_exclude_by_name_regex() -> None:
    shapes = prunable_shapes(_Zoo(), PrunableSelector(exclude=r"^(c1|head\.3)\."))
    assert list(shapes) == ["c2.weight", "grouped.weight", "depthwise.weight", "c3.weight", "head.0.weight"]


def test_include_and_exclude_regex_combine() -> None:
    shapes = prunable_shapes(_Zoo(), PrunableSelector(include=r"^c\d", exclude=r"^c2"))
    assert list(shapes) == ["c1.weight", "c3.weight"]


def test_type_and_regex_filters_combine() -> None:
    selector = PrunableSelector(types=(nn.Conv2d,), exclude_types=(nn.Conv1d,), exclude=r"grouped")
    assert list(prunable_shapes(_Zoo(), selector)) == ["c2.weight", "depthwise.weight"]


def test_top_level_module_weight_is_named_weight() -> None:
    assert prunable_shapes(nn.Linear(3, 2)) == {"weight": (2, 3)}


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(4, 4, bias=False)
        self.middle = nn.Linear(4, 4)
        self.decoder = nn.Linear(4, 4, bias=False)
        self.decoder.weight = self.encoder.weight


def test_tied_weight_listed_once_under_its_first_name() -> None:
    model = _Tied()
    params = prunable_parameters(model)
    assert list(params) == ["encoder.weight", "middle.weight"]
    assert params["encoder.weight"] is model.decoder.weight


def test_invalid_include_regex_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="include"):
        PrunableSelector(include="(unclosed")


def test_invalid_exclude_regex_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="exclude"):
        PrunableSelector(exclude="[z-a]")
