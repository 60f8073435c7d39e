"""Model zoo: `create_model(name)` builds a registered network that takes pixels in [0, 1]."""

from awp.models.registry import (
    Normalize,
    NormalizedModel,
    create_model,
    list_models,
    register_model,
)

# Importing the architecture modules runs their @register_model decorators.
from awp.models import preactresnet, smallcnn, vgg, wideresnet  # noqa: E402,F401  isort: skip

__all__ = ["Normalize", "NormalizedModel", "create_model", "list_models", "register_model"]
