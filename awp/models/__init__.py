"""Model zoo: `create_model(name)` builds a registered network that takes pixels in [0, 1]; it also
builds `MODULE:CALLABLE` import specs and `robustbench:NAME` zoo models (`awp.models.external`)."""

from awp.models.external import ZooInfo, check_model_output, load_robustbench, robustbench_info
from awp.models.loading import load_weights
from awp.models.registry import (
    ENTRY_POINT_GROUP,
    Normalize,
    NormalizedModel,
    create_model,
    list_models,
    register_model,
)

# Importing the architecture modules runs their @register_model decorators.
from awp.models import preactresnet, smallcnn, vgg, wideresnet  # noqa: E402,F401  isort: skip

__all__ = [
    "ENTRY_POINT_GROUP", "Normalize", "NormalizedModel", "ZooInfo", "check_model_output", "create_model",
    "list_models", "load_robustbench", "load_weights", "register_model", "robustbench_info",
]
