"""Model zoo: every model is built by name through one registry."""

from randsparse.models import cifar_resnet as _cifar_resnet  # noqa: F401  (registers builders)
from randsparse.models import imagenet as _imagenet  # noqa: F401  (registers builders)
from randsparse.models.registry import available_models, build, register_model

__all__ = ["available_models", "build", "register_model"]
