"""landscape: the weight-loss-landscape diagnostics engine (Eq. 5, Algorithm 1 of Wu, Xia, Wang 2020).

A library first: `probe_model` (1-D) and `plane_model` (2-D) take any `nn.Module` with inputs in
[0, 1] and any data, and return a `Landscape` (`.sharpness()`, `.save()`, `.plot()`, `.html()`,
`Landscape.load()`). Directions and sharpness measures are registries (`DIRECTIONS`, `SHARPNESS`).
"""

from awp import __version__  # one version for the whole toolkit
from awp.attacks import AttackConfig
from landscape.api import landscape_model, plane_model, probe_model
from landscape.core.directions import DIRECTIONS
from landscape.core.sharpness import SHARPNESS
from landscape.storage.results import Grid, Landscape

__all__ = ["__version__", "AttackConfig", "DIRECTIONS", "Grid", "Landscape", "SHARPNESS", "landscape_model",
           "plane_model", "probe_model"]
