"""`ModelSpec`: one way to build a model from its description, and what the registry declares of it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from randsparse.errors import ConfigError, UnknownNameError
from randsparse.models import ModelSpec, available_models, model_metadata


def test_from_config_folds_width_depth_and_the_data_shape_into_the_spec() -> None:
    config = SimpleNamespace(name="mlp", width=0.5, depth=1, options={"hidden": 8})
    info = SimpleNamespace(num_classes=3, channels=1, image_size=6)
    spec = ModelSpec.from_config(config, info)
    assert spec.to_dict() == {
        "name": "mlp",
        "num_classes": 3,
        "in_channels": 1,
        "options": {"hidden": 8, "width": 0.5, "depth": 1, "image_size": 6},
    }
    assert spec.build()(torch.zeros(2, 1, 6, 6)).shape == (2, 3)
    mapping = {"name": "mlp", "width": 0.5, "depth": 1, "options": {"hidden": 8}}
    assert ModelSpec.from_config(mapping, info) == spec


def test_the_json_form_round_trips_and_bad_forms_are_config_errors() -> None:
    spec = ModelSpec("resnet20", 100, 3, {"width": 0.5})
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert ModelSpec.from_dict({"name": "vgg11"}) == ModelSpec("vgg11")
    for bad in (None, {"num_classes": 3}, {"name": "mlp", "colour": 1}, {"name": "mlp", "options": [1]}):
        with pytest.raises(ConfigError, match="model_spec"):
            ModelSpec.from_dict(bad)


def test_build_with_a_seed_is_reproducible_and_spares_the_global_rng() -> None:
    spec = ModelSpec("small_cnn", options={"width": 0.25})
    before = torch.random.get_rng_state()
    first, second = spec.build(seed=3), spec.build(seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert {p.device.type for p in spec.build(device="meta").parameters()} == {"meta"}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (ModelSpec("resnet56", options={"width": 2.0}), {"family": "resnet", "depth": 56, "width": 2.0}),
        (ModelSpec("cifar_resnet"), {"family": "resnet", "depth": 20, "width": 1.0}),
        (ModelSpec("cifar_resnet", options={"depth": 32}), {"family": "resnet", "depth": 32, "width": 1.0}),
        (ModelSpec("wrn28_10"), {"family": "wide_resnet", "depth": 28, "width": 10.0}),
        (ModelSpec("wrn", options={"depth": 16, "width": 4}), {"family": "wide_resnet", "depth": 16, "width": 4.0}),
        (ModelSpec("wide_resnet50_2"), {"family": "wide_resnet", "depth": 50, "width": 2.0}),
        (ModelSpec("resnet18"), {"family": "resnet", "depth": 18, "width": 1.0}),
        (ModelSpec("vgg16"), {"family": "vgg", "depth": 16, "width": 1.0}),
        (ModelSpec("small_cnn", options={"width": 0.5}), {"family": "small_cnn", "depth": None, "width": 0.5}),
        (ModelSpec("mlp", options={"depth": 1}), {"family": "mlp", "depth": 1, "width": 1.0}),
    ],
)
def test_architecture_comes_from_the_options_and_the_registry(spec, expected) -> None:
    assert spec.architecture() == expected


def test_every_registered_model_declares_a_family() -> None:
    for name in available_models():
        assert model_metadata(name)["family"]
        ModelSpec(name).architecture()
    with pytest.raises(UnknownNameError):
        model_metadata("no_such_model")
