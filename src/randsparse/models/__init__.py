"""Model zoo: every model is built by name through one registry."""

from randsparse.models import cifar_resnet as _cifar_resnet  # noqa: F401  (registers builders)
from randsparse.models import imagenet as _imagenet  # noqa: F401  (registers builders)
from randsparse.models import small as _small  # noqa: F401  (registers builders)
from randsparse.models import vgg as _vgg  # noqa: F401  (registers builders)
from randsparse.models import vit as _vit  # noqa: F401  (registers builders)
from randsparse.models import wide_resnet as _wide_resnet  # noqa: F401  (registers builders)
from randsparse.models.registry import (
    available_models,
    build,
    model_builder,
    model_metadata,
    model_options,
    register_model,
    register_variant,
    takes_any_option,
)
from randsparse.models.spec import ModelSpec

__all__ = [
    "ModelSpec",
    "available_models",
    "build",
    "model_builder",
    "model_metadata",
    "model_options",
    "register_model",
    "register_variant",
    "takes_any_option",
]
